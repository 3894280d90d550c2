"""How idle worker threads of the math libraries wait: the `convis-db` program's choice, made before
numpy and torch are loaded (they read it once, when loaded).

By default torch's OpenMP threads (libgomp) spin after each operator before they sleep, and OpenBLAS's
threads (numpy's matmul: the ranking's cosines) spin for about 2^28 cycles (0.1 s) after each call.
While an ingest runs its own kernels, resize, ranking and aggregation, on its own threads, that spinning
burns CPU time and, on a machine with few cores or other work, takes cores from the threads doing the
work (measured on 2 busy cores: an encoder batch took twice the CPU time and the wall time; 0.06-0.1
CPU-seconds spun after each ranking matmul that itself took 0.03). Waking a sleeping thread takes
microseconds per operator; whether that shows in the wall time of an idle machine is for
docs/benchmarks.md (issue 23, round 3). Results do not change: the same threads split the same work;
only how they wait differs.

The library itself never sets these (a program that embeds it decides for itself); a user's own
setting of either variable wins, e.g. `OMP_WAIT_POLICY=ACTIVE convis-db ingest ...`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

#: Variable -> the value `convis-db` sets when it is not set already.
QUIET_WAITS = {
    "OMP_WAIT_POLICY": "PASSIVE",          # libgomp (torch, MKL): sleep at once instead of spinning
    "OPENBLAS_THREAD_TIMEOUT": "4",        # OpenBLAS: spin 2^4 cycles, not 2^28, before sleeping
}

#: What sleep_idle_threads decided in this process, for the log once logging is configured.
CHOICES: list[str] = []


def sleep_idle_threads(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Sets each variable of QUIET_WAITS that is not set already; returns (and keeps in CHOICES) one line
    per variable saying its value and whose choice it is. Call it before numpy and torch are imported:
    later, it is recorded but has no effect in this process (only in its subprocesses)."""
    environ = os.environ if environ is None else environ
    late = [m for m in ("numpy", "torch") if m in sys.modules] if environ is os.environ else []
    lines = []
    for name, value in QUIET_WAITS.items():
        if name in environ:
            lines.append(f"{name}={environ[name]} (set by the user)")
        else:
            environ[name] = value
            lines.append(f"{name}={value} (convis-db's default: idle threads sleep instead of spinning"
                         + (f"; too late for {' and '.join(late)}, loaded already)" if late else ")"))
    CHOICES[:] = lines
    return lines


def log_choices() -> None:
    """Logs (info) the choices made by sleep_idle_threads in this process, if any."""
    for line in CHOICES:
        log.info("worker threads: %s", line)

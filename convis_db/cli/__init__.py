"""The `convis-db` command line: parses options, calls the library, formats results.

This package imports nothing heavy itself: `main` first puts the signal handlers in place, then
imports the command group (convis_db.cli.root, which brings torch: seconds), so that a SIGTERM or a
Ctrl-C while the CLI is still starting says so in one line instead of ending silently or with a
traceback. `cli` (the click group) is imported from root on first use.
"""

from __future__ import annotations

import signal
import sys

from convis_db.cli.thread_waits import sleep_idle_threads
from convis_db.errors import Terminated

_ROOT_NAMES = ("cli", "ConvisGroup", "COMMAND_MODULES")


def _terminate(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise Terminated()


def main() -> None:
    """The `convis-db` program. Idle worker threads of OpenMP and OpenBLAS sleep instead of spinning
    unless the user set otherwise (cli/thread_waits.py). SIGTERM raises Terminated in the main thread,
    which stops the command as Ctrl-C does (exit 143 instead of 130); commands that finish their work
    first on a signal (ingest, serve) put their own handlers in place while they run."""
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)
    sleep_idle_threads()  # before numpy and torch load: they read it once (cli/thread_waits.py)
    try:
        from convis_db.cli.root import cli
    except Terminated:
        sys.stderr.write("terminated (SIGTERM) while convis-db was starting; nothing was done.\n")
        sys.exit(143)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while convis-db was starting; nothing was done.\n")
        sys.exit(130)
    cli(prog_name="convis-db")


def __getattr__(name: str):
    if name in _ROOT_NAMES:
        from convis_db.cli import root

        return getattr(root, name)
    raise AttributeError(f"module 'convis_db.cli' has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    main()

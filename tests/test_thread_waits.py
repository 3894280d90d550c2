"""The convis-db program makes idle OpenMP/OpenBLAS threads sleep (cli/thread_waits.py): before numpy and
torch load, never over a user's own setting, and never by importing the library."""

from __future__ import annotations

import os
import subprocess
import sys

from convis_db.cli.thread_waits import QUIET_WAITS, sleep_idle_threads


def test_sets_what_is_unset_and_keeps_the_users_choice():
    env = {"OPENBLAS_THREAD_TIMEOUT": "28"}
    lines = sleep_idle_threads(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "28"}
    assert "OMP_WAIT_POLICY=PASSIVE (convis-db's default" in lines[0]
    assert lines[1] == "OPENBLAS_THREAD_TIMEOUT=28 (set by the user)"


def _run(code: str, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in QUIET_WAITS}
    env.update(extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300)
    return out.stdout


def test_the_program_sets_them_before_numpy_and_torch_load():
    code = ("import os, sys\nsys.argv = ['convis-db', '--version']\nfrom convis_db.cli import main\n"
            "from convis_db.cli import thread_waits\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])\n"
            "print(*thread_waits.CHOICES, sep='\\n')\n")
    out = _run(code).splitlines()
    assert out[1] == "True PASSIVE 4"  # torch was loaded by main, after the choice
    assert len(out) == 4 and not any("too late" in line for line in out[2:])
    assert "OMP_WAIT_POLICY=ACTIVE (set by the user)" in _run(code, OMP_WAIT_POLICY="ACTIVE")


def test_the_library_sets_nothing():
    out = _run("import os, convis_db, convis_db.api\nprint(os.environ.get('OMP_WAIT_POLICY'))")
    assert out.strip() == "None"

"""SIGTERM while the CLI is starting says it was stopped (issue 21, item 8).

It used to end the process silently (importing torch takes seconds, opening a model more). Now the
handler is in place before the heavy imports, and a SIGTERM during a command stops it as Ctrl-C does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from faults.proc import Watched, child_env, module_command

pytestmark = [pytest.mark.fault, pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")]


def test_sigterm_while_importing_says_so(tmp_path):
    """SIGTERM half a second after start (the CLI is importing torch): one line, exit 143."""
    proc = subprocess.Popen([*module_command(), "--db", str(tmp_path / "x.duckdb"), "stats"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(), cwd=tmp_path)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    assert err.strip().splitlines() == ["terminated (SIGTERM) while convis-db was starting; nothing was done."]
    assert out == "" and not (tmp_path / "x.duckdb").exists()


def test_sigterm_during_a_command_stops_it_as_ctrl_c_does(tmp_path):
    """A command still opening things (here a stand-in that waits) gets SIGTERM: one line, exit 143."""
    code = ("import sys, time\n"
            "from convis_db.cli import main\n"
            "import convis_db.cli.cmd_stats as stats\n"
            "def slow(*args, **kwargs):\n"
            "    print('opening the model', file=sys.stderr, flush=True)\n"
            "    time.sleep(120)\n"
            "stats.command.callback = slow\n"
            "sys.argv = ['convis-db', 'stats']\n"
            "main()\n")
    with Watched([sys.executable, "-c", code], cwd=tmp_path) as child:
        child.wait_for_text("opening the model", timeout=120)
        child.send(signal.SIGTERM)
        rc = child.finish(timeout=60)
        err = child.stderr
    assert rc == 143, err[-2000:]
    # (The stand-in's own line and click's may share a line: they go through different stderr buffers.)
    assert err.strip().splitlines()[-1].endswith("terminated (SIGTERM): stopped before stats finished."), err
    assert "Traceback" not in err

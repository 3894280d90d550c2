"""Run a convis-db command in a child process and watch what it writes, so a test can act at a
known point (after the n-th stored image) by sending a signal: SIGKILL, SIGINT, SIGSTOP/SIGCONT."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: What `ingest -v` logs after each image's transaction has committed.
INGESTED_LINE = re.compile(r"INFO convis_db\.ingest\.storing: ingested (.+?) as image (\d+) \((\d+) windows\)")
#: What `ingest -v` logs once it holds the database file for writing.
OPENED_LINE = re.compile(r"INFO convis_db\.ingest\.ingestor: opened .+ for writing")
#: What `ingest` logs when a first Ctrl-C (SIGINT) or SIGTERM arrives.
INTERRUPT_LINE = re.compile(r"(?:SIGINT|SIGTERM): finishing the current image")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: CPU only, one thread per op (the test process needs a core too)."""
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               COLUMNS="200")
    env.pop("CONVIS_DB", None)
    env.update(extra)
    return env


def module_command() -> list[str]:
    """`python -m convis_db.cli` with this interpreter."""
    return [sys.executable, "-m", "convis_db.cli"]


def entry_point_command() -> list[str]:
    """The installed `convis-db` script next to this interpreter, else `python -m convis_db`."""
    script = Path(sys.executable).with_name("convis-db")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("convis-db")
    return [found] if found else [sys.executable, "-m", "convis_db"]


class Watched:
    """A child process whose stdout and stderr are collected by threads as they arrive."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None):
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env or child_env(), cwd=cwd)
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True)]
        for t in self._readers:
            t.start()

    def _pump(self, stream, sink: list[bytes]) -> None:
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._changed:
                if chunk:
                    sink.append(chunk)
                self._changed.notify_all()
            if not chunk:
                return

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        with self._changed:
            return b"".join(self._out).decode(errors="replace")

    @property
    def stderr(self) -> str:
        with self._changed:
            return b"".join(self._err).decode(errors="replace")

    def count(self, pattern: re.Pattern) -> int:
        return len(pattern.findall(self.stderr))

    def wait_for(self, pattern: re.Pattern, n: int = 1, timeout: float = 120.0) -> int:
        """Block until `pattern` has appeared n times on stderr; returns the count. Fails the test
        with the child's output when it exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = len(pattern.findall(b"".join(self._err).decode(errors="replace")))
                if found >= n:
                    return found
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers):
                    raise AssertionError(f"child exited ({self.proc.returncode}) before {n}x {pattern.pattern!r}:\n"
                                         f"{self._tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {n}x {pattern.pattern!r}:\n"
                                         f"{self._tail()}")
                self._changed.wait(min(left, 0.5))

    def wait_for_text(self, text: str, timeout: float = 120.0) -> None:
        """Block until `text` has appeared on stdout or stderr (a server's ready line, say)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in self.stdout + self.stderr:
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers):
                    raise AssertionError(f"child exited ({self.proc.returncode}) before {text!r}:\n{self._tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {text!r}:\n{self._tail()}")
                self._changed.wait(min(left, 0.5))

    def _tail(self) -> str:
        err = b"".join(self._err).decode(errors="replace")
        out = b"".join(self._out).decode(errors="replace")
        return f"--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-5000:]}"

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the exit and the end of its output; returns the exit code."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"child still running after {timeout} s:\n{self._tail()}") from None
        for t in self._readers:
            t.join(10)
        return rc

    def kill(self) -> None:
        """SIGKILL (after SIGCONT, in case it was stopped) and reap."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        for t in self._readers:
            t.join(10)
        for s in (self.proc.stdout, self.proc.stderr):
            if s:
                s.close()


def run(args: list[str], timeout: float = 120.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env or child_env(), stdin=subprocess.DEVNULL)

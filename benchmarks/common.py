"""Shared helpers for the benchmarks: machine description, timing, and a small model DB builder."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny-clip.json"


def threads_wait_as_the_cli() -> list[str]:
    """How idle OpenMP/OpenBLAS threads wait, set as the `convis-db` program sets it (cli/thread_waits.py):
    call before numpy and torch are imported. `--spinning-threads` on the command line leaves the
    libraries' defaults (spinning); a baseline subprocess inherits the environment set here, so both
    sides of a comparison run alike. The module is loaded from this script's checkout, whichever convis_db
    PYTHONPATH selects (an older checkout has none)."""
    import importlib.util
    import sys

    if "--spinning-threads" in sys.argv or "--worker" in sys.argv:
        return []
    spec = importlib.util.spec_from_file_location("_thread_waits", REPO / "convis_db" / "cli" / "thread_waits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sleep_idle_threads()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", GPU " + torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def timeit(fn: Callable[[], object], repeat: int = 7, warmup: int = 1) -> dict:
    """Median and min wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": repeat}


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# machine: {machine()}; commit {git_rev()}; date {time.strftime('%Y-%m-%d')}")


#: DuckDB's own block size and row group size: what convis-db wrote before issue 24.
DUCKDB_DEFAULT = (262_144, 122_880)


def parse_file_settings(text: str) -> list[tuple[int, int]]:
    """'default,shipped,65536:524288' -> [(block bytes, rows per row group), ...]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "default":
            out.append(DUCKDB_DEFAULT)
        elif part == "shipped":
            from convis_db.store import db as store_db

            out.append((store_db.BLOCK_SIZE, store_db.ROW_GROUP_SIZE))
        else:
            block, rows = part.split(":")
            out.append((int(block), int(rows)))
    return out


@contextlib.contextmanager
def file_settings(block: int, rows: int):
    """convis-db's writable connections made with this block size (new files) and row group size."""
    from convis_db.store import db as store_db

    saved = store_db.BLOCK_SIZE, store_db.ROW_GROUP_SIZE
    store_db.BLOCK_SIZE, store_db.ROW_GROUP_SIZE = block, rows
    try:
        yield
    finally:
        store_db.BLOCK_SIZE, store_db.ROW_GROUP_SIZE = saved


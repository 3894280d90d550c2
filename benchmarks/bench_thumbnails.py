"""Peak memory of a served explorer under many concurrent thumbnails of one big photo (issue 21, item 2).

    python benchmarks/bench_thumbnails.py                       # this checkout
    python benchmarks/bench_thumbnails.py --code /work/main     # another checkout's code, same load

Builds (once, cached in --work) a tiny-model database holding one photo of --mpx megapixels (a
smooth synthetic picture saved as PNG or JPEG), starts `convis-db serve` on 127.0.0.1 (port 0) in a
child process that imports the code under test, sends --requests thumbnail requests of distinct
sizes (110, 111, ...) from --concurrency threads at once, and prints the server's peak RSS (VmHWM of
/proc/PID/status), how many requests were answered, and the wall time. Loopback only; a bounded
number of requests; the server is stopped at the end (or when --timeout passes).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TINY_CONFIG, header  # noqa: E402

WORDS = "dog\ncat\ncar\ntree\nhouse\n"
MB = 1 << 20


def _env(code: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(code), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("CONVIS_DB", None)
    return env


def photo(path: Path, mpx: float, seed: int = 0) -> Path:
    """A 4:3 picture of about `mpx` megapixels: gradients plus sensor-like noise, so that it compresses
    about as badly as a photo does (a flat synthetic PNG would be unrealistically small and fast)."""
    w = int((mpx * 1e6 * 4 / 3) ** 0.5)
    h = int(mpx * 1e6 / w)
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w, dtype=np.float32)
    rows = []
    for y0 in range(0, h, 512):  # built in strips: the benchmark itself stays small
        n = min(512, h - y0)
        y = np.linspace(y0, y0 + n, n, endpoint=False, dtype=np.float32)[:, None] / h * 255
        strip = np.stack([np.broadcast_to(x, (n, w)), np.broadcast_to(y, (n, w)), (x[None, :] + y) % 256], axis=2)
        strip += rng.normal(0, 12, size=strip.shape).astype(np.float32)
        rows.append(np.clip(strip, 0, 255).astype(np.uint8))
    Image.fromarray(np.concatenate(rows)).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


def build(work: Path, mpx: float, fmt: str) -> Path:
    db = work / f"thumbs-{mpx:g}mpx-{fmt}.duckdb"
    if db.exists():
        return db
    work.mkdir(parents=True, exist_ok=True)
    picture = work / f"photo-{mpx:g}mpx.{fmt}"
    if not picture.exists():
        photo(picture, mpx)
    words = work / "words.txt"
    words.write_text(WORDS)
    tmp = db.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    cli = [sys.executable, "-m", "convis_db.cli", "-q", "--db", str(tmp)]
    env = _env(REPO)
    subprocess.run([*cli, "init", "--model", str(TINY_CONFIG), "--pretrained", "none", "--vocab", str(words),
                    "--device", "cpu"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "ingest", str(picture), "--device", "cpu", "--max-pixels", "20000", "--stride", "32"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    tmp.rename(db)
    return db


def peak_rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


def rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024


def _watch(server: subprocess.Popen, limit: int, killed: list[int]) -> None:
    """Kill the server once its RSS passes `limit` (the machine is shared: the old code's load can
    take tens of GB); records the RSS it was killed at."""
    while server.poll() is None:
        try:
            now = rss(server.pid)
        except (OSError, AttributeError):
            return
        if now > limit:
            killed.append(now)
            server.kill()
            return
        time.sleep(0.05)


def run(db: Path, code: Path, requests: int, concurrency: int, timeout: float, kill_above: int) -> dict:
    server = subprocess.Popen([sys.executable, "-m", "convis_db.cli", "serve", "--db", str(db), "--host", "127.0.0.1",
                               "--port", "0"], env=_env(code), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=db.parent)  # not this checkout: `-m` puts the cwd first on sys.path
    killer = threading.Timer(timeout, server.kill)
    killer.start()
    try:
        url = None
        for line in server.stdout:
            found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if found:
                url = found.group(1)
                break
        if url is None:
            raise SystemExit("the server did not start")
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        idle = peak_rss(server.pid)
        killed: list[int] = []
        threading.Thread(target=_watch, args=(server, kill_above, killed), daemon=True).start()

        def get(size: int) -> int:
            try:
                with urllib.request.urlopen(f"{url}api/images/1/thumb.jpg?size={size}", timeout=timeout) as r:
                    return r.status if r.read() else 0
            except Exception:  # noqa: BLE001 - a refused or dropped request counts as unanswered
                return 0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            statuses = list(pool.map(get, [110 + i for i in range(requests)]))
        secs = time.perf_counter() - t0
        alive = server.poll() is None
        peak = peak_rss(server.pid) if alive else (killed[0] if killed else -1)
        after = get(256) == 200 if alive else False
        return {"idle": idle, "peak": peak, "answered": statuses.count(200), "secs": secs, "alive": alive,
                "answers_after": after, "killed": bool(killed)}
    finally:
        killer.cancel()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mpx", type=float, default=56.0, help="megapixels of the photo (default 56)")
    ap.add_argument("--format", choices=["png", "jpg"], default="png")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=30)
    ap.add_argument("--code", type=Path, action="append", default=None,
                    help="checkout(s) whose convis_db the server imports (default: this one); repeatable")
    ap.add_argument("--work", type=Path, default=Path("/tmp/convis-bench-thumbnails"))
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--clean", action="store_true", help="remove --work first")
    ap.add_argument("--kill-above", type=float, default=6.0,
                    help="GiB of RSS at which the server is killed (the figure is then '> this')")
    args = ap.parse_args()
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)
    header(f"thumbnails: {args.requests} requests of distinct sizes, {args.concurrency} at once, "
           f"one {args.mpx:g}-Mpx {args.format.upper()}")
    db = build(args.work, args.mpx, args.format)
    for code in args.code or [REPO]:
        r = run(db, code.resolve(), args.requests, args.concurrency, args.timeout, int(args.kill_above * 1024 * MB))
        peak = f">{r['peak'] / MB:6.0f} MiB (killed)" if r["killed"] else f"{r['peak'] / MB:7.0f} MiB"
        print(f"{str(code):30} idle {r['idle'] / MB:7.0f} MiB  peak {peak}  "
              f"answered {r['answered']}/{args.requests}  {r['secs']:.1f} s  "
              f"{'alive, answers' if r['answers_after'] else 'DEAD or not answering'}")


if __name__ == "__main__":
    main()

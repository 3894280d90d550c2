"""Peak memory of `convis-db ingest` on a few huge photos (issue 21, item 3).

    python benchmarks/bench_ingest_memory.py                            # this checkout, 4 PNGs of 56 Mpx
    python benchmarks/bench_ingest_memory.py --code /work/main --code . # before and after, side by side
    python benchmarks/bench_ingest_memory.py --format jpg

Makes (once, cached in --work) --count distinct photos of --mpx megapixels (gradients plus noise, see
bench_thumbnails.photo) and a database of the tiny random model (tests/data/tiny-clip.json, so the
model costs little and the decoding shows), then runs `ingest` of all of them with the database's
default settings into a fresh copy of that database, once per --code checkout, and prints the child's
peak RSS (ru_maxrss from wait4) and its wall time. A run whose RSS passes --kill-above GiB is killed
(the machine may be shared) and shown as '> that'.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_thumbnails import WORDS, photo  # noqa: E402
from common import REPO, TINY_CONFIG, header  # noqa: E402

MB = 1 << 20


def _env(code: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(code), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.pop("CONVIS_DB", None)
    return env


def build(work: Path, count: int, mpx: float, fmt: str) -> tuple[Path, Path]:
    photos = work / f"photos-{count}x{mpx:g}mpx-{fmt}"
    photos.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = photos / f"photo{i}.{fmt}"
        if not target.exists():
            photo(target.with_suffix(f".tmp.{fmt}"), mpx, seed=100 + i).rename(target)
    db = work / "empty.duckdb"
    if not db.exists():
        (work / "words.txt").write_text(WORDS)
        tmp = work / "empty.building"
        tmp.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "convis_db.cli", "-q", "--db", str(tmp), "init", "--model",
                        str(TINY_CONFIG), "--pretrained", "none", "--vocab", str(work / "words.txt"), "--device",
                        "cpu"], check=True, env=_env(REPO), cwd=work, stdout=subprocess.DEVNULL)
        tmp.rename(db)
    return db, photos


def _rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024


def run(db: Path, photos: Path, code: Path, kill_above: int, timeout: float) -> dict:
    target = db.with_name("run.duckdb")
    shutil.copyfile(db, target)
    proc = subprocess.Popen([sys.executable, "-m", "convis_db.cli", "-q", "--db", str(target), "ingest", str(photos),
                             "--device", "cpu"], env=_env(code), cwd=db.parent,  # cwd: not a checkout
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed: list[int] = []

    def watch() -> None:
        t_end = time.monotonic() + timeout
        while proc.poll() is None:
            try:
                now = _rss(proc.pid)
            except (OSError, AttributeError):
                return
            if now > kill_above or time.monotonic() > t_end:
                killed.append(now)
                proc.kill()
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stored = re.search(r"ingested (\d+)", out)
    return {"peak": usage.ru_maxrss * 1024, "secs": secs, "killed": bool(killed), "rc": proc.returncode,
            "ingested": int(stored.group(1)) if stored else 0, "tail": out.strip().splitlines()[-1:] or [""]}


def fidelity(picture: Path, max_pixels: int) -> None:
    """How far a reduced decode moves the working image and the image's scores, for one photo: the
    same tiny random model explains the full decode and the reduced one (docs/fidelity.md)."""
    import numpy as np
    import torch

    from convis_db.engine.explainer import ConceptEngine
    from convis_db.engine.images import read_image
    from convis_db.engine.settings import Settings

    full = read_image(picture)
    reduced = read_image(picture, at_least=max_pixels)
    print(f"FIDELITY {picture.name}: {full.width}x{full.height}, decoded reduced to "
          f"{reduced.pixels.shape[1]}x{reduced.pixels.shape[0]} (factor {full.width / reduced.pixels.shape[1]:.0f})")
    settings = Settings(max_pixels=max_pixels)
    engine = ConceptEngine.__new__(ConceptEngine)  # only working_image: no model or hierarchy needed
    engine.settings, engine.device = settings, torch.device("cpu")
    engine.model = type("M", (), {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)})()
    a, grid_a = engine.working_image(full.pixels)
    b, grid_b = engine.working_image(reduced.pixels, reduced.size)
    assert (grid_a.width, grid_a.height) == (grid_b.width, grid_b.height)
    diff = (a - b).abs()  # in 0..255 units (mean 0, std 1/255)
    print(f"FIDELITY working image {grid_a.width}x{grid_a.height}: |full - reduced| mean {diff.mean():.3f}, "
          f"99th percentile {np.percentile(diff.numpy(), 99):.2f}, max {diff.max():.1f} (0..255 scale)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--mpx", type=float, default=56.0)
    ap.add_argument("--format", choices=["png", "jpg"], default="png")
    ap.add_argument("--code", type=Path, action="append", default=None,
                    help="checkout(s) whose convis_db runs the ingest (default: this one); repeatable")
    ap.add_argument("--work", type=Path, default=Path("/tmp/convis-bench-ingest-memory"))
    ap.add_argument("--kill-above", type=float, default=8.0, help="GiB of RSS at which a run is killed")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--fidelity", action="store_true",
                    help="instead: compare the working image of the first photo decoded in full and reduced")
    args = ap.parse_args()
    header(f"ingest memory: {args.count} {args.format.upper()} photos of {args.mpx:g} Mpx, tiny random model, "
           "default settings")
    db, photos = build(args.work, args.count, args.mpx, args.format)
    if args.fidelity:
        from convis_db.engine.settings import Settings

        fidelity(photos / f"photo0.{args.format}", Settings().max_pixels)
    for code in [] if args.fidelity else args.code or [REPO]:
        r = run(db, photos, code.resolve(), int(args.kill_above * 1024 * MB), args.timeout)
        peak = f"> {r['peak'] / MB:6.0f} MiB (killed)" if r["killed"] else f"{r['peak'] / MB:8.0f} MiB"
        print(f"{str(code):30} peak RSS {peak}  {r['secs']:6.1f} s  exit {r['rc']}  ingested {r['ingested']}"
              f"/{args.count}")


if __name__ == "__main__":
    main()

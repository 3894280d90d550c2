"""CPU-seconds and peak private memory per stage of one image's explanation, in one process.

    python benchmarks/bench_stages.py                      # 1 thread, 3 reps, tiny 224-px model, paper settings
    PYTHONPATH=/work/main python benchmarks/bench_stages.py   # another checkout's engine, for a side by side

Where bench_throughput's 2-thread CPU-seconds are drowned by a loaded machine (time stolen by the host
is charged to whoever ran, torch's OpenMP threads spin), these figures hold better: one thread
(`--threads`, default 1; the numba kernels follow torch's count), process CPU-seconds of each stage of
`explain_pixels` (its own stage timer, wrapped with getrusage), then `read_image` and `write_image` of
the same image on the ingest's connection; rep 1 compiles and warms up. Run two checkouts one after
the other, twice, and compare. Idle OpenMP/OpenBLAS threads sleep as under `convis-db`, whichever
checkout runs (`--spinning-threads`: the libraries' defaults).

`--memory`: also a whole `ingest` of --images images after those reps, with RssAnon (the process's
private memory) sampled every 5 ms and charged to the stage running at that moment (between stages:
the writer thread, decoding, the concept index).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import shutil
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import THREAD_WAITS, TINY_224, base_db, make_images  # sets thread waits before torch loads
from common import header

import torch  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_anon_mb() -> int:
    return int(re.search(r"RssAnon:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also peak RssAnon per stage over an ingest")
    ap.add_argument("--images", type=int, default=4, help="--memory: images ingested")
    ap.add_argument("--spinning-threads", action="store_true",
                    help="leave OpenMP/OpenBLAS idle threads spinning (default: they sleep, as under convis-db)")
    ap.add_argument("--all-threads-height", action="store_true",
                    help="the height pass on every thread (default in this checkout: half of them, resize.HEIGHT_PASS_SHARE)")
    ap.add_argument("--plain-stores", action="store_true", help="no streamed (non-temporal) patch rows")
    ap.add_argument("--whole-width-pass", action="store_true", help="no ring: each side's width pass for the whole image")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.plain_stores:
        from convis_db.engine import resize

        resize.STREAM_STORES = False
    if args.all_threads_height:
        from convis_db.engine import resize

        resize.HEIGHT_PASS_SHARE = 1
    if args.whole_width_pass:
        from convis_db.engine import windows

        windows.band_rows = lambda span, size, height: height
    import convis_db
    from convis_db.engine import explainer
    from convis_db.engine.images import read_image
    from convis_db.engine.settings import PAPER
    from convis_db.ingest import Ingestor
    from convis_db.store.image_store import write_image

    header(f"bench_stages: convis_db from {Path(convis_db.__file__).parent}, torch threads {args.threads}, paper "
           "settings, tiny 224-px model; thread waits: " + ("; ".join(THREAD_WAITS) or "the libraries' defaults"))
    stage_cpu: dict[str, float] = {}
    current = ["setup"]
    peaks: dict[str, int] = {}
    timer_stage = explainer.Timer.stage

    @contextlib.contextmanager
    def stage(self, name):  # the engine's stage timer, also counting CPU-seconds and naming the stage
        c0, before = cpu_seconds(), current[0]
        current[0] = name
        try:
            with timer_stage(self, name):
                yield
        finally:
            current[0] = before
            stage_cpu[name] = stage_cpu.get(name, 0.0) + cpu_seconds() - c0

    explainer.Timer.stage = stage
    work = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    try:
        target = work / "ingest.duckdb"
        shutil.copyfile(base_db(str(TINY_224), "none", torch.device("cpu")), target)
        paths = make_images(work, max(3, args.images))
        with Ingestor(target, device=torch.device("cpu"), settings=PAPER, precision="fp32") as ingestor:
            engine = ingestor.engine()
            for rep in range(1, args.reps + 1):
                c0 = cpu_seconds()
                image = read_image(paths[rep % 3], PAPER.max_pixels)
                decode = cpu_seconds() - c0
                stage_cpu.clear()
                c0 = cpu_seconds()
                exp = engine.explain_pixels(image.pixels)
                explain = cpu_seconds() - c0
                c0 = cpu_seconds()
                write_image(ingestor.con, exp, f"{image.sha256}-{rep}", f"/bench/{rep}", ingestor.model_id,
                            ingestor.settings, "fp32")
                write = cpu_seconds() - c0
                around = explain - stage_cpu.get("encode", 0.0) + decode + write
                print(f"rep {rep}: around the encoder {around:.3f} CPU-s (explain {explain:.3f} - encode "
                      f"{stage_cpu.get('encode', 0.0):.3f} + decode {decode:.3f} + write {write:.3f}); "
                      + ", ".join(f"{k} {v:.3f}" for k, v in stage_cpu.items()), flush=True)
            if args.memory:
                stop = threading.Event()

                def sample() -> None:
                    while not stop.wait(0.005):
                        key = current[0]
                        peaks[key] = max(peaks.get(key, 0), rss_anon_mb())

                current[0] = "between stages"
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                stage_cpu.clear()
                c0 = cpu_seconds()
                report = ingestor.run(paths[: args.images])
                spent = (cpu_seconds() - c0) / report.count("ingested")
                stop.set()
                sampler.join()
                encode = stage_cpu.get("encode", 0.0) / report.count("ingested")
                print(f"INGEST of {report.count('ingested')} images: {spent:.3f} CPU-s per image, of which encode "
                      f"{encode:.3f}: around the encoder {spent - encode:.3f} (every thread: decode, writer, index)")
                print(f"MEMORY peak RssAnon (MB) per stage over an ingest of {args.images} images: "
                      + ", ".join(f"{k} {v}" for k, v in peaks.items()) + f"; overall {max(peaks.values())}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

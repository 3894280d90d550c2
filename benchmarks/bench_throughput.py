"""Ingest throughput: CPU-seconds per image around the encoder, side by side with the bare encoder.

    python benchmarks/bench_throughput.py                                  # CPU, tiny 224-px model, paper settings
    python benchmarks/bench_throughput.py --baseline /work/main            # ... and another checkout's ingest, same run
    python benchmarks/bench_throughput.py --device cuda --model ViT-B-32 --precision bf16 --images 16   # a GPU

In one process, in rounds (so that load from other processes hits every figure alike):
  * `ingest` of --images 640 x 480 JPEGs into a fresh copy of a database (decode threads, working image,
    cut + resize, encode, rank, propagate, aggregate, whole-image pass, writer thread, concept index):
    process CPU-seconds (user + system, every thread) and wall seconds per image, peak memory;
  * the bare encoder on ready patches: `encode_image_batch` over as many patches, in the same batches
    (2 x batch windows per forward), CPU-seconds per image;
  * with --baseline PATH: the same ingest run by the convis_db of another checkout (a subprocess with
    PYTHONPATH=PATH), e.g. main before a change.
"Around the encoder" = ingest CPU-s per image minus the bare encoder's CPU-s per image (issue 23's
figure: at most 1.0 at the paper's settings with a tiny model of 224-pixel input). On a GPU the host
CPU-s per image and images/s say whether the host or the device bounds the ingest.

Peak memory is sampled from /proc/self/status every 20 ms: `anon` is the process's private memory
(RssAnon: tensors, buffers, the database cache), `rss` adds the file pages of the shared libraries
mapped in (torch's CUDA libraries alone are about 0.6 GB of those, shared and reclaimable).
With OUT set, the figures are written to $OUT/bench_throughput.json too.

Idle OpenMP/OpenBLAS threads sleep, as under the `convis-db` program (cli/thread_waits.py), in this
process and in the baseline's; `--spinning-threads` keeps the libraries' defaults in both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, header, threads_wait_as_the_cli

THREAD_WAITS = threads_wait_as_the_cli()  # before numpy and torch load

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

TINY_224 = REPO / "tests" / "data" / "tiny-clip-224.json"
CACHE = Path(tempfile.gettempdir()) / "convis-bench-throughput"


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` 640 x 480 JPEGs: noise with a flat block and a gradient (content differs between windows)."""
    rng = np.random.default_rng(0)
    out = []
    y, x = np.mgrid[0:480, 0:640]
    for i in range(count):
        arr = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        arr[100:300, 150:400] = rng.integers(0, 255, 3)
        arr[300:, :, 0] = ((x[300:] + y[300:] + 37 * i) % 256).astype(np.uint8)
        p = folder / f"img_{i:03d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        out.append(p)
    return out


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU-seconds of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


class MemorySampler:
    """Peak RssAnon and VmRSS (bytes) of this process while running, sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak_anon = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.peak_anon = max(self.peak_anon, int(line.split()[1]) * 1024)
            elif line.startswith("VmRSS:"):
                self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> MemorySampler:  # noqa: PYI034 - Python 3.10 has no typing.Self
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def base_db(model: str, pretrained: str, device, cache: Path | None = None) -> Path:
    """A database with the physical-objects T and the model's definitions, built once and cached (in
    `cache`, by default one folder per checkout of this script: every checkout, a baseline's too, keeps
    its own, made by its own code in its own schema, which a newer checkout would upgrade past it)."""
    import hashlib

    from convis_db.init_db import initialise
    from convis_db.models.registry import resolve_model

    cache = cache or CACHE / ("checkout-" + hashlib.sha256(str(REPO.resolve()).encode()).hexdigest()[:12])
    cache.mkdir(parents=True, exist_ok=True)
    spec = resolve_model(model, pretrained)
    path = cache / f"{spec.name}-{Path(str(spec.pretrained)).name}.duckdb".replace("/", "_")
    initialise(path, "physical-objects", spec, device, precision="fp32")  # idempotent
    return path


def ingest_figures(db: Path, paths: list[Path], device_name: str, precision: str, batch_size: int,
                   preset: str) -> dict:
    """One measured `ingest` of `paths` into a fresh copy of `db` (after a one-image warm-up run): CPU and
    wall seconds, stage wall seconds, peak memory. Works with older checkouts' Ingestor too."""
    import torch

    from convis_db.engine.settings import CPU_FAST, PAPER
    from convis_db.ingest import Ingestor

    device = torch.device(device_name)
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        target = work / "ingest.duckdb"
        shutil.copyfile(db, target)
        settings = {"paper": PAPER, "cpu-fast": CPU_FAST}[preset]
        with Ingestor(target, device=device, settings=settings, batch_size=batch_size, precision=precision,
                      decode_threads=2) as ingestor:
            warm = work / "warm.jpg"
            Image.open(paths[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(warm, quality=90)
            ingestor.run([warm])  # model load, kernels compiled, buffers made: not part of the figure
            u0, s0 = cpu_seconds()
            t0 = time.perf_counter()
            with MemorySampler() as mem:
                report = ingestor.run(paths)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            u1, s1 = cpu_seconds()
        n = report.count("ingested")
        assert n == len(paths), report.summary()
        return {"images": n, "windows": report.windows, "cpu_s": (u1 - u0) + (s1 - s0), "user_s": u1 - u0,
                "sys_s": s1 - s0, "wall_s": wall, "stages_s": report.timings, "peak_anon": mem.peak_anon,
                "peak_rss": mem.peak_rss}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bare_encode_figures(model, windows_per_image: int, batch_size: int, images: int) -> dict:
    """CPU and wall seconds of encode_image_batch over the patches of `images` images, in the ingest's
    batches (ready random patches: the encoder's cost does not depend on the pixel values)."""
    import torch

    from convis_db.engine.explainer import window_batches

    sizes = [sum(b - a for _, a, b in batch) for batch in window_batches([windows_per_image] * images, batch_size)]
    g = torch.Generator().manual_seed(0)
    ready = torch.randn(2 * max(sizes), 3, model.image_size, model.image_size, generator=g).to(model.device)
    model.encode_image_batch(ready[:2])  # warm-up
    u0, s0 = cpu_seconds()
    t0 = time.perf_counter()
    for n in sizes:
        model.encode_image_batch(ready[:2 * n])
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    u1, s1 = cpu_seconds()
    return {"images": images, "cpu_s": (u1 - u0) + (s1 - s0), "wall_s": wall}


def baseline_figures(checkout: Path, args, paths: list[Path]) -> dict:
    """ingest_figures run by another checkout's convis_db, in a subprocess."""
    job = json.dumps({"model": args.model, "pretrained": args.pretrained, "checkout": str(checkout.resolve()),
                      "paths": [str(p) for p in paths], "device": args.device,
                      "precision": args.precision, "batch_size": args.batch_size, "preset": args.preset})
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run([sys.executable, __file__, "--worker", job], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"baseline run in {checkout} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_image(fig: dict, key: str) -> float:
    return fig[key] / fig["images"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default=str(TINY_224), help="open_clip name or config JSON (default: tiny, 224 px)")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--preset", default="paper", choices=["paper", "cpu-fast"])
    ap.add_argument("--images", type=int, default=3, help="images per ingest round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None, help="windows per encoder batch (default: the device's)")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. main) whose ingest runs beside this one")
    ap.add_argument("--spinning-threads", action="store_true",
                    help="leave OpenMP/OpenBLAS idle threads spinning (the libraries' default), in both checkouts; "
                         "by default they sleep, as under the convis-db program")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # a baseline subprocess: one measured ingest with whatever convis_db PYTHONPATH gives
        import hashlib

        import torch

        job = json.loads(args.worker)
        own = CACHE / ("baseline-" + hashlib.sha256(job["checkout"].encode()).hexdigest()[:12])
        db = base_db(job["model"], job["pretrained"], torch.device(job["device"]), own)
        fig = ingest_figures(db, [Path(p) for p in job["paths"]], job["device"], job["precision"],
                             job["batch_size"], job["preset"])
        print(json.dumps(fig))
        return

    import torch

    from convis_db.engine.explainer import default_batch_size
    from convis_db.engine.settings import CPU_FAST, PAPER
    from convis_db.engine.windows import WindowGrid, working_size
    from convis_db.models.clip import load_model
    from convis_db.models.precision import resolve_precision
    from convis_db.models.registry import resolve_model

    device = torch.device(args.device)
    args.precision = resolve_precision(args.precision, device)
    args.batch_size = args.batch_size or default_batch_size(device)
    header(f"bench_throughput: model {args.model} / {args.pretrained}, device {device}, precision {args.precision}, "
           f"preset {args.preset}, batch {args.batch_size} windows, torch threads {torch.get_num_threads()}; "
           f"shared machine: compare figures of one run; thread waits (both checkouts): "
           f"{'; '.join(THREAD_WAITS) or 'the libraries defaults, spinning'}")
    settings = {"paper": PAPER, "cpu-fast": CPU_FAST}[args.preset]
    ww, wh = working_size(640, 480, settings.max_pixels)
    windows = WindowGrid(wh, ww, settings.stride, settings.small, settings.large, settings.layout).n_windows
    t = time.perf_counter()
    db = base_db(args.model, args.pretrained, device)
    print(f"database with T and the definitions: {db} ({time.perf_counter() - t:.1f} s)")
    folder = Path(tempfile.mkdtemp(prefix="bench-throughput-images-"))
    paths = make_images(folder, args.images)
    model = load_model(resolve_model(args.model, args.pretrained), device, args.precision)
    print(f"{len(paths)} images of 640 x 480 -> {ww} x {wh} working pixels, {windows} windows "
          f"({2 * windows} patch encodings) each")
    rows = []
    for r in range(1, args.rounds + 1):
        bare = bare_encode_figures(model, windows, args.batch_size, len(paths))
        ours = ingest_figures(db, paths, args.device, args.precision, args.batch_size, args.preset)
        base = baseline_figures(args.baseline, args, paths) if args.baseline else None
        rows.append((bare, ours, base))
        line = (f"round {r}: bare encoder {per_image(bare, 'cpu_s'):.2f} CPU-s/img; this checkout: ingest "
                f"{per_image(ours, 'cpu_s'):.2f} CPU-s/img (system {per_image(ours, 'sys_s'):.2f}), "
                f"{per_image(ours, 'wall_s'):.2f} s/img wall")
        if base:
            line += (f"; baseline: ingest {per_image(base, 'cpu_s'):.2f} CPU-s/img (system "
                     f"{per_image(base, 'sys_s'):.2f}), {per_image(base, 'wall_s'):.2f} s/img wall")
        print(line, flush=True)

    def total(i: int, key: str) -> float:
        figs = [row[i] for row in rows]
        return sum(f[key] for f in figs) / sum(f["images"] for f in figs)

    bare_cpu = total(0, "cpu_s")
    results = {"device": str(device), "model": args.model, "precision": args.precision, "preset": args.preset,
               "windows_per_image": windows, "bare_encode_cpu_s_per_image": bare_cpu,
               "bare_encode_wall_s_per_image": total(0, "wall_s")}
    for name, i in (("this", 1), ("baseline", 2)):
        if rows[0][i] is None:
            continue
        cpu = total(i, "cpu_s")
        stages = {}
        for row in rows:
            for k, v in row[i]["stages_s"].items():
                stages[k] = stages.get(k, 0.0) + v
        n_img = sum(row[i]["images"] for row in rows)
        results[name] = {"ingest_cpu_s_per_image": cpu, "system_cpu_s_per_image": total(i, "sys_s"),
                         "around_encoder_cpu_s_per_image": cpu - bare_cpu, "wall_s_per_image": total(i, "wall_s"),
                         "images_per_s": 1 / total(i, "wall_s"),
                         "stage_wall_s_per_image": {k: v / n_img for k, v in stages.items()},
                         "peak_anon_mb": max(row[i]["peak_anon"] for row in rows) / 2**20,
                         "peak_rss_mb": max(row[i]["peak_rss"] for row in rows) / 2**20}
        f = results[name]
        print(f"RESULT {name}: ingest {cpu:.2f} CPU-s/img - bare encoder {bare_cpu:.2f} = around the encoder "
              f"{f['around_encoder_cpu_s_per_image']:.2f} CPU-s/img (target <= 1.0); system {f['system_cpu_s_per_image']:.2f}; "
              f"{f['images_per_s']:.2f} images/s; peak memory anon {f['peak_anon_mb']:.0f} MB, rss {f['peak_rss_mb']:.0f} MB")
        print(f"RESULT {name} stage wall s/img: " + ", ".join(f"{k} {v:.3f}" for k, v in f["stage_wall_s_per_image"].items()))
    if "baseline" in results:
        a, b = results["this"], results["baseline"]
        print(f"RATIO baseline / this: ingest CPU-s {b['ingest_cpu_s_per_image'] / a['ingest_cpu_s_per_image']:.2f}x, "
              f"around the encoder {b['around_encoder_cpu_s_per_image'] / max(a['around_encoder_cpu_s_per_image'], 1e-9):.2f}x, "
              f"wall {b['wall_s_per_image'] / a['wall_s_per_image']:.2f}x")
    if device.type == "cuda":
        f = results["this"]
        print(f"GPU: {f['images_per_s']:.2f} images/s; host {f['ingest_cpu_s_per_image']:.2f} CPU-s per image over "
              f"{f['wall_s_per_image']:.2f} s wall per image; bare encoder {results['bare_encode_wall_s_per_image']:.2f} "
              f"s/img on the device -> {'device' if results['bare_encode_wall_s_per_image'] > 0.5 * f['wall_s_per_image'] else 'host'}"
              "-bound (encoder wall over half the ingest wall means the device)")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "bench_throughput.json").write_text(json.dumps(results, indent=2, default=float))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

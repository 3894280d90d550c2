"""Precision and the cost of the pipeline around the image encoder, measured as ratios in one process.

    python benchmarks/bench_precision.py overhead --preset cpu-fast --images 3 --rounds 2  # (1) ingest / bare loop
    python benchmarks/bench_precision.py overhead --preset paper --images 1 --rounds 1
    python benchmarks/bench_precision.py compare --preset cpu-fast               # (2) bf16 vs fp32: speed, agreement
    python benchmarks/bench_precision.py init                                    # (3) 7,343 definitions per precision
    python benchmarks/bench_precision.py variants                                # ways of running bf16 here

(1) windows/s of `ingest` end to end (decode threads, cut + resize, encode, rank, aggregate, writer
    thread, concept index) over windows/s of a bare `encode_image_batch` loop on ready tensors (the
    same images' patches, cut beforehand) of the same batch size, same precision, same process; bare forwards and ingests alternate in rounds, so
    load from other processes on a shared machine hits both alike.
(2) the engine on the bundled images (convis_db/resources/images, --images of them) in fp32 and in bf16,
    side by side: share of windows whose top-1 synset is unchanged, share whose top-10 is identical (list
    and set), mean |delta rank_sim| over each window's fp32 top-K, the largest change of a map peak over
    every concept, max |delta| of three concepts' maps, and the encode-stage speed ratio. Where the CPU
    has no native bf16 (the library refuses bf16 for ingest there) the agreement is measured with
    emulated bf16 (autocast rounds inputs and weights alike; accumulation may differ) and the speed
    ratio says SKIP; `--force` times the slow emulated path too; `--low fp32` is a dry run (fp32
    against a second fp32 model: agreement 1, changes 0).
(3) encode_text of every definition of the physical-objects T, per precision (same forcing).
`variants`: one forward in fp32, autocast bf16, model.to(bfloat16) and autocast fp16, to see why.

Defaults: ViT-B-32 with seeded random weights (`--pretrained none`): the same cost as real weights;
agreement with real weights may differ.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import make_images
from common import header

import convis_db.models.precision as precision_mod
from convis_db.engine.explainer import ConceptEngine
from convis_db.engine.images import read_image
from convis_db.engine.settings import CPU_FAST, PAPER
from convis_db.ingest import Ingestor
from convis_db.init_db import initialise
from convis_db.models.clip import load_model
from convis_db.models.device import resolve_device
from convis_db.models.registry import resolve_model
from convis_db.store.db import connect
from convis_db.store.hierarchy_store import (
    descendant_ids,
    find_synset_name,
    load_hierarchy,
)
from convis_db.store.model_store import find_model_id, load_definition_embeddings

CACHE = Path(tempfile.gettempdir()) / "convis-bench-precision"
PRESETS = {"cpu-fast": CPU_FAST, "paper": PAPER}


def force_low_precision() -> None:
    """Let bf16/fp16 run on a CPU without native kernels (the library refuses them there)."""
    precision_mod.cpu_has_native = lambda precision: True


def base_db(spec, device) -> Path:
    """A database with the physical-objects T and the model's fp32 definitions, built once and cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{spec.name}-{spec.pretrained}.duckdb".replace("/", "_")
    t0 = time.perf_counter()
    report = initialise(path, "physical-objects", spec, device, precision="fp32")  # idempotent: resumes a killed build
    if report.embedded_definitions:
        print(f"INIT fp32 (built {path.name}): `init` {time.perf_counter() - t0:.1f} s end to end, hierarchy "
              f"{'built' if report.built_hierarchy else 'stored'}, {report.embedded_definitions} definitions embedded")
    return path


def ready_patches(engine, paths: list[Path], batch: int) -> torch.Tensor:
    """2 x batch normalised patches cut beforehand from the benchmark's own images (small and large of
    each window, as the engine cuts them), so both loops encode the same kind of pixels."""
    from convis_db.engine.windows import PatchCutter

    out: list[torch.Tensor] = []
    while sum(len(t) for t in out) < 2 * batch:
        for path in paths:
            img, grid = engine.working_image(read_image(path).pixels)
            cutter = PatchCutter(img, grid, engine.model.image_size)
            n = grid.n_windows
            out += [cutter.patches(grid.small, 0, n), cutter.patches(grid.large, 0, n)]
    return torch.cat(out)[: 2 * batch].contiguous()


def bare_windows_per_s(model, batch: int, repeat: int, patches: torch.Tensor | None = None) -> tuple[float, list[float]]:
    """Windows/s of encode_image_batch on ready patches: 2 x batch patches per forward."""
    if patches is None:
        g = torch.Generator().manual_seed(0)
        patches = torch.randn(2 * batch, 3, model.image_size, model.image_size, generator=g).to(model.device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        model.encode_image_batch(patches)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times)), times


def cmd_overhead(args, spec, device) -> None:
    """Rounds of [one bare forward of `batch` windows, then `ingest` of a group of images], and a closing
    bare forward, in one process: interleaving puts both under the same load on a shared machine."""
    settings = PRESETS[args.preset]
    precision = precision_mod.resolve_precision(args.precision, device)
    work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    db = work / "ingest.duckdb"
    shutil.copyfile(base_db(spec, device), db)
    paths = make_images(work, args.images * args.rounds, np.random.default_rng(0))
    groups = [paths[i::args.rounds] for i in range(args.rounds)]
    print(f"torch threads {torch.get_num_threads()}; precision {precision}; batch {args.batch_size} windows "
          f"({2 * args.batch_size} patches per forward); preset {args.preset} {settings.as_dict()}; "
          f"{args.rounds} rounds of {args.repeat} bare forward(s) + ingest of {args.images} images")
    bare_w = bare_t = eng_w = eng_t = 0.0
    stages: dict[str, float] = {}
    with Ingestor(db, device=device, settings=settings, batch_size=args.batch_size, precision=precision,
                  decode_threads=2) as ingestor:
        model = ingestor.engine().model            # the ingest's own model, loaded before the clock starts
        ready = ready_patches(ingestor.engine(), paths, args.batch_size)
        model.encode_image_batch(ready[:4])  # warm-up
        for r, group in enumerate(groups, 1):
            rate, times = bare_windows_per_s(model, args.batch_size, args.repeat, ready)
            bare_w += args.batch_size * len(times)
            bare_t += sum(times)
            t = time.perf_counter()
            report = ingestor.run(group)
            secs = time.perf_counter() - t
            eng_w += report.windows
            eng_t += secs
            for k, v in report.timings.items():
                stages[k] = stages.get(k, 0.0) + v
            print(f"round {r}: bare {rate:.2f} windows/s; ingest {report.count('ingested')} images, {report.windows} "
                  f"windows in {secs:.1f} s = {report.windows / secs:.2f} windows/s")
        rate, times = bare_windows_per_s(model, args.batch_size, args.repeat, ready)  # closing: bare, ingest, ..., bare
        bare_w += args.batch_size * len(times)
        bare_t += sum(times)
        print(f"closing bare forward: {rate:.2f} windows/s")
    bare, eng = bare_w / bare_t, eng_w / eng_t
    print(f"bare loop: {bare_w:.0f} windows in {bare_t:.1f} s = {bare:.2f} windows/s")
    print(f"ingest end to end: {eng_w:.0f} windows in {eng_t:.1f} s = {eng:.2f} windows/s")
    print("ingest stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f"; outside the encoder: {100 * (1 - stages.get('encode', 0.0) / eng_t):.1f}% of the ingest wall time")
    print(f"RATIO engine (ingest end to end) / bare encode loop = {eng / bare:.3f}   (target >= 0.9)")
    shutil.rmtree(work, ignore_errors=True)


def full_rank_less(emb: np.ndarray, defs: np.ndarray) -> np.ndarray:
    """(W, n) |T| * rank_sim of every synset for every window, straight from the definition: the number
    of synsets whose cosine is strictly smaller."""
    z = emb.astype(np.float64) @ defs.astype(np.float64).T
    sorted_z = np.sort(z, axis=1)
    return np.stack([np.searchsorted(sorted_z[i], z[i], side="left") for i in range(len(z))])


def cmd_compare(args, spec, device) -> None:
    """fp32 against `--low` on the same images: agreement everywhere, speed only where `--low` runs natively.

    On a CPU without native kernels for `--low` the library refuses it for ingest (too slow), but its
    agreement with fp32 can still be measured here: autocast rounds the inputs and weights of every matrix
    product to bf16 just as on a native CPU (the emulated kernels may accumulate in another order, so the
    figures are close to, not equal to, a native CPU's); the speed ratio is then SKIPped, not printed."""
    low = args.low
    native = device.type == "cuda" or precision_mod.cpu_has_native(low)
    timed = native or args.force
    if not native:
        force_low_precision()
        print(f"NOTE: this CPU has no native {low} kernels (needs AVX512-BF16 or AMX for bf16; found "
              f"{precision_mod._cpu_features()}): agreement measured with emulated {low}; speed "
              f"{'measured on the slow emulated path (--force)' if args.force else 'SKIPped'}")
    settings = PRESETS[args.preset]
    db = base_db(spec, device)
    con = connect(db)
    defs = load_definition_embeddings(con, find_model_id(con, spec))
    levels = load_hierarchy(con).propagation_levels
    concepts = {c: descendant_ids(con, find_synset_name(con, c)) for c in ("dog.n.01", "animal.n.01", "entity.n.01")}
    con.close()
    folder = Path(__file__).resolve().parents[1] / "convis_db/resources/images"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))[: args.images]
    print(f"torch threads {torch.get_num_threads()}; native {low}: {native}; preset {args.preset}; "
          f"images {', '.join(f.name for f in files)}")
    engines = {key: ConceptEngine(load_model(spec, device, prec), defs, levels, settings, batch_size=args.batch_size)
               for key, prec in (("fp32", "fp32"), ("low", low))}  # --low fp32: a second, separate fp32 model
    for engine in engines.values():
        engine.model.encode_image_batch(torch.zeros(4, 3, engine.model.image_size, engine.model.image_size,
                                                    device=device))  # warm-up
    windows = same_list = same_set = top1 = 0
    peak = self_peak = mean_delta_sum = 0.0
    moved: list[float] = []
    encode = {"fp32": 0.0, "low": 0.0}
    cos = 1.0
    maps: dict[str, float] = {}
    for path in files:
        image = read_image(path, settings.max_pixels)
        x32, xlo = (engines[k].explain_pixels(image.pixels, size=image.size) for k in ("fp32", "low"))
        for k, x in (("fp32", x32), ("low", xlo)):
            encode[k] += x.timings["encode"]
        top10 = min(10, x32.top_ids.shape[1])
        windows += len(x32.top_ids)
        same_list += int(np.sum(np.all(x32.top_ids[:, :top10] == xlo.top_ids[:, :top10], axis=1)))
        same_set += sum(set(a) == set(b) for a, b in zip(x32.top_ids[:, :top10], xlo.top_ids[:, :top10]))
        top1 += int(np.sum(x32.top_ids[:, 0] == xlo.top_ids[:, 0]))
        peak = max(peak, float(np.max(np.abs(x32.scores.score - xlo.scores.score))))
        self_peak = max(self_peak, float(np.max(np.abs(x32.self_scores.score - xlo.self_scores.score))))
        moved.append(float(np.mean((x32.scores.x != xlo.scores.x) | (x32.scores.y != xlo.scores.y))))
        r32, rlo = full_rank_less(x32.embeddings, defs), full_rank_less(xlo.embeddings, defs)
        idx = x32.top_ids.astype(np.int64)
        rows = np.arange(len(idx))[:, None]
        mean_delta_sum += float(np.sum(np.abs(r32[rows, idx] - rlo[rows, idx]).mean(axis=1))) / defs.shape[0]
        cos = min(cos, float(np.min(np.sum(x32.embeddings * xlo.embeddings, axis=1))))
        for c, ids in concepts.items():
            m32 = engines["fp32"].mapper.concept_map(x32.embeddings, x32.grid, ids)
            mlo = engines["low"].mapper.concept_map(xlo.embeddings, xlo.grid, ids)
            maps[c] = max(maps.get(c, 0.0), float(np.max(np.abs(m32 - mlo))))
        print(f"{path.name}: {x32.grid.n_windows} windows; encode fp32 {x32.timings['encode']:.1f} s, {low} "
              f"{xlo.timings['encode']:.1f} s; identical top-10 list {np.mean(np.all(x32.top_ids[:, :top10] == xlo.top_ids[:, :top10], axis=1)):.3f}")
    print(f"TOP-10 per window: identical list in {same_list / windows:.3f}, identical set in {same_set / windows:.3f} "
          f"of {windows} windows ({len(files)} images)")
    print(f"MAP PEAKS over all {len(defs)} concepts: largest change of a peak {peak:.6f} (max_rank_sim), "
          f"{self_peak:.6f} (rank_sim alone); peak location moved for {np.mean(moved):.3f} of concepts")
    print(f"AGREEMENT top-1 synset unchanged: {top1 / windows:.3f} of {windows} windows; mean |delta rank_sim| over "
          f"the fp32 top-{engines['fp32'].settings.top_k}: {mean_delta_sum / windows:.5f}; min cosine(fp32, {low}) of a window "
          f"embedding: {cos:.5f}")
    for c, delta in maps.items():
        print(f"MAP {c}: max |delta| {delta:.5f}")
    if timed:
        print(f"SPEED {low}/fp32 (encode stage) = {encode['fp32'] / encode['low']:.2f}x   (target >= 1.6x)")
    else:
        print(f"SPEED SKIP: no native {low} here (a speed ratio of the emulated path says nothing about a native CPU)")


def cmd_init(args, spec, device) -> None:
    native = precision_mod.cpu_has_native("bf16")
    if args.force:
        force_low_precision()
    db = base_db(spec, device)
    con = connect(db)
    definitions = [r[0] for r in con.execute("SELECT definition FROM synsets ORDER BY synset_id").fetchall()]
    con.close()
    print(f"torch threads {torch.get_num_threads()}; {len(definitions)} definitions; "
          f"native bf16 on this CPU: {native} (forced: {args.force})")
    sample = definitions[:: args.every] if args.every > 1 else definitions
    out = {}
    for prec in args.precisions.split(","):
        model = load_model(spec, device, prec)
        model.encode_text(definitions[:8])  # warm-up
        t = time.perf_counter()
        out[prec] = model.encode_text(sample, batch_size=256)
        secs = time.perf_counter() - t
        full = secs * len(definitions) / len(sample)
        note = "" if len(sample) == len(definitions) else f" (every {args.every}th: {len(sample)} texts in {secs:.1f} s)"
        print(f"INIT {prec}: encode_text of {len(definitions)} definitions {full:.1f} s{note}")
    if "fp32" in out:
        for prec, emb in out.items():
            if prec != "fp32":
                cos = np.sum(out["fp32"] * emb, axis=1)
                print(f"{prec} vs fp32 definition embeddings: min cosine {cos.min():.5f}, mean {cos.mean():.5f}")


def cmd_variants(args, spec, device) -> None:
    """Why low precision is slow or fast here: one forward of `--patches` patches per way of running it."""
    import contextlib

    print(f"torch threads {torch.get_num_threads()}; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"oneDNN native bf16 {precision_mod.cpu_has_native('bf16')}, fp16 {precision_mod.cpu_has_native('fp16')}")
    force_low_precision()
    base = load_model(spec, device, "fp32")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.patches, 3, base.image_size, base.image_size, generator=g).to(device)
    cast = load_model(spec, device, "fp32")
    cast.model.to(torch.bfloat16)
    ways = {
        "fp32": (base.model, x, contextlib.nullcontext),
        "autocast bf16 (what --precision bf16 runs)": (base.model, x,
                                                        lambda: torch.autocast(device.type, dtype=torch.bfloat16)),
        "model.to(bfloat16)": (cast.model, x.bfloat16(), contextlib.nullcontext),
        "autocast fp16": (base.model, x, lambda: torch.autocast(device.type, dtype=torch.float16)),
    }
    ref = None
    for name, (model, inputs, ctx) in ways.items():
        with torch.inference_mode(), ctx():
            model.encode_image(inputs[:1])  # warm-up
            t = time.perf_counter()
            feats = model.encode_image(inputs).float()
            secs = time.perf_counter() - t
        feats = torch.nn.functional.normalize(feats, dim=-1)
        ref = feats if ref is None else ref
        cos = float((feats * ref).sum(-1).min())
        print(f"VARIANT {name}: {args.patches / secs:.2f} patches/s; min cosine to fp32 {cos:.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "compare", "init", "variants"])
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--preset", default="cpu-fast", choices=list(PRESETS))
    ap.add_argument("--precision", default="auto", help="overhead: the precision of both loops")
    ap.add_argument("--low", default="bf16", choices=["bf16", "fp16", "fp32"],
                    help="compare: the precision set beside fp32 (fp32: a dry run of the comparison)")
    ap.add_argument("--precisions", default="fp32,bf16", help="init: precisions to time")
    ap.add_argument("--every", type=int, default=1, help="init: time every Nth definition only, scaled to all")
    ap.add_argument("--images", type=int, default=3,
                    help="overhead: images ingested per round; compare: how many of resources/images (4 there)")
    ap.add_argument("--rounds", type=int, default=2, help="overhead: rounds of bare forwards + ingest")
    ap.add_argument("--batch-size", type=int, default=128, help="windows per batch (ingest's CPU default)")
    ap.add_argument("--repeat", type=int, default=1, help="overhead: bare forwards per round")
    ap.add_argument("--patches", type=int, default=8, help="variants: patches per forward")
    ap.add_argument("--force", action="store_true",
                    help="run bf16/fp16 on a CPU without native kernels (compare: also time that slow path)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    spec = resolve_model(args.model, args.pretrained)
    header(f"bench_precision {args.what}: model {spec.label}, device {device} (shared machine: compare ratios)")
    {"overhead": cmd_overhead, "compare": cmd_compare, "init": cmd_init,
     "variants": cmd_variants}[args.what](args, spec, device)


if __name__ == "__main__":
    main()

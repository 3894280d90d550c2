"""Engine speed: the reference-style loop vs the batched engine, per-stage breakdown, queries, bytes.

In one run, on one device, with one model:
  (a) the reference-style loop (benchmarks/reference_loop.py) for ONE concept's map of one image;
  (b) the engine on the same image for EVERY concept, per stage (decode, cut+resize, encode, rank,
      aggregate, write), then over --images images for windows/s and images/s;
  (c) queries from the stored data: one concept's map from the DB, and `search`.
It prints the ratios (a)/(b) and the bytes stored per image.

    python benchmarks/bench_engine.py --device cpu                      # tiny model, small images
    python benchmarks/bench_engine.py --device cuda --model ViT-B-32 --pretrained openai --preset paper

CPU default: the test suite's tiny random ViT and ~40,000-pixel images, so it finishes in minutes;
the figures measure the machinery, not a real CLIP (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TINY_CONFIG, header, timeit  # noqa: E402
from reference_loop import reference_concept_map  # noqa: E402

from convis_db.engine.explainer import ConceptEngine  # noqa: E402
from convis_db.engine.images import read_image  # noqa: E402
from convis_db.engine.settings import CPU_FAST, PAPER, Settings  # noqa: E402
from convis_db.engine.windows import working_size  # noqa: E402
from convis_db.init_db import initialise  # noqa: E402
from convis_db.models.clip import load_model  # noqa: E402
from convis_db.models.device import resolve_device  # noqa: E402
from convis_db.models.registry import resolve_model  # noqa: E402
from convis_db.query.maps import MapService  # noqa: E402
from convis_db.query.search import search_images  # noqa: E402
from convis_db.store.concept_index import refresh_concept_index  # noqa: E402
from convis_db.store.db import connect  # noqa: E402
from convis_db.store.hierarchy_store import descendant_ids, find_synset_name, load_hierarchy  # noqa: E402
from convis_db.store.image_store import get_image, write_image  # noqa: E402
from convis_db.store.model_store import find_model_id, load_definition_embeddings  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "convis_db" / "resources" / "images"


def make_images(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    """The four sample photos, then generated JPEGs (blocks and noise) up to `count`."""
    paths = sorted(SAMPLE.glob("*.jpg")) + sorted(SAMPLE.glob("*.png"))
    out = list(paths[:count])
    for i in range(count - len(out)):
        arr = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        arr[100:300, 150:400] = rng.integers(0, 255, 3)
        p = folder / f"gen_{i:04d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        out.append(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--model", default=str(TINY_CONFIG))
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--preset", default="bench", choices=["bench", "cpu-fast", "paper"],
                    help="bench: 40,000 px, stride 16 (CPU default); cpu-fast: 50,000 px, stride 32; paper: 300,000 px, stride 16")
    ap.add_argument("--images", type=int, default=12, help="Images for the throughput run.")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--concept", default="dog.n.01")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    settings = {"bench": Settings(max_pixels=40_000, stride=16, small=64, large=128), "cpu-fast": CPU_FAST,
                "paper": PAPER}[args.preset]
    preset = settings.as_dict()
    header(f"bench_engine: model {args.model} / {args.pretrained}, device {device}, preset {args.preset} {preset}")
    tmp = tempfile.TemporaryDirectory()
    db = Path(tmp.name) / "bench.duckdb"
    spec = resolve_model(args.model, args.pretrained)
    t0 = time.perf_counter()
    initialise(db, "physical-objects", spec, device)
    print(f"init (hierarchy + {args.model} definition embeddings): {time.perf_counter() - t0:.1f} s")
    con = connect(db, write=True)
    model_id = find_model_id(con, spec)
    defs = load_definition_embeddings(con, model_id)
    hierarchy = load_hierarchy(con)
    model = load_model(spec, device)
    engine = ConceptEngine(model, defs, hierarchy.propagation_levels, settings, batch_size=args.batch_size)
    sid = find_synset_name(con, args.concept)
    desc = descendant_ids(con, sid)
    n_syn = defs.shape[0]
    results: dict = {"device": str(device), "model": spec.label, "preset": preset, "synsets": n_syn}

    # (b) the engine on one image, per stage.
    image_path = SAMPLE / "dogtigercat.png"
    decode = timeit(lambda: read_image(image_path), repeat=3)
    decoded = read_image(image_path)
    engine.explain_pixels(decoded.pixels)  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    exp = engine.explain_pixels(decoded.pixels)
    engine_secs = time.perf_counter() - t
    t = time.perf_counter()
    write_image(con, exp, decoded.sha256, str(image_path), model_id, settings)
    write_secs = time.perf_counter() - t
    stages = dict(exp.timings, decode=decode["median_ms"] / 1000, write=write_secs)
    one_image_total = engine_secs + stages["decode"] + write_secs
    results["windows_per_image"] = exp.grid.n_windows
    results["engine_one_image_all_concepts_s"] = one_image_total
    results["engine_stages_s"] = stages
    print(f"\n(b) engine, one image ({decoded.width}x{decoded.height} -> {exp.grid.width}x{exp.grid.height}, "
          f"{exp.grid.n_windows} windows, {2 * exp.grid.n_windows} patch encodings), every one of {n_syn} concepts:")
    for k in ("decode", "cut_resize", "encode", "rank", "aggregate", "write"):
        print(f"    {k:12s} {stages.get(k, 0.0) * 1000:9.1f} ms")
    print(f"    {'total':12s} {one_image_total * 1000:9.1f} ms   ({exp.grid.n_windows / engine_secs:.0f} windows/s)")

    # (a) the reference-style loop for ONE concept's map of the same image.
    if not args.skip_reference:
        ww, wh = working_size(decoded.width, decoded.height, settings.max_pixels)
        working = Image.fromarray(decoded.pixels).resize((ww, wh), Image.BICUBIC)
        t = time.perf_counter()
        reference_concept_map(model, defs, desc, working, settings.stride, settings.small, settings.large)
        ref_secs = time.perf_counter() - t
        results["reference_one_concept_s"] = ref_secs
        results["ratio_one_concept"] = ref_secs / one_image_total
        results["ratio_all_concepts"] = ref_secs * n_syn / one_image_total
        print(f"\n(a) reference-style loop, one concept ({args.concept}) on the same image: {ref_secs:.2f} s")
        print(f"    ratio (a)/(b) for one concept's map:        {results['ratio_one_concept']:12.1f} x")
        print(f"    ratio for all {n_syn} concepts ((a) x |T| / (b)): {results['ratio_all_concepts']:12.0f} x")

    # Throughput over a small collection, DB writes included.
    rng = np.random.default_rng(0)
    paths = make_images(Path(tmp.name), args.images, rng)
    n_windows = 0
    timer_totals: dict[str, float] = {}
    t = time.perf_counter()
    for p in paths:
        d = read_image(p)
        if get_image_exists(con, d.sha256):
            continue
        e = engine.explain_pixels(d.pixels)
        write_image(con, e, d.sha256, str(p), model_id, settings)
        n_windows += e.grid.n_windows
        for k, v in e.timings.items():
            timer_totals[k] = timer_totals.get(k, 0.0) + v
    refresh_concept_index(con)
    secs = time.perf_counter() - t
    count = con.execute("SELECT count(*) FROM images").fetchone()[0] - 1
    results["throughput"] = {"images": count, "seconds": secs, "images_per_s": count / secs,
                             "windows_per_s": n_windows / secs}
    print(f"\nthroughput: {count} images in {secs:.1f} s = {count / secs:.2f} images/s, "
          f"{n_windows / secs:.0f} windows/s (decode, encode, rank, aggregate and DB writes)")
    con.execute("CHECKPOINT")
    con.close()

    # Bytes per image: file growth from the hierarchy-only database.
    size = db.stat().st_size
    ro = connect(db)
    n_images = ro.execute("SELECT count(*) FROM images").fetchone()[0]
    base_rows = ro.execute("SELECT (SELECT count(*) FROM windows), (SELECT count(*) FROM image_scores), "
                           "(SELECT count(*) FROM window_concepts)").fetchone()
    results["db_bytes"] = size
    results["rows"] = dict(zip(("windows", "image_scores", "window_concepts"), base_rows))

    # (c) queries from stored data.
    service = MapService(ro, torch.device("cpu"))
    stored = get_image(ro, "1")
    q_map = timeit(lambda: service.for_stored(stored, args.concept), repeat=5)
    q_search = timeit(lambda: search_images(ro, args.concept, 0.0, 20), repeat=5)
    results["query_map_ms"] = q_map["median_ms"]
    results["query_search_ms"] = q_search["median_ms"]
    ro.close()
    empty = Path(tmp.name) / "empty.duckdb"
    initialise(empty, "physical-objects", spec, device)
    per_image = (size - empty.stat().st_size) / max(n_images, 1)
    results["bytes_per_image"] = per_image
    print(f"\n(c) one concept's map from the DB (CPU): {q_map['median_ms']:.1f} ms; search over {n_images} images: "
          f"{q_search['median_ms']:.1f} ms")
    print(f"bytes stored per image: {per_image / 1e6:.2f} MB ({exp.grid.n_windows} windows x "
          f"{model.embed_dim} float32 embedding + {n_syn} concept scores + top-{settings.top_k} per window)")
    if args.json:
        print(json.dumps(results, default=float))


def get_image_exists(con, sha: str) -> bool:
    return con.execute("SELECT count(*) FROM images WHERE sha256 = ?", [sha]).fetchone()[0] > 0


if __name__ == "__main__":
    main()

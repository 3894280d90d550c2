"""Ray ingest vs single-process ingest of the same small collection on this machine.

Both ingest the same generated images with the same model and settings into copies of one
initialised database. The Ray run starts a local cluster first (timed apart), uses one actor with
all the machine's CPUs (the fair comparison on a small machine; a cluster adds actors), and merges
the shards as they finish. Prints seconds and the overhead ratio (Ray / single process).

    python benchmarks/bench_ray.py --model benchmarks/configs/probe-512.json --images 8 --shard-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header  # noqa: E402

from convis_db.engine.settings import CPU_FAST, PAPER  # noqa: E402
from convis_db.ingest import Ingestor  # noqa: E402
from convis_db.init_db import initialise  # noqa: E402
from convis_db.models.registry import resolve_model  # noqa: E402
from convis_db.store.db import connect  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent / "configs" / "probe-512.json"))
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--preset", default="paper", choices=["paper", "cpu-fast"])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = PAPER if args.preset == "paper" else CPU_FAST
    header(f"bench_ray: {args.model} / {args.pretrained}, {args.preset} {settings.as_dict()}, {args.images} images, "
           f"shards of {args.shard_size}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        spec = resolve_model(args.model, args.pretrained)
        base = tmp / "base.duckdb"
        initialise(base, "physical-objects", spec, torch.device("cpu"), batch_size=1024)
        folder = tmp / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(folder / f"img_{i:03d}.png")
        plain_db, ray_db = tmp / "plain.duckdb", tmp / "ray.duckdb"
        shutil.copyfile(base, plain_db)
        shutil.copyfile(base, ray_db)

        t = time.perf_counter()
        with Ingestor(plain_db, device=torch.device("cpu"), settings=settings, batch_size=args.batch_size) as ing:
            report = ing.run([folder])
        plain_s = time.perf_counter() - t
        assert report.count("ingested") == args.images
        print(f"single process: {plain_s:.1f} s ({args.images / plain_s:.3f} images/s)", flush=True)

        import ray

        from convis_db.distributed.ray_ingest import ray_ingest

        cpus = os.cpu_count() or 1
        t = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        init_s = time.perf_counter() - t
        t = time.perf_counter()
        rep = ray_ingest(ray_db, [folder], shards_dir=tmp / "shards", shard_size=args.shard_size, workers=1,
                         batch_size=args.batch_size, settings=settings)
        ray_s = time.perf_counter() - t
        ray.shutdown()
        assert rep.count("ingested") == args.images, rep.summary()
        print(f"ray cluster start: {init_s:.1f} s", flush=True)
        print(f"ray ingest (1 actor x {cpus} CPUs, {rep.shards_total} shards, merge included): {ray_s:.1f} s "
              f"({args.images / ray_s:.3f} images/s)")
        print(f"overhead ratio ray / single process: {ray_s / plain_s:.2f} x without the cluster start, "
              f"{(ray_s + init_s) / plain_s:.2f} x with it")
        shard_bytes = sum(f.stat().st_size for f in (tmp / "shards").rglob("*") if f.is_file())
        print(f"shards: {shard_bytes / args.images / 1e6:.2f} MB per image (Parquet, scores once, no concept_index)")
        merged_db = tmp / "merged.duckdb"
        shutil.copyfile(base, merged_db)
        from convis_db.distributed.shards import merge_folder

        con = connect(merged_db, write=True)
        t = time.perf_counter()
        merge_folder(con, tmp / "shards")
        merge_s = time.perf_counter() - t
        con.close()
        print(f"merge of the shards into a fresh copy (convis-db merge): {merge_s:.1f} s = "
              f"{args.images / merge_s:.2f} images/s, concept index included")
        q = "SELECT i.path, s.synset_id, s.score, s.self_score FROM image_scores s JOIN images i USING (image_id) ORDER BY 1, 2"
        same = connect(plain_db).execute(q).fetchall() == connect(ray_db).execute(q).fetchall()
        print(f"scores equal: {same}")
        if args.json:
            print(json.dumps({"plain_s": plain_s, "ray_init_s": init_s, "ray_s": ray_s, "images": args.images,
                              "ratio": ray_s / plain_s, "ratio_with_init": (ray_s + init_s) / plain_s, "equal": same,
                              "shard_bytes_per_image": shard_bytes / args.images, "merge_s": merge_s}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

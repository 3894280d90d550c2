"""Bytes stored per image for each `init --embeddings` choice, at the paper's settings.

One database (hierarchy + definitions) is built once and copied per choice; the same explanations
(computed once) are written into each with write_image, the file is checkpointed, and its growth
over the empty copy is divided by the images. Also times one concept's map from stored data per
choice (float16 is decoded back to float32; none re-encodes the image file with the model).

    python benchmarks/bench_storage.py --model benchmarks/configs/probe-512.json --images 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, timeit  # noqa: E402

from convis_db.engine.explainer import ConceptEngine  # noqa: E402
from convis_db.engine.images import read_image  # noqa: E402
from convis_db.engine.settings import PAPER  # noqa: E402
from convis_db.init_db import initialise  # noqa: E402
from convis_db.models.clip import load_model  # noqa: E402
from convis_db.models.registry import resolve_model  # noqa: E402
from convis_db.query.maps import MapService  # noqa: E402
from convis_db.store.concept_index import refresh_concept_index  # noqa: E402
from convis_db.store.db import connect  # noqa: E402
from convis_db.store.hierarchy_store import load_hierarchy  # noqa: E402
from convis_db.store.image_store import EMBEDDING_CHOICES, get_image, set_embedding_storage, write_image  # noqa: E402
from convis_db.store.model_store import find_model_id, load_definition_embeddings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent / "configs" / "probe-512.json"))
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--concept", default="dog.n.01")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = PAPER
    header(f"bench_storage: {args.model} / {args.pretrained}, paper settings {PAPER.as_dict()}, top_k {settings.top_k}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        spec = resolve_model(args.model, args.pretrained)
        base = tmp / "base.duckdb"
        initialise(base, "physical-objects", spec, torch.device("cpu"), batch_size=1024)
        con = connect(base, write=True)
        con.execute("CHECKPOINT")
        model_id = find_model_id(con, spec)
        engine = ConceptEngine(load_model(spec, torch.device("cpu")), load_definition_embeddings(con, model_id),
                               load_hierarchy(con).propagation_levels, settings, batch_size=256)
        con.close()
        rng = np.random.default_rng(0)
        explained = []
        for i in range(args.images):  # 640 x 480 (4:3): 632 x 474 working pixels, 40 x 30 = 1,200 windows
            small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            path = tmp / f"img_{i}.png"
            Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(path)
            decoded = read_image(path)
            t = time.perf_counter()
            explained.append((path, decoded, engine.explain_pixels(decoded.pixels)))
            print(f"  explained {path.name}: {explained[-1][2].grid.n_windows} windows in {time.perf_counter() - t:.1f} s",
                  flush=True)
        empty = base.stat().st_size
        results = {"model": spec.label, "embed_dim": engine.model.embed_dim, "synsets": engine.n,
                   "windows_per_image": explained[0][2].grid.n_windows, "images": args.images, "choices": {}}
        for storage in EMBEDDING_CHOICES:
            db = tmp / f"{storage}.duckdb"
            shutil.copyfile(base, db)
            con = connect(db, write=True)
            set_embedding_storage(con, storage)
            for path, decoded, exp in explained:
                write_image(con, exp, decoded.sha256, str(path), model_id, settings)
            refresh_concept_index(con)
            con.execute("CHECKPOINT")
            con.close()
            per_image = (db.stat().st_size - empty) / args.images
            ro = connect(db)
            service = MapService(ro, torch.device("cpu"))
            stored = get_image(ro, "1")
            q = timeit(lambda service=service, stored=stored: service.for_stored(stored, args.concept), repeat=3)
            ro.close()
            results["choices"][storage] = {"bytes_per_image": per_image, "map_ms": q["median_ms"]}
            print(f"{storage:8s} {per_image / 1e6:6.2f} MB per image; one concept's map from the DB "
                  f"{q['median_ms']:.0f} ms" + (" (re-encodes the file)" if storage == "none" else ""), flush=True)
        f32 = results["choices"]["float32"]["bytes_per_image"]
        for storage in EMBEDDING_CHOICES:
            print(f"{storage:8s} {results['choices'][storage]['bytes_per_image'] / f32:5.2f} x float32")
        if args.json:
            print(json.dumps(results))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

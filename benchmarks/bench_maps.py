"""Many concept maps of one stored image: the map service (each image's window similarities kept,
rows sorted after a few concepts) against a map per call from the stored embeddings (one matrix
product and a full pass over T per concept, what each `map` call did before the one map service).

    python benchmarks/bench_maps.py [--db DB] [--concepts 40]

Without --db it builds one in a temporary folder: the default vocabulary (physical objects, ~7k
synsets) with the tiny random model of tests/data/tiny-clip.json and one generated 640x480 image
ingested with the paper's settings (stride 16, 300,000 px: about 1,100 windows). The maps are
checked equal before anything is timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY_CONFIG, header, timeit  # noqa: E402

import convis_db  # noqa: E402
from convis_db.query.maps import MapService  # noqa: E402


def _build(folder: Path) -> Path:
    db = folder / "maps.duckdb"
    rng = np.random.default_rng(0)
    picture = folder / "scene.png"
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(picture)
    with convis_db.create(db, model=str(TINY_CONFIG), pretrained="none", device="cpu") as created:
        created.ingest([picture])
    return db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="a database holding at least one image (default: build one)")
    ap.add_argument("--concepts", type=int, default=40, help="concepts mapped on the image")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    header("concept maps of one stored image")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.db) if args.db else _build(Path(tmp))
        with convis_db.open(path, device="cpu") as db:
            image = db.images()[0]
            from convis_db.store.image_store import get_image, load_window_embeddings

            stored = get_image(db.con, str(image.image_id))
            # The top of T, as the explorer's tree opens it: broad concepts with many descendants.
            names = [r[0] for r in db.sql("SELECT name FROM synsets ORDER BY depth, name LIMIT ?",
                                          [args.concepts]).fetchall()]
            service = db.map_service()
            mapper = service.mapper(stored.model_id)

            def per_call():  # a fresh product and pass over T per concept
                emb = load_window_embeddings(db.con, stored.image_id)
                return [mapper.concept_map(emb, stored.grid, service.concept_ids(n)[1]) for n in names]

            def one_service():  # a new service per image: one product, rows sorted after a few concepts
                fresh = MapService(db.con, db.device, profile=db.profile, hierarchy=db.hierarchy)
                return [fresh.for_stored(stored, n).saliency for n in names]

            for a, b in zip(per_call(), one_service()):
                np.testing.assert_array_equal(a, b)
            t_call = timeit(per_call, args.repeat)
            t_service = timeit(one_service, args.repeat)
            print(f"image {stored.image_id}: {stored.n_windows} windows, |T| = {db.profile.n_synsets}, "
                  f"{len(names)} concepts")
            print(f"per call (product per concept):   {t_call['median_ms']:8.1f} ms median, {t_call['min_ms']:8.1f} min")
            print(f"map service (one product, sorted): {t_service['median_ms']:8.1f} ms median, "
                  f"{t_service['min_ms']:8.1f} min")
            print(f"ratio per call / service: {t_call['median_ms'] / t_service['median_ms']:.2f}x (medians, same run)")


if __name__ == "__main__":
    main()

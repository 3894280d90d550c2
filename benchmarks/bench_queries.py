"""Query speed on a generated collection: `search` and `explain` over 10,000 (or 100,000) images' rows.

No model runs: the hierarchy is built from WordNet (physical-objects, ~7,300 synsets), and the
image rows and every image's score for every concept are generated in SQL (random values), which is
what the queries read, with the image-level counts of schema 005. Targets (issue 4, 2-core CPU):
search < 100 ms (by image and by map), explain < 50 ms.

    python benchmarks/bench_queries.py --images 10000
    python benchmarks/bench_queries.py --images 100000 --db /tmp/bench100k.duckdb   # ~15 GB, minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, timeit  # noqa: E402

from convis_db.store.db import connect  # noqa: E402
from convis_db.store.hierarchy_store import write_hierarchy  # noqa: E402
from convis_db.wordnet.hierarchy import build_hierarchy  # noqa: E402
from convis_db.wordnet.source import open_wordnet  # noqa: E402
from convis_db.wordnet.vocab import load_vocabulary  # noqa: E402


#: Multipliers of the generated scores' permutations (coprime with any collection size checked below).
_A, _B, _C, _D = 7919, 104_729, 15_485_863, 32_452_843


def build(db: Path, n_images: int) -> float:
    """Generate the collection in DuckDB with no sort and no Python loop over rows.

    Each (image, synset) gets score 0.9 + 0.1 * (1 - p / N), where p = ((image - 1) * A + synset * B)
    mod N is a permutation of the N images for each synset: so image_scores can be written in image
    order (as ingestion writes it) and concept_index in (synset, score DESC) order, the layout of one
    sorted run after an ingest, both straight from one range each, with equal values in both.
    """
    import math

    if math.gcd(_A, n_images) != 1:
        raise SystemExit(f"--images {n_images} shares a factor with {_A}; pick another size")
    t0 = time.perf_counter()
    con = connect(db, write=True, create=True)
    vocab = load_vocabulary("physical-objects")
    wn = open_wordnet()
    write_hierarchy(con, build_hierarchy(wn, vocab), vocab, wn.get_version())
    n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
    con.execute("""INSERT INTO models (name, pretrained, is_random, config_json, embed_dim, image_size, image_mean, image_std)
                   VALUES ('generated', 'none', true, '{}', 512, 224, [0.5,0.5,0.5], [0.5,0.5,0.5])""")
    con.execute("""INSERT INTO images (sha256, path, model_id, width, height, work_width, work_height, scale, stride,
                        small, large, max_pixels, top_k, grid_rows, grid_cols, n_windows)
                    SELECT sha256(i::VARCHAR), 'generated/' || i || '.jpg', 1, 800, 600, 632, 474, 800.0 / 632, 16, 64,
                           128, 300000, 100, 30, 40, 1200
                    FROM range(1, ? + 1) t(i)""", [n_images])
    N = n_images
    values = f"""0.9 + 0.1 * (1 - (((i - 1) * {_A} + s * {_B}) % {N}) / {N}::DOUBLE) AS score,
                 ((i * 31 + s * 17) % 632)::INT AS work_peak_x, ((i * 13 + s * 7) % 474)::INT AS work_peak_y,
                 0.5 + 0.5 * (((i - 1) * {_C} + s * {_D}) % {N}) / {N}::DOUBLE AS self_score,
                 ((i * 7 + s * 29) % 632)::INT AS work_self_peak_x, ((i * 11 + s * 3) % 474)::INT AS work_self_peak_y,
                 ((i * 37 + s * 11) % {n})::INT AS image_max_rank_less, ((i * 41 + s * 13) % {n})::INT AS image_rank_less"""
    # image order, as ingestion writes it (DuckDB keeps a range's insertion order)
    con.execute(f"""INSERT INTO image_scores BY NAME
                    SELECT i::INT AS image_id, s::INT AS synset_id, {values}
                    FROM (SELECT x // {n} + 1 AS i, x % {n} AS s FROM range(0, {N * n}) t(x))""")
    print(f"  image_scores: {time.perf_counter() - t0:.0f} s", flush=True)
    a_inv = pow(_A, -1, N)
    # (synset, score DESC) order: the k-th best image of synset s has p = k
    con.execute(f"""INSERT INTO concept_index BY NAME
                    SELECT s::INT AS synset_id, i::INT AS image_id, {values}
                    FROM (SELECT s, ((k - (s * {_B}) % {N} + {N}) % {N}) * {a_inv} % {N} + 1 AS i
                          FROM (SELECT x // {N} AS s, x % {N} AS k FROM range(0, {N * n}) t(x)))""")
    con.execute("UPDATE concept_index_state SET indexed_through = ?, runs = 1", [N])
    print(f"  concept_index: {time.perf_counter() - t0:.0f} s", flush=True)
    # Every image has image-level scores (schema 005), so search ranks by image by default as on a new database.
    con.execute("INSERT INTO image_embeddings SELECT i::INT, [0.0]::FLOAT[] FROM range(1, ? + 1) t(i)", [n_images])
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--db", type=Path, help="Reuse or create the generated DB here (default: a temp dir).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    header(f"bench_queries: {args.images} generated images")
    tmp = tempfile.TemporaryDirectory()
    db = args.db or Path(tmp.name) / "bench.duckdb"
    if not db.exists():
        secs = build(db, args.images)
        print(f"built {db} in {secs:.1f} s ({db.stat().st_size / 1e6:.0f} MB)")
    from convis_db.query.explain import explain_image
    from convis_db.query.search import search_images

    con = connect(db)
    n_scores = con.execute("SELECT count(*) FROM image_scores").fetchone()[0]
    concepts = ["dog.n.01", "animal.n.01", "vehicle.n.01", "entity.n.01"]
    results = {"images": args.images, "image_score_rows": n_scores}
    for c in concepts:
        results[f"search {c} (top 20, by image)"] = timeit(lambda c=c: search_images(con, c, 0.0, 20, by="image"))
        results[f"search {c} (top 20, by map)"] = timeit(lambda c=c: search_images(con, c, 0.0, 20, by="map"))
    results["search dog.n.01 --min-score 0.99 (image)"] = timeit(
        lambda: search_images(con, "dog.n.01", 0.99, 20, by="image"))
    results["search dog.n.01 --min-score 0.99 (map)"] = timeit(lambda: search_images(con, "dog.n.01", 0.99, 20, by="map"))
    for level in ("image", "map"):
        results[f"images_with('dog.n.01', 0.99, level := '{level}')"] = timeit(lambda level=level: con.execute(
            "SELECT * FROM images_with('dog.n.01', 0.99, level := ?) LIMIT 20", [level]).fetchall())
    mid = args.images // 2
    results["explain (depth 4, top 3)"] = timeit(lambda: explain_image(con, str(mid), 4, 3))
    results["explain (depth 8, top 5)"] = timeit(lambda: explain_image(con, str(mid), 8, 5))
    con.close()
    for k, v in results.items():
        if isinstance(v, dict):
            print(f"{k:52s} median {v['median_ms']:8.2f} ms   min {v['min_ms']:8.2f} ms")
        else:
            print(f"{k:52s} {v}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()

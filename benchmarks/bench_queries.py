"""Query speed on a generated collection: search, count, regions, explain and `images_with` over 10,000
to 1,000,000 images' rows, cold and warm, with the row groups each query reads.

No model runs: the hierarchy is built from WordNet (physical-objects), and the image rows and their
scores are generated in SQL in schema 013's integers (no sort, no Python loop over rows), in the order
ingestion and the concept index write them. Targets (issues 4 and 24, 2-core CPU): search < 100 ms,
explain < 50 ms; at 1M images each query within 2x of its 100k time, reading only its concept's (or
its image's) row groups.

What is generated at full size and what is not (docs/benchmarks.md says why the figures transfer):

* `--concepts K` (default: every synset of T) gives every image rows for K concepts only: the
  queried ones plus fillers spread evenly over the synset ids. A queried concept has all its N rows,
  as in the full table; the explained images (`full_images`) have all |T| rows.
* `--row-group-size R` writes the score tables in row groups of R rows (default: what convis-db
  writes, store/db.py's ROW_GROUP_SIZE, 1,048,576; DuckDB's own default, which convis-db wrote before
  issue 24, is 122,880). A query's fixed cost grows with the number of row groups of each table it
  scans (DuckDB checks every group's statistics before skipping it), so `--emulate-full [ROWS]`
  picks K = |T| x 2,048 / ROWS and R = 2,048: as many row groups as the full table would have in
  groups of ROWS rows (default convis-db's), at a fiftieth of the rows (1/512 with ROWS 1,048,576).
* The file is created by convis-db (store/db.py: 64 KiB blocks since issue 24).

    python benchmarks/bench_queries.py --images 10000
    python benchmarks/bench_queries.py --images 20000 --db /tmp/full20k.duckdb --scans          # full T, 3 GB
    python benchmarks/bench_queries.py --images 1000000 --emulate-full --db /tmp/emu1m.duckdb --cold --scans
    python benchmarks/bench_queries.py --images 20000 --db /tmp/full20k.duckdb --compare /tmp/full20k_old.duckdb
    python benchmarks/bench_queries.py --images 100000 --emulate-full --db /tmp/emu100k.duckdb \
        --compare /tmp/emu1m.duckdb --compare-images 1000000      # 1M against 100k, side by side
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, timeit  # noqa: E402
from convis_db.store.migration_steps import segment_centres_sql  # noqa: E402

from convis_db.store.concept_index import rebuild_concept_top  # noqa: E402
from convis_db.store.db import ROW_GROUP_SIZE, connect  # noqa: E402
from convis_db.store.hierarchy_store import write_hierarchy  # noqa: E402
from convis_db.store.image_store import concept_peaks_inserts  # noqa: E402
from convis_db.wordnet.hierarchy import build_hierarchy  # noqa: E402
from convis_db.wordnet.source import open_wordnet  # noqa: E402
from convis_db.wordnet.vocab import load_vocabulary  # noqa: E402


#: Multipliers of the generated scores' permutations (coprime with any collection size checked below).
_A, _B, _C, _D = 7919, 104_729, 15_485_863, 32_452_843
#: The concepts the benchmark queries (always generated in full).
QUERIED = ("dog.n.01", "animal.n.01", "vehicle.n.01", "entity.n.01")
#: Rows per row group of the tables convis-db writes (DuckDB's own default is 122,880).
DEFAULT_ROW_GROUP = ROW_GROUP_SIZE
#: The big tables, whose row groups a query must prune.
BIG_TABLES = ("concept_map_terms", "concept_order")  # concept_peaks is a view over the first since schema 022


def full_images(n_images: int) -> list[int]:
    """The images that get rows for every synset of T: the explained ones (warm: the middle one)."""
    return sorted({max(1, n_images // 4), max(1, n_images // 2), max(1, 3 * n_images // 4)})


def chosen_concepts(con: duckdb.DuckDBPyConnection, n_concepts: int | None) -> list[int]:
    """Sorted synset ids: the queried concepts and fillers spread evenly over the ids, K in all."""
    n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
    if n_concepts is None or n_concepts >= n:
        return list(range(n))
    queried = [r[0] for r in con.execute("SELECT synset_id FROM synsets WHERE list_contains(?, name)",
                                         [list(QUERIED)]).fetchall()]
    fillers = [s for s in np.linspace(0, n - 1, max(n_concepts - len(queried), 0)).round().astype(int).tolist()
               if s not in queried]
    return sorted(set(queried) | set(fillers))


def _windows(s: str) -> str:
    """How many windows cover a concept's map peak: 64-80 (the paper's grid covers an inner pixel with
    80), one count per synset so that the concept-ordered copy is sorted by the peak exactly."""
    return f"(64 + {s} % 17)"


def _centre(pixel: str, length: int) -> str:
    """The centre of the map segment that holds `pixel` (SQL), on an axis of `length` working pixels of the
    generated images' lattice (stride 16, large 128, 'origin'): a peak as the engine gives it, which schema
    022 stores as the segment's index."""
    return f"segment_centre(segment_of(({pixel})::INT, 16, 128, 'origin'), {length}, 16, 128, 'origin')"


def _values(n_images: int, n_synsets: int) -> str:
    """concept_peaks' generated columns for image i and synset s, in schema 013's integers. The map
    peak map_sum / (map_windows * |T|) is round(t * w * |T|) / (w * |T|) for t = 0.9 + 0.1 * (1 - p / N),
    where p = ((i - 1) * A + s * B) mod N is a permutation of the N images for each synset, so that the
    concept-ordered copy can be written in (synset, map peak DESC) order straight from a range."""
    N, n = n_images, n_synsets
    return f"""round((0.9 + 0.1 * (1 - (((i - 1) * {_A} + s * {_B}) % {N}) / {N}::DOUBLE)) * {_windows('s')} * {n})::INT
                   AS map_sum, {_windows('s')}::INT AS map_windows,
               {_centre('(i * 31 + s * 17) % 632', 632)} AS work_peak_x, {_centre('(i * 13 + s * 7) % 474', 474)} AS work_peak_y,
               round((0.5 + 0.5 * (((i - 1) * {_C} + s * {_D}) % {N}) / {N}::DOUBLE) * {_windows('(s + 5)')} * {n})::INT
                   AS self_sum, {_windows('(s + 5)')}::INT AS self_windows,
               {_centre('(i * 7 + s * 29) % 632', 632)} AS work_self_peak_x,
               {_centre('(i * 11 + s * 3) % 474', 474)} AS work_self_peak_y,
               ((i * 37 + s * 11) % {n})::INT AS image_max_rank_less, ((i * 41 + s * 13) % {n})::INT AS image_rank_less"""


#: concept_order's columns, from the same generated values.
_ORDER_COLUMNS = "synset_id, image_id, map_sum, map_windows, image_max_rank_less"


def build(db: Path, n_images: int, n_concepts: int | None = None, row_group_size: int | None = None,
          emulate_full: int | None = None) -> dict:
    """Generate the collection in DuckDB with no sort and no Python loop over rows.

    concept_peaks is written in image order (as ingestion writes it), concept_order in (synset, map
    peak DESC) order (one sorted run, as after an ingest), with equal values in both (schema 013). With a
    subset of concepts, the full images' rows for the other concepts follow as a second, sorted run.
    """
    if math.gcd(_A, n_images) != 1:
        raise SystemExit(f"--images {n_images} shares a factor with {_A}; pick another size")
    t0 = time.perf_counter()
    con = connect(db, write=True, create=True)
    vocab = load_vocabulary("physical-objects")
    wn = open_wordnet()
    write_hierarchy(con, build_hierarchy(wn, vocab), vocab, wn.get_version())
    n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
    if emulate_full:  # as many row groups as the full table in row groups of `emulate_full` rows
        n_concepts = math.ceil(n * (row_group_size or DEFAULT_ROW_GROUP) / emulate_full)
    chosen = chosen_concepts(con, n_concepts)
    con.execute("""INSERT INTO models (name, pretrained, is_random, config_json, embed_dim, image_size, image_mean, image_std)
                   VALUES ('generated', 'none', true, '{}', 512, 224, [0.5,0.5,0.5], [0.5,0.5,0.5])""")
    con.execute("""INSERT INTO images (sha256, path, model_id, width, height, work_width, work_height, scale, stride,
                        small, large, max_pixels, top_k, grid_rows, grid_cols, n_windows)
                    SELECT sha256(i::VARCHAR), 'generated/' || i || '.jpg', 1, 800, 600, 632, 474, 800.0 / 632, 16, 64,
                           128, 300000, 100, 30, 40, 1200
                    FROM range(1, ? + 1) t(i)""", [n_images])
    con.execute(segment_centres_sql())   # schema 022: the segment centres its peaks index
    # Every image has image-level scores (schema 005), so search ranks by image by default as on a new database.
    con.execute("INSERT INTO image_embeddings SELECT i::INT, [0.0]::FLOAT[] FROM range(1, ? + 1) t(i)", [n_images])
    con.execute("CHECKPOINT")
    con.close()
    # The score tables through a plain DuckDB connection: row group size is an ATTACH option.
    raw = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    raw.execute("SET enable_progress_bar = false")
    rg = int(row_group_size or DEFAULT_ROW_GROUP)
    raw.execute(f"ATTACH '{db}' AS g (ROW_GROUP_SIZE {rg})")  # the benchmark's own path
    raw.execute("USE g")
    N, K, values = n_images, len(chosen), _values(n_images, n)
    subset = chosen if K < n else None
    full = full_images(N) if subset is not None else []

    def image_rows(lo: int, hi: int, every: bool) -> None:
        """Rows of images lo..hi (inclusive) in image order: every synset, or the chosen ones."""
        if hi < lo:
            return
        k = n if every or subset is None else K
        synset = "x % ?" if every or subset is None else "(?::BIGINT[])[x % " + str(K) + " + 1]"
        arg = n if every or subset is None else chosen
        rows = f"""SELECT i::INT AS image_id, s::INT AS synset_id, {values}
                   FROM (SELECT x // {k} + {lo} AS i, {synset} AS s FROM range(0, {(hi - lo + 1) * k}) t(x))"""
        for statement in concept_peaks_inserts(rows):  # schema 016: inner concepts' self terms apart
            raw.execute(statement, [arg])

    lo = 1
    for f in full:
        image_rows(lo, f - 1, False)
        image_rows(f, f, True)
        lo = f + 1
    image_rows(lo, N, False)
    print(f"  concept_peaks: {time.perf_counter() - t0:.0f} s", flush=True)
    a_inv = pow(_A, -1, N)
    # (synset, score DESC) order: the k-th best image of synset s has p = k
    synset = "x // ?" if subset is None else "(?::BIGINT[])[x // " + str(N) + " + 1]"
    raw.execute(f"""INSERT INTO concept_order
                    SELECT {_ORDER_COLUMNS} FROM (SELECT s::INT AS synset_id, i::INT AS image_id, {values}
                    FROM (SELECT s, ((k - (s * {_B}) % {N} + {N}) % {N}) * {a_inv} % {N} + 1 AS i
                          FROM (SELECT {synset} AS s, x % {N} AS k FROM range(0, {N * K}) t(x))))""",
                [N if subset is None else chosen])
    runs = 1
    if full:  # the full images' rows for the other concepts: a second sorted run, as a later ingest appends
        raw.execute(f"""INSERT INTO concept_order
                        SELECT {_ORDER_COLUMNS} FROM (SELECT s::INT AS synset_id, i::INT AS image_id, {values}
                        FROM (SELECT unnest(?::BIGINT[]) AS i) JOIN range(0, {n}) t(s) ON NOT list_contains(?, s))
                        ORDER BY synset_id, map_sum::DOUBLE / map_windows DESC, image_id""", [full, chosen])
        runs = 2
    raw.execute("UPDATE concept_index_state SET indexed_through = ?, runs = ?", [N, runs])
    print(f"  concept_order: {time.perf_counter() - t0:.0f} s", flush=True)
    rebuild_concept_top(raw)  # schema 019: each concept's best images, as the refresh keeps them
    print(f"  concept_top: {time.perf_counter() - t0:.0f} s", flush=True)
    raw.execute("CHECKPOINT")
    groups = {t: raw.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info(?)", [t]).fetchone()[0]
              for t in BIG_TABLES}
    rows = {t: raw.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in BIG_TABLES}
    raw.close()
    return {"seconds": time.perf_counter() - t0, "bytes": db.stat().st_size, "synsets": n, "concepts": K,
            "full_images": full, "row_group_size": row_group_size or DEFAULT_ROW_GROUP, "row_groups": groups,
            "rows": rows}


# -- measuring -----------------------------------------------------------------------------------------

class _Profiled:
    """A read-only plain DuckDB connection that records, for every statement run through it, the row
    groups and rows its scans of the big tables read (DuckDB's JSON profile)."""

    def __init__(self, db: Path, out: Path):
        self.con = duckdb.connect(str(db), read_only=True)
        self.out = out
        self.con.execute("SET enable_progress_bar = false")
        self.con.execute("PRAGMA enable_profiling = 'json'")
        self.con.execute(f"PRAGMA profiling_output = '{out}'")  # the benchmark's temp file
        self.scans: list[dict] = []
        self._pending = False

    def __getattr__(self, name):
        return getattr(self.con, name)

    def execute(self, sql, params=None):
        self._collect()
        self.con.execute(sql, params or [])
        self._pending = True
        return self

    def _collect(self) -> None:
        if not self._pending:
            return
        self._pending = False
        self.con.execute("SELECT 1")  # closes the pending result: DuckDB writes its profile then
        if not self.out.exists():  # a statement DuckDB does not profile (not a SELECT)
            return
        tree = json.loads(self.out.read_text())
        self.out.unlink()
        stack = list(tree.get("operator", tree.get("children", [])))
        while stack:
            node = stack.pop()
            stack.extend(node.get("children", []))
            table = str((node.get("extra_info") or {}).get("Table", "")).rsplit(".", 1)[-1]
            if node.get("type") == "TABLE_SCAN" and table in BIG_TABLES:
                self.scans.append({"table": table, "row_groups": node.get("row_groups_scanned"),
                                   "of": node.get("total_row_groups_to_scan"), "rows": node.get("rows_scanned")})

    def run(self, fn) -> list[dict]:
        self.scans = []
        fn(self)
        self._collect()
        return self.scans


def drop_cached_pages(db: Path) -> None:
    """Drop the database file's pages from the OS page cache (clean pages only: synced first)."""
    fd = os.open(db, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class _StandInMaps:
    """A map service for `regions` over a generated collection (no windows are stored): every image's
    map is a 16 x 16 map with one block at 1.0, so a region costs little fixed work and reads nothing,
    and the figures show what grows with the collection: finding the images and their records (a real
    map costs the same at any collection size: docs/benchmarks.md has the map figures)."""

    def __init__(self, con):
        self.con = con

    def for_stored(self, image, concept, only_self=False):
        from convis_db.query.maps import ConceptMap

        saliency = np.zeros((16, 16))
        saliency[4:8, 4:10] = 1.0
        return ConceptMap(concept, 0, saliency, image.grid, image.width, image.height, image.image_id,
                          image.path, "database")


def queries(n_images: int) -> dict:
    """name -> fn(con): the measured queries, each through the library's public functions."""
    from convis_db.query.explain import explain_image
    from convis_db.query.regions import find_regions
    from convis_db.query.search import count_images, search_images

    mid = str(full_images(n_images)[1])
    out = {}
    for c in QUERIED:
        for by in ("image", "map"):
            out[f"search {c} (top 20, by {by})"] = lambda con, c=c, by=by: search_images(con, c, 0.0, 20, by=by)
    for by in ("image", "map"):
        out[f"search dog.n.01 --min-score 0.99 (by {by})"] = \
            lambda con, by=by: search_images(con, "dog.n.01", 0.99, 20, by=by)
        out[f"count dog.n.01 (by {by})"] = lambda con, by=by: count_images(con, "dog.n.01", 0.0, by=by)
        out[f"count dog.n.01 --min-score 0.99 (by {by})"] = \
            lambda con, by=by: count_images(con, "dog.n.01", 0.99, by=by)
        # fewer images pass than a kept list holds (schema 020: the list answers): 0 by image, 50 of 1M by map
        out[f"count dog.n.01 --min-score 0.999995 (by {by})"] = \
            lambda con, by=by: count_images(con, "dog.n.01", 0.999995, by=by)
    out["regions dog.n.01 --min-score 0.95 (top 20)"] = \
        lambda con: find_regions(con, "dog.n.01", 0.95, limit=20, service=_StandInMaps(con))
    out["explain (depth 4, top 3)"] = lambda con: explain_image(con, mid, 4, 3)
    out["explain (depth 8, top 5)"] = lambda con: explain_image(con, mid, 8, 5)
    for level in ("image", "map"):
        out[f"images_with('dog.n.01', 0.99, level := '{level}', top := 20)"] = lambda con, level=level: con.execute(
            "SELECT * FROM images_with('dog.n.01', 0.99, level := ?, top := 20)", [level]).fetchall()
    out["images_with('dog.n.01', 0.99, level := 'map') LIMIT 20"] = lambda con: con.execute(
        "SELECT * FROM images_with('dog.n.01', 0.99, level := 'map') LIMIT 20").fetchall()
    return out


def measure(db: Path, n_images: int, cold: bool, scans: bool) -> dict:
    """Per query: cold (a new connection after the file's pages left the OS cache), warm (median and
    min of 7 after a warm-up) and, with `scans`, the row groups and rows its big-table scans read."""
    results: dict = {}
    named = queries(n_images)
    if cold:
        for name, fn in named.items():
            drop_cached_pages(db)
            t0 = time.perf_counter()
            con = connect(db)
            opened = time.perf_counter()
            fn(con)
            done = time.perf_counter()
            con.close()
            results.setdefault(name, {})["cold_ms"] = (done - opened) * 1000
            results[name]["open_ms"] = (opened - t0) * 1000
    con = connect(db)
    for name, fn in named.items():
        results.setdefault(name, {}).update(timeit(lambda fn=fn: fn(con)))
    con.close()
    if scans:
        with tempfile.TemporaryDirectory() as tmp:
            prof = _Profiled(db, Path(tmp) / "profile.json")
            for name, fn in named.items():
                results[name]["scans"] = prof.run(fn)
            prof.con.close()
    return results


def compare(db: Path, other: Path, n_images: int, rounds: int = 11, other_images: int | None = None) -> dict:
    """Per query, the median ms on `db` and on `other` (the same collection in another layout, or, with
    `other_images`, a generated collection of that many images: 1M against 100k), the two run in turn
    (A, B, B, A, ...) so that both see the same load; the LIMIT-outside form is left out (it reads every
    row group of either)."""
    cons = {"a": connect(db), "b": connect(other)}
    fns = {"a": queries(n_images), "b": queries(other_images or n_images)}
    out = {}
    for name in fns["a"]:
        if name.endswith("LIMIT 20"):
            continue
        times: dict[str, list[float]] = {"a": [], "b": []}
        for key, con in cons.items():
            fns[key][name](con)  # warm-up
        for r in range(rounds):
            for key in ("a", "b") if r % 2 == 0 else ("b", "a"):
                t0 = time.perf_counter()
                fns[key][name](cons[key])
                times[key].append((time.perf_counter() - t0) * 1000)
        a, b = (sorted(times[k])[rounds // 2] for k in ("a", "b"))
        out[name] = {"a_ms": a, "b_ms": b}
        print(f"{name:58s} {db.name} {a:8.1f} ms   {other.name} {b:8.1f} ms   {b / a:5.2f} x", flush=True)
    for con in cons.values():
        con.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--concepts", type=int, help="Concepts per image (the queried ones and evenly spread "
                    "fillers; default: every synset of T).")
    ap.add_argument("--row-group-size", type=int, help="Rows per row group of the score tables (default "
                    "convis-db's, store/db.py's ROW_GROUP_SIZE).")
    ap.add_argument("--emulate-full", nargs="?", type=int, const=DEFAULT_ROW_GROUP, metavar="ROWS",
                    help="A concept subset with as many row groups as the full table would have in row groups of "
                    "ROWS rows (default convis-db's ROW_GROUP_SIZE); sets --concepts, and --row-group-size to 2,048.")
    ap.add_argument("--db", type=Path, help="Reuse or create the generated DB here (default: a temp dir).")
    ap.add_argument("--cold", action="store_true", help="Also time each query once on a new connection "
                    "after dropping the file's pages from the OS cache.")
    ap.add_argument("--scans", action="store_true", help="Record the row groups each query's scans read.")
    ap.add_argument("--compare", type=Path, metavar="DB2", help="Instead: time every query on --db and on DB2 "
                    "(the same collection built another way), in turn, 11 runs each.")
    ap.add_argument("--compare-images", type=int, metavar="N", help="With --compare: DB2 is a generated "
                    "collection of N images (e.g. --images 100000 --db emu100k --compare emu1m --compare-images "
                    "1000000), each queried as its own size's run queries it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.emulate_full:
        args.row_group_size = args.row_group_size or 2048
    header(f"bench_queries: {args.images} generated images")
    tmp = tempfile.TemporaryDirectory()
    db = args.db or Path(tmp.name) / "bench.duckdb"
    info: dict = {}
    if not db.exists():
        info = build(db, args.images, args.concepts, args.row_group_size, args.emulate_full)
        print(f"built {db} in {info['seconds']:.1f} s ({info['bytes'] / 1e6:.0f} MB): {info}")
    if args.compare:
        print(f"load before: {os.getloadavg()}")
        result = compare(db, args.compare, args.images, other_images=args.compare_images)
        print(f"load after: {os.getloadavg()}")
        if args.json:
            print(json.dumps(result))
        return
    with duckdb.connect(str(db), read_only=True) as con:
        stats = {"images": args.images,
                 "rows": {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                          for t in BIG_TABLES},
                 "row_groups": {t: con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info(?)",
                                               [t]).fetchone()[0] for t in BIG_TABLES},
                 "bytes": db.stat().st_size, "load": os.getloadavg()} | ({"build": info} if info else {})
    results = measure(db, args.images, args.cold, args.scans)
    print(json.dumps(stats))
    for k, v in results.items():
        cold = f"cold {v['cold_ms']:8.1f} ms (open {v['open_ms']:6.1f})   " if "cold_ms" in v else ""
        scans = "  ".join(f"{s['table']} {s['row_groups']}/{s['of']} rg {s['rows']} rows" for s in v.get("scans", []))
        print(f"{k:58s} {cold}median {v['median_ms']:8.2f} ms   min {v['min_ms']:8.2f} ms   {scans}")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        print(json.dumps({"stats": stats, "results": results}))


if __name__ == "__main__":
    main()

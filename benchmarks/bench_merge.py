"""Merge speed: Ray shards into one database, today's merge against the loop it replaced, side by side.

No model runs. A database is made with the WordNet hierarchy (physical-objects) and a generated
512-d model record; shards are written by the shard writer (store/shards.write_shard) from rows that
image_store.image_tables builds out of generated explanations at the paper's settings (640 x 480
photos, 1,739 windows, top-100, |T| synsets), so they hold exactly the tables and types an
`ingest --engine ray` writes, with random values. Then, in one run, into fresh copies of the
database: `per-shard` is today's merge committing each shard on its own (as before the merge's groups
of GROUP_WINDOWS windows), `no-read-ahead` today's merge reading each shard's files when it reaches
it (as before distributed/read_ahead.py), `before` is the merge loop of commit 4fa1226 (kept below as `merge_before`: per shard,
pyarrow reads, numpy remaps, Arrow inserts, no checks; the shards being format 4 now, it inserts
their window_top rows as they are, where it regrouped window_concepts then) and `now` is `convis_db`'s
merge_folder (every table checked, then inserted), and `duckdb-alone` is DuckDB storing the same rows
with nothing else to do (merge_duckdb_alone: one INSERT per table over every shard's Parquet file, no
checks): the floor of any merge in this layout on the same machine. For format 3 against format 4, run this script on
a checkout before format 4 and on this one. Each is timed from the first shard to the concept index
refreshed and a CHECKPOINT (the data on disk); the order alternates between repeats.

    python benchmarks/bench_merge.py --images 128 --shard-size 64 --embeddings float16
    python benchmarks/bench_merge.py --images 128 --embeddings none --repeat 2
    python benchmarks/bench_merge.py --images 128 --file-settings default,shipped --repeat 2

--file-settings BLOCK:ROWS,... times today's merge (or each of --kinds) into files of each block size and
row group size instead (`default`: DuckDB's 262144:122880, as before issue 24; `shipped`: store/db.py's),
side by side:

    python benchmarks/bench_merge.py --images 1280 --embeddings none --kinds duckdb-alone \
        --file-settings 65536:122880,shipped --repeat 2

Target (issue 24): >= 100 images/s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import file_settings, header, parse_file_settings  # noqa: E402
from convis_db.store.migration_steps import segment_centres_sql  # noqa: E402

from convis_db.engine.explainer import ImageExplanation  # noqa: E402
from convis_db.engine.saliency import Peaks, grid_segments  # noqa: E402
from convis_db.engine.settings import Settings  # noqa: E402
from convis_db.engine.whole_image import ImageLevel  # noqa: E402
from convis_db.engine.windows import WindowGrid, working_size  # noqa: E402
from convis_db.store.concept_index import refresh_concept_index  # noqa: E402
from convis_db.store.db import connect  # noqa: E402
from convis_db.store.arrow_io import insert_arrow  # noqa: E402
from convis_db.store.image_store import (IMAGE_TABLES, image_tables, insert_tables, next_image_ids,  # noqa: E402
                                         record_failure, set_embedding_storage)
from convis_db.distributed.shards import (FAILURES, ShardContent, finished_shards, merge_folder,  # noqa: E402
                                    plan_shards, write_shard)
from convis_db.store.transaction import transaction  # noqa: E402

WEIGHTS = "ab" * 32   # the generated model's weights hash: shards must name it


def make_database(path: Path, storage: str) -> int:
    """An initialised database (hierarchy from WordNet, a generated model); returns |T|."""
    from convis_db.store.hierarchy_store import write_hierarchy
    from convis_db.wordnet.hierarchy import build_hierarchy
    from convis_db.wordnet.source import open_wordnet
    from convis_db.wordnet.vocab import load_vocabulary

    con = connect(path, write=True, create=True)
    try:
        vocab = load_vocabulary("physical-objects")
        wn = open_wordnet()
        write_hierarchy(con, build_hierarchy(wn, vocab), vocab, wn.get_version())
        con.execute("""INSERT INTO models (name, pretrained, is_random, config_json, weights_sha256, embed_dim,
                                           image_size, image_mean, image_std)
                       VALUES ('generated', '/generated/weights.pt', false, '{}', ?, 512, 224, [0.5, 0.5, 0.5],
                               [0.5, 0.5, 0.5])""", [WEIGHTS])
        con.execute("INSERT INTO definition_embeddings SELECT 1, synset_id, [0.0]::FLOAT[] FROM synsets")
        set_embedding_storage(con, storage)
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return int(n)


def leaf_mask(path: Path) -> np.ndarray:
    """(|T|,) bool: the synsets of T with no descendant but themselves, by synset id (0-based, as the
    engine's rows). The engine's self terms of a leaf equal its map terms, and the merge refuses a
    shard where they differ (schema 016 stores a leaf's map terms only)."""
    con = connect(path)
    try:
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        inner = [r[0] for r in con.execute("SELECT synset_id FROM inner_concepts()").fetchall()]
    finally:
        con.close()
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(inner, dtype=np.int64)] = False
    return mask


def explanation(rng: np.random.Generator, settings: Settings, n_syn: int, leaves: np.ndarray,
                dim: int = 512) -> ImageExplanation:
    """Random values in the shapes and ranges of a 640 x 480 photo's explanation; a leaf's self terms
    are its map terms, as the engine writes them."""
    w, h = working_size(640, 480, settings.max_pixels)
    grid = WindowGrid(h, w, settings.stride, settings.small, settings.large, settings.layout)
    nw, k = grid.n_windows, min(settings.top_k, n_syn)
    emb = rng.standard_normal((nw, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    def peaks() -> Peaks:
        windows = np.full(n_syn, 64, np.int32)  # the paper's settings: 8 x 8 windows over every pixel
        sums = rng.integers(0, 64 * (n_syn - 1) + 1, n_syn).astype(np.int64)  # a rank similarity in [0, 1]
        # a peak is the centre of one of the map's segments, as the engine gives it (schema 022 stores its index)
        return Peaks(np.float64(sums) / (np.float64(windows) * float(n_syn)),
                     xs.centres[rng.integers(0, len(xs.centres), n_syn)].astype(np.int32),
                     ys.centres[rng.integers(0, len(ys.centres), n_syn)].astype(np.int32), sums, windows)

    ys, xs = grid_segments(grid)

    rank = rng.integers(0, n_syn, n_syn).astype(np.int32)
    level = ImageLevel(emb[0].copy(), rank,
                       np.where(leaves, rank, np.maximum(rank, rng.integers(0, n_syn, n_syn).astype(np.int32))))
    scores, inner = peaks(), peaks()
    self_scores = Peaks(*(np.where(leaves, a, b) for a, b in
                          ((scores.score, inner.score), (scores.x, inner.x), (scores.y, inner.y),
                           (scores.sum, inner.sum), (scores.windows, inner.windows))))
    return ImageExplanation(
        grid=grid, width=640, height=480, embeddings=emb, boxes=grid.boxes(), scores=scores, self_scores=self_scores,
        top_ids=rng.integers(0, n_syn, (nw, k)).astype(np.int32),
        top_rank_less=np.broadcast_to(np.arange(n_syn - 1, n_syn - 1 - k, -1, dtype=np.int32), (nw, k)).copy(),
        n_synsets=n_syn, image_level=level)


def write_shards(shards: Path, n_images: int, shard_size: int, settings: Settings, leaves: np.ndarray,
                 storage: str) -> None:
    rng = np.random.default_rng(0)
    n_syn = len(leaves)
    files = [f"/generated/photo_{i:07d}.jpg" for i in range(n_images)]
    manifest = {"model": {"name": "generated", "pretrained": "/generated/weights.pt", "weights_sha256": WEIGHTS},
                "settings": settings.as_dict(), "embeddings": storage, "n_synsets": n_syn, "batch_size": 128}
    for name, chunk in plan_shards(files, shard_size):
        content = ShardContent(name, chunk)
        for i, path in enumerate(chunk):
            sha = f"{rng.integers(0, 2**63):016x}".rjust(64, "0")
            content.add_image(path, image_tables(explanation(rng, settings, n_syn, leaves), sha, path, 0, settings, i + 1,
                                                 storage, "fp32"))
        write_shard(shards, content, manifest)


def merge_before(con, shards: Path) -> int:
    """The merge loop of commit 4fa1226 (before issues 21 and 24), for the side-by-side figure: one
    transaction per shard, pyarrow reads, numpy remap, Arrow inserts, no checks."""
    added = 0
    for folder in finished_shards(shards).values():
        tables = {t: pq.read_table(folder / f"{t}.parquet") for t in IMAGE_TABLES + ("window_top",)
                  if (folder / f"{t}.parquet").is_file()}
        failures = pq.read_table(folder / f"{FAILURES}.parquet").to_pylist()
        with transaction(con):
            images = tables["images"]
            local_ids = images.column("image_id").to_numpy()
            shas = images.column("sha256").to_pylist()
            stored = dict(con.execute("SELECT sha256, image_id FROM images WHERE sha256 IN (SELECT unnest(?))",
                                      [shas]).fetchall())
            keep = np.array([sha not in stored for sha in shas], dtype=bool)
            new_ids = next_image_ids(con, int(keep.sum()))
            lookup = np.zeros(int(local_ids.max()) + 1, np.int64) - 1
            lookup[local_ids[keep]] = new_ids
            remapped = {}
            for t, table in tables.items():
                ids = lookup[table.column("image_id").to_numpy()]
                mask = ids >= 0
                table = table.filter(pa.array(mask))
                table = table.set_column(table.schema.get_field_index("image_id"), "image_id",
                                         pa.array(ids[mask].astype(np.int32)))
                if t == "images":
                    table = table.set_column(table.schema.get_field_index("model_id"), "model_id",
                                             pa.array(np.full(table.num_rows, 1, np.int32)))
                remapped[t] = table
            top = remapped.pop("window_top", None)  # format 4 holds window_top (the loop knew window_concepts)
            insert_tables(con, remapped)
            if top is not None:
                insert_arrow(con, "window_top", top)
            for f in failures:
                record_failure(con, f["path"], f["sha256"], f["error"])
            con.execute("INSERT INTO merged_shards (shard, images, skipped) VALUES (?, ?, ?)",
                        [folder.name, len(new_ids), int((~keep).sum())])
        added += len(new_ids)
    if added:
        refresh_concept_index(con)
    return added


def merge_now(con, shards: Path) -> int:
    return sum(r.images for r in merge_folder(con, shards))


def merge_per_shard(con, shards: Path) -> int:
    """Today's merge with one transaction per shard (as before issue 24's groups): GROUP_WINDOWS = 1."""
    from convis_db.distributed import shards as shards_module

    grouped = shards_module.GROUP_WINDOWS
    shards_module.GROUP_WINDOWS = 1
    try:
        return merge_now(con, shards)
    finally:
        shards_module.GROUP_WINDOWS = grouped


class _NoReadAhead:
    """ReadAhead reading nothing: each shard's files are read when the merge reaches it (as before)."""

    def __init__(self, folders, tables):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def files(self, i):
        return {}


def merge_no_read_ahead(con, shards: Path) -> int:
    """Today's merge without reading the next shard ahead (distributed/read_ahead.py): side by side, what
    reading ahead gains."""
    from convis_db.distributed import shards as shards_module

    ahead = shards_module.ReadAhead
    shards_module.ReadAhead = _NoReadAhead
    try:
        return merge_now(con, shards)
    finally:
        shards_module.ReadAhead = ahead


def merge_duckdb_alone(con, shards: Path) -> int:
    """DuckDB's floor for storing the same rows: no checks, no Python per shard, one INSERT ... SELECT
    per table over every shard's Parquet file (DuckDB's own parallel reader; image ids offset per shard
    in SQL), the concept peaks split as the merge splits them, one transaction, then the concept index
    refreshed as the merge does. What no merge that stores these tables in this layout can beat on the
    same machine (float16 windows: split by the merge's own numpy step, per shard)."""
    from convis_db.distributed.shards import _insert_split_windows, read_manifest
    from convis_db.store.halves import WHOLE_COLUMN
    from convis_db.store.image_store import WINDOW_EMBEDDING_COLUMNS, concept_peaks_inserts

    folders = list(finished_shards(shards).values())
    offsets, total = [], 0
    for folder in folders:
        offsets.append(total)
        total += int(read_manifest(folder)["rows"]["images"])
    con.execute("CREATE TEMP TABLE _offsets (filename VARCHAR, image_offset INTEGER)")
    tables = [t for t in IMAGE_TABLES + ("window_top",) if (folders[0] / f"{t}.parquet").exists()]
    con.execute("INSERT INTO _offsets SELECT unnest(?), unnest(?)",
                [[str(f / f"{t}.parquet") for t in tables for f in folders], [o for _ in tables for o in offsets]])
    model_id = con.execute("SELECT min(model_id) FROM models").fetchone()[0]
    con.execute("BEGIN TRANSACTION")
    for table in tables:
        files = [str(f / f"{table}.parquet") for f in folders]
        names = pq.read_schema(files[0]).names
        if table == "windows" and WHOLE_COLUMN in names:
            for folder, offset in zip(folders, offsets):
                rows = pq.read_table(folder / "windows.parquet")
                _insert_split_windows(con, rows, np.arange(offset, offset + 1 + most_id(rows), dtype=np.int64))
            continue
        if table == "windows":  # schema 021: the embeddings only; none stores no window rows
            names = [n for n in names if n in ("image_id", "window_idx", *WINDOW_EMBEDDING_COLUMNS)]
            if names == ["image_id", "window_idx"]:
                continue
        cols = ", ".join("(r.image_id + o.image_offset)::INTEGER AS image_id" if n == "image_id"
                         else (f"{int(model_id)}::INTEGER AS model_id" if table == "images" and n == "model_id"
                               else f'r."{n}"') for n in names)
        rows = f"SELECT {cols} FROM read_parquet($files, filename = true) r JOIN _offsets o USING (filename)"
        if table == "concept_peaks":
            for statement in concept_peaks_inserts(rows):
                con.execute(statement, {"files": files})
        else:
            into = "window_embeddings" if table == "windows" else table
            con.execute(f"INSERT INTO {into} BY NAME {rows}", {"files": files})   # table from IMAGE_TABLES
            if table == "images":   # schema 022: the segment centres the peaks index (the merge computes them)
                con.execute(segment_centres_sql())
    con.execute("COMMIT")
    con.execute("DROP TABLE _offsets")
    refresh_concept_index(con)
    return total


def most_id(rows: pa.Table) -> int:
    return int(rows.column("image_id").to_numpy().max()) if rows.num_rows else 0


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system   # this process, DuckDB's threads included


def timed(fresh: Path, db: Path, shards: Path, merge) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, images added, bytes in free blocks) of one merge into a fresh copy,
    CHECKPOINT included."""
    shutil.copyfile(fresh, db)
    con = connect(db, write=True)
    try:
        t0, c0 = time.perf_counter(), cpu_seconds()
        added = merge(con, shards)
        con.execute("CHECKPOINT")
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        free = con.execute("SELECT free_blocks * block_size FROM pragma_database_size() "
                           "WHERE database_name = current_database()").fetchone()[0]
    finally:
        con.close()
    return seconds, cpu, added, free


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--embeddings", choices=("float32", "float16", "none"), default="float16")
    ap.add_argument("--repeat", type=int, default=1, help="Timed merges of each kind (alternating order).")
    ap.add_argument("--work", type=Path, help="Folder for the database and shards (default: a temp dir).")
    ap.add_argument("--threads", type=int, help="DuckDB threads (default: DuckDB's, the core count).")
    ap.add_argument("--file-settings", type=parse_file_settings, metavar="BLOCK:ROWS,...",
                    help="today's merge into files of each block and row group size, side by side (not before/now)")
    ap.add_argument("--kinds", help="comma-separated kinds to time (default: all of before, per-shard, "
                    "no-read-ahead, now, duckdb-alone)")
    ap.add_argument("--group-windows", type=int, help="windows per merge transaction for `now` "
                    "(default: shards.GROUP_WINDOWS, one row group)")
    args = ap.parse_args()
    if args.group_windows:
        from convis_db.distributed import shards as shards_module

        shards_module.GROUP_WINDOWS = args.group_windows
    header(f"merge {args.images} images in shards of {args.shard_size}, embeddings {args.embeddings}")
    work = args.work or Path(tempfile.mkdtemp(prefix="convis-bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    shards = work / "shards"
    settings = Settings()
    t0 = time.perf_counter()
    merges = {"before": merge_before, "per-shard": merge_per_shard, "no-read-ahead": merge_no_read_ahead,
              "now": merge_now, "duckdb-alone": merge_duckdb_alone}
    wanted = args.kinds.split(",") if args.kinds else (["now"] if args.file_settings else list(merges))
    unknown = sorted(set(wanted) - set(merges))
    if unknown:
        ap.error(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(merges)}")
    if args.file_settings:  # label -> (merge, block, rows): each kind into files of each setting
        kinds = {f"{k} {b // 1024}KiB/{r}": (merges[k], b, r) for k in wanted for b, r in args.file_settings}
    else:  # the files as this checkout makes them
        from convis_db.store import db as store_db

        kinds = {k: (merges[k], store_db.BLOCK_SIZE, store_db.ROW_GROUP_SIZE) for k in wanted}
    fresh = {}
    for _, block, rows in kinds.values():  # one initialised file per block size
        fresh[block] = work / f"fresh-{block}.duckdb"
        with file_settings(block, rows):
            if not fresh[block].exists():
                n_syn = make_database(fresh[block], args.embeddings)
            else:
                con = connect(fresh[block])
                n_syn = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
                con.close()
    if not shards.exists():
        write_shards(shards, args.images, args.shard_size, settings, leaf_mask(next(iter(fresh.values()))),
                     args.embeddings)
    parquet = sum(p.stat().st_size for p in shards.rglob("*.parquet"))
    print(f"setup {time.perf_counter() - t0:.1f} s: |T| = {n_syn}, {parquet / args.images / 1e6:.2f} MB of Parquet "
          f"per image", flush=True)
    if args.threads:
        import duckdb

        duckdb.default_connection().execute(f"SET threads = {int(args.threads)}")
    results: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    sizes: dict[str, int] = {}
    order = list(kinds.items())
    for r in range(args.repeat):
        for name, (fn, block, rows) in (order if r % 2 == 0 else order[::-1]):
            db = work / f"{name.replace('/', '-').replace(' ', '-')}.duckdb"
            with file_settings(block, rows):
                seconds, cpu, added, free = timed(fresh[block], db, shards, fn)
            sizes[name] = db.stat().st_size - fresh[block].stat().st_size
            assert added == args.images, (name, added)
            results[name].append(seconds)
            cpus[name].append(cpu)
            print(f"  {name:16s} run {r + 1}: {seconds:6.2f} s wall ({args.images / seconds:6.1f} images/s), "
                  f"{cpu:6.2f} CPU-s ({args.images / cpu:6.1f} images per CPU-second), "
                  f"file growth {sizes[name] / args.images / 1e3:.0f} KB per image (free blocks {free / args.images / 1e3:.0f} KB), "
                  f"load {os.getloadavg()[0]:.1f}",
                  flush=True)
    best = {k: min(v) for k, v in results.items()}
    cpu = {k: min(v) for k, v in cpus.items()}
    print("; ".join(f"{k}: {args.images / best[k]:.1f} images/s, {args.images / cpu[k]:.1f} images/CPU-s"
                    for k in kinds))
    first = next(iter(kinds))
    print(f"{' '.join(f'{k} / {first}: {best[first] / best[k]:.2f} x wall, {cpu[first] / cpu[k]:.2f} x CPU;' for k in kinds)}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

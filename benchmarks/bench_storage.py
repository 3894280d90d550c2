"""Bytes stored per image for each `init --embeddings` choice, at the paper's settings.

One database (hierarchy + definitions) is built once and copied per choice; the same explanations
(computed once) are written into each with write_image, the file is checkpointed, and its growth
over the empty copy is divided by the images. Also times one concept's map from stored data per
choice (float16 is decoded back to float32; none re-encodes the image file with the model).

    python benchmarks/bench_storage.py --model benchmarks/configs/probe-512.json --images 3 --breakdown

--breakdown adds where the bytes go (docs/storage.md): the file growth split into used and free blocks,
and each image table's bytes per image on its own (the table copied into a fresh file, see table_bytes).
--columns adds the same per column of the concept tables (column_bytes), for the `none` choice.
--file-settings BLOCK:ROWS,... writes the same images, side by side in one run, into files of each
block size and row group size (`default` = DuckDB's 262144:122880, as convis-db wrote before issue 24;
`shipped` = store/db.py's BLOCK_SIZE:ROW_GROUP_SIZE, the default) and times every write_image, the
concept index refresh and the checkpoint; --checkpoint-each checkpoints after every image (the worst
case for a partly filled row group rewritten at each checkpoint).

    python benchmarks/bench_storage.py --images 16 --breakdown --file-settings default,shipped
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import file_settings, header, parse_file_settings, timeit  # noqa: E402

from convis_db.engine.explainer import ConceptEngine  # noqa: E402
from convis_db.engine.images import read_image  # noqa: E402
from convis_db.engine.settings import PAPER  # noqa: E402
from convis_db.init_db import initialise  # noqa: E402
from convis_db.models.clip import load_model  # noqa: E402
from convis_db.models.registry import resolve_model  # noqa: E402
from convis_db.query.maps import MapService  # noqa: E402
from convis_db.store.concept_index import refresh_concept_index  # noqa: E402
from convis_db.store.db import compress_float16, connect  # noqa: E402
from convis_db.store.hierarchy_store import load_hierarchy  # noqa: E402
from convis_db.store.image_store import EMBEDDING_CHOICES, get_image, set_embedding_storage, write_image  # noqa: E402
from convis_db.store.model_store import find_model_id, load_definition_embeddings  # noqa: E402


def _fresh_file(f: Path, block: int, rows: int) -> duckdb.DuckDBPyConnection:
    """A plain DuckDB connection to a new file `f` of this block size, writing row groups of `rows`."""
    con = duckdb.connect(config={"default_block_size": block})
    con.execute(f"ATTACH '{f}' AS fresh (ROW_GROUP_SIZE {rows})")  # the benchmark's own temp path
    con.execute("USE fresh")
    return con


def table_bytes(db: Path, images: int, copies: int = 16, block: int = 262_144, rows: int = 122_880) -> dict[str, float]:
    """Bytes per image of each table that holds per-image rows, each on its own: its rows copied
    `copies` times (image ids shifted, so each copy is a new set of images, written in the table's own
    order) into a fresh file and checkpointed; the used blocks it adds, / (images x copies). A fresh
    copy has no free blocks, so these add up to less than the file growth (see main)."""
    out = {}
    src = duckdb.connect(str(db), read_only=True)
    tables = [r[0] for r in src.execute(
        "SELECT DISTINCT table_name FROM duckdb_columns() WHERE column_name = 'image_id' AND NOT internal "
        "AND table_name IN (SELECT table_name FROM duckdb_tables() WHERE estimated_size > 0) "
        "ORDER BY table_name").fetchall()]
    float16 = src.execute("SELECT embeddings FROM storage_settings").fetchone() == ("float16",)
    src.close()
    with tempfile.TemporaryDirectory(prefix="bench-storage-table-") as folder:
        for table in tables:
            f = Path(folder) / f"{table}.duckdb"
            con = _fresh_file(f, block, rows)
            if float16:  # the compression convis-db's writable connections use on such a file
                compress_float16(con)
            con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
            con.execute(f"CREATE TABLE copied AS SELECT * FROM src.{table} LIMIT 0")  # names from duckdb_tables
            con.execute("CHECKPOINT")
            used = "SELECT used_blocks * block_size FROM pragma_database_size() WHERE database_name = current_database()"
            empty = con.execute(used).fetchone()[0]
            for c in range(copies):
                con.execute(f"INSERT INTO copied SELECT * REPLACE (image_id + {(c + 1) * 10_000_000} AS image_id) "
                            f"FROM src.{table}")
            con.execute("CHECKPOINT")
            out[table] = (con.execute(used).fetchone()[0] - empty) / (images * copies)
            con.close()
    return out


#: The tables whose columns --columns measures (those present in the file).
COLUMN_TABLES = ("concept_peaks", "concept_self_peaks", "concept_order", "image_scores", "concept_index", "window_top")


def column_bytes(db: Path, images: int, copies: int = 64, block: int = 262_144,
                 rows: int = 122_880) -> dict[str, float]:
    """Bytes per image of each column of COLUMN_TABLES, each on its own: the column (with image ids
    shifted per copy where it is image_id) copied `copies` times into a fresh file in the table's own
    order, checkpointed; the used blocks it adds / (images x copies). Resolution: one block."""
    out = {}
    src = duckdb.connect(str(db), read_only=True)
    columns = src.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE table_name IN (SELECT unnest(?)) "
        "AND table_name IN (SELECT table_name FROM duckdb_tables()) ORDER BY table_name, column_index",
        [list(COLUMN_TABLES)]).fetchall()
    src.close()
    with tempfile.TemporaryDirectory(prefix="bench-storage-column-") as folder:
        for table, column in columns:
            f = Path(folder) / f"{table}.{column}.duckdb"
            con = _fresh_file(f, block, rows)
            con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
            con.execute(f'CREATE TABLE copied AS SELECT "{column}" AS v FROM src.{table} LIMIT 0')  # catalog names
            con.execute("CHECKPOINT")
            used = "SELECT used_blocks * block_size FROM pragma_database_size() WHERE database_name = current_database()"
            empty = con.execute(used).fetchone()[0]
            shift = "image_id + {c} * 10000000" if column == "image_id" else f'"{column}"'
            for c in range(copies):
                con.execute(f"INSERT INTO copied SELECT {shift.format(c=c + 1)} FROM src.{table}")
            con.execute("CHECKPOINT")
            out[f"{table}.{column}"] = (con.execute(used).fetchone()[0] - empty) / (images * copies)
            con.close()
    return out


def write_copy(base: Path, db: Path, storage: str, explained: list, model_id: int, settings,
               checkpoint_each: bool) -> dict:
    """Write the explained images into a copy of `base`, one write_image transaction each, then refresh
    the concept index and checkpoint: the file's growth per image, its free blocks, and the times."""
    shutil.copyfile(base, db)
    empty = db.stat().st_size
    con = connect(db, write=True)
    set_embedding_storage(con, storage)
    writes = []
    for path, decoded, exp in explained:
        t = time.perf_counter()
        write_image(con, exp, decoded.sha256, str(path), model_id, settings)
        if checkpoint_each:
            con.execute("CHECKPOINT")
        writes.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    refresh_concept_index(con)
    refreshed = time.perf_counter()
    con.execute("CHECKPOINT")
    checkpointed = time.perf_counter()
    _, _, block, total_blocks, _used, free_blocks = con.execute(
        "SELECT database_name, database_size, block_size, total_blocks, used_blocks, free_blocks "
        "FROM pragma_database_size() WHERE database_name = current_database()").fetchone()
    con.close()
    images = len(explained)
    return {"bytes_per_image": (db.stat().st_size - empty) / images, "free_bytes_per_image": free_blocks * block / images,
            "free_blocks": free_blocks, "total_blocks": total_blocks, "file_block_size": block,
            "write_ms": writes, "write_ms_median": sorted(writes)[len(writes) // 2],
            "refresh_ms": (refreshed - t) * 1000, "checkpoint_ms": (checkpointed - refreshed) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent / "configs" / "probe-512.json"))
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--concept", default="dog.n.01")
    ap.add_argument("--breakdown", action="store_true", help="bytes per image per table (docs/storage.md)")
    ap.add_argument("--columns", action="store_true", help="bytes per image per column of the concept tables")
    ap.add_argument("--file-settings", default="shipped", type=parse_file_settings, metavar="BLOCK:ROWS,...",
                    help="block size and row group size of the files written, side by side (default: shipped)")
    ap.add_argument("--checkpoint-each", action="store_true", help="CHECKPOINT after every image")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = PAPER
    header(f"bench_storage: {args.model} / {args.pretrained}, paper settings {PAPER.as_dict()}, top_k {settings.top_k}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        spec = resolve_model(args.model, args.pretrained)
        bases = {}
        for block, rows in args.file_settings:  # one initialised file per block size, made as init makes it
            if block not in bases:
                bases[block] = tmp / f"base-{block}.duckdb"
                with file_settings(block, rows):
                    initialise(bases[block], "physical-objects", spec, torch.device("cpu"), batch_size=1024)
                    con = connect(bases[block], write=True)
                    con.execute("CHECKPOINT")
                    con.close()
        con = connect(next(iter(bases.values())))
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
        results = {"model": spec.label, "embed_dim": engine.model.embed_dim, "synsets": engine.n,
                   "windows_per_image": explained[0][2].grid.n_windows, "images": args.images,
                   "checkpoint_each": args.checkpoint_each, "runs": []}
        for storage in EMBEDDING_CHOICES:
            for block, rows in args.file_settings:  # side by side: the same images, one setting after the other
                label = f"{storage}/{block // 1024}KiB/{rows}"
                with file_settings(block, rows):
                    run = write_copy(bases[block], tmp / f"{storage}-{block}-{rows}.duckdb", storage, explained,
                                     model_id, settings, args.checkpoint_each)
                    db = tmp / f"{storage}-{block}-{rows}.duckdb"
                    ro = connect(db)
                    service = MapService(ro, torch.device("cpu"))
                    stored = get_image(ro, "1")
                    q = timeit(lambda service=service, stored=stored: service.for_stored(stored, args.concept), repeat=3)
                    ro.close()
                run |= {"embeddings": storage, "block_size": block, "row_group_size": rows, "map_ms": q["median_ms"]}
                results["runs"].append(run)
                print(f"{label:24s} {run['bytes_per_image'] / 1e6:6.3f} MB per image (free blocks "
                      f"{run['free_bytes_per_image'] / 1e3:6.1f} KB, {run['free_blocks']} of {run['total_blocks']}); "
                      f"write_image median {run['write_ms_median']:6.0f} ms; refresh {run['refresh_ms']:6.0f} ms; "
                      f"checkpoint {run['checkpoint_ms']:5.0f} ms; map {q['median_ms']:.0f} ms"
                      + (" (re-encodes the file)" if storage == "none" else ""), flush=True)
                if args.breakdown:
                    tables = table_bytes(db, args.images, block=block, rows=rows)
                    run["tables"] = tables
                    for table, b in tables.items():
                        print(f"         {table:18s} {b / 1e3:7.1f} KB per image (alone in a fresh file)")
                if args.columns and storage == "none":
                    columns = column_bytes(db, args.images, block=block, rows=rows)
                    run["columns"] = columns
                    for name, b in columns.items():
                        print(f"         {name:36s} {b / 1e3:7.1f} KB per image (the column alone)")
                db.unlink()
        for block, rows in args.file_settings:
            mine = {r["embeddings"]: r["bytes_per_image"] for r in results["runs"]
                    if (r["block_size"], r["row_group_size"]) == (block, rows)}
            print(f"{block // 1024}KiB/{rows}: " + ", ".join(f"{k} {v / mine['float32']:5.2f} x float32" for k, v in mine.items()))
        if args.json:
            print(json.dumps(results))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How long schema 010 (renamed peak columns, database_profile, T's tables rebuilt with foreign keys)
takes to apply to a database made before it, and what it does to the file's size.

    python benchmarks/bench_migration_010.py --db old.duckdb --images 1000

--db is a database at schema 009 (made by a convis-db before 010, e.g. `init` on the default
vocabulary); it is copied, never changed. --images N adds N generated images' image_scores and
concept_index rows (|T| each, in the pre-010 column names) to the copy first, as a collection would.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from convis_db.store.db import connect
from convis_db.store.migrations import applied_versions


def _blocks(path: Path) -> tuple[int, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        total, free = con.execute("SELECT total_blocks, free_blocks FROM pragma_database_size()").fetchone()
        return int(total), int(free)
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="a database at schema 009 (copied, not changed)")
    ap.add_argument("--images", type=int, default=0, help="generated images to add before migrating")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "old.duckdb"
        shutil.copyfile(args.db, db)
        con = duckdb.connect(str(db))
        con.execute("SET enable_progress_bar = false")
        if max(applied_versions(con)) != 9:
            raise SystemExit(f"{args.db} is at schema {max(applied_versions(con))}, not 009")
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        if args.images:
            con.execute("""INSERT INTO images (sha256, path, model_id, width, height, work_width, work_height, scale,
                                stride, small, large, max_pixels, top_k, grid_rows, grid_cols, n_windows)
                           SELECT sha256(i::VARCHAR), 'generated/' || i, 1, 800, 600, 632, 474, 800.0 / 632, 16, 64,
                                  128, 300000, 100, 30, 40, 1200 FROM range(1, ? + 1) t(i)""", [args.images])
            con.execute(f"""INSERT INTO image_scores BY NAME
                SELECT (x // {n} + 1)::INT AS image_id, (x % {n})::INT AS synset_id, random() AS score,
                       (x % 632)::INT AS peak_x, (x % 474)::INT AS peak_y, random() AS self_score,
                       (x % 631)::INT AS self_peak_x, (x % 473)::INT AS self_peak_y
                FROM range(0, ?) t(x)""", [args.images * n])
            con.execute("INSERT INTO concept_index SELECT * FROM image_scores ORDER BY synset_id, score DESC")
            con.execute("UPDATE concept_index_state SET indexed_through = ?, runs = 1", [args.images])
        con.close()
        before = _blocks(db)
        t0 = time.perf_counter()
        con = connect(db, write=True)
        seconds = time.perf_counter() - t0
        assert 10 in applied_versions(con)
        profile = con.execute("SELECT n_synsets, n_images FROM database_profile").fetchone()
        con.close()
        after = _blocks(db)
    print(f"synsets {n}, images {args.images} ({args.images * n:,} image_scores rows)")
    print(f"migrate to 010 (open for writing, all pending migrations): {seconds:.3f} s")
    print(f"blocks of 256 KiB before {before[0]} (free {before[1]}), after {after[0]} (free {after[1]})")
    print(f"database_profile: n_synsets {profile[0]}, n_images {profile[1]}")


if __name__ == "__main__":
    main()

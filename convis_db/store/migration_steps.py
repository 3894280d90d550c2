"""Work a migration does before its SQL, where a big file needs a progress bar (store/migrations.py).

Each step runs inside the migration's transaction, before the SQL of its version, and leaves the SQL
less to do; the SQL alone gives the same result (tests build older files by applying the SQL only).
"""

from __future__ import annotations

import logging

import duckdb

from convis_db.progress import Progress, no_progress
from convis_db.store.arrow_io import fetch_arrow
from convis_db.store.halves import HI_COLUMN, LO_COLUMN, WHOLE_COLUMN, split_windows

log = logging.getLogger(__name__)

#: Images converted per statement by window_top_in_batches and concept_peaks_in_batches.
BATCH_IMAGES = 1_000
#: Concepts converted per statement by concept_peaks_in_batches (concept_index's rows, in concept order).
BATCH_CONCEPTS = 500
#: Images whose float16 embeddings split_halves_in_batches splits per statement: their rows are held in
#: memory twice (about 110 MB at 1,739 windows of 512 halves per image).
BATCH_HALVES_IMAGES = 32


def statement(sql: str, starts_with: str) -> str:
    """The one statement of a migration's SQL that starts with `starts_with`, comments taken out (the
    migrations this serves hold no '--' or ';' inside string literals)."""
    code = "\n".join(line.split("--", 1)[0].rstrip() for line in sql.splitlines())
    found = [part.strip() for part in code.split(";") if part.strip().startswith(starts_with)]
    if len(found) != 1:
        raise RuntimeError(f"migration SQL has {len(found)} statements starting {starts_with!r}; expected one")
    return found[0]


def window_top_in_batches(con: duckdb.DuckDBPyConnection, sql: str, progress: Progress = no_progress) -> None:
    """Schema 012: window_concepts' rows into window_top, BATCH_IMAGES images per statement (in image
    order, so each reads only its images' row groups), with a bar counting images. The statements are
    012's own CREATE and INSERT, the INSERT limited to each batch."""
    con.execute(statement(sql, "CREATE TABLE IF NOT EXISTS window_top"))
    insert = statement(sql, "INSERT INTO window_top")
    where = "WHERE image_id > (SELECT coalesce(max(image_id), 0) FROM window_top)"
    if where not in insert:
        raise RuntimeError("schema 012's INSERT INTO window_top changed; update window_top_in_batches")
    ids = [r[0] for r in con.execute("SELECT DISTINCT image_id FROM images ORDER BY image_id").fetchall()]
    with progress("Upgrading: each window's top concepts as one row (schema 012)", len(ids), "images") as tick:
        done = -(2**31)  # batches cover every id up to the last image's: rows of no image move as well
        for start in range(0, len(ids), BATCH_IMAGES):
            batch = ids[start:start + BATCH_IMAGES]
            con.execute(insert.replace(where, "WHERE image_id > ? AND image_id <= ?"), [done, batch[-1]])
            done = batch[-1]
            tick(len(batch))
            log.info("schema 012: %d of %d images' window top-K rewritten", start + len(batch), len(ids))


def concept_peaks_in_batches(con: duckdb.DuckDBPyConnection, sql: str, progress: Progress = no_progress) -> None:
    """Schema 013: image_scores' rows into concept_peaks BATCH_IMAGES images per statement, then
    concept_index's into concept_order BATCH_CONCEPTS concepts per statement (each reads the row groups
    of its images, resp. of its concepts' runs), each with a bar. The statements are 013's own, their
    WHERE limited to each batch."""
    con.execute(statement(sql, "CREATE OR REPLACE MACRO exact_windows"))
    for table in ("concept_peaks", "concept_order"):
        con.execute(statement(sql, f"CREATE TABLE IF NOT EXISTS {table}"))
    jobs = [
        ("concept_peaks", "s.image_id", "SELECT DISTINCT image_id FROM images ORDER BY image_id", BATCH_IMAGES,
         "Upgrading: concept scores as exact integers (schema 013)", "images"),
        ("concept_order", "ci.synset_id", "SELECT synset_id FROM synsets ORDER BY synset_id", BATCH_CONCEPTS,
         "Upgrading: the concept-ordered search keys (schema 013)", "concepts"),
    ]
    for table, key, list_keys, size, desc, unit in jobs:
        insert = statement(sql, f"INSERT INTO {table}")
        where = f"WHERE {key} > (SELECT coalesce(max({key.split('.')[1]}), -2147483648) FROM {table})"
        if where not in insert:
            raise RuntimeError(f"schema 013's INSERT INTO {table} changed; update concept_peaks_in_batches")
        keys = [r[0] for r in con.execute(list_keys).fetchall()]  # fixed statements above
        with progress(desc, len(keys), unit) as tick:
            done = -(2**31)  # batches cover every key up to the last one's: rows of no image move as well
            for start in range(0, len(keys), size):
                batch = keys[start:start + size]
                con.execute(insert.replace(where, f"WHERE {key} > ? AND {key} <= ?"), [done, batch[-1]])
                done = batch[-1]
                tick(len(batch))
                log.info("schema 013: %d of %d %s of %s rewritten", start + len(batch), len(keys), unit, table)


def self_peaks_in_batches(con: duckdb.DuckDBPyConnection, sql: str, progress: Progress = no_progress) -> None:
    """Schema 016: the inner concepts' self terms from concept_peaks into concept_self_peaks,
    BATCH_IMAGES images per statement (in image order), with a bar counting images. The statements are
    016's own (its leaf check first, then its INSERT limited to each batch)."""
    con.execute(statement(sql, "CREATE OR REPLACE MACRO inner_concepts"))
    con.execute(statement(sql, "CREATE TABLE IF NOT EXISTS concept_self_peaks"))
    con.execute(statement(sql, "SELECT error("))
    insert = statement(sql, "INSERT INTO concept_self_peaks")
    where = "AND image_id > (SELECT coalesce(max(image_id), -2147483648) FROM concept_self_peaks)"
    if where not in insert:
        raise RuntimeError("schema 016's INSERT INTO concept_self_peaks changed; update self_peaks_in_batches")
    ids = [r[0] for r in con.execute("SELECT DISTINCT image_id FROM images ORDER BY image_id").fetchall()]
    with progress("Upgrading: self peaks of concepts with descendants only (schema 016)", len(ids), "images") as tick:
        done = -(2**31)  # batches cover every id up to the last image's: rows of no image move as well
        for start in range(0, len(ids), BATCH_IMAGES):
            batch = ids[start:start + BATCH_IMAGES]
            con.execute(insert.replace(where, "AND image_id > ? AND image_id <= ?"), [done, batch[-1]])
            done = batch[-1]
            tick(len(batch))
            log.info("schema 016: %d of %d images' self peaks moved", start + len(batch), len(ids))


def split_halves_in_batches(con: duckdb.DuckDBPyConnection, sql: str, progress: Progress = no_progress) -> None:
    """Schema 017: each stored float16 embedding split into its high and low bytes, BATCH_HALVES_IMAGES
    images per statement, with a bar counting images. 017's own ALTERs add the columns; the split is
    made by numpy (store/halves.py, 8x faster than the SQL's hex and regexp_replace: 40 against 322 ms
    per image, docs/benchmarks.md) and written by row id, so it gives the SQL's bytes. 017's UPDATE then
    finds nothing left but rows of no image, and a database storing float32 or none skips the batches."""
    for column in (HI_COLUMN, LO_COLUMN):
        con.execute(statement(sql, f"ALTER TABLE windows ADD COLUMN IF NOT EXISTS {column}"))
    update = statement(sql, "UPDATE windows")
    if f"WHERE {WHOLE_COLUMN} IS NOT NULL AND {HI_COLUMN} IS NULL" not in update:
        raise RuntimeError("schema 017's UPDATE windows changed; update split_halves_in_batches")
    if con.execute("SELECT embeddings FROM storage_settings").fetchone() != ("float16",):
        return
    ids = [r[0] for r in con.execute("SELECT DISTINCT image_id FROM images ORDER BY image_id").fetchall()]
    with progress("Upgrading: float16 embeddings as high and low bytes (schema 017)", len(ids), "images") as tick:
        done = -(2**31)
        for start in range(0, len(ids), BATCH_HALVES_IMAGES):
            batch = ids[start:start + BATCH_HALVES_IMAGES]
            rows = fetch_arrow(con, f"SELECT rowid AS row_id, {WHOLE_COLUMN} FROM windows WHERE image_id > ? "
                                    f"AND image_id <= ? AND {WHOLE_COLUMN} IS NOT NULL", [done, batch[-1]])
            if rows.num_rows:
                con.register("_split_halves", split_windows(rows))
                try:
                    con.execute(f"UPDATE windows SET {HI_COLUMN} = s.{HI_COLUMN}, {LO_COLUMN} = s.{LO_COLUMN} "
                                "FROM _split_halves s WHERE windows.rowid = s.row_id")  # fixed names
                finally:
                    con.unregister("_split_halves")
            done = batch[-1]
            tick(len(batch))
            log.info("schema 017: %d of %d images' float16 embeddings split", start + len(batch), len(ids))


def peak_segments_in_batches(con: duckdb.DuckDBPyConnection, sql: str, progress: Progress = no_progress) -> None:
    """Schema 022: concept_peaks' and concept_self_peaks' rows into concept_map_terms and
    concept_self_terms (each peak as its segment indexes), BATCH_IMAGES images per statement (in image
    order), with a bar counting images. The statements are 022's own: its macros, each image's segment
    centres, its checks that every row has its image and every peak is a centre, its tables, then its two INSERTs limited to each batch."""
    for name in ("lattice_origin", "lattice_first_start", "lattice_starts_before_end", "segment_start",
                 "segment_centre", "segment_of"):
        con.execute(statement(sql, f"CREATE OR REPLACE MACRO {name}("))
    for column in ("segment_centres_x", "segment_centres_y"):
        con.execute(statement(sql, f"ALTER TABLE images ADD COLUMN IF NOT EXISTS {column}"))
    con.execute(statement(sql, "UPDATE images SET"))
    for check in ("SELECT error('schema 022: concept_peaks holds rows of image '",
                  "SELECT error('schema 022: image ' || p.image_id || ' concept ' || p.synset_id || ': the peak",
                  "SELECT error('schema 022: image ' || p.image_id || ' concept ' || p.synset_id || ': the self"):
        con.execute(statement(sql, check))
    inserts = []
    for table in ("concept_map_terms", "concept_self_terms"):
        con.execute(statement(sql, f"CREATE TABLE IF NOT EXISTS {table}"))
        insert = statement(sql, f"INSERT INTO {table}")
        where = f"WHERE p.image_id > (SELECT coalesce(max(image_id), -2147483648) FROM {table})"
        if where not in insert:
            raise RuntimeError(f"schema 022's INSERT INTO {table} changed; update peak_segments_in_batches")
        inserts.append(insert.replace(where, "WHERE p.image_id > ? AND p.image_id <= ?"))
    ids = [r[0] for r in con.execute("SELECT DISTINCT image_id FROM images ORDER BY image_id").fetchall()]
    with progress("Upgrading: peaks as segment indexes (schema 022)", len(ids), "images") as tick:
        done = -(2**31)  # batches cover every id up to the last image's
        for start in range(0, len(ids), BATCH_IMAGES):
            batch = ids[start:start + BATCH_IMAGES]
            for insert in inserts:
                con.execute(insert, [done, batch[-1]])
            done = batch[-1]
            tick(len(batch))
            log.info("schema 022: %d of %d images' peaks moved", start + len(batch), len(ids))


def segment_centres_sql() -> str:
    """Schema 022's UPDATE that fills images.segment_centres_x / _y from each image's lattice with its SQL
    macros, for images rows inserted in SQL (tests, benchmarks, a tool of one's own); convis-db's writers
    fill them from the engine's segments (image_store.with_segment_centres)."""
    from convis_db.store.migrations import available_migrations

    (sql,) = [m.sql for m in available_migrations() if m.version == 22]
    return statement(sql, "UPDATE images SET")


#: version -> step(con, the version's SQL, progress)
STEPS = {12: window_top_in_batches, 13: concept_peaks_in_batches, 16: self_peaks_in_batches,
         17: split_halves_in_batches, 22: peak_segments_in_batches}

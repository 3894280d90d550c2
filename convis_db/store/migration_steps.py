"""Work a migration does before its SQL, where a big file needs a progress bar (store/migrations.py).

Each step runs inside the migration's transaction, before the SQL of its version, and leaves the SQL
less to do; the SQL alone gives the same result (tests build older files by applying the SQL only).
"""

from __future__ import annotations

import logging

import duckdb

from convis_db.progress import Progress, no_progress

log = logging.getLogger(__name__)

#: Images converted per statement by window_top_in_batches and concept_peaks_in_batches.
BATCH_IMAGES = 1_000
#: Concepts converted per statement by concept_peaks_in_batches (concept_index's rows, in concept order).
BATCH_CONCEPTS = 500


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


#: version -> step(con, the version's SQL, progress)
STEPS = {12: window_top_in_batches, 13: concept_peaks_in_batches, 16: self_peaks_in_batches}

"""Maintain concept_index, the concept-sorted copy of image_scores (see schema/004_concept_index.sql;
005 adds the image-level counts to both, 010 renames the peaks to work_*: working pixels).

Only writers call these, and a writable connection is migrated, so the current names are used."""

from __future__ import annotations

import logging

import duckdb

from convis_db.store.transaction import transaction

log = logging.getLogger(__name__)

#: Rebuild into one sorted run when more runs than this have been appended.
MAX_RUNS = 8
#: The columns of concept_index, all copied from image_scores.
COLUMNS = ("synset_id, image_id, score, work_peak_x, work_peak_y, self_score, work_self_peak_x, work_self_peak_y, "
           "image_max_rank_less, image_rank_less")


def refresh_concept_index(con: duckdb.DuckDBPyConnection, max_runs: int = MAX_RUNS) -> int:
    """Append the images past the watermark as one sorted run; rebuild when runs pile up.

    Returns the number of images indexed now. Safe to call at any time; each step is one transaction.
    """
    watermark, runs = con.execute("SELECT indexed_through, runs FROM concept_index_state").fetchone()
    newest = con.execute("SELECT coalesce(max(image_id), 0), count(*) FILTER (WHERE image_id > ?) FROM images",
                         [watermark]).fetchone()
    top, pending = int(newest[0]), int(newest[1])
    if pending:
        with transaction(con):
            con.execute(
                f"""INSERT INTO concept_index ({COLUMNS})
                    SELECT {COLUMNS} FROM image_scores WHERE image_id > ? AND image_id <= ?
                    ORDER BY synset_id, score DESC, image_id""", [watermark, top])  # fixed column list
            con.execute("UPDATE concept_index_state SET indexed_through = ?, runs = runs + 1", [top])
        runs += 1
        log.info("concept index: appended %d images as run %d", pending, runs)
    if runs > max_runs:
        rebuild_concept_index(con)
    return pending


def rebuild_concept_index(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite concept_index as a single run sorted by (synset_id, score DESC)."""
    with transaction(con):
        con.execute("CREATE TEMP TABLE _ci AS SELECT * FROM concept_index ORDER BY synset_id, score DESC, image_id")
        con.execute("DELETE FROM concept_index")
        con.execute("INSERT INTO concept_index SELECT * FROM _ci ORDER BY synset_id, score DESC, image_id")
        con.execute("DROP TABLE _ci")
        con.execute("UPDATE concept_index_state SET runs = 1")
    con.execute("CHECKPOINT")
    log.info("concept index rebuilt as one sorted run")


def index_lacks_image_level(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether concept_index holds copies made before their image got image-level scores (a backfill
    that was killed before its final reindex)."""
    return bool(con.execute(
        """SELECT EXISTS (SELECT 1 FROM concept_index
                          WHERE image_max_rank_less IS NULL
                            AND image_id IN (SELECT image_id FROM image_embeddings))""").fetchone()[0])


def reindex_from_scores(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite concept_index from image_scores as one sorted run (after image-level scores were added to
    stored images: their rows in the index are copies made before). One transaction."""
    with transaction(con):
        watermark = con.execute("SELECT indexed_through FROM concept_index_state").fetchone()[0]
        con.execute("DELETE FROM concept_index")
        con.execute(f"""INSERT INTO concept_index ({COLUMNS})
                        SELECT {COLUMNS} FROM image_scores WHERE image_id <= ?
                        ORDER BY synset_id, score DESC, image_id""", [watermark])  # fixed column list
        con.execute("UPDATE concept_index_state SET runs = 1")
    con.execute("CHECKPOINT")
    log.info("concept index rewritten with the image-level scores")

"""Maintain the concept-sorted search keys (schema 004's concept_index; since schema 013 the table
concept_order, with concept_index a view over it and concept_peaks).

concept_order holds, per (concept, image) of concept_peaks, what search ranks and filters by: the map
peak's exact terms (map_sum, map_windows) and the image-level count, in sorted runs of (synset_id, map
peak descending, image_id). Images past concept_index_state's watermark are read from concept_peaks by
the concept_rows macro until a refresh appends them as one more run.

Since schema 019 the refresh also keeps concept_top: each concept's best TOP_KEEP indexed images per
ranking (image level, map), with their peaks, so that a search for at most TOP_KEEP images reads those
rows instead of one key per image of the collection (issue 24, queries at 1M images). Its rows are a
fixed cost (at most 2 x TOP_KEEP per concept), so it is kept from TOP_FROM indexed images on;
concept_index_state.top_through says through which image it is complete (NULL: not kept). Since schema
020 concept_counts is kept with it, from the same images: each concept's number of indexed images per
ranking, so that `count` answers from a few rows too.

Only writers call these (readers: `all_indexed`, `top_kept`), and a writable connection is migrated,
so the current names are used."""

from __future__ import annotations

import logging

import duckdb

from convis_db.store.transaction import transaction

log = logging.getLogger(__name__)

#: Rebuild into one sorted run when more runs than this have been appended.
MAX_RUNS = 8
#: The columns of concept_order, all copied from concept_peaks.
COLUMNS = "synset_id, image_id, map_sum, map_windows, image_max_rank_less"
#: concept_order's sort: by concept, the map peak (map_sum / (map_windows * |T|)) descending, the image.
#: It lays rows out for zonemaps (|T| left out: the same order); queries order their results themselves.
ORDER = "synset_id, map_sum::DOUBLE / map_windows::DOUBLE DESC, image_id"
#: Images kept per concept and ranking in concept_top: searches for at most this many read it (`search`'s
#: default 20, the explorer's first four pages of 24). The same number is written in schema 019's
#: images_with macro (tests/test_concept_top.py holds them equal).
TOP_KEEP = 100
#: Indexed images from which concept_top is kept: below it a concept's keys are few enough to rank (about
#: 2 ms for 10,000), and the lists (up to 2 x TOP_KEEP x |T| rows, about 10 MB at |T| = 7,080: 1 KB per
#: image at 10,000 images) would cost more bytes per image than they save time.
TOP_FROM = 10_000


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
                f"""INSERT INTO concept_order ({COLUMNS})
                    SELECT {COLUMNS} FROM concept_map_terms WHERE image_id > ? AND image_id <= ?
                    ORDER BY {ORDER}""", [watermark, top])  # fixed column list
            con.execute("UPDATE concept_index_state SET indexed_through = ?, runs = runs + 1", [top])
            _keep_top(con, watermark, top)
        runs += 1
        log.info("concept index: appended %d images as run %d", pending, runs)
    if runs > max_runs:
        rebuild_concept_index(con)
    return pending


def all_indexed(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether concept_order holds every stored image's keys: no image is past the watermark (the usual
    state after ingest, whose refresh follows each batch). Then concept_keys' second branch (concept_peaks'
    rows past the watermark) is empty, and a query may read concept_order alone: that branch's scan checks
    the statistics of every concept_peaks row group, a cost that grows with the collection (issue 24).
    One look at images' image ids (concept_peaks rows are written with their image's row, in one
    transaction), which skips images' row groups by their statistics."""
    watermark = con.execute("SELECT indexed_through FROM concept_index_state").fetchone()[0]
    return not con.execute("SELECT EXISTS (SELECT 1 FROM images WHERE image_id > ?)", [watermark]).fetchone()[0]


def rebuild_concept_index(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite concept_order as a single run sorted by (synset_id, map peak descending)."""
    with transaction(con):
        con.execute(f"CREATE TEMP TABLE _ci AS SELECT {COLUMNS} FROM concept_order ORDER BY {ORDER}")
        con.execute("DELETE FROM concept_order")
        con.execute(f"INSERT INTO concept_order ({COLUMNS}) SELECT {COLUMNS} FROM _ci ORDER BY {ORDER}")
        con.execute("DROP TABLE _ci")
        con.execute("UPDATE concept_index_state SET runs = 1")
    con.execute("CHECKPOINT")
    log.info("concept index rebuilt as one sorted run")


def index_lacks_image_level(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether concept_order holds copies made before their image got image-level scores (a backfill
    that was killed before its final reindex)."""
    return bool(con.execute(
        """SELECT EXISTS (SELECT 1 FROM concept_order
                          WHERE image_max_rank_less IS NULL
                            AND image_id IN (SELECT image_id FROM image_embeddings))""").fetchone()[0])


def reindex_from_scores(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite concept_order from concept_peaks as one sorted run (after image-level scores were added to
    stored images: their rows in the index are copies made before). One transaction."""
    with transaction(con):
        watermark = con.execute("SELECT indexed_through FROM concept_index_state").fetchone()[0]
        con.execute("DELETE FROM concept_order")
        con.execute(f"""INSERT INTO concept_order ({COLUMNS})
                        SELECT {COLUMNS} FROM concept_map_terms WHERE image_id <= ?
                        ORDER BY {ORDER}""", [watermark])  # fixed column list
        con.execute("UPDATE concept_index_state SET runs = 1")
        _keep_top(con, watermark, watermark, rebuild=True)
    con.execute("CHECKPOINT")
    log.info("concept index rewritten with the image-level scores")


def rebuild_concept_top(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild concept_top from every indexed image (once there are TOP_FROM of them), in one transaction:
    for a file whose concept_order was written by other means (benchmarks/bench_queries.py)."""
    with transaction(con):
        watermark = con.execute("SELECT indexed_through FROM concept_index_state").fetchone()[0]
        _keep_top(con, watermark, watermark, rebuild=True)


def top_kept(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether concept_top holds every indexed image's place (kept, and complete through the index's
    watermark): then the best TOP_KEEP images of a concept are among its rows and the images past the
    watermark, and concept_counts counts every indexed image."""
    row = con.execute("SELECT top_through = indexed_through FROM concept_index_state").fetchone()
    return bool(row and row[0])


def _keep_top(con: duckdb.DuckDBPyConnection, before: int, through: int, rebuild: bool = False) -> None:
    """Bring concept_top and concept_counts up to date with the images indexed through `through` (the
    caller's transaction): merge in the images after `before` when they were complete through `before`,
    else rebuild them from every indexed image once there are TOP_FROM of them (schema 019's
    concept_top_rows and 020's concept_counts_rows, the one rule each)."""
    kept = con.execute("SELECT top_through FROM concept_index_state").fetchone()[0]
    if kept is not None and kept == before and not rebuild:
        after = before
    elif con.execute("SELECT count(*) FROM images WHERE image_id <= ?", [through]).fetchone()[0] >= TOP_FROM:
        con.execute("DELETE FROM concept_top")
        con.execute("DELETE FROM concept_counts")
        after = 0
    else:
        if kept is not None:  # not enough images (or the lists fell behind): drop them
            con.execute("DELETE FROM concept_top")
            con.execute("DELETE FROM concept_counts")
            con.execute("UPDATE concept_index_state SET top_through = NULL")
        return
    con.execute("CREATE TEMP TABLE _top AS SELECT * FROM concept_top_rows(?, ?, ?)", [after, through, TOP_KEEP])
    con.execute("DELETE FROM concept_top")
    con.execute("INSERT INTO concept_top SELECT * FROM _top ORDER BY level, synset_id")
    con.execute("DROP TABLE _top")
    # schema 020: the concepts' image counts, of the same images (concept_counts_rows, the one rule)
    con.execute("CREATE TEMP TABLE _counts AS SELECT * FROM concept_counts_rows(?, ?)", [after, through])
    con.execute("DELETE FROM concept_counts")
    con.execute("INSERT INTO concept_counts SELECT * FROM _counts ORDER BY synset_id")
    con.execute("DROP TABLE _counts")
    con.execute("UPDATE concept_index_state SET top_through = ?", [through])
    log.info("concept top lists: %s through image %d", "merged" if after else "built", through)

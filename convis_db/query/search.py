"""`search`: images ranked by their stored score for a concept (which covers its descendants).

Two scores exist per image and concept (schema 005):

* ``image``: the paper's image-level max_rank_sim, of the whole image's embedding x = E_I(x), as an
  exact count |T| * max_rank_sim. It is what the paper validates as an image-level score (Table I):
  "is this a picture of X".
* ``map``: the peak of the concept's saliency map (windows): "is there X somewhere in the picture",
  small objects included, with the peak's location.

The default is ``image`` when the database has image-level scores, else ``map`` (databases made before
schema 005, until `convis-db ingest --backfill-image-level`). Ties of the integer image-level counts
are broken by the map score, then by image id.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from convis_db.engine.pixels import sql_original_point
from convis_db.errors import UsageError
from convis_db.store.concept_index import TOP_KEEP, all_indexed, top_kept
from convis_db.store.hierarchy_store import find_synset_name, synset_count
from convis_db.store.image_store import image_level_counts

LEVELS = ("image", "map")

#: concept_keys(sid)'s first branch alone (schema 013's macro: the same columns, the same expressions,
#: so the same DOUBLEs): what the macro answers when no image is past the index's watermark, without
#: its scan of concept_peaks' rows past it, which checks every concept_peaks row group's statistics
#: (issue 24: 6,848 of them at 1M images). One parameter, the synset id.
INDEXED_KEYS = """(SELECT synset_id, image_id,
           map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
           image_max_rank_less
    FROM concept_order WHERE synset_id = ?)"""
#: concept_rows(sid) over INDEXED_KEYS (schema 016's macro, the same columns and expressions: a leaf's
#: self terms are its map terms, an inner concept's come from concept_self_peaks, which DuckDB filters
#: by the keys' synset id).
INDEXED_ROWS = f"""(SELECT k.synset_id, k.image_id, k.map_peak AS score, p.work_peak_x, p.work_peak_y,
           CASE WHEN s.synset_id IS NULL
                THEN p.map_sum::DOUBLE / (p.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE)
                ELSE s.self_sum::DOUBLE / (s.self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE)
           END AS self_score,
           CASE WHEN s.synset_id IS NULL THEN p.work_peak_x ELSE s.work_self_peak_x END AS work_self_peak_x,
           CASE WHEN s.synset_id IS NULL THEN p.work_peak_y ELSE s.work_self_peak_y END AS work_self_peak_y,
           k.image_max_rank_less,
           CASE WHEN k.image_max_rank_less IS NULL THEN NULL
                WHEN s.synset_id IS NULL THEN p.image_max_rank_less ELSE s.image_rank_less END AS image_rank_less
    FROM {INDEXED_KEYS} k
    JOIN concept_peaks p ON p.image_id = k.image_id AND p.synset_id = k.synset_id
    LEFT JOIN concept_self_peaks s ON s.image_id = k.image_id AND s.synset_id = k.synset_id)"""


def keys_source(con: duckdb.DuckDBPyConnection, only_self: bool = False) -> str:
    """The concept's rows as a FROM item with one parameter, the synset id: the macro concept_keys (or
    concept_rows with only_self, which needs the self peak) while images wait past the index's
    watermark, else the same rows read from concept_order alone (INDEXED_KEYS, INDEXED_ROWS)."""
    if all_indexed(con):
        return INDEXED_ROWS if only_self else INDEXED_KEYS
    return "concept_rows(?)" if only_self else "concept_keys(?)"
BACKFILL_HINT = "convis-db ingest --backfill-image-level"


def choose_level(con: duckdb.DuckDBPyConnection, by: str | None) -> tuple[str, list[str]]:
    """(the score to rank by, notes for the user): `by` if given, else image where the database has
    image-level scores, else map. The notes say how many images lack image-level scores."""
    if by is not None and by not in LEVELS:
        raise UsageError(f"--by {by!r} is not one of: {', '.join(LEVELS)}.")
    have, total = image_level_counts(con)
    notes: list[str] = []
    if by is None:
        by = "image" if have else "map"
        if not have and total:
            notes.append(f"no image of the {total} has image-level scores (ingested before convis-db stored "
                         f"them), so images are ranked by their map score; add them with: {BACKFILL_HINT}")
    if by == "image" and have < total:
        notes.append(f"{total - have} of {total} images have no image-level scores and are left out; add them "
                     f"with: {BACKFILL_HINT} (re-ingesting skips stored files), or rank by --by map")
    return by, notes


@dataclass(frozen=True)
class Ranking:
    """How `search` scores and orders the rows of `source` (aliased `sc`, joined to images `i`): SQL
    expressions built from fixed column names only, in one place for search_images and count_images.
    It ranks as schema 010's `images_with` macro does (tests/test_queries.py holds them equal): `score`
    descending, then the map score, then the image id.

    `source` holds the concept's rows (keys_source): `concept_keys(sid)` (schema 013: the search keys
    only, concept_order's slim rows) unless only_self needs the self peak, `concept_rows(sid)`, or their
    concept_order-only forms when no image waits past the index's watermark. The peaks' pixels are
    read for the returned rows only (`peak_x`, `peak_y`)."""

    sid: int
    by: str
    source: str       # a FROM item with one parameter, the synset id (keys_source)
    score: str        # the `by` score
    map_score: str    # the map peak (of the synset alone with only_self)
    image_score: str  # the image-level score (NULL for images ingested without it)
    peak_x: str       # the map peak's working pixel: p.work_peak_x of concept_peaks, or with only_self
    peak_y: str       # h.work_self_peak_x of the hits (concept_rows' self terms; schema 016 keeps a leaf's
                      # in concept_peaks' map columns, an inner concept's in concept_self_peaks)

    @property
    def indexed(self) -> bool:
        """Whether `source` reads concept_order alone: every image was indexed when the ranking was made
        (keys_source asked all_indexed), so concept_top and concept_counts may answer for it."""
        return self.source in (INDEXED_KEYS, INDEXED_ROWS)

    @property
    def hit_columns(self) -> str:
        """The source's columns a search keeps beside its keys: the self peak's pixels with only_self."""
        return ", sc.work_self_peak_x, sc.work_self_peak_y" if self.peak_x.startswith("h.") else ""

    def order_by(self, image_id: str) -> str:
        """The ORDER BY of the ranking, the image id column named `image_id`."""
        return f"{self.score} DESC, {self.map_score} DESC, {image_id}" if self.by == "image" \
            else f"{self.map_score} DESC, {image_id}"


def ranking(con: duckdb.DuckDBPyConnection, concept: str, by: str | None = None, only_self: bool = False) -> Ranking:
    """The Ranking of `concept` by `by` (see choose_level); only_self: the synset alone."""
    by, _ = choose_level(con, by)
    sid = find_synset_name(con, concept)
    mapped, px, py = (("sc.self_score", "h.work_self_peak_x", "h.work_self_peak_y") if only_self
                      else ("sc.map_peak", "p.work_peak_x", "p.work_peak_y"))
    source = keys_source(con, only_self)
    level = "sc.image_rank_less" if only_self else "sc.image_max_rank_less"
    image_score = f"{level} / {synset_count(con)}::DOUBLE"
    return Ranking(sid, by, source, image_score if by == "image" else mapped, mapped, image_score, px, py)


def search_images(con: duckdb.DuckDBPyConnection, concept: str, min_score: float = 0.0, limit: int = 20,
                  only_self: bool = False, by: str | None = None) -> list[dict]:
    """Images whose score for `concept` is at least `min_score`, best first, with the peak in original pixels.

    `by` (see choose_level): "image" ranks by the image-level max_rank_sim (images without it are left
    out), "map" by the peak of the max_rank_sim map; with only_self, rank_sim of the synset alone.
    Each row holds `score` (the chosen one), `map_score` and `image_score` (None where not computed).
    """
    r = ranking(con, concept, by, only_self)
    if not only_self and 0 <= limit <= TOP_KEEP and r.indexed and top_kept(con):
        rows = _search_kept(con, r, float(min_score), int(limit))
    else:
        rows = _search_keys(con, r, float(min_score), int(limit))
    keys = ("image_id", "path", "score", "map_score", "image_score", "peak_x", "peak_y", "width", "height")
    return [dict(zip(keys, row)) | {"synset": concept, "by": r.by} for row in rows]


#: concept_top's rows of one concept and ranking (parameters: the level, the synset id) as the columns
#: Ranking's expressions read (`sc.map_peak`, `sc.image_max_rank_less`), with their peaks.
KEPT_ROWS = """(SELECT image_id, work_peak_x, work_peak_y, image_max_rank_less,
           map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak
    FROM concept_top WHERE level = ? AND synset_id = ?)"""


def _search_kept(con: duckdb.DuckDBPyConnection, r: Ranking, min_score: float, limit: int) -> list[tuple]:
    """search_images' rows from concept_top (schema 019): the concept's best TOP_KEEP images of the
    ranking, with their peaks, hold its best `limit` when every image is indexed (the caller checks),
    so neither the concept's keys nor concept_peaks are read (issue 24: constant at any size)."""
    return con.execute(
        f"""WITH hits AS (
                SELECT sc.image_id, {r.score} AS score, {r.map_score} AS map_score, {r.image_score} AS image_score,
                       sc.work_peak_x, sc.work_peak_y
                FROM {KEPT_ROWS} sc
                WHERE {r.score} >= ?
                ORDER BY {r.order_by("sc.image_id")}
                LIMIT ?)
            SELECT i.image_id, i.path, h.score, h.map_score, h.image_score,
                   {sql_original_point("h.work_peak_x")} AS peak_x,
                   {sql_original_point("h.work_peak_y")} AS peak_y, i.width, i.height
            FROM hits h JOIN images i ON i.image_id = h.image_id
            ORDER BY h.score DESC, h.map_score DESC, h.image_id""",  # expressions from Ranking's fixed choices
        [r.by, r.sid, min_score, limit]).fetchall()


def _search_keys(con: duckdb.DuckDBPyConnection, r: Ranking, min_score: float, limit: int) -> list[tuple]:
    """search_images' rows from the concept's keys (every image's), the peaks read for the hits."""
    # The best `limit` of the concept's rows first (its keys: concept_order's row groups only), then the
    # peaks' pixels and the image records of those rows alone: a join with at most `limit` rows, which
    # DuckDB turns into a filter on concept_peaks' image ids. No other image's rows are read.
    return con.execute(
        f"""WITH hits AS (
                SELECT sc.image_id, {r.score} AS score, {r.map_score} AS map_score, {r.image_score} AS image_score
                       {r.hit_columns}
                FROM {r.source} sc
                WHERE {r.score} >= ?
                ORDER BY {r.order_by("sc.image_id")}
                LIMIT ?)
            SELECT i.image_id, i.path, h.score, h.map_score, h.image_score,
                   {sql_original_point(r.peak_x)} AS peak_x,
                   {sql_original_point(r.peak_y)} AS peak_y, i.width, i.height
            FROM hits h JOIN concept_peaks p ON p.image_id = h.image_id AND p.synset_id = ?
            JOIN images i ON i.image_id = h.image_id
            ORDER BY h.score DESC, h.map_score DESC, h.image_id""",  # expressions from Ranking's fixed choices
        [r.sid, min_score, limit, r.sid],
    ).fetchall()


def count_images(con: duckdb.DuckDBPyConnection, concept: str, min_score: float = 0.0, only_self: bool = False,
                 by: str | None = None) -> int:
    """How many images search_images would list without a limit.

    From the concept's kept rows where they decide it (_count_kept: every indexed image counted, at no
    threshold or one that fewer images pass than its list holds), else by counting its keys."""
    r = ranking(con, concept, by, only_self)
    if not only_self and r.indexed:
        kept = _count_kept(con, r, float(min_score))
        if kept is not None:
            return kept
    return int(con.execute(f"SELECT count(*) FROM {r.source} sc WHERE {r.score} >= ?",  # Ranking's expressions
                           [r.sid, float(min_score)]).fetchone()[0])


def _count_kept(con: duckdb.DuckDBPyConnection, r: Ranking, min_score: float) -> int | None:
    """count_images from schema 020's concept_counts and 019's concept_top when they decide it, else None
    (the caller counts the keys). The caller checks that every image is indexed; the lists and counts
    answer only when they are kept through the index's watermark (top_kept, in the same query).

    Every stored score is >= 0 (sums of rank counts over positive window counts), so at min_score <= 0 the
    count is the concept's images with a score of this ranking. Above it, the concept's list holds its
    best images in the ranking's order: when it holds all of them, or its last is below min_score (an
    image left out ranks at or below the last), the images passing are in the list. One row decides."""
    row = con.execute("""SELECT c.map_images, c.image_images, c.image_last / (SELECT count(*) FROM synsets)::DOUBLE,
                                c.map_last
                         FROM concept_counts c, concept_index_state st
                         WHERE c.synset_id = ? AND st.top_through = st.indexed_through""", [r.sid]).fetchone()
    if row is None:  # not kept (or kept behind the index): count the keys
        return None
    scored, last = (row[1], row[2]) if r.by == "image" else (row[0], row[3])
    if min_score <= 0:
        return int(scored)
    if scored > TOP_KEEP and not (last is not None and last < min_score):
        return None
    return int(con.execute(f"SELECT count(*) FROM {KEPT_ROWS} sc WHERE {r.score} >= ?",  # Ranking's expressions
                           [r.by, r.sid, min_score]).fetchone()[0])

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
from convis_db.store.hierarchy_store import find_synset_name, synset_count
from convis_db.store.image_store import has_column, image_level_counts, work_peak_columns
from convis_db.store.migrations import has_macro

LEVELS = ("image", "map")
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
    """How `search` scores and orders the rows of `concept_rows(sid)` (aliased `sc`, joined to images
    `i`): SQL expressions built from fixed column names only, in one place for search_images and
    count_images. It ranks as schema 010's `images_with` macro does (tests/test_queries.py holds them
    equal): `score` descending, then the map score, then the image id."""

    sid: int
    by: str
    score: str        # the `by` score
    map_score: str    # the map peak (of the synset alone with only_self)
    image_score: str  # the image-level score; NULL::DOUBLE on a file without those columns
    peak_x: str       # the map peak's working pixel, a column of sc
    peak_y: str

    keys: bool = False  # the scores come from concept_keys (schema 014): no pixel, the peaks read after

    @property
    def order(self) -> str:
        return self.order_by("i.image_id")

    def order_by(self, image_id: str) -> str:
        return f"{self.score} DESC, {self.map_score} DESC, {image_id}" if self.by == "image" \
            else f"{self.map_score} DESC, {image_id}"

    @property
    def rows(self) -> str:
        """The table macro the scores are read from, called with the synset id."""
        return "concept_keys(?)" if self.keys else "concept_rows(?)"


def ranking(con: duckdb.DuckDBPyConnection, concept: str, by: str | None = None, only_self: bool = False) -> Ranking:
    """The Ranking of `concept` by `by` (see choose_level); only_self: the synset alone."""
    by, _ = choose_level(con, by)
    sid = find_synset_name(con, concept)
    peaks = work_peak_columns(con)  # working pixels, under the names this file uses
    mapped, px, py = (("sc.self_score", peaks["work_self_peak_x"], peaks["work_self_peak_y"]) if only_self
                      else ("sc.score", peaks["work_peak_x"], peaks["work_peak_y"]))
    if has_column(con, "image_scores", "image_rank_less"):
        level = "sc.image_rank_less" if only_self else "sc.image_max_rank_less"
        image_score = f"{level} / {synset_count(con)}::DOUBLE"
    else:  # a database at schema 004, opened read-only: no image-level scores
        image_score = "NULL::DOUBLE"
    keys = not only_self and has_macro(con, "concept_keys")
    return Ranking(sid, by, image_score if by == "image" else mapped, mapped, image_score, f"sc.{px}", f"sc.{py}",
                   keys)


def search_images(con: duckdb.DuckDBPyConnection, concept: str, min_score: float = 0.0, limit: int = 20,
                  only_self: bool = False, by: str | None = None) -> list[dict]:
    """Images whose score for `concept` is at least `min_score`, best first, with the peak in original pixels.

    `by` (see choose_level): "image" ranks by the image-level max_rank_sim (images without it are left
    out), "map" by the peak of the max_rank_sim map; with only_self, rank_sim of the synset alone.
    Each row holds `score` (the chosen one), `map_score` and `image_score` (None where not computed).
    """
    r = ranking(con, concept, by, only_self)
    if r.keys:  # the best `limit` from the concept's keys, then their peaks: no other image's rows are read
        rows = con.execute(
            f"""WITH best AS (
                    SELECT sc.image_id, sc.synset_id, {r.score} AS score, {r.map_score} AS map_score,
                           {r.image_score} AS image_score
                    FROM concept_keys(?) sc WHERE {r.score} >= ?
                    ORDER BY {r.order_by("sc.image_id")} LIMIT ?)
                SELECT i.image_id, i.path, b.score, b.map_score, b.image_score,
                       {sql_original_point("p.work_peak_x")} AS peak_x, {sql_original_point("p.work_peak_y")} AS peak_y,
                       i.width, i.height
                FROM best b JOIN concept_peaks p ON p.image_id = b.image_id AND p.synset_id = b.synset_id
                JOIN images i ON i.image_id = b.image_id
                ORDER BY b.score DESC, b.map_score DESC, b.image_id""",  # expressions from Ranking's fixed choices
            [r.sid, float(min_score), int(limit)],
        ).fetchall()
        return _search_rows(rows, concept, r.by)
    rows = con.execute(
        f"""SELECT i.image_id, i.path, {r.score} AS score, {r.map_score} AS map_score, {r.image_score} AS image_score,
                   {sql_original_point(r.peak_x)} AS peak_x, {sql_original_point(r.peak_y)} AS peak_y,
                   i.width, i.height
            FROM concept_rows(?) sc JOIN images i ON i.image_id = sc.image_id
            WHERE {r.score} >= ?
            ORDER BY {r.order}
            LIMIT ?""",  # expressions from Ranking's fixed choices
        [r.sid, float(min_score), int(limit)],
    ).fetchall()
    return _search_rows(rows, concept, r.by)


def _search_rows(rows: list[tuple], concept: str, by: str) -> list[dict]:
    keys = ("image_id", "path", "score", "map_score", "image_score", "peak_x", "peak_y", "width", "height")
    return [dict(zip(keys, row)) | {"synset": concept, "by": by} for row in rows]


def count_images(con: duckdb.DuckDBPyConnection, concept: str, min_score: float = 0.0, only_self: bool = False,
                 by: str | None = None) -> int:
    """How many images search_images would list without a limit."""
    r = ranking(con, concept, by, only_self)
    return int(con.execute(f"SELECT count(*) FROM {r.rows} sc WHERE {r.score} >= ?",  # Ranking's expressions
                           [r.sid, float(min_score)]).fetchone()[0])

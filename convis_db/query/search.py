"""`search`: images ranked by their stored score for a concept (which covers its descendants)."""

from __future__ import annotations

import duckdb

from convis_db.store.hierarchy_store import find_synset_name


def search_images(con: duckdb.DuckDBPyConnection, concept: str, min_score: float = 0.0, limit: int = 20,
                  only_self: bool = False) -> list[dict]:
    """Images whose score for `concept` is at least `min_score`, best first, with the peak in original pixels.

    score is the peak of the max_rank_sim map (the concept or any descendant); with only_self the
    peak of the rank_sim map of the synset alone.
    """
    sid = find_synset_name(con, concept)
    score, px, py = ("self_score", "self_peak_x", "self_peak_y") if only_self else ("score", "peak_x", "peak_y")
    rows = con.execute(
        f"""SELECT i.image_id, i.path, sc.{score} AS score,
                   CAST(round((sc.{px} + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_x,
                   CAST(round((sc.{py} + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_y,
                   i.width, i.height
            FROM concept_rows(?) sc JOIN images i ON i.image_id = sc.image_id
            WHERE sc.{score} >= ?
            ORDER BY sc.{score} DESC, i.image_id
            LIMIT ?""",  # column names from the fixed tuples above
        [sid, float(min_score), int(limit)],
    ).fetchall()
    keys = ("image_id", "path", "score", "peak_x", "peak_y", "width", "height")
    return [dict(zip(keys, r)) | {"synset": concept} for r in rows]

"""The one home of "an image's best concepts": synsets ranked by the peak of their own map
(self_score: the concept alone, its descendants left out), so the most specific matches come
first; ties go to the deeper synset, then the name. The API's `top_concepts`, the demo and the
explorer all read them here.
"""

from __future__ import annotations

import duckdb

_RANKED = """SELECT sc.image_id, s.name, sc.self_score, sc.score, s.definition
             FROM image_scores sc JOIN synsets s USING (synset_id)"""
_ORDER = "sc.self_score DESC, s.depth DESC, s.name"


def top_concepts(con: duckdb.DuckDBPyConnection, image_id: int, k: int = 5) -> list[dict]:
    """The `k` best concepts of one stored image: synset, self_score, score, definition."""
    rows = con.execute(f"{_RANKED} WHERE sc.image_id = ? ORDER BY {_ORDER} LIMIT ?", [image_id, k]).fetchall()
    return [{"synset": r[1], "self_score": float(r[2]), "score": float(r[3]), "definition": r[4]} for r in rows]


def best_concept_of_images(con: duckdb.DuckDBPyConnection, image_ids: list[int]) -> dict[int, dict]:
    """image_id -> each image's first concept in top_concepts' order (the same keys)."""
    if not image_ids:
        return {}
    rows = con.execute(f"""{_RANKED} WHERE sc.image_id IN (SELECT unnest(?::INTEGER[]))
                           QUALIFY row_number() OVER (PARTITION BY sc.image_id ORDER BY {_ORDER}) = 1""",
                       [image_ids]).fetchall()
    return {r[0]: {"synset": r[1], "self_score": float(r[2]), "score": float(r[3]), "definition": r[4]} for r in rows}

"""Writing explanations to the mutual_* tables (schema/008_mutual.sql), one transaction each."""

from __future__ import annotations

import duckdb

from convis_db.mutual.explain import MutualExplanation
from convis_db.store.transaction import transaction


def write_explanation(con: duckdb.DuckDBPyConnection, exp: MutualExplanation, model_id: int,
                      bank_id: int | None = None) -> int:
    """Store one explanation (linked to the ingested image with the same sha256, if any); its id."""
    image_id = None
    if exp.sha256:
        row = con.execute("SELECT image_id FROM images WHERE sha256 = ?", [exp.sha256]).fetchone()
        image_id = int(row[0]) if row else None
    with transaction(con):
        eid = int(con.execute(
            """INSERT INTO mutual_explanations (image_id, path, sha256, model_id, bank, bank_id, labels, templates,
                   predicted, predicted_score, decomposition, settings_json, n_concepts, n_mutual, mi, auc)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING explanation_id""",
            [image_id, exp.image_path, exp.sha256, model_id, exp.bank_kind, bank_id, exp.labels, exp.templates,
             exp.predicted, exp.class_cosines[exp.predicted_index], exp.settings.decomposition,
             exp.settings.as_json(), len(exp.visual_concepts), len(exp.mutual_concepts), exp.mi, exp.auc],
        ).fetchone()[0])
        gh, gw = exp.grid
        con.executemany(
            "INSERT INTO mutual_visual_concepts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [[eid, v.index, v.n_patches, v.importance, *v.box, v.patch_mask.ravel().tolist(), gh, gw]
             for v in exp.visual_concepts])
        rows = []
        for v in exp.visual_concepts:
            rows += [[eid, "vision", v.index, r, t.entry, t.synset_id, t.text, t.score] for r, t in enumerate(v.texts, 1)]
        rows += [[eid, "language", None, r, t.entry, t.synset_id, t.text, t.score]
                 for r, t in enumerate(exp.language_concepts, 1)]
        rows += [[eid, "mutual", None, r, t.entry, t.synset_id, t.text, t.score]
                 for r, t in enumerate(exp.mutual_concepts, 1)]
        if rows:
            con.executemany("INSERT INTO mutual_textual_concepts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return eid

"""What a database holds, for `stats` and for people deciding whether a file is what they think."""

from __future__ import annotations

import os

import duckdb

from convis_db.models.precision import precision_label

COUNTED_TABLES = ("synsets", "isa_edges", "closure", "models", "definition_embeddings", "images", "windows",
                  "image_scores", "window_concepts", "image_embeddings", "ingest_failures", "merged_shards")


def database_stats(con: duckdb.DuckDBPyConnection, path: str) -> dict:
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    out: dict = {"db": str(path), "file_bytes": os.path.getsize(path) if os.path.exists(path) else 0}
    version = con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] if "schema_migrations" in tables else None
    out["schema_version"] = version
    from convis_db.store.image_store import embedding_storage

    out["window_embeddings"] = embedding_storage(con)  # init --embeddings: float32, float16 or none
    if "vocabulary" in tables:
        row = con.execute("SELECT name, n_words, len(missing_words), n_synsets, wordnet_version FROM vocabulary").fetchone()
        if row:
            from convis_db.store.hierarchy_store import stored_vocabulary

            out.update(vocabulary=row[0], vocabulary_words=row[1], missing_words=row[2], wordnet_version=row[4],
                       hierarchy=stored_vocabulary(con)["hierarchy"])
    for table in COUNTED_TABLES:
        if table == "window_concepts" and "window_top" in tables:  # a view: K rows per window_top row
            out[table] = int(con.execute("SELECT coalesce(sum(len(synset_ids)), 0) FROM window_top").fetchone()[0])
        elif table == "windows" and "window_embeddings" in tables:  # schema 021: a view, a row per window
            out[table] = int(con.execute("SELECT coalesce(sum(n_windows), 0) FROM images").fetchone()[0])
        elif table in tables:
            out[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # names from the allowlist above
    if "models" in tables:
        out["models_list"] = [f"{n} / {p}" + (" (random weights)" if r else "")
                              for n, p, r in con.execute("SELECT name, pretrained, is_random FROM models ORDER BY model_id").fetchall()]
    if "images" in tables:
        from convis_db.store.image_store import database_layout

        out["window_layout"] = database_layout(con)
        # Images with the image-level scores of schema 005 (older images need ingest --backfill-image-level).
        out["images_with_image_level"] = out.get("image_embeddings", 0)
    if out.get("images"):
        # The image encoder's precision per image ('unrecorded': ingested before schema 007).
        out["image_precisions"] = {precision_label(p): n for p, n in con.execute(
            "SELECT precision AS p, count(*) FROM images GROUP BY p ORDER BY p NULLS FIRST").fetchall()}
        # Rows per image, by construction: windows, |T| scores, windows x top_k concepts.
        out["windows_per_image"] = round(out["windows"] / out["images"], 1)
    return out

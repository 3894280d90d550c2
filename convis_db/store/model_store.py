"""Models and their definition embeddings in the database."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from convis_db.errors import DatabaseError, did_you_mean
from convis_db.models.clip import LoadedModel
from convis_db.models.registry import ModelSpec
from convis_db.store.arrow_io import fetch_arrow, insert_arrow, list_column_to_matrix, matrix_to_list_array


def find_model_id(con: duckdb.DuckDBPyConnection, spec: ModelSpec) -> int | None:
    row = con.execute("SELECT model_id, weights_sha256 FROM models WHERE name = ? AND pretrained = ?",
                      [spec.name, spec.pretrained]).fetchone()
    if row is None:
        return None
    if spec.weights_sha256 and row[1] and row[1] != spec.weights_sha256:
        raise DatabaseError(
            f"checkpoint {spec.pretrained} changed since it was stored (sha256 differs). "
            "Use a new database, or restore the original file."
        )
    return int(row[0])


def register_model(con: duckdb.DuckDBPyConnection, loaded: LoadedModel) -> int:
    spec = loaded.spec
    existing = find_model_id(con, spec)
    if existing is not None:
        return existing
    row = con.execute(
        """INSERT INTO models (name, pretrained, is_random, config_json, weights_sha256, embed_dim, image_size,
                               image_mean, image_std)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING model_id""",
        [spec.name, spec.pretrained, spec.is_random, spec.config_json, spec.weights_sha256, loaded.embed_dim,
         loaded.image_size, list(loaded.mean), list(loaded.std)],
    ).fetchone()
    return int(row[0])


def write_definition_embeddings(con: duckdb.DuckDBPyConnection, model_id: int, embeddings: np.ndarray,
                                precision: str | None = None) -> None:
    """Store the (|T|, D) definition embeddings and the text encoder's precision (fp32, bf16, fp16)."""
    table = pa.table({
        "model_id": pa.array(np.full(len(embeddings), model_id, np.int32)),
        "synset_id": pa.array(np.arange(len(embeddings), dtype=np.int32)),
        "embedding": matrix_to_list_array(embeddings),
    })
    insert_arrow(con, "definition_embeddings", table)
    if precision is not None:
        con.execute("UPDATE models SET definition_precision = ? WHERE model_id = ?", [precision, model_id])


def definition_precision(con: duckdb.DuckDBPyConnection, model_id: int) -> str | None:
    """The precision that embedded a model's definitions; None when written before schema 007."""
    row = con.execute("SELECT definition_precision FROM models WHERE model_id = ?", [model_id]).fetchone()
    return row[0] if row else None


def has_definition_embeddings(con: duckdb.DuckDBPyConnection, model_id: int) -> bool:
    return con.execute("SELECT count(*) FROM definition_embeddings WHERE model_id = ?", [model_id]).fetchone()[0] > 0


def load_definition_embeddings(con: duckdb.DuckDBPyConnection, model_id: int) -> np.ndarray:
    """The (|T|, D) float32 matrix of definition embeddings, row = synset_id."""
    tbl = fetch_arrow(con, "SELECT embedding FROM definition_embeddings WHERE model_id = ? ORDER BY synset_id",
                      [model_id])
    if tbl.num_rows == 0:
        raise DatabaseError(f"model {model_id} has no definition embeddings; run convis-db init with that model.")
    return list_column_to_matrix(tbl.column("embedding"))


def list_models(con: duckdb.DuckDBPyConnection) -> list[dict]:
    rows = con.execute(
        "SELECT model_id, name, pretrained, is_random, embed_dim, image_size, "
        "(SELECT count(*) FROM definition_embeddings d WHERE d.model_id = m.model_id) AS n_embeddings "
        "FROM models m ORDER BY model_id"
    ).fetchall()
    keys = ("model_id", "name", "pretrained", "is_random", "embed_dim", "image_size", "n_embeddings")
    return [dict(zip(keys, r)) for r in rows]


def model_row(con: duckdb.DuckDBPyConnection, model_id: int) -> dict:
    row = con.execute(
        "SELECT model_id, name, pretrained, is_random, config_json, weights_sha256, embed_dim, image_size, "
        "image_mean, image_std FROM models WHERE model_id = ?", [model_id]).fetchone()
    if row is None:
        raise DatabaseError(f"no model with id {model_id} in the database.")
    keys = ("model_id", "name", "pretrained", "is_random", "config_json", "weights_sha256", "embed_dim",
            "image_size", "image_mean", "image_std")
    return dict(zip(keys, row))


def pick_model(con: duckdb.DuckDBPyConnection, requested: ModelSpec | None) -> int:
    """The model a query should use: the requested one, or the only one with embeddings."""
    models = [m for m in list_models(con) if m["n_embeddings"]]
    if requested is not None:
        mid = find_model_id(con, requested)
        if mid is None or not any(m["model_id"] == mid for m in models):
            names = [f"{m['name']} / {m['pretrained']}" for m in models]
            raise DatabaseError(
                did_you_mean(f"{requested.name} / {requested.pretrained}", names, "model in this database",
                             "Run init with it first, or pick one of the stored models.")
            )
        return mid
    if not models:
        raise DatabaseError("the database has no model embeddings yet; run convis-db init --model ... --pretrained ...")
    return int(models[0]["model_id"])


def spec_from_row(row: dict) -> ModelSpec:
    """Rebuild the ModelSpec of a stored model (a config-file model needs its config re-registered)."""
    import json

    import open_clip

    from convis_db.paths import cache_dir

    name = row["name"]
    config_path = None
    if name not in open_clip.list_models():
        folder = cache_dir() / "model-configs"
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / f"{name}.json"
        config_path.write_text(json.dumps(json.loads(row["config_json"])))
    return ModelSpec(name=name, pretrained=row["pretrained"], config_path=str(config_path) if config_path else None,
                     config_json=row["config_json"], weights_sha256=row["weights_sha256"])

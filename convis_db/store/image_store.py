"""Write an image's explanation in one transaction, and read stored windows back for maps and queries."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from convis_db.engine.explainer import ImageExplanation
from convis_db.engine.settings import Settings
from convis_db.engine.windows import WindowGrid
from convis_db.errors import DatabaseError, NotFoundError
from convis_db.store.arrow_io import fetch_arrow, list_column_to_matrix, matrix_to_list_array
from convis_db.store.migrations import has_column


@dataclass
class StoredImage:
    image_id: int
    sha256: str
    path: str
    model_id: int
    width: int
    height: int
    work_width: int
    work_height: int
    scale: float
    settings: Settings
    grid_rows: int
    grid_cols: int
    n_windows: int
    precision: str | None = None    # fp32 | bf16 | fp16 of the image encoder; None: written before schema 007

    @property
    def grid(self) -> WindowGrid:
        s = self.settings
        return WindowGrid(self.work_height, self.work_width, s.stride, s.small, s.large)


_IMAGE_COLUMNS = ("image_id, sha256, path, model_id, width, height, work_width, work_height, scale, "
                  "max_pixels, stride, small, large, top_k, grid_rows, grid_cols, n_windows")


def _image_columns(con: duckdb.DuckDBPyConnection) -> str:
    """_IMAGE_COLUMNS and the precision (NULL in a database not yet migrated to schema 007)."""
    return _IMAGE_COLUMNS + (", precision" if has_column(con, "images", "precision") else ", NULL")


def _row_to_image(row) -> StoredImage:
    (image_id, sha, path, model_id, w, h, ww, wh, scale, max_pixels, stride, small, large, top_k,
     rows, cols, n, precision) = row
    return StoredImage(image_id, sha, path, model_id, w, h, ww, wh, scale,
                       Settings(max_pixels=max_pixels, stride=stride, small=small, large=large, top_k=top_k),
                       rows, cols, n, precision)


def find_by_sha(con: duckdb.DuckDBPyConnection, sha256: str) -> StoredImage | None:
    row = con.execute(f"SELECT {_image_columns(con)} FROM images WHERE sha256 = ?", [sha256]).fetchone()
    return _row_to_image(row) if row else None


def get_image(con: duckdb.DuckDBPyConnection, ref: str | int) -> StoredImage:
    """An image by id, by path (as given at ingest or absolute), or by sha256 prefix."""
    text = str(ref).strip()
    if text.isdigit():
        row = con.execute(f"SELECT {_image_columns(con)} FROM images WHERE image_id = ?", [int(text)]).fetchone()
        if row:
            return _row_to_image(row)
    import os

    row = con.execute(f"SELECT {_image_columns(con)} FROM images WHERE path = ? OR path = ? ORDER BY image_id LIMIT 1",
                      [text, os.path.abspath(text)]).fetchone()
    if row:
        return _row_to_image(row)
    if len(text) >= 8 and all(ch in "0123456789abcdef" for ch in text.lower()):
        row = con.execute(f"SELECT {_image_columns(con)} FROM images WHERE sha256 LIKE ? || '%' LIMIT 1",
                          [text.lower()]).fetchone()
        if row:
            return _row_to_image(row)
    n = con.execute("SELECT count(*) FROM images").fetchone()[0]
    raise NotFoundError(f"no stored image {text!r} (by id, path or sha256; the database holds {n} images). "
                        "List them with: convis-db sql \"SELECT image_id, path FROM images\"")


def stored_profile(con: duckdb.DuckDBPyConnection) -> tuple[int, Settings] | None:
    """The model and settings of the images already stored (one profile per database), if any."""
    row = con.execute("SELECT model_id, max_pixels, stride, small, large, top_k FROM images LIMIT 1").fetchone()
    if row is None:
        return None
    model_id, max_pixels, stride, small, large, top_k = row
    return model_id, Settings(max_pixels=max_pixels, stride=stride, small=small, large=large, top_k=top_k)


def write_image(con: duckdb.DuckDBPyConnection, exp: ImageExplanation, sha256: str, path: str, model_id: int,
                settings: Settings, precision: str | None = None) -> int:
    """Insert the image, its windows, its concept scores and its windows' top concepts in one transaction.

    `precision` is the image encoder's (fp32, bf16, fp16); ingest always gives it.
    """
    g = exp.grid
    n_syn = exp.n_synsets
    con.execute("BEGIN TRANSACTION")
    try:
        image_id = con.execute(
            """INSERT INTO images (sha256, path, model_id, width, height, work_width, work_height, scale, stride,
                                   small, large, max_pixels, top_k, grid_rows, grid_cols, n_windows, precision)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING image_id""",
            [sha256, path, model_id, exp.width, exp.height, g.width, g.height, exp.scale, settings.stride,
             settings.small, settings.large, settings.max_pixels, settings.top_k, g.rows, g.cols, g.n_windows,
             precision],
        ).fetchone()[0]
        nw = g.n_windows
        widx = np.arange(nw, dtype=np.int32)
        windows = pa.table({
            "image_id": pa.array(np.full(nw, image_id, np.int32)),
            "window_idx": widx,
            "grid_row": (widx // g.cols).astype(np.int32),
            "grid_col": (widx % g.cols).astype(np.int32),
            "x0": exp.boxes[:, 0], "y0": exp.boxes[:, 1], "x1": exp.boxes[:, 2], "y1": exp.boxes[:, 3],
            "embedding": matrix_to_list_array(exp.embeddings),
        })
        scores = pa.table({
            "image_id": pa.array(np.full(n_syn, image_id, np.int32)),
            "synset_id": np.arange(n_syn, dtype=np.int32),
            "score": exp.scores.score.astype(np.float64),
            "peak_x": exp.scores.x, "peak_y": exp.scores.y,
            "self_score": exp.self_scores.score.astype(np.float64),
            "self_peak_x": exp.self_scores.x, "self_peak_y": exp.self_scores.y,
        })
        k = exp.top_ids.shape[1]
        concepts = pa.table({
            "image_id": pa.array(np.full(nw * k, image_id, np.int32)),
            "window_idx": np.repeat(widx, k),
            "k": np.tile(np.arange(1, k + 1, dtype=np.int16), nw),
            "synset_id": exp.top_ids.reshape(-1).astype(np.int32),
            "rank_less": exp.top_rank_less.reshape(-1).astype(np.int32),
        })
        for name, table in (("windows", windows), ("image_scores", scores), ("window_concepts", concepts)):
            con.register("_rows", table)
            try:
                con.execute(f"INSERT INTO {name} SELECT * FROM _rows")  # table names from the tuple above
            finally:
                con.unregister("_rows")
        con.execute("DELETE FROM ingest_failures WHERE path = ?", [path])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return int(image_id)


def load_window_embeddings(con: duckdb.DuckDBPyConnection, image_id: int) -> np.ndarray:
    tbl = fetch_arrow(con, "SELECT embedding FROM windows WHERE image_id = ? ORDER BY window_idx", [image_id])
    if tbl.num_rows == 0:
        raise DatabaseError(f"image {image_id} has no stored windows; the database may be damaged. Re-ingest it.")
    return list_column_to_matrix(tbl.column("embedding"))


def record_failure(con: duckdb.DuckDBPyConnection, path: str, sha256: str | None, error: str) -> None:
    con.execute(
        """INSERT INTO ingest_failures (path, sha256, error) VALUES (?, ?, ?)
           ON CONFLICT (path) DO UPDATE SET error = excluded.error, sha256 = excluded.sha256,
               attempts = ingest_failures.attempts + 1, last_attempt = now()""",
        [path, sha256, error],
    )


def failed_paths(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT path FROM ingest_failures").fetchall()}

"""Write an image's explanation in one transaction, and read stored windows back for maps and queries.

Every reader here reads the current schema (schema/current.sql): a file an earlier convis-db wrote is
upgraded when it is opened (store/db.py). Shards of older runs are another matter: their rows may
carry the column names of before schema 010 (with_work_peak_names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from convis_db.engine.explainer import ImageExplanation
from convis_db.engine.saliency import grid_segments
from convis_db.engine.settings import Settings
from convis_db.engine.windows import DEFAULT_LAYOUT, WindowGrid
from convis_db.errors import DatabaseError, NotFoundError
from convis_db.store.arrow_io import fetch_arrow, insert_arrow, list_column_to_matrix, matrix_to_list_array
from convis_db.store.db import compress_float16
from convis_db.store.halves import (HI_COLUMN, LO_COLUMN, WHOLE_COLUMN, matrix_to_blobs, split_bytes_to_matrix,
                                   split_windows)
from convis_db.store.hierarchy_store import synset_count
from convis_db.store.transaction import transaction


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
        """The window lattice the image was explained with (its recorded layout)."""
        s = self.settings
        return WindowGrid(self.work_height, self.work_width, s.stride, s.small, s.large, s.layout)


_IMAGE_COLUMNS = ("image_id, sha256, path, model_id, width, height, work_width, work_height, scale, "
                  "max_pixels, stride, small, large, top_k, grid_rows, grid_cols, n_windows, layout, precision")


def _select_images(con: duckdb.DuckDBPyConnection, where: str, params: list):
    """Rows of `images` (`where` is a fixed clause of the callers below)."""
    return con.execute(f"SELECT {_IMAGE_COLUMNS} FROM images {where}", params).fetchone()


def _row_to_image(row) -> StoredImage:
    (image_id, sha, path, model_id, w, h, ww, wh, scale, max_pixels, stride, small, large, top_k,
     rows, cols, n, layout, precision) = row
    settings = Settings(max_pixels=max_pixels, stride=stride, small=small, large=large, top_k=top_k,
                        layout=layout or "origin")
    return StoredImage(image_id, sha, path, model_id, w, h, ww, wh, scale, settings, rows, cols, n, precision)


def find_by_sha(con: duckdb.DuckDBPyConnection, sha256: str) -> StoredImage | None:
    row = _select_images(con, "WHERE sha256 = ?", [sha256])
    return _row_to_image(row) if row else None


def get_image(con: duckdb.DuckDBPyConnection, ref: str | int) -> StoredImage:
    """An image by id, by path (as given at ingest or absolute), or by sha256 prefix."""
    text = str(ref).strip()
    if text.isdigit():
        row = _select_images(con, "WHERE image_id = ?", [int(text)])
        if row:
            return _row_to_image(row)
    import os

    row = _select_images(con, "WHERE path = ? OR path = ? ORDER BY image_id LIMIT 1", [text, os.path.abspath(text)])
    if row:
        return _row_to_image(row)
    if len(text) >= 8 and all(ch in "0123456789abcdef" for ch in text.lower()):
        row = _select_images(con, "WHERE sha256 LIKE ? || '%' LIMIT 1", [text.lower()])
        if row:
            return _row_to_image(row)
    n = con.execute("SELECT count(*) FROM images").fetchone()[0]
    raise NotFoundError(f"no stored image {text!r} (by id, path or sha256; the database holds {n} images). "
                        "List them with: convis-db sql \"SELECT image_id, path FROM images\"")


def image_file(con: duckdb.DuckDBPyConnection, ref: str | int | Path) -> str:
    """The file of IMAGE: a stored image's (by id, path or sha256 prefix), else an existing file on disk.

    A reference that names neither is refused with NotFoundError: "no such file" when it reads as a
    file name, the stored-image message (how many the database holds) when it is an id or a hash."""
    text = str(ref).strip()
    try:
        return get_image(con, text).path
    except NotFoundError as exc:
        path = Path(text).expanduser()
        if path.is_file():
            return str(path)
        if text.isdigit() or (len(text) >= 8 and all(ch in "0123456789abcdef" for ch in text.lower())):
            raise
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        n = con.execute("SELECT count(*) FROM images").fetchone()[0]
        raise NotFoundError(f"{text}: the file {what}, and no stored image has that path (the database holds "
                            f"{n} images). Give an image file, or a stored image's id, path or sha256.") from exc


def database_layout(con: duckdb.DuckDBPyConnection) -> str:
    """The window lattice of this database's images, new ones included (schema 005's window_layout;
    a database whose row is missing gets what that migration decides: 'origin' when it holds images,
    else the new default)."""
    row = con.execute("SELECT layout FROM window_layout LIMIT 1").fetchone()
    if row:
        return row[0]
    has_images = con.execute("SELECT EXISTS (SELECT 1 FROM images)").fetchone()[0]
    return "origin" if has_images else DEFAULT_LAYOUT


#: The working-pixel peak columns of image_scores (schema 010's names) -> the names they had before 010,
#: which shards of an older run still carry.
WORK_PEAK_COLUMNS = {"work_peak_x": "peak_x", "work_peak_y": "peak_y",
                     "work_self_peak_x": "self_peak_x", "work_self_peak_y": "self_peak_y"}


def with_work_peak_names(table: pa.Table) -> pa.Table:
    """image_scores rows written before schema 010 (a shard of an older run) under the current names."""
    old_to_new = {old: new for new, old in WORK_PEAK_COLUMNS.items()}
    if not any(name in old_to_new for name in table.column_names):
        return table
    return table.rename_columns([old_to_new.get(name, name) for name in table.column_names])


#: The tables one image's explanation fills, in insert order (images first: the others refer to it).
#: write_image and the shard writer (distributed/shards.py) both take their rows from image_tables, so a
#: table added here is stored by a plain ingest, written into shards and merged, with no other change.
#: concept_peaks holds what image_scores held (a view of it since schema 013), as exact integers.
IMAGE_TABLES = ("images", "windows", "concept_peaks", "window_concepts", "image_embeddings")

#: How window embeddings are stored (init --embeddings; schema/009_compact_storage.sql).
EMBEDDING_CHOICES = ("float32", "float16", "none")


class EmbeddingsNotStoredError(DatabaseError):
    """The database keeps no window embeddings (init --embeddings none): maps need the model."""


def embedding_storage(con: duckdb.DuckDBPyConnection) -> str:
    """float32, float16 or none (float32 where the choice is not recorded: a connection to a file that
    is not a migrated convis-db database, as the shard checks meet)."""
    try:
        row = con.execute("SELECT embeddings FROM storage_settings").fetchone()
    except duckdb.CatalogException:
        return "float32"
    return row[0] if row else "float32"


def set_embedding_storage(con: duckdb.DuckDBPyConnection, storage: str, db_path: str = "") -> bool:
    """Record the storage choice; allowed while the database holds no images. True if it changed."""
    if storage not in EMBEDDING_CHOICES:
        raise DatabaseError(f"unknown --embeddings {storage!r}; valid: {', '.join(EMBEDDING_CHOICES)}.")
    current = embedding_storage(con)
    if storage == current:
        return False
    n = con.execute("SELECT count(*) FROM images").fetchone()[0]
    if n:
        raise DatabaseError(
            f"{db_path or 'the database'} stores window embeddings as {current} and already holds {n} images; "
            f"one database keeps one choice. Drop --embeddings {storage}, or use another --db for it.")
    con.execute("UPDATE storage_settings SET embeddings = ?", [storage])
    if storage == "float16":  # this connection writes float16 BLOBs from now on
        compress_float16(con)
    return True


def embedding_columns(matrix: np.ndarray, storage: str) -> dict[str, pa.Array]:
    """The embedding column of windows rows as image_tables and shards hold them, for one storage
    choice: float32 as FLOAT[] (exact), float16 as one BLOB of little-endian IEEE halves (DuckDB has no
    half type; insert_tables stores it split into high and low bytes, store/halves.py), none: nothing."""
    if storage == "float32":
        return {"embedding": matrix_to_list_array(matrix)}
    if storage == "float16":
        half = np.ascontiguousarray(matrix, dtype="<f2")
        return {WHOLE_COLUMN: matrix_to_blobs(half.view(np.uint8))}
    if storage == "none":
        return {}
    raise DatabaseError(f"unknown embedding storage {storage!r}; valid: {', '.join(EMBEDDING_CHOICES)}.")


def image_tables(exp: ImageExplanation, sha256: str, path: str, model_id: int, settings: Settings,
                 image_id: int, storage: str = "float32", precision: str | None = None) -> dict[str, pa.Table]:
    """Every row the database stores for one image, per table (keys: IMAGE_TABLES), as Arrow tables.

    Columns are matched to the tables by name, so a column left out takes its default (NULL, or
    ingested_at's current_timestamp). Scores and top-K come from the float32 ranking whatever the
    storage choice: only the window embeddings themselves are kept more compactly.
    """
    g = exp.grid
    if g.layout != settings.layout:
        raise DatabaseError(f"image {path} was explained with the {g.layout!r} window layout but the database "
                            f"uses {settings.layout!r}; this is a bug, please report it.")
    n_syn = exp.n_synsets
    nw = g.n_windows
    widx = np.arange(nw, dtype=np.int32)
    images = pa.table({
        "image_id": pa.array([image_id], pa.int32()), "sha256": [sha256], "path": [path],
        "model_id": pa.array([model_id], pa.int32()), "width": pa.array([exp.width], pa.int32()),
        "height": pa.array([exp.height], pa.int32()), "work_width": pa.array([g.width], pa.int32()),
        "work_height": pa.array([g.height], pa.int32()), "scale": pa.array([exp.scale], pa.float64()),
        "stride": pa.array([settings.stride], pa.int32()), "small": pa.array([settings.small], pa.int32()),
        "large": pa.array([settings.large], pa.int32()), "max_pixels": pa.array([settings.max_pixels], pa.int32()),
        "top_k": pa.array([settings.top_k], pa.int32()), "grid_rows": pa.array([g.rows], pa.int32()),
        "grid_cols": pa.array([g.cols], pa.int32()), "n_windows": pa.array([nw], pa.int32()),
        "layout": [g.layout], "precision": pa.array([precision], pa.string()),
    })
    windows = pa.table({
        "image_id": pa.array(np.full(nw, image_id, np.int32)),
        "window_idx": widx,
        "grid_row": (widx // g.cols).astype(np.int32),
        "grid_col": (widx % g.cols).astype(np.int32),
        "x0": exp.boxes[:, 0], "y0": exp.boxes[:, 1], "x1": exp.boxes[:, 2], "y1": exp.boxes[:, 3],
        **embedding_columns(exp.embeddings, storage),
    })
    level = exp.image_level  # the paper's image-level scores (None only for explanations made without them)
    missing = pa.nulls(n_syn, pa.int32())
    scores = pa.table({  # each peak as its exact terms (schema 013): score = sum / (windows * |T|)
        "image_id": pa.array(np.full(n_syn, image_id, np.int32)),
        "synset_id": np.arange(n_syn, dtype=np.int32),
        "map_sum": exp.scores.sum.astype(np.int32), "map_windows": exp.scores.windows.astype(np.int32),
        "work_peak_x": exp.scores.x, "work_peak_y": exp.scores.y,
        "self_sum": exp.self_scores.sum.astype(np.int32), "self_windows": exp.self_scores.windows.astype(np.int32),
        "work_self_peak_x": exp.self_scores.x, "work_self_peak_y": exp.self_scores.y,
        "image_max_rank_less": pa.array(level.max_rank_less.astype(np.int32)) if level else missing,
        "image_rank_less": pa.array(level.rank_less.astype(np.int32)) if level else missing,
    })
    k = exp.top_ids.shape[1]
    concepts = pa.table({
        "image_id": pa.array(np.full(nw * k, image_id, np.int32)),
        "window_idx": np.repeat(widx, k),
        "k": np.tile(np.arange(1, k + 1, dtype=np.int16), nw),
        "synset_id": exp.top_ids.reshape(-1).astype(np.int32),
        "rank_less": exp.top_rank_less.reshape(-1).astype(np.int32),
    })
    tables = {"images": images, "windows": windows, "concept_peaks": scores, "window_concepts": concepts}
    if level is not None:
        tables["image_embeddings"] = pa.table({"image_id": pa.array([image_id], pa.int32()),
                                               "embedding": matrix_to_list_array(level.embedding[None, :])})
    return tables


def insert_tables(con: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table]) -> None:
    """INSERT ... BY NAME each Arrow table's rows into the table of that name, in IMAGE_TABLES order
    (names only from there). The caller holds the transaction."""
    unknown = set(tables) - set(IMAGE_TABLES)
    if unknown:
        raise DatabaseError(f"no image table named {sorted(unknown)}; known: {', '.join(IMAGE_TABLES)}.")
    for name in IMAGE_TABLES:
        if tables.get(name) is None:
            continue
        if name == "window_concepts":
            insert_window_top(con, tables[name])
        elif name == "concept_peaks":
            con.register("_concept_peaks", tables[name])
            try:
                for statement in concept_peaks_inserts("SELECT * FROM _concept_peaks"):
                    con.execute(statement)
            finally:
                con.unregister("_concept_peaks")
        elif name == "windows":  # schema 021: the embeddings only (float16 as schema 017's two bytes)
            rows = window_embedding_rows(split_windows(tables[name]))
            if rows is not None:
                insert_arrow(con, "window_embeddings", rows)
        elif name == "images":  # schema 022: each with its segment centres, which its peaks index
            insert_arrow(con, name, with_segment_centres(tables[name]))
        else:
            insert_arrow(con, name, tables[name])  # name from the allowlist


#: The columns of window_embeddings (schema 021) that hold an embedding: float32, or float16 split in two.
WINDOW_EMBEDDING_COLUMNS = ("embedding", HI_COLUMN, LO_COLUMN)


def window_embedding_rows(windows: pa.Table) -> pa.Table | None:
    """The window_embeddings rows of windows rows (float16 already split by halves.split_windows): image_id,
    window_idx and the embedding columns; None where the rows hold no embedding (--embeddings none).
    Schema 021 computes the rest of a windows row (grid position, box) from the image's lattice."""
    kept = [c for c in WINDOW_EMBEDDING_COLUMNS if c in windows.column_names]
    return windows.select(["image_id", "window_idx", *kept]) if kept else None


#: The self terms of concept_peaks rows (as image_tables and shards hold them), which schema 016 stores in
#: concept_self_peaks for the concepts with descendants only (a leaf's equal its map terms).
SELF_COLUMNS = ("self_sum", "self_windows", "work_self_peak_x", "work_self_peak_y", "image_rank_less")


def concept_peaks_inserts(source: str) -> tuple[str, str]:
    """The statements that store concept_peaks rows with their self terms (selected by the SQL `source`,
    run by each; bind its parameters to both): the map terms of every row into concept_map_terms, the
    self terms of the inner concepts' rows (macro inner_concepts, schema 016) into concept_self_terms,
    each peak's pixels as their indexes in the image's segment centres (images.segment_centres_x / _y,
    schema 022; the images rows are stored first, with_segment_centres). Columns go by name, so rows without the image-level
    counts leave them NULL. Used by write_image and the shard merge."""
    own = ", ".join(f"'{c}'" for c in SELF_COLUMNS)  # fixed names above
    placed = (f"(SELECT s.*, i.segment_centres_x AS _centres_x, i.segment_centres_y AS _centres_y FROM ({source}) s "
              "JOIN images i ON i.image_id = s.image_id)")
    helpers = "'_centres_x', '_centres_y'"
    return (f"INSERT INTO concept_map_terms BY NAME SELECT COLUMNS(lambda c: c NOT IN ({own}, 'work_peak_x', "
            f"'work_peak_y', {helpers})), list_position(_centres_x, work_peak_x) - 1 AS peak_segment_x, "
            f"list_position(_centres_y, work_peak_y) - 1 AS peak_segment_y FROM {placed}",
            f"INSERT INTO concept_self_terms BY NAME SELECT COLUMNS(lambda c: c IN ('image_id', 'synset_id', {own}) "
            f"AND c NOT IN ('work_self_peak_x', 'work_self_peak_y')), "
            f"list_position(_centres_x, work_self_peak_x) - 1 AS self_peak_segment_x, "
            f"list_position(_centres_y, work_self_peak_y) - 1 AS self_peak_segment_y "
            f"FROM {placed} WHERE synset_id IN (SELECT synset_id FROM inner_concepts())")


def with_segment_centres(images: pa.Table) -> pa.Table:
    """images rows with segment_centres_x / _y (schema 022) set from each row's lattice: the centre pixels
    of its saliency map's segments along x and y, as the engine places its peaks (engine/saliency.py's
    grid_segments; a peak is stored as its index in these). Values a row already holds are replaced, so a
    shard's images rows cannot bring others."""
    xs, ys = [], []
    for row in images.select(["work_width", "work_height", "stride", "small", "large", "layout"]).to_pylist():
        grid = WindowGrid(row["work_height"], row["work_width"], row["stride"], row["small"], row["large"],
                          row["layout"])
        rows, cols = grid_segments(grid)
        xs.append(cols.centres.tolist())
        ys.append(rows.centres.tolist())
    for name, values in (("segment_centres_x", xs), ("segment_centres_y", ys)):
        column = pa.array(values, pa.list_(pa.int32()))
        at = images.schema.get_field_index(name)
        images = images.set_column(at, name, column) if at >= 0 else images.append_column(name, column)
    return images


def insert_window_top(con: duckdb.DuckDBPyConnection, concepts: pa.Table) -> None:
    """window_concepts rows (image_id, window_idx, k, synset_id, rank_less; as image_tables and shards
    hold them) stored as schema 012 keeps them: one window_top row per window, its synset ids in k order,
    and its rank_less list only where some entry is not |T| - k (cosines tie). The view window_concepts
    gives the rows back. The caller holds the transaction."""
    con.register("_window_concepts", concepts)
    try:
        con.execute(window_top_insert("SELECT * FROM _window_concepts"), {"n_synsets": synset_count(con)})
    finally:
        con.unregister("_window_concepts")


def window_top_rows(concepts: pa.Table, n_synsets: int) -> pa.Table:
    """window_concepts rows as image_tables builds them (each window's K rows together, k = 1..K in
    order, one K for all windows) as the window_top rows schema 012 stores (window_top_insert's rule:
    synset ids best first, rank_less only where some entry is not |T| - k). Shards of format 4 hold
    these, so the merge inserts them without regrouping."""
    k_col = concepts.column("k").to_numpy()
    k = int(k_col.max()) if len(k_col) else 1
    n = concepts.num_rows // k
    windows = concepts.column("window_idx").to_numpy()
    images = concepts.column("image_id").to_numpy()
    if (n * k != len(k_col) or not np.array_equal(k_col.reshape(n, k), np.broadcast_to(np.arange(1, k + 1), (n, k)))
            or not (windows.reshape(n, k) == windows[::k, None]).all()
            or not (images.reshape(n, k) == images[::k, None]).all()):
        raise ValueError("window_concepts rows are not each window's k = 1..K rows together: "
                         "window_top_rows needs them as image_tables builds them")
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    rank_less = concepts.column("rank_less").to_numpy().astype(np.int32).reshape(n, k)
    plain = (rank_less == (n_synsets - np.arange(1, k + 1, dtype=np.int32))).all(axis=1)
    ties = pa.ListArray.from_arrays(offsets, pa.array(rank_less.reshape(-1)), mask=pa.array(plain))
    return pa.table({
        "image_id": concepts.column("image_id").take(pa.array(np.arange(0, n * k, k))),
        "window_idx": pa.array(concepts.column("window_idx").to_numpy()[::k].astype(np.int32)),
        "synset_ids": pa.ListArray.from_arrays(offsets, pa.array(
            concepts.column("synset_id").to_numpy().astype(np.int32))),
        "rank_less": ties,
    })


def window_top_insert(source: str) -> str:
    """The one statement that stores window_concepts rows (image_id, window_idx, k, synset_id, rank_less,
    selected by the SQL `source`) as window_top rows; bind $n_synsets (|T|) and `source`'s own
    parameters. Used for rows from Python (insert_window_top) and from a shard's Parquet file."""
    return ("INSERT INTO window_top (image_id, window_idx, synset_ids, rank_less) "
            "SELECT image_id, window_idx, list(synset_id ORDER BY k), "
            "CASE WHEN bool_and(rank_less = $n_synsets - k) THEN NULL ELSE list(rank_less ORDER BY k) END "
            f"FROM ({source}) GROUP BY image_id, window_idx ORDER BY image_id, window_idx")


def concept_peaks_from_scores(source: str) -> str:
    """A SELECT of concept_peaks' columns from rows in image_scores' layout before schema 013 (selected by
    the SQL `source`: DOUBLE score and self_score, the peaks under schema 010's names, the image-level
    counts where present): each value as its exact terms by schema 013's rule (the exact_windows macro:
    the smallest windows count that reproduces the DOUBLE, and the sum it gives), NULL terms where the
    value is no such ratio. Bind $n_synsets (|T|), $max_windows (most_windows) and `source`'s own
    parameters. Used for older shards (distributed/shards.py); the 013 migration has its own statement."""
    return ("SELECT * EXCLUDE (score, self_score, map_windows, self_windows), "
            "CAST(round(score * (map_windows * $n_synsets)::DOUBLE) AS INTEGER) AS map_sum, map_windows, "
            "CAST(round(self_score * (self_windows * $n_synsets)::DOUBLE) AS INTEGER) AS self_sum, self_windows "
            "FROM (SELECT *, CAST(exact_windows(score, $max_windows, $n_synsets) AS INTEGER) AS map_windows, "
            "CAST(exact_windows(self_score, $max_windows, $n_synsets) AS INTEGER) AS self_windows "
            f"FROM ({source}))")


def most_windows(settings: Settings) -> int:
    """The most windows that can cover one pixel: ceil(large / stride) on each axis."""
    per_axis = -(-settings.large // settings.stride)
    return per_axis * per_axis


def next_image_ids(con: duckdb.DuckDBPyConnection, n: int) -> list[int]:
    """n new image ids from images' own sequence (what the column default would give)."""
    if n <= 0:
        return []
    return [int(r[0]) for r in con.execute("SELECT nextval('image_id_seq') FROM range(?)", [n]).fetchall()]


def write_image(con: duckdb.DuckDBPyConnection, exp: ImageExplanation, sha256: str, path: str, model_id: int,
                settings: Settings, precision: str | None = None) -> int:
    """Insert the image, its windows, its concept scores (map and image level), its image embedding and
    its windows' top concepts in one transaction.

    `precision` is the image encoder's (fp32, bf16, fp16); ingest always gives it.
    """
    storage = embedding_storage(con)
    with transaction(con):
        image_id = next_image_ids(con, 1)[0]
        insert_tables(con, image_tables(exp, sha256, path, model_id, settings, image_id, storage, precision))
        con.execute("DELETE FROM ingest_failures WHERE path = ?", [path])
    return int(image_id)


def write_image_level(con: duckdb.DuckDBPyConnection, image_id: int, level) -> None:
    """Add image-level scores to an image stored without them (`ingest --backfill-image-level`), in one
    transaction. concept_index is brought up to date afterwards by `concept_index.fill_image_level`."""
    n_syn = len(level.rank_less)
    rows = pa.table({
        "synset_id": np.arange(n_syn, dtype=np.int32),
        "image_max_rank_less": level.max_rank_less.astype(np.int32),
        "image_rank_less": level.rank_less.astype(np.int32),
    })
    with transaction(con):
        con.register("_level", rows)
        try:
            con.execute(
                """UPDATE concept_map_terms SET image_max_rank_less = l.image_max_rank_less
                   FROM _level l WHERE concept_map_terms.image_id = ? AND concept_map_terms.synset_id = l.synset_id""",
                [image_id])
            con.execute(  # schema 016: the inner concepts' own counts (a leaf's is its map count)
                """UPDATE concept_self_terms SET image_rank_less = l.image_rank_less
                   FROM _level l WHERE concept_self_terms.image_id = ? AND concept_self_terms.synset_id = l.synset_id""",
                [image_id])
        finally:
            con.unregister("_level")
        insert_arrow(con, "image_embeddings", pa.table({"image_id": pa.array([image_id], pa.int32()),
                                                        "embedding": matrix_to_list_array(level.embedding[None, :])}))


def images_without_image_level(con: duckdb.DuckDBPyConnection) -> list[StoredImage]:
    """Stored images that have no image-level scores (ingested before schema 005), in id order."""
    ids = [r[0] for r in con.execute(
        "SELECT image_id FROM images WHERE image_id NOT IN (SELECT image_id FROM image_embeddings) "
        "ORDER BY image_id").fetchall()]
    return [_row_to_image(_select_images(con, "WHERE image_id = ?", [i])) for i in ids]


def image_level_counts(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(images with image-level scores, images in all)."""
    total = con.execute("SELECT count(*) FROM images").fetchone()[0]
    have = con.execute("SELECT count(*) FROM image_embeddings").fetchone()[0]
    return int(have), int(total)


def load_image_embedding(con: duckdb.DuckDBPyConnection, image_id: int) -> np.ndarray | None:
    """x = E_I(whole image), (D,) float32, or None where not stored."""
    tbl = fetch_arrow(con, "SELECT embedding FROM image_embeddings WHERE image_id = ?", [image_id])
    if tbl.num_rows == 0:
        return None
    return list_column_to_matrix(tbl.column("embedding"))[0]


def load_window_embeddings(con: duckdb.DuckDBPyConnection, image_id: int) -> np.ndarray:
    """(W, D) float32 window embeddings of a stored image, float16 ones read back as float32.

    Raises EmbeddingsNotStoredError in a database made with init --embeddings none.
    """
    storage = embedding_storage(con)
    if storage == "none":
        raise EmbeddingsNotStoredError(
            f"image {image_id}'s window embeddings are not stored (this database was made with "
            "init --embeddings none): its maps need the model and the image file.")
    columns = ["embedding"] if storage == "float32" else [HI_COLUMN, LO_COLUMN]  # fixed names
    tbl = fetch_arrow(con, f"SELECT {', '.join(columns)} FROM window_embeddings WHERE image_id = ? ORDER BY window_idx",
                      [image_id])
    if tbl.num_rows == 0 or any(tbl.column(c).null_count for c in columns):
        raise DatabaseError(f"image {image_id} has no stored windows; the database may be damaged. Re-ingest it.")
    if storage == "float32":
        return list_column_to_matrix(tbl.column("embedding"))
    return split_bytes_to_matrix(tbl.column(HI_COLUMN), tbl.column(LO_COLUMN))


def record_failure(con: duckdb.DuckDBPyConnection, path: str, sha256: str | None, error: str) -> None:
    con.execute(
        """INSERT INTO ingest_failures (path, sha256, error) VALUES (?, ?, ?)
           ON CONFLICT (path) DO UPDATE SET error = excluded.error, sha256 = excluded.sha256,
               attempts = ingest_failures.attempts + 1, last_attempt = now()""",
        [path, sha256, error],
    )


def failed_paths(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT path FROM ingest_failures").fetchall()}

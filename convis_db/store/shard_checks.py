"""Check a shard before it is merged: its manifest, its Parquet files and every row of every table.

A shard comes from outside the database (another machine, a shared folder, a copy), so `merge`
trusts none of it. Before a shard's transaction opens, each table is read whole and checked with
vectorised Arrow/numpy operations (no loop over rows): column names and types against the
database's own table, NULLs, integer bounds, NaN and infinity, score ranges, image ids local to the
shard (1..n, one images row per image), synset ids the database holds, window indexes inside their
image's grid, one row per (image, window, k) / (image, synset) / (image, window), top-K lists of
min(top_k, |T|) ids (format 4's window_top), with counts that
agree with the images rows and the manifest, embeddings of the database's width and storage.

A shard that fails is refused with a ShardError naming the file, the column and the first bad row
(counting from 0, as Parquet readers do); nothing of it is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from convis_db.engine.saliency import axis_segments
from convis_db.engine.windows import LAYOUTS
from convis_db.errors import DatabaseError
from convis_db.store.halves import HI_COLUMN, LO_COLUMN, WHOLE_COLUMN, blob_rows

#: How a damaged shard is put right (every refusal ends with it).
FIX = "nothing of this shard was stored; delete its folder and run the ingest again to write it anew."
_PRECISIONS = ("fp32", "bf16", "fp16")
_SETTING_COLUMNS = ("max_pixels", "stride", "small", "large", "top_k", "layout")
_INT_BOUNDS = {"SMALLINT": (-2**15, 2**15 - 1), "INTEGER": (-2**31, 2**31 - 1), "BIGINT": (-2**63, 2**63 - 1)}


class ShardError(DatabaseError):
    """A shard that cannot be merged: unreadable, damaged, or written for another database."""


def _fail(path: Path, what: str) -> ShardError:
    return ShardError(f"{path}: {what}; {FIX}")


def _bad_row(path: Path, column: str, mask: np.ndarray, what: str) -> None:
    """Raise naming the first row where `mask` is True (if any)."""
    if mask.size and mask.any():
        raise _fail(path, f"column {column}, row {int(np.argmax(mask))}: {what}")


# ------------------------------------------------------------------------------------------ manifest

#: Manifest keys and their JSON types (bool is refused where an int is asked: JSON true is not a count).
_MANIFEST_KEYS = {"format": int, "files": list, "images": list, "skipped": list, "failed": int, "rows": dict,
                  "model": dict, "settings": dict, "embeddings": str, "n_synsets": int}
_MODEL_KEYS = {"name": str, "pretrained": str}


def _is(value, kind) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def check_manifest(path: Path, body) -> dict:
    """The manifest's keys and types, or a ShardError naming the first key that is wrong."""
    if not isinstance(body, dict):
        raise _fail(path, f"the manifest is a JSON {type(body).__name__}, not an object")
    for key, kind in _MANIFEST_KEYS.items():
        if key not in body:
            raise _fail(path, f"the manifest has no {key!r}")
        if not _is(body[key], kind):
            raise _fail(path, f"the manifest's {key!r} is {json.dumps(body[key])[:60]}, not a JSON {kind.__name__}")
    model = body["model"]
    for key, kind in _MODEL_KEYS.items():
        if not _is(model.get(key), kind):
            raise _fail(path, f"the manifest's model has no {key} string")
    if "weights_sha256" not in model or not (model["weights_sha256"] is None or _is(model["weights_sha256"], str)):
        raise _fail(path, "the manifest's model has no weights_sha256 (a hash, or null for a published tag or "
                          "random weights), so the shard cannot prove which weights explained it")
    for key in ("files", "images"):
        if not all(isinstance(p, str) for p in body[key]):
            raise _fail(path, f"the manifest's {key!r} holds something other than paths")
    if not all(isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in body["skipped"]):
        raise _fail(path, "the manifest's 'skipped' is not a list of [path, reason] pairs")
    if not all(isinstance(k, str) and _is(v, int) and v >= 0 for k, v in body["rows"].items()):
        raise _fail(path, "the manifest's 'rows' is not a table -> row count object")
    if body["failed"] < 0 or body["n_synsets"] < 1:
        raise _fail(path, "the manifest's 'failed' or 'n_synsets' is out of range")
    return body


# ------------------------------------------------------------------------------------------ tables


@dataclass
class Expected:
    """What the database accepts, read once per merge."""

    columns: dict[str, dict[str, tuple[str, bool]]]   # table -> column -> (DuckDB type, NOT NULL)
    n_synsets: int
    embed_dim: int | None
    storage: str                                        # float32 | float16 | none

    @classmethod
    def read(cls, con: duckdb.DuckDBPyConnection, tables: tuple[str, ...], n_synsets: int, model_id: int,
             storage: str) -> Expected:
        rows = con.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name IN (SELECT unnest(?))", [list(tables)]).fetchall()
        columns: dict[str, dict[str, tuple[str, bool]]] = {t: {} for t in tables}
        # A view over a compact table (schema 012: window_concepts over window_top) reports its columns as
        # nullable; the rows it stands for have a value in every column.
        views = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_type = 'VIEW' "
            "AND table_name IN (SELECT unnest(?))", [[*tables, "concept_self_peaks"]]).fetchall()}
        for table, column, dtype, nullable in rows:
            columns[table][column] = (dtype, nullable == "NO" or table in views)
        if "concept_peaks" in tables:  # schema 016 keeps the rows' self terms in concept_self_peaks
            self_view = "concept_self_peaks" in views
            for column, dtype, nullable in con.execute(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                    "WHERE table_schema = 'main' AND table_name = 'concept_self_peaks'").fetchall():
                columns["concept_peaks"].setdefault(column, (dtype, nullable == "NO" or self_view))
            # Since schema 022 both are views (over concept_map_terms and concept_self_terms), whose columns
            # all read as nullable: the image-level counts are the ones a row may leave NULL.
            for column in ("image_max_rank_less", "image_rank_less"):
                if column in columns["concept_peaks"]:
                    columns["concept_peaks"][column] = (columns["concept_peaks"][column][0], False)
        if "windows" in tables and "windows" in views:  # schema 021: a view; its embeddings are NULL with none
            columns["windows"].update({c: (columns["windows"][c][0], False)
                                       for c in ("embedding", HI_COLUMN, LO_COLUMN) if c in columns["windows"]})
        if "windows" in tables and HI_COLUMN in columns["windows"]:  # schema 017: shards keep whole halves
            del columns["windows"][HI_COLUMN], columns["windows"][LO_COLUMN]
            columns["windows"][WHOLE_COLUMN] = ("BLOB", False)
        dim = con.execute("SELECT embed_dim FROM models WHERE model_id = ?", [model_id]).fetchone()
        return cls(columns, n_synsets, int(dim[0]) if dim and dim[0] else None, storage)


def _type_fits(dtype: str, arrow: pa.DataType) -> bool:
    if dtype in _INT_BOUNDS:
        return pa.types.is_integer(arrow)
    if dtype in ("DOUBLE", "FLOAT"):
        return pa.types.is_floating(arrow)
    if dtype == "VARCHAR":
        return pa.types.is_string(arrow) or pa.types.is_large_string(arrow)
    if dtype == "BLOB":
        return pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow) or pa.types.is_fixed_size_binary(arrow)
    if dtype == "INTEGER[]":
        return (pa.types.is_list(arrow) or pa.types.is_large_list(arrow)) and pa.types.is_integer(arrow.value_type)
    if dtype == "FLOAT[]":
        return (pa.types.is_list(arrow) or pa.types.is_large_list(arrow)) and pa.types.is_floating(arrow.value_type)
    if dtype == "TIMESTAMP":
        return pa.types.is_timestamp(arrow)
    if dtype == "BOOLEAN":
        return pa.types.is_boolean(arrow)
    return False


def read_table(path: Path) -> pa.Table:
    """One Parquet file of a shard, or a ShardError saying it cannot be read. On one thread: a shard's
    file is one row group or a few, which pyarrow's threads decoded in 2 x the CPU time and no less
    wall time (window_top, 64 images: 0.18 vs 0.09 s), and the merge reads it beside DuckDB's work
    (distributed/read_ahead.py)."""
    try:
        return pq.read_table(path, use_threads=False)
    except FileNotFoundError as exc:
        raise _fail(path, "the table file is missing (the manifest lists it)") from exc
    except (OSError, pa.ArrowException) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"not a readable Parquet file ({first})") from exc


def _np(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy()


def check_columns(path: Path, table: pa.Table, expected: dict[str, tuple[str, bool]], required: set[str]) -> None:
    """Names, types, NULLs and integer bounds against the database's table; NaN/inf in float columns."""
    for name in table.column_names:
        if name not in expected:
            raise _fail(path, f"column {name} is not a column of this database's table (a shard of another "
                              "schema format?)")
    for name in sorted(required - set(table.column_names)):
        raise _fail(path, f"column {name} is missing (a shard of another schema format?)")
    for name in table.column_names:
        dtype, not_null = expected[name]
        col = table.column(name)
        if not _type_fits(dtype, col.type):
            raise _fail(path, f"column {name} holds {col.type}, not {dtype} (a shard of another schema format?)")
        if not_null and col.null_count:
            _bad_row(path, name, pc.is_null(col).to_numpy(zero_copy_only=False), "NULL where a value is required")
        if dtype in _INT_BOUNDS and table.num_rows and col.null_count < table.num_rows:
            lo, hi = _INT_BOUNDS[dtype]
            values = col.to_numpy(zero_copy_only=False)
            if col.null_count:
                values = values[~np.isnan(values)]
            if values.min() < lo or values.max() > hi:
                raw = pc.fill_null(col, 0).to_numpy()
                _bad_row(path, name, (raw < lo) | (raw > hi), f"a value outside {dtype}")
        if dtype in ("DOUBLE", "FLOAT"):
            values = pc.fill_null(col, 0.0).to_numpy().astype(np.float64, copy=False)
            _bad_row(path, name, ~np.isfinite(values), "NaN or infinity")


@dataclass
class ShardImages:
    """The checked images rows: per local id (1..n) its grid, for the other tables' checks."""

    n: int
    n_windows: np.ndarray     # index: local image id (0 unused)
    grid_cols: np.ndarray
    work_width: np.ndarray
    work_height: np.ndarray
    origin: np.ndarray        # the lattice's first corner (engine.windows.lattice_origin), working pixels
    stride: np.ndarray
    large: np.ndarray


def _image_of(path: Path, table: pa.Table, images: ShardImages) -> np.ndarray:
    """The image_id column, checked to name an image of this shard."""
    ids = _np(table, "image_id").astype(np.int64)
    _bad_row(path, "image_id", (ids < 1) | (ids > images.n),
             f"image id not among this shard's images 1..{images.n} (negative or foreign image id)")
    return ids


def _exactly_once(path: Path, column: str, keys: np.ndarray, total: int, what: str, describe) -> None:
    """keys (each already checked to lie in 0..total-1) hold every value exactly once: a bincount, no
    sort. `describe(key)` names a missing one (e.g. "image 2's window 5")."""
    counts = np.bincount(keys, minlength=total)
    _repeats(path, column, keys, counts, f"a second row for the same {what}")
    if len(keys) != total:
        raise _fail(path, f"no row for {describe(int(np.argmin(counts)))} ({len(keys)} rows where the images rows "
                          f"call for {total}: one per {what})")


def _repeats(path: Path, column: str, keys: np.ndarray, counts: np.ndarray, what: str) -> None:
    """Name the first row whose key an earlier row holds (`counts`: bincount of keys)."""
    rows = np.flatnonzero(counts[keys] > 1)
    if rows.size:
        _, first = np.unique(keys[rows], return_index=True)   # stable: each key's first row
        repeat = np.ones(rows.size, bool)
        repeat[first] = False
        raise _fail(path, f"column {column}, row {int(rows[repeat].min())}: {what}")


def _window_of(images: ShardImages, starts: np.ndarray):
    """key (the image's first window's place + window_idx) -> "image I's window W", for messages."""
    def describe(key: int) -> str:
        image = int(np.searchsorted(starts, key, side="right"))
        return f"image {image}'s window {key - int(starts[image - 1])}"
    return describe


def check_images(path: Path, table: pa.Table, manifest: dict) -> ShardImages:
    n = table.num_rows
    ids = _np(table, "image_id").astype(np.int64)
    _bad_row(path, "image_id", (ids < 1) | (ids > n), f"image ids of a shard are 1..{n} (one per images row)")
    _repeats(path, "image_id", ids, np.bincount(ids, minlength=n + 1), "a second images row for the same image")
    sha = table.column("sha256")
    _bad_row(path, "sha256", ~pc.match_substring_regex(sha, r"^[0-9a-f]{64}$").to_numpy(zero_copy_only=False),
             "not a sha256 (64 lowercase hex digits)")
    _, first = np.unique(sha.to_numpy(zero_copy_only=False), return_index=True)
    if len(first) != n:
        dup = np.ones(n, bool)
        dup[first] = False
        _bad_row(path, "sha256", dup, "the same content as an earlier images row")
    paths, listed = table.column("path").to_pylist(), manifest["images"]
    if paths != listed:
        common = min(len(paths), len(listed))
        differs = np.array(paths[:common], dtype=object) != np.array(listed[:common], dtype=object)
        _bad_row(path, "path", np.append(differs, len(paths) > common), "not the path the manifest's 'images' "
                 "lists in that place")
        raise _fail(path, f"{n} images rows where the manifest's 'images' lists {len(listed)}")
    for column in ("width", "height", "work_width", "work_height", "grid_rows", "grid_cols", "n_windows"):
        _bad_row(path, column, _np(table, column) < 1, "must be at least 1")
    scale = _np(table, "scale")
    _bad_row(path, "scale", ~(scale > 0), "must be a positive number")
    _bad_row(path, "n_windows", _np(table, "n_windows") != _np(table, "grid_rows") * _np(table, "grid_cols"),
             "is not grid_rows x grid_cols")
    settings = manifest["settings"]
    for column in _SETTING_COLUMNS:
        if column in table.column_names and column in settings:
            values = table.column(column).to_numpy(zero_copy_only=False)
            _bad_row(path, column, values != settings[column],
                     f"differs from the manifest's settings ({column} = {settings[column]!r})")
    layout = table.column("layout")
    _bad_row(path, "layout", pc.invert(pc.fill_null(pc.is_in(layout, pa.array(LAYOUTS)), False))
             .to_numpy(zero_copy_only=False), f"not one of {', '.join(LAYOUTS)}")
    if "precision" in table.column_names:
        prec = table.column("precision")
        bad = pc.invert(pc.fill_null(pc.is_in(prec, pa.array(_PRECISIONS)), True))
        _bad_row(path, "precision", bad.to_numpy(zero_copy_only=False), f"not one of {', '.join(_PRECISIONS)}")

    def by_id(column: str) -> np.ndarray:
        out = np.zeros(n + 1, np.int64)
        out[ids] = _np(table, column)
        return out

    origin = np.zeros(n + 1, np.int64)  # schema 021 computes the boxes from it: windows rows must agree
    origin[ids] = np.where(pc.equal(layout, "equal").to_numpy(zero_copy_only=False),
                           _np(table, "stride") - _np(table, "large"), 0)
    return ShardImages(n, by_id("n_windows"), by_id("grid_cols"), by_id("work_width"), by_id("work_height"),
                       origin, by_id("stride"), by_id("large"))


def check_windows(path: Path, table: pa.Table, images: ShardImages, expected: Expected) -> None:
    img, idx, starts = _window_positions(path, table, images, "outside its image's window grid")
    _exactly_once(path, "window_idx", starts[img - 1] + idx, int(images.n_windows.sum()), "(image, window)",
                  _window_of(images, starts))
    cols = images.grid_cols[img]
    _bad_row(path, "grid_row", _np(table, "grid_row") != idx // cols, "is not window_idx // grid_cols")
    _bad_row(path, "grid_col", _np(table, "grid_col") != idx % cols, "is not window_idx % grid_cols")
    # Schema 021 stores no box: the database computes each from the image's lattice, so a box must be it.
    origin, stride, large = images.origin[img], images.stride[img], images.large[img]
    x0, y0 = origin + (idx % cols) * stride, origin + (idx // cols) * stride
    for column, lattice in (("x0", x0), ("y0", y0), ("x1", x0 + large), ("y1", y0 + large)):
        _bad_row(path, column, _np(table, column) != lattice,
                 "is not the box of its lattice position (origin + grid position x stride, + large)")
    stored = {"float32": "embedding", "float16": WHOLE_COLUMN, "none": None}[expected.storage]
    for column in ("embedding", WHOLE_COLUMN):
        if column != stored and column in table.column_names and table.column(column).null_count < table.num_rows:
            raise _fail(path, f"column {column} holds embeddings, but the database stores them as {expected.storage}"
                              " (a shard written for another database)")
    if stored is None:
        return
    if stored not in table.column_names:
        raise _fail(path, f"column {stored} is missing; the database stores window embeddings as {expected.storage}")
    col = table.column(stored)
    if col.null_count:
        _bad_row(path, stored, pc.is_null(col).to_numpy(zero_copy_only=False), "no embedding")
    if stored == "embedding":
        _check_vectors(path, stored, col, expected.embed_dim)
    else:
        _check_half_vectors(path, stored, col, expected.embed_dim)


def _check_vectors(path: Path, column: str, col: pa.ChunkedArray, dim: int | None) -> None:
    """Float lists, each `dim` long (the model's width) and finite."""
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if not len(lengths):
        return
    width = dim or int(lengths[0])
    _bad_row(path, column, lengths != width, f"not a vector of the model's {width} dimensions")
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).reshape(len(lengths), width)
    _bad_row(path, column, ~np.isfinite(flat).all(axis=1), "NaN or infinity in the vector")


def _check_half_vectors(path: Path, column: str, col: pa.ChunkedArray, dim: int | None) -> None:
    """float16 BLOBs, each 2 x `dim` bytes and finite.

    Finite is tested on the bits: a half is NaN or infinite exactly when its exponent bits are all ones,
    i.e. when its bits without the sign are >= 0x7C00, so each vector's largest such value decides. An
    integer mask and max run 4-5x faster than np.isfinite on float16 (which numpy widens per value):
    0.07 s against 0.32 s for a 64-image shard's 111,296 vectors (docs/benchmarks.md, "Merge")."""
    arr = col.combine_chunks().cast(pa.large_binary())
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
    if not len(lengths):
        return
    width = 2 * dim if dim else int(lengths[0])
    _bad_row(path, column, lengths != width, f"not a float16 vector of the model's {width // 2} dimensions")
    # every BLOB is `width` bytes and none is NULL (a NULL's length fails the test above)
    magnitudes = blob_rows(arr, column).view("<u2") & np.uint16(0x7FFF)   # the bits without the sign
    _bad_row(path, column, magnitudes.max(axis=1, initial=0) >= 0x7C00, "NaN or infinity in the vector")


#: image_scores as shards of formats 1 and 2 hold it (DOUBLE peaks; format 1's peak names are renamed to
#: schema 010's before the check): column -> (DuckDB type, NOT NULL). Merged as concept_peaks rows.
OLD_IMAGE_SCORES = {
    "image_id": ("INTEGER", True), "synset_id": ("INTEGER", True), "score": ("DOUBLE", True),
    "work_peak_x": ("INTEGER", True), "work_peak_y": ("INTEGER", True), "self_score": ("DOUBLE", True),
    "work_self_peak_x": ("INTEGER", True), "work_self_peak_y": ("INTEGER", True),
    "image_max_rank_less": ("INTEGER", False), "image_rank_less": ("INTEGER", False),
}


def check_old_image_scores(path: Path, table: pa.Table) -> None:
    """The peak values of an older shard's image_scores, before they are converted to exact terms."""
    for column in ("score", "self_score"):
        values = _np(table, column)
        _bad_row(path, column, ~((values >= 0) & (values <= 1)), "a rank similarity outside [0, 1]")


def check_concept_peaks(path: Path, table: pa.Table, images: ShardImages, expected: Expected,
                        converted_from: dict[str, str] | None = None) -> None:
    """concept_peaks rows (a shard's, or an older shard's image_scores converted: `converted_from` names
    each sum column's source, whose value had no exact terms where the windows are NULL)."""
    img = _image_of(path, table, images)
    n_syn = expected.n_synsets
    syn = _np(table, "synset_id").astype(np.int64)
    _bad_row(path, "synset_id", (syn < 0) | (syn >= n_syn), f"not a synset of the database (0..{n_syn - 1})")
    _exactly_once(path, "synset_id", (img - 1) * n_syn + syn, images.n * n_syn, "(image, synset)",
                  lambda key: f"image {key // n_syn + 1}'s synset {key % n_syn}")
    for total, windows in (("map_sum", "map_windows"), ("self_sum", "self_windows")):
        if converted_from:
            missing = pc.is_null(table.column(windows)).to_numpy(zero_copy_only=False)
            _bad_row(path, converted_from[total], missing,
                     "not a ratio of integers (a count sum over windows x |T|), as convis-db computes every peak")
        count = _np(table, windows).astype(np.int64)
        _bad_row(path, windows, count < 1, "no covering window (the count must be at least 1)")
        values = _np(table, total).astype(np.int64)
        _bad_row(path, total, (values < 0) | (values > count * (n_syn - 1)),
                 f"a sum outside 0..{windows} x {n_syn - 1} (a rank similarity outside [0, 1])")
    for column, size in (("work_peak_x", images.work_width), ("work_peak_y", images.work_height),
                         ("work_self_peak_x", images.work_width), ("work_self_peak_y", images.work_height)):
        values = _np(table, column)
        _bad_row(path, column, (values < 0) | (values >= size[img]), "a peak outside its image's working size")
        _bad_row(path, column, ~_segment_centres(values, img, size, images),
                 "a peak that is not the centre of one of its map's segments (schema 022 stores the segment)")
    ranks = {}
    for column in ("image_max_rank_less", "image_rank_less"):
        if column in table.column_names:
            values = pc.fill_null(table.column(column), 0).to_numpy()
            ranks[column] = values
            _bad_row(path, column, (values < 0) | (values >= n_syn), f"a count outside 0..{n_syn - 1}")
    if len(ranks) == 2:
        _bad_row(path, "image_max_rank_less", ranks["image_max_rank_less"] < ranks["image_rank_less"],
                 "below image_rank_less (the maximum over a concept and its descendants includes the concept)")


def _segment_centres(values: np.ndarray, img: np.ndarray, size: np.ndarray, images: ShardImages) -> np.ndarray:
    """Whether each peak (in 0..size-1 on its axis) is the centre of a segment of its image's map on that
    axis (engine/saliency.axis_segments): the only pixels the engine gives, and the only ones schema 022's
    segment indexes can store. One flag per pixel of each image's axis, laid end to end, looked up once
    per row (the segments computed once per distinct axis length and lattice)."""
    ids = np.arange(1, images.n + 1)
    start = np.zeros(images.n + 1, np.int64)   # where image i's axis starts in `centre`
    start[1:] = np.cumsum(size[ids]) - size[ids]
    centre = np.zeros(int(size[ids].sum()), bool)
    known: dict[tuple[int, ...], np.ndarray] = {}
    for i in ids.tolist():
        length, stride, large, origin = (int(size[i]), int(images.stride[i]), int(images.large[i]),
                                         int(images.origin[i]))
        key = (length, stride, large, origin)
        if key not in known:
            n = (length - 1 - origin) // stride + 1   # engine.windows.windows_on_axis
            known[key] = axis_segments(length, stride, large, n, origin).centres
        centre[start[i] + known[key]] = True
    return centre[start[img] + values]


def _window_positions(path: Path, table: pa.Table, images: ShardImages,
                      outside: str = "a window its image does not have (no windows row for it)",
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's image (1..n) and window index, checked to be a window its image has, and where each
    image's windows start in the shard's run of all windows (a window's key: starts[img - 1] + idx)."""
    img = _image_of(path, table, images)
    idx = _np(table, "window_idx").astype(np.int64)
    _bad_row(path, "window_idx", (idx < 0) | (idx >= images.n_windows[img]), outside)
    return img, idx, np.concatenate([[0], np.cumsum(images.n_windows[1:])])


def check_window_concepts(path: Path, table: pa.Table, images: ShardImages, expected: Expected,
                          top_k: int) -> None:
    img, idx, starts = _window_positions(path, table, images)
    n_syn = expected.n_synsets
    k_max = min(top_k, n_syn)
    k = _np(table, "k").astype(np.int64)
    _bad_row(path, "k", (k < 1) | (k > k_max), f"outside 1..{k_max} (top_k)")
    for column in ("synset_id", "rank_less"):
        values = _np(table, column)
        _bad_row(path, column, (values < 0) | (values >= n_syn), f"outside 0..{n_syn - 1} (the database's synsets)")
    describe = _window_of(images, starts)
    _exactly_once(path, "k", (starts[img - 1] + idx) * k_max + k - 1, int(images.n_windows.sum()) * k_max,
                  "(image, window, k)", lambda key: f"{describe(key // k_max)}, k = {key % k_max + 1}")


def _check_id_lists(path: Path, table: pa.Table, column: str, length: int, n_syn: int) -> None:
    """Each non-NULL list of `column` holds exactly `length` values, none NULL, each in 0..n_syn-1."""
    lists = table.column(column).combine_chunks()
    present = ~pc.is_null(lists).to_numpy(zero_copy_only=False)
    sizes = pc.fill_null(pc.list_value_length(lists), length).to_numpy()
    _bad_row(path, column, present & (sizes != length), f"not a list of {length} ids (min(top_k, |T|))")
    values = pc.list_flatten(lists)
    if values.null_count:
        rows = pc.list_parent_indices(lists).to_numpy()
        _bad_row(path, column, np.isin(np.arange(table.num_rows), rows[pc.is_null(values).to_numpy(
            zero_copy_only=False)]), "a NULL inside the list")
    if not len(values):
        return
    # One Arrow pass for the bounds; each value's row (list_parent_indices) and an int64 copy of the ids
    # (11M of them per 64-image shard) only for a shard that fails, to name its first bad row.
    bounds = pc.min_max(values)
    if bounds["min"].as_py() >= 0 and bounds["max"].as_py() < n_syn:
        return
    rows = pc.list_parent_indices(lists).to_numpy()
    ids = values.to_numpy().astype(np.int64)
    bad = (ids < 0) | (ids >= n_syn)
    if bad.any():
        _bad_row(path, column, np.isin(np.arange(table.num_rows), rows[bad]),
                 f"a value outside 0..{n_syn - 1} (the database's synsets)")


def check_window_top(path: Path, table: pa.Table, images: ShardImages, expected: Expected, top_k: int) -> None:
    """A format 4 shard's window_top rows: one per (image, window), its synset ids best first (exactly
    min(top_k, |T|) of them), its rank_less NULL (no ties) or a list of as many counts."""
    img, idx, starts = _window_positions(path, table, images)
    n_syn = expected.n_synsets
    k_max = min(top_k, n_syn)
    _check_id_lists(path, table, "synset_ids", k_max, n_syn)
    _check_id_lists(path, table, "rank_less", k_max, n_syn)
    _exactly_once(path, "window_idx", starts[img - 1] + idx, int(images.n_windows.sum()), "(image, window)",
                  _window_of(images, starts))


def check_image_embeddings(path: Path, table: pa.Table, images: ShardImages, expected: Expected) -> None:
    img = _image_of(path, table, images)
    _exactly_once(path, "image_id", img - 1, images.n, "image", lambda key: f"image {key + 1}")
    _check_vectors(path, "embedding", table.column("embedding"), expected.embed_dim)


def check_failures(path: Path, table: pa.Table, manifest: dict) -> None:
    for name, kind in (("path", pa.types.is_string), ("sha256", pa.types.is_string), ("error", pa.types.is_string)):
        if name not in table.column_names or not kind(table.column(name).type):
            raise _fail(path, f"column {name} is missing or not text")
    for name in ("path", "error"):
        if table.column(name).null_count:
            _bad_row(path, name, pc.is_null(table.column(name)).to_numpy(zero_copy_only=False), "NULL")
    if table.num_rows != manifest["failed"]:
        raise _fail(path, f"{table.num_rows} rows where the manifest counts {manifest['failed']} failures")

"""float16 window embeddings split into their high and low bytes (schema 017), the one home of the split.

A database made with `init --embeddings float16` keeps each window's halves in two BLOBs of the windows
table: `embedding_f16_hi` holds the high byte of every half (sign, the 5 exponent bits and the top 2
mantissa bits) and `embedding_f16_lo` its low byte (the other 8 mantissa bits), each in vector order.
For unit-norm CLIP vectors the high bytes take few values (the exponents of values near 1/sqrt(dim)),
so DuckDB's zstd shrinks them by a third, while the low bytes are close to random and shrink by nothing;
one BLOB of whole halves interleaves the two and no method shrinks it (docs/storage.md, schema 017).

Shards on disk, image_tables' rows and schema 016's files keep one BLOB of whole little-endian halves
(`embedding_f16`); the split is made when rows are stored (split_windows, from image_store.insert_tables,
the shard merge and migration 017's step) and undone when they are read (split_bytes_to_matrix). Both
directions are exact: every bit of every half comes back.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from convis_db.errors import DatabaseError

#: The windows columns of schema 017 (high bytes, low bytes) and the one they replace, which shards keep.
HI_COLUMN = "embedding_f16_hi"
LO_COLUMN = "embedding_f16_lo"
WHOLE_COLUMN = "embedding_f16"


def blob_rows(column: pa.ChunkedArray | pa.Array, what: str) -> np.ndarray:
    """A column of equal-length BLOBs as one (rows, bytes) uint8 matrix, without per-row Python work
    (the values' bytes are contiguous in Arrow's buffer). `what` names the column in the error raised
    for BLOBs of different lengths or a NULL, which a writer of convis-db never stores."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    arr = arr.cast(pa.large_binary())
    if arr.null_count:
        raise DatabaseError(f"{what} has a NULL where a float16 embedding belongs; the database may be damaged. "
                            "Re-ingest the image.")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    width = int(offsets[1] - offsets[0]) if len(arr) else 0
    if len(arr) and (np.diff(offsets) != width).any():
        raise DatabaseError(f"{what} holds BLOBs of different lengths where one float16 vector length belongs; "
                            "the database may be damaged. Re-ingest the image.")
    return data.reshape(len(arr), width)


def matrix_to_blobs(matrix: np.ndarray) -> pa.Array:
    """Each row of a (rows, bytes) uint8 matrix as one BLOB (Arrow binary): the matrix's memory (made
    contiguous: one copy for a strided view) becomes the values' buffer, with computed offsets."""
    rows = np.ascontiguousarray(matrix, dtype=np.uint8)
    n, width = rows.shape
    big = n * width >= 2**31   # past binary's 32-bit offsets
    offsets = np.arange(n + 1, dtype=np.int64 if big else np.int32) * width
    kind = pa.large_binary() if big else pa.binary()
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(rows)])


def halves_to_split_bytes(half_bytes: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(rows, 2 x dim) little-endian IEEE half bytes -> (high bytes, low bytes) as BLOB columns of dim
    bytes each: a little-endian half is its low byte, then its high byte, so the odd bytes are the high
    ones. Two strided copies, whatever the number of rows."""
    if half_bytes.ndim != 2 or half_bytes.shape[1] % 2:
        raise DatabaseError(f"float16 embeddings of {half_bytes.shape[-1]} bytes per window are not whole halves; "
                            "this is a bug, please report it.")
    return matrix_to_blobs(half_bytes[:, 1::2]), matrix_to_blobs(half_bytes[:, 0::2])


def split_bytes_to_halves(hi: pa.ChunkedArray | pa.Array, lo: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The high- and low-byte BLOB columns -> (rows, dim) little-endian float16, bit for bit the halves
    halves_to_split_bytes was given."""
    high = blob_rows(hi, HI_COLUMN)
    low = blob_rows(lo, LO_COLUMN)
    if high.shape != low.shape:
        raise DatabaseError(f"{HI_COLUMN} and {LO_COLUMN} hold {high.shape[1]} and {low.shape[1]} bytes per window; "
                            "the database may be damaged. Re-ingest the image.")
    halves = np.empty((high.shape[0], 2 * high.shape[1]), dtype=np.uint8)
    halves[:, 0::2] = low
    halves[:, 1::2] = high
    return halves.view("<f2")


def split_bytes_to_matrix(hi: pa.ChunkedArray | pa.Array, lo: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The high- and low-byte BLOB columns -> (rows, dim) float32 (every half is exact in float32)."""
    return split_bytes_to_halves(hi, lo).astype(np.float32)


def split_windows(windows: pa.Table) -> pa.Table:
    """windows rows holding one BLOB of whole halves (`embedding_f16`, as image_tables and shards hold
    them) with that column replaced by the high- and low-byte columns schema 017 stores; rows without
    it (float32 or none) are returned as they are."""
    if WHOLE_COLUMN not in windows.column_names:
        return windows
    at = windows.schema.get_field_index(WHOLE_COLUMN)
    hi, lo = halves_to_split_bytes(blob_rows(windows.column(at), WHOLE_COLUMN))
    return windows.remove_column(at).append_column(HI_COLUMN, hi).append_column(LO_COLUMN, lo)

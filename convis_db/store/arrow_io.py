"""Arrow conversions between DuckDB results and numpy matrices (list columns of float32 vectors)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> pa.Table:
    if hasattr(con, "complete"):
        # DuckDB >= 2 refuses a relation query while an earlier execute() result is unread (a fetchone()
        # leaves it open); finish that statement first, as DuckDB 1.x did implicitly.
        con.complete()
    rel = con.sql(sql, params=params or None)
    if hasattr(rel, "to_arrow_table"):
        return rel.to_arrow_table()
    return rel.arrow()  # DuckDB < 1.4


def list_column_to_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column of equal-length float lists -> (rows, dim) float32."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    flat = np.array(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)  # writable copy
    return flat.reshape(n, -1)


def matrix_to_list_array(matrix: np.ndarray) -> pa.Array:
    """(rows, dim) float32 -> a list<float> Arrow array, without per-row Python work."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
    return fixed.cast(pa.list_(pa.float32()))


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table | pa.RecordBatchReader) -> None:
    """INSERT the Arrow rows into `table` by column name (columns left out take their defaults).

    `table` comes from the caller's own code, never from user input. The rows are registered under a
    private name only for the statement; a RecordBatchReader is read once, as DuckDB scans it."""
    con.register("_arrow_rows", rows)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _arrow_rows")  # table name from our code
    finally:
        con.unregister("_arrow_rows")

"""Writable connections to a float16 database skip DuckDB's DICT_FSST analysis (store/db.SKIPPED_COMPRESSION): on random
float16 embedding BLOBs it cost seconds per shard at insert and at checkpoint and shrank nothing."""

from __future__ import annotations

import numpy as np

from convis_db.store.db import SKIPPED_COMPRESSION, connect
from convis_db.store.image_store import set_embedding_storage


def _skipped(con) -> bool:
    return SKIPPED_COMPRESSION in str(con.execute("SELECT current_setting('disabled_compression_methods')")
                                      .fetchone()[0]).lower()


def test_float16_database_skips_dict_fsst(tmp_path):
    path = tmp_path / "x.duckdb"
    con = connect(path, write=True, create=True)
    assert not _skipped(con)          # float32 (the default): the all-NULL BLOB column keeps DICT_FSST
    set_embedding_storage(con, "float16")
    assert _skipped(con)              # from now on on this connection
    con.close()
    con = connect(path, write=True)   # and on every writable connection to the file
    try:
        assert _skipped(con)
        rng = np.random.default_rng(0)
        blobs = [rng.integers(0, 256, 1024, dtype=np.uint8).tobytes() for _ in range(3000)]
        con.execute("INSERT INTO windows (image_id, window_idx, grid_row, grid_col, x0, y0, x1, y1, embedding_f16) "
                    "SELECT 1, i::INTEGER, 0, 0, 0, 0, 1, 1, b FROM (SELECT unnest(range(3000)) AS i, "
                    "unnest(?::BLOB[]) AS b)", [blobs])
        con.execute("CHECKPOINT")
        methods = {r[0] for r in con.execute(
            "SELECT DISTINCT compression FROM pragma_storage_info('windows') WHERE column_name = 'embedding_f16'"
        ).fetchall()}
        assert "DICT_FSST" not in methods
        back = con.execute("SELECT embedding_f16 FROM windows ORDER BY window_idx").fetchall()
        assert [r[0] for r in back] == blobs   # stored as given
    finally:
        con.close()


def test_reader_opens_and_reads_the_file(tmp_path):
    path = tmp_path / "x.duckdb"
    connect(path, write=True, create=True).close()
    con = connect(path)
    try:
        assert con.execute("SELECT count(*) FROM windows").fetchone()[0] == 0
    finally:
        con.close()

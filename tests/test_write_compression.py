"""Writable connections to a float16 database apply store/db.FLOAT16_COMPRESSION: DuckDB's DICT_FSST analysis
skipped (on float16 bytes it cost seconds per shard at insert and at checkpoint and shrank nothing) and zstd
considered for the high- and low-byte columns of schema 017 (which the 4 KB default threshold rules out)."""

from __future__ import annotations

import numpy as np

from convis_db.store.db import FLOAT16_COMPRESSION, connect
from convis_db.store.image_store import set_embedding_storage


def _applied(con) -> bool:
    return all(value in str(con.execute("SELECT current_setting(?)", [name]).fetchone()[0]).lower()
               for name, value in FLOAT16_COMPRESSION.items())


def test_float16_database_compresses_its_halves(tmp_path):
    path = tmp_path / "x.duckdb"
    con = connect(path, write=True, create=True)
    assert not _applied(con)          # float32 (the default): the all-NULL BLOB columns keep DICT_FSST
    set_embedding_storage(con, "float16")
    assert _applied(con)              # from now on on this connection
    con.close()
    con = connect(path, write=True)   # and on every writable connection to the file
    try:
        assert _applied(con)
        rng = np.random.default_rng(0)
        # high bytes of a few values (as unit-norm vectors' halves have), low bytes random
        hi = [rng.choice([0x1C, 0x20, 0x9C, 0xA0], 512).astype(np.uint8).tobytes() for _ in range(3000)]
        lo = [rng.integers(0, 256, 512, dtype=np.uint8).tobytes() for _ in range(3000)]
        con.execute("INSERT INTO window_embeddings (image_id, window_idx, embedding_f16_hi, "
                    "embedding_f16_lo) SELECT 1, i::INTEGER, h, l FROM (SELECT unnest(range(3000)) "
                    "AS i, unnest(?::BLOB[]) AS h, unnest(?::BLOB[]) AS l)", [hi, lo])
        con.execute("CHECKPOINT")
        methods = {r[0] for r in con.execute(
            "SELECT DISTINCT compression FROM pragma_storage_info('window_embeddings') "
            "WHERE column_name = 'embedding_f16_hi' AND segment_type <> 'VALIDITY'").fetchall()}
        assert methods == {"ZSTD"}
        back = con.execute("SELECT embedding_f16_hi, embedding_f16_lo FROM window_embeddings ORDER BY window_idx"
                           ).fetchall()
        assert [r[0] for r in back] == hi and [r[1] for r in back] == lo   # stored as given
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

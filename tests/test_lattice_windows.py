"""Schema 021 (issue 24): window boxes and grid positions computed from each image's lattice, not stored.

`windows` is a view over images (one row per window, its box from the lattice macros) and
window_embeddings (the embeddings, where kept): the same rows, columns and types as the table it
replaced, for a file ingested now and for one upgraded from schema 020 (by convis-db and by 021's SQL
alone). A file or a shard whose windows are not its lattice's is refused, never silently rewritten.
"""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from schema_history import copy_into_schema_below
from test_concept_top import older_file
from test_split_halves import _ingested, _shard
from test_upgrade_work_peaks_and_profile import SETTINGS

from convis_db.engine.windows import WindowGrid
from convis_db.errors import ConvisError
from convis_db.store.db import connect
from convis_db.store.image_store import load_window_embeddings
from convis_db.store.migrations import applied_versions, available_migrations

#: What a reader of windows sees, in the table's column order (schema 002 to 020).
COLUMNS = "image_id, window_idx, grid_row, grid_col, x0, y0, x1, y1, embedding, embedding_f16_hi, embedding_f16_lo"


def _rows(con, sql: str) -> list:
    return con.execute(sql).fetchall()


def _windows(con) -> list:
    return _rows(con, f"SELECT {COLUMNS} FROM windows ORDER BY image_id, window_idx")


def _top_concepts(con) -> list:
    return _rows(con, "SELECT * FROM window_top_concepts ORDER BY image_id, window_idx, k")


def _types(con) -> list:
    return [d[1] for d in con.execute(f"SELECT {COLUMNS} FROM windows LIMIT 0").description]


@pytest.fixture(scope="module")
def stored(tiny_db, tmp_path_factory):
    """storage -> a database of three ingested images (written in schema 021's layout)."""
    tmp = tmp_path_factory.mktemp("lattice")
    return {s: _ingested(tiny_db, tmp, s) for s in ("float32", "float16", "none")}


@pytest.mark.parametrize("storage", ["float32", "float16", "none"])
def test_each_window_is_its_images_lattice_box(stored, storage):
    """The engine's own boxes (engine/windows.py), the grid in row-major order, the embeddings where kept."""
    con = connect(stored[storage])
    try:
        images = _rows(con, "SELECT image_id, work_height, work_width, stride, small, large, layout, n_windows "
                            "FROM images ORDER BY image_id")
        assert len(images) == 3 and {r[6] for r in images} == {SETTINGS.layout}
        for image_id, h, w, stride, small, large, layout, n in images:
            grid = WindowGrid(h, w, stride, small, large, layout)
            got = np.array(_rows(con, f"SELECT window_idx, grid_row, grid_col, x0, y0, x1, y1 FROM windows "
                                      f"WHERE image_id = {image_id} ORDER BY window_idx"))
            assert len(got) == grid.n_windows == n
            r, c = np.divmod(np.arange(n), grid.cols)
            np.testing.assert_array_equal(got, np.column_stack([np.arange(n), r, c, grid.boxes()]))
        kept = _rows(con, "SELECT count(*) FROM window_embeddings")[0][0]
        assert kept == (0 if storage == "none" else sum(r[7] for r in images))  # nothing per window with none
        assert _rows(con, "SELECT count(*) FROM windows WHERE embedding IS NULL AND embedding_f16_hi IS NULL")[0][0] \
            == (sum(r[7] for r in images) if storage == "none" else 0)
    finally:
        con.close()


@pytest.mark.parametrize("storage", ["float16", "none"])
def test_a_schema_020_file_upgrades_with_the_same_windows(stored, tmp_path, storage):
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(stored[storage], old, 21)
    sql_only = tmp_path / "sql_only.duckdb"
    shutil.copyfile(old, sql_only)
    raw = duckdb.connect(str(old), read_only=True)
    try:
        assert max(applied_versions(raw)) == 20
        assert raw.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'windows'"
                           ).fetchone() == ("BASE TABLE",)
        before, top, types = _windows(raw), _top_concepts(raw), _types(raw)
        ids = [r[0] for r in raw.execute("SELECT image_id FROM images ORDER BY image_id").fetchall()]
    finally:
        raw.close()
    assert len(before) > 100 and len(top) == len(before) * SETTINGS.top_k

    con = connect(old, write=True)
    try:
        assert 21 in applied_versions(con)
        assert _windows(con) == before and _top_concepts(con) == top and _types(con) == types
        assert _rows(con, "SELECT count(*) FROM window_embeddings")[0][0] == (0 if storage == "none" else len(before))
        if storage == "float16":
            new = connect(stored[storage])
            try:
                for image_id in ids:
                    np.testing.assert_array_equal(load_window_embeddings(con, image_id),
                                                  load_window_embeddings(new, image_id))
            finally:
                new.close()
    finally:
        con.close()

    (mig,) = [m for m in available_migrations() if m.version == 21]
    raw = duckdb.connect(str(sql_only))
    try:
        raw.execute(mig.sql)   # a tool applying the SQL alone gets the same rows
        assert _windows(raw) == before and _top_concepts(raw) == top
    finally:
        raw.close()


@pytest.mark.parametrize("damage, message", [
    ("UPDATE windows SET x1 = x1 + 1 WHERE image_id = 2 AND window_idx = 3", "image 2 window 3 is not at its lattice"),
    ("UPDATE windows SET grid_col = grid_col + 1 WHERE image_id = 3 AND window_idx = 0",
     "image 3 window 0 is not at its lattice"),
    ("DELETE FROM windows WHERE image_id = 1 AND window_idx = 5", "image 1 has .* window rows for its"),
])
def test_an_upgrade_refuses_windows_off_the_lattice_and_keeps_the_file(stored, tmp_path, damage, message):
    old, raw = older_file(stored["none"], tmp_path, 21)
    raw.execute(damage)
    before = _windows(raw)
    raw.close()
    with pytest.raises((ConvisError, duckdb.Error), match=message):
        connect(old, write=True).close()
    raw = duckdb.connect(str(old), read_only=True)
    try:
        assert max(applied_versions(raw)) == 20 and _windows(raw) == before
    finally:
        raw.close()


@pytest.mark.parametrize("column, shift", [("x0", 1), ("y1", -16), ("x1", 10_000)])
def test_a_merge_refuses_a_shard_box_off_the_lattice(tiny_db, tmp_path, column, shift):
    """The merge stores no box, so a shard's box must be the one the database will compute."""
    from convis_db.distributed.shards import finished_shards, merge_folder
    from convis_db.store.shard_checks import ShardError

    db = tmp_path / "db.duckdb"
    shutil.copyfile(tiny_db, db)
    shards = _shard(db, tmp_path)
    (folder,) = finished_shards(shards).values()
    windows = pq.read_table(folder / "windows.parquet")
    values = windows.column(column).to_numpy().copy()
    values[7] += shift
    at = windows.schema.get_field_index(column)
    pq.write_table(windows.set_column(at, column, pa.array(values, windows.schema.field(at).type)),
                   folder / "windows.parquet")
    con = connect(db, write=True)
    try:
        with pytest.raises(ShardError, match=f"column {column}, row 7: is not the box of its lattice position"):
            merge_folder(con, shards)
        assert _rows(con, "SELECT count(*) FROM images")[0][0] == 0
    finally:
        con.close()

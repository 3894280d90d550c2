"""Schema 017 (issue 24): float16 window embeddings stored as two BLOBs, the high bytes of the halves and
their low bytes (store/halves.py). Every half comes back bit for bit: written by write_image's path, merged
from a shard (which keeps one BLOB of whole halves), and upgraded from a schema 016 file by convis-db's
migration step or by 017's SQL alone. Databases storing float32 or none keep both columns NULL.
"""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest
import torch
from schema_history import copy_into_schema_below
from test_upgrade_work_peaks_and_profile import SETTINGS

from convis_db.ingest import Ingestor
from convis_db.query.maps import MapService
from convis_db.store import migration_steps
from convis_db.store.db import connect
from convis_db.store.halves import halves_to_split_bytes, split_bytes_to_halves
from convis_db.store.image_store import (embedding_columns, get_image, insert_tables, load_window_embeddings,
                                         set_embedding_storage)
from convis_db.store.migrations import applied_versions, available_migrations, has_column
from convis_db.store.transaction import transaction
from noise_images import write_noise_pngs
from shard_writer import write_shards

#: Halves at the edges of float16: +-0, the smallest and largest subnormals, the smallest normal, the
#: largest finite (65504), 1 and values just below and above it; every pattern but inf and NaN is stored.
EDGES = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x83FF, 0x0400, 0x8400, 0x7BFF, 0xFBFF, 0x3C00,
                  0x3BFF, 0x3C01, 0x00FF, 0xFB00], np.uint16)


def _halves(rows: int, dim: int, seed: int) -> np.ndarray:
    """(rows, dim) finite halves as their bits: random patterns (exponent 31, inf/NaN, redrawn) with the
    edge values scattered in."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 16, (rows, dim), dtype=np.uint16)
    finite = (bits & 0x7C00) != 0x7C00
    bits = np.where(finite, bits, bits & 0x83FF)   # exponent 0: a subnormal of the same sign and mantissa
    flat = bits.reshape(-1)
    flat[rng.choice(flat.size, len(EDGES) * 4, replace=False)] = np.tile(EDGES, 4)
    return bits


def _float16_db(tiny_db, tmp_path, name: str = "f16.duckdb"):
    db = tmp_path / name
    shutil.copyfile(tiny_db, db)
    con = connect(db, write=True)
    try:
        set_embedding_storage(con, "float16")
    finally:
        con.close()
    return db


def _windows(image_id: int, halves: np.ndarray):
    import pyarrow as pa

    n = len(halves)
    idx = np.arange(n, dtype=np.int32)
    return pa.table({"image_id": pa.array(np.full(n, image_id, np.int32)), "window_idx": idx, "grid_row": idx,
                     "grid_col": np.zeros(n, np.int32), "x0": idx, "y0": idx, "x1": idx + 1, "y1": idx + 1,
                     **embedding_columns(halves.view("<f2").astype(np.float32), "float16")})


def _stored_bits(con, image_id: int) -> np.ndarray:
    return load_window_embeddings(con, image_id).astype("<f2").view(np.uint16)


def test_split_bytes_round_trip_every_finite_half():
    every = np.arange(1 << 16, dtype=np.uint16)
    every = every[(every & 0x7C00) != 0x7C00].reshape(-1, 2)   # every finite half, two per row
    hi, lo = halves_to_split_bytes(every.astype("<u2").view(np.uint8).reshape(len(every), -1))
    assert [hi[0].as_py(), lo[0].as_py()] == [bytes([0x00, 0x00]), bytes([0x00, 0x01])]
    np.testing.assert_array_equal(np.frombuffer(b"".join(hi.to_pylist()), np.uint8), (every >> 8).reshape(-1))
    np.testing.assert_array_equal(np.frombuffer(b"".join(lo.to_pylist()), np.uint8), (every & 0xFF).reshape(-1))
    np.testing.assert_array_equal(split_bytes_to_halves(hi, lo).view(np.uint16), every)


def test_written_halves_read_back_bit_for_bit(tiny_db, tmp_path):
    db = _float16_db(tiny_db, tmp_path)
    halves = {1: _halves(300, 24, 1), 2: _halves(7, 24, 2)}
    con = connect(db, write=True)
    try:
        with transaction(con):
            for image_id, bits in halves.items():
                insert_tables(con, {"windows": _windows(image_id, bits)})
        con.execute("CHECKPOINT")
        for image_id, bits in halves.items():
            np.testing.assert_array_equal(_stored_bits(con, image_id), bits)
            hi, lo, whole = zip(*con.execute(
                "SELECT embedding_f16_hi, embedding_f16_lo, f16_embedding(embedding_f16_hi, embedding_f16_lo) "
                "FROM window_embeddings WHERE image_id = ? ORDER BY window_idx", [image_id]).fetchall())
            # the columns hold what their names say: the high byte of each half, then the low byte
            np.testing.assert_array_equal(np.frombuffer(b"".join(hi), np.uint8).reshape(bits.shape), bits >> 8)
            np.testing.assert_array_equal(np.frombuffer(b"".join(lo), np.uint8).reshape(bits.shape), bits & 0xFF)
            assert b"".join(whole) == bits.astype("<u2").tobytes()   # the macro gives schema 009's BLOB
    finally:
        con.close()


def _shard(db, tmp_path):
    """A shards folder with one shard of two images written by the shard worker for `db`."""
    folder = tmp_path / "collection"
    folder.mkdir()
    files = [str(p.absolute()) for p in write_noise_pngs(folder, [(70, 90), (64, 64)], seed=17)]
    return write_shards(db, files, tmp_path / "shards", SETTINGS, 8)


def test_merged_halves_read_back_bit_for_bit(tiny_db, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from convis_db.distributed import shards as shards_module
    from convis_db.distributed.shards import finished_shards, merge_folder

    db = _float16_db(tiny_db, tmp_path)
    shards = _shard(db, tmp_path)
    (folder,) = finished_shards(shards).values()
    windows = pq.read_table(folder / "windows.parquet")
    assert "embedding_f16" in windows.column_names   # shards keep one BLOB of whole halves
    assert "embedding_f16_hi" not in windows.column_names
    dim = len(windows.column("embedding_f16")[0].as_py()) // 2
    bits = _halves(windows.num_rows, dim, 3)
    whole = pa.array([row.tobytes() for row in bits.astype("<u2")], pa.binary())
    pq.write_table(windows.set_column(windows.schema.get_field_index("embedding_f16"), "embedding_f16", whole),
                   folder / "windows.parquet")
    monkeypatch.setattr(shards_module, "SPLIT_BATCH_ROWS", 5)   # many batches, none aligned with an image
    con = connect(db, write=True)
    try:
        assert [r.status for r in merge_folder(con, shards)] == ["merged"]
        new_id = dict(con.execute("SELECT sha256, image_id FROM images").fetchall())
        local = pq.read_table(folder / "images.parquet").to_pydict()
        rows = windows.select(["image_id", "window_idx"]).to_pydict()
        for local_id, sha in zip(local["image_id"], local["sha256"]):
            mine = [i for i, img in enumerate(rows["image_id"]) if img == local_id]
            order = sorted(mine, key=lambda i: rows["window_idx"][i])
            np.testing.assert_array_equal(_stored_bits(con, new_id[sha]), bits[order])
    finally:
        con.close()


def _ingested(tiny_db, tmp_path, storage: str):
    """A database of `storage` holding three ingested images (schema 017's layout)."""
    folder = tmp_path / f"images-{storage}"
    folder.mkdir()
    write_noise_pngs(folder, [(70, 90), (90, 64), (64, 64)], seed=16)
    db = tmp_path / f"{storage}.duckdb"
    shutil.copyfile(tiny_db, db)
    con = connect(db, write=True)
    try:
        set_embedding_storage(con, storage)
    finally:
        con.close()
    with Ingestor(db, device=torch.device("cpu"), settings=SETTINGS, batch_size=16) as ing:
        assert ing.run([folder]).count("ingested") == 3
    return db


def _maps(db) -> list:
    con = connect(db)
    try:
        service = MapService(con)
        ids = [r[0] for r in con.execute("SELECT image_id FROM images ORDER BY image_id").fetchall()]
        return [service.for_stored(get_image(con, i), "entity.n.01").saliency for i in ids]
    finally:
        con.close()


def _raw_halves(db) -> dict[int, np.ndarray]:
    """image id -> its windows' halves as bits, read from schema 016's embedding_f16 without convis-db."""
    raw = duckdb.connect(str(db), read_only=True)
    try:
        assert 17 not in applied_versions(raw) and has_column(raw, "windows", "embedding_f16")
        out: dict[int, list] = {}
        for image_id, blob in raw.execute(
                "SELECT image_id, embedding_f16 FROM windows ORDER BY image_id, window_idx").fetchall():
            out.setdefault(image_id, []).append(np.frombuffer(blob, "<u2"))
        return {k: np.stack(v) for k, v in out.items()}
    finally:
        raw.close()


def test_a_float16_database_from_016_upgrades_bit_for_bit(tiny_db, tmp_path, monkeypatch):
    """Every embedding of a schema 016 file reads back the same bits after the upgrade (step in batches of
    one image, and 017's SQL run alone), and the maps from stored embeddings do not move."""
    filled = _ingested(tiny_db, tmp_path, "float16")
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(filled, old, 17)
    before = _raw_halves(old)
    assert len(before) == 3
    sql_only = tmp_path / "sql_only.duckdb"
    shutil.copyfile(old, sql_only)

    monkeypatch.setattr(migration_steps, "BATCH_HALVES_IMAGES", 1)
    con = connect(old, write=True)
    try:
        assert 17 in applied_versions(con) and not has_column(con, "windows", "embedding_f16")
        for image_id, bits in before.items():
            np.testing.assert_array_equal(_stored_bits(con, image_id), bits)
        stepped = con.execute("SELECT image_id, window_idx, embedding_f16_hi, embedding_f16_lo FROM windows "
                              "ORDER BY ALL").fetchall()
    finally:
        con.close()
    upgraded, written = _maps(old), _maps(filled)
    assert len(upgraded) == len(written) == 3
    for a, b in zip(upgraded, written):
        np.testing.assert_array_equal(a, b)

    (mig,) = [m for m in available_migrations() if m.version == 17]
    raw = duckdb.connect(str(sql_only))
    try:
        raw.execute(mig.sql)   # what a tool applying the SQL alone gets: the same bytes
        assert raw.execute("SELECT image_id, window_idx, embedding_f16_hi, embedding_f16_lo FROM windows "
                           "ORDER BY ALL").fetchall() == stepped
    finally:
        raw.close()


@pytest.mark.parametrize("storage", ["float32", "none"])
def test_float32_and_none_databases_keep_both_columns_null(tiny_db, tmp_path, storage):
    filled = _ingested(tiny_db, tmp_path, storage)
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(filled, old, 17)
    con = connect(old, write=True)
    try:
        hi, lo, full, rows = con.execute("SELECT count(embedding_f16_hi), count(embedding_f16_lo), count(embedding), "
                                         "count(*) FROM windows").fetchone()
        assert rows and (hi, lo, full) == (0, 0, rows if storage == "float32" else 0)
        assert con.execute("SELECT embeddings FROM storage_settings").fetchone() == (storage,)
        if storage == "float32":
            first = load_window_embeddings(con, 1)
    finally:
        con.close()
    if storage == "float32":
        con = connect(filled)
        try:
            np.testing.assert_array_equal(first, load_window_embeddings(con, 1))
        finally:
            con.close()

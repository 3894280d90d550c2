"""init --embeddings float32|float16|none: what each keeps, what is exact, and the upgrade of a
database made before schema 009 (which reads as float32)."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest
import torch

from convis_db.engine.settings import Settings
from convis_db.errors import DatabaseError
from convis_db.ingest import Ingestor
from convis_db.init_db import initialise
from convis_db.store.db import connect
from convis_db.store.image_store import EmbeddingsNotStoredError, embedding_storage, get_image, load_window_embeddings
from schema_history import copy_into_schema_below
from noise_images import write_noise_pngs

SETTINGS = Settings(max_pixels=9_000, stride=16, small=32, large=64, top_k=5)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compact")
    write_noise_pngs(folder, [(70, 90)] * 2, seed=11)
    return folder


def _db(tiny_db, tmp_path, images, storage, tiny_spec, vocab):
    db = tmp_path / f"{storage}.duckdb"
    shutil.copyfile(tiny_db, db)
    report = initialise(db, str(vocab), tiny_spec, torch.device("cpu"), embeddings=storage)
    assert report.embeddings == storage and report.embedded_definitions == 0
    with Ingestor(db, device=torch.device("cpu"), settings=SETTINGS, batch_size=16) as ing:
        assert ing.run([images]).count("ingested") == len(list(images.iterdir()))
    return db


def _scores(db):
    con = connect(db)
    try:
        return {
            "scores": con.execute("SELECT image_id, synset_id, score, work_peak_x, work_peak_y, "
                                  "self_score FROM image_scores ORDER BY 1, 2").fetchall(),
            "top_k": con.execute("SELECT * FROM window_concepts ORDER BY 1, 2, 3").fetchall(),
            "search": con.execute("SELECT * FROM images_with('dog.n.01', 0.0)").fetchall(),
        }
    finally:
        con.close()


def _maps(db, concept="dog.n.01", images=(1, 2)):
    from convis_db.query.maps import MapService

    con = connect(db)
    try:
        service = MapService(con)
        return [service.for_stored(get_image(con, i), concept).saliency for i in images]
    finally:
        con.close()


def test_float16_and_none_keep_scores_and_top_k_exact(tiny_db, tmp_path, images, tiny_spec, small_vocab_file):
    dbs = {s: _db(tiny_db, tmp_path, images, s, tiny_spec, small_vocab_file) for s in ("float32", "float16", "none")}
    exact = _scores(dbs["float32"])
    for storage in ("float16", "none"):
        assert _scores(dbs[storage]) == exact, storage  # computed from float32 before storing

    con = connect(dbs["float16"])
    assert embedding_storage(con) == "float16"
    row = con.execute("SELECT count(embedding), min(octet_length(embedding_f16_hi)), max(octet_length(embedding_f16_hi)), "
                      "min(octet_length(embedding_f16_lo)), max(octet_length(embedding_f16_lo)), count(*) "
                      "FROM windows").fetchone()
    dim = con.execute("SELECT embed_dim FROM models").fetchone()[0]
    assert row == (0, dim, dim, dim, dim, row[-1])  # no FLOAT[]; a high and a low byte per dimension
    half = load_window_embeddings(con, 1)
    con.close()
    con = connect(dbs["float32"])
    full = load_window_embeddings(con, 1)
    con.close()
    assert half.dtype == np.float32 and half.shape == full.shape
    np.testing.assert_array_equal(half, full.astype(np.float16).astype(np.float32))  # round to nearest half

    con = connect(dbs["none"])
    assert con.execute("SELECT count(embedding), count(embedding_f16_hi), count(embedding_f16_lo) "
                       "FROM windows").fetchone() == (0, 0, 0)
    # schema 021: no per-window row is stored at all; the view gives every window its lattice box
    assert con.execute("SELECT count(*) FROM window_embeddings").fetchone()[0] == 0
    assert con.execute("SELECT count(*), count(x0) FROM windows").fetchone() == \
        (con.execute("SELECT sum(n_windows) FROM images").fetchone()[0],) * 2
    with pytest.raises(EmbeddingsNotStoredError, match="init --embeddings none"):
        load_window_embeddings(con, 1)
    con.close()

    # Maps: float16 maps move by at most a few rank steps; none re-encodes the file (same batching: equal).
    n = len(exact["scores"]) // 2
    for a, b, c in zip(_maps(dbs["float32"]), _maps(dbs["float16"]), _maps(dbs["none"])):
        np.testing.assert_allclose(a, b, atol=3.0 / n)
        np.testing.assert_allclose(a, c, atol=1.0 / n + 1e-12)


def test_none_refuses_maps_when_the_file_is_gone_and_init_keeps_one_choice(tiny_db, tmp_path, images, tiny_spec,
                                                                          run_cli, small_vocab_file):
    folder = tmp_path / "moved"
    shutil.copytree(images, folder)
    db = tmp_path / "none.duckdb"
    shutil.copyfile(tiny_db, db)
    res = run_cli("--db", db, "init", "--model", tiny_spec.config_path, "--pretrained", tiny_spec.pretrained,
                  "--vocab", small_vocab_file, "--embeddings", "none", "--json")
    assert res.exit_code == 0, res.stderr
    with Ingestor(db, device=torch.device("cpu"), settings=SETTINGS, batch_size=16) as ing:
        assert ing.run([folder]).count("ingested") == 2
    res = run_cli("--db", db, "map", "1", "dog.n.01", "-o", tmp_path / "m.png")
    assert res.exit_code == 0, res.stderr  # re-encoded from the file
    shutil.rmtree(folder)
    res = run_cli("--db", db, "map", "1", "dog.n.01", "-o", tmp_path / "m2.png")
    assert res.exit_code == 2 and "init --embeddings none" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("--db", db, "search", "dog.n.01", "--json")  # scores need no embeddings
    assert res.exit_code == 0, res.stderr
    res = run_cli("--db", db, "init", "--model", tiny_spec.config_path, "--pretrained", tiny_spec.pretrained,
                  "--vocab", small_vocab_file, "--embeddings", "float32")
    assert res.exit_code == 2 and "one database keeps one choice" in res.stderr


def test_a_database_from_before_schema_009_upgrades_when_opened_and_reads_as_float32(tiny_spec, small_vocab_file, tmp_path,
                                                                        images):
    source = tmp_path / "source.duckdb"
    initialise(source, str(small_vocab_file), tiny_spec, torch.device("cpu"))
    with Ingestor(source, device=torch.device("cpu"), settings=SETTINGS, batch_size=16) as ing:
        assert ing.run([images]).count("ingested") == 2
    db = tmp_path / "old.duckdb"
    copy_into_schema_below(source, db, 9)  # what a convis-db before schema 009 wrote
    raw = duckdb.connect(str(db), read_only=True)
    assert "storage_settings" not in {r[0] for r in raw.execute("SELECT table_name FROM information_schema.tables")
                                      .fetchall()}
    raw.close()
    before, maps_before = _scores(source), _maps(source)
    con = connect(source)
    emb_before = load_window_embeddings(con, 1)
    con.close()

    con = connect(db)  # read-only: upgraded once, then read as the current schema
    assert 9 in {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    assert embedding_storage(con) == "float32"
    np.testing.assert_array_equal(load_window_embeddings(con, 1), emb_before)
    con.close()
    assert _scores(db) == before
    for a, b in zip(maps_before, _maps(db)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DatabaseError, match="one database keeps one choice"):
        initialise(db, str(small_vocab_file), tiny_spec, torch.device("cpu"), embeddings="float16")


def test_none_re_encodes_a_big_photo_as_ingest_decoded_it(tiny_db, tmp_path, tiny_spec, small_vocab_file, monkeypatch):
    """A photo that ingest decoded reduced (engine.images.REDUCE_ABOVE_PIXELS, lowered here so a small
    file counts as big) is decoded the same way when `none` re-encodes it: its maps equal float32's."""
    from convis_db.engine import images as images_mod

    monkeypatch.setattr(images_mod, "REDUCE_ABOVE_PIXELS", 10_000)
    folder = tmp_path / "big"
    folder.mkdir()
    write_noise_pngs(folder, [(300, 400)], seed=5)
    dbs = {s: _db(tiny_db, tmp_path, folder, s, tiny_spec, small_vocab_file) for s in ("float32", "none")}
    [re_encoded], [stored] = _maps(dbs["none"], images=(1,)), _maps(dbs["float32"], images=(1,))
    np.testing.assert_array_equal(re_encoded, stored)


def test_a_shards_window_top_rows_are_what_the_database_would_store():
    """Shard format 4: image_store.window_top_rows (numpy, in the worker) gives the rows window_top_insert
    (SQL, the one statement the database stores window_concepts rows with) gives, ties included."""
    import pyarrow as pa

    from convis_db.store.image_store import window_top_insert, window_top_rows

    n_syn, k, n_windows = 50, 4, 30
    rng = np.random.default_rng(3)
    rank_less = np.tile(np.arange(n_syn - 1, n_syn - 1 - k, -1), (n_windows, 1))
    rank_less[[2, 7, 19]] = [[49, 47, 47, 46], [48, 48, 47, 46], [49, 48, 47, 45]]  # ties in three windows
    concepts = pa.table({
        "image_id": pa.array(np.repeat([1, 2], n_windows * k // 2).astype(np.int32)),
        "window_idx": pa.array(np.repeat(np.r_[np.arange(15), np.arange(15)], k).astype(np.int32)),
        "k": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int16), n_windows)),
        "synset_id": pa.array(rng.integers(0, n_syn, n_windows * k).astype(np.int32)),
        "rank_less": pa.array(rank_less.reshape(-1).astype(np.int32)),
    })
    con = duckdb.connect()
    con.execute("CREATE TABLE window_top (image_id INTEGER NOT NULL, window_idx INTEGER NOT NULL, "
                "synset_ids INTEGER[] NOT NULL, rank_less INTEGER[])")
    con.register("_concepts", concepts)
    con.execute(window_top_insert("SELECT * FROM _concepts"), {"n_synsets": n_syn})
    expected = con.execute("SELECT * FROM window_top ORDER BY ALL").fetchall()
    got = window_top_rows(concepts, n_syn)
    con.register("_got", got)
    assert con.execute("SELECT * FROM _got ORDER BY ALL").fetchall() == expected
    assert got.column("rank_less").null_count == n_windows - 3
    shuffled = concepts.take(pa.array(np.r_[1, 0, np.arange(2, n_windows * k)]))  # window 0's k = 2 before k = 1
    with pytest.raises(ValueError, match="k = 1..K rows together"):
        window_top_rows(shuffled, n_syn)

"""Schema 012 (issue 24): the compact layout answers every query as the layout before it, row for row.

A database is filled at the current schema, copied into the schema below 012 (the layout an earlier
convis-db wrote: window_concepts as a table of K rows per window), and both are asked the same
questions: read-only before the upgrade, and again after it rewrote the old file.
"""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from schema_history import copy_into_schema_below
from test_upgrade_work_peaks_and_profile import SETTINGS, _answers
from test_queries import readme_sql_examples

from convis_db.ingest import Ingestor
from convis_db.query.stats import database_stats
from convis_db.store.db import connect
from convis_db.store.image_store import insert_tables
from convis_db.store.migrations import applied_versions, has_table
from convis_db.store.transaction import transaction
from noise_images import write_noise_pngs

CPU = "cpu"


@pytest.fixture(scope="module")
def filled012(tiny_db, tmp_path_factory):
    """tiny_db (current schema) with three ingested images."""
    import torch

    folder = tmp_path_factory.mktemp("images012")
    write_noise_pngs(folder, [(70, 90), (90, 64), (64, 64)], seed=12)
    db = tmp_path_factory.mktemp("filled012") / "filled.duckdb"
    shutil.copyfile(tiny_db, db)
    with Ingestor(db, device=torch.device(CPU), settings=SETTINGS, batch_size=16) as ing:
        assert ing.run([folder]).count("ingested") == 3
    return db


def _everything(db) -> dict:
    """_answers (search by image and map, count, regions, explain, the explorer, the views and macros),
    plus the README's SQL examples, the raw window_concepts rows and maps from stored embeddings."""
    import convis_db

    out = _answers(db)
    con = connect(db)
    try:
        for i, sql in enumerate(readme_sql_examples()):
            out[f"readme {i}"] = con.execute(sql).fetchall()
        out["window_concepts"] = con.execute("SELECT * FROM window_concepts ORDER BY ALL").fetchall()
        out["window_concepts types"] = [r[1] for r in con.execute(
            "DESCRIBE SELECT * FROM window_concepts").fetchall()]
        out["regions_with low"] = con.execute("SELECT * FROM regions_with('entity.n.01', 0.5)").fetchall()
        out["stats"] = {key: value for key, value in database_stats(con, str(db)).items()
                        if key not in ("db", "file_bytes", "schema_version")}
    finally:
        con.close()
    with convis_db.open(db, device="cpu") as api:
        for concept in ("entity.n.01", "dog.n.01"):
            out[f"map {concept}"] = [api.map(i, concept).values.tolist() for i in (1, 2, 3)]
    return out


def test_a_database_from_before_012_is_rewritten_when_opened_and_answers_the_same(filled012, tmp_path):
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(filled012, old, 12)
    current = _everything(filled012)
    assert current["window_concepts"] and current["regions_with"] and current["map entity.n.01"]
    raw = duckdb.connect(str(old), read_only=True)  # as the earlier convis-db left it: K rows per window
    assert max(applied_versions(raw)) < 12 and not has_table(raw, "window_top")
    assert has_table(raw, "window_concepts")
    raw.close()

    con = connect(old)  # even read-only, the open upgrades it: the file is rewritten into the compact layout
    assert 12 in applied_versions(con)
    assert has_table(con, "window_top")
    assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'window_concepts'"
                       ).fetchone()[0] == "VIEW"
    k = con.execute("SELECT top_k FROM images LIMIT 1").fetchone()[0]
    assert con.execute("SELECT min(len(synset_ids)), max(len(synset_ids)) FROM window_top").fetchone() == (k, k)
    con.close()
    assert _everything(old) == current


def test_ties_keep_their_exact_counts_and_others_store_none(filled012, tmp_path):
    """A window whose top-K has tied cosines keeps its rank_less list; the others store NULL and the
    view gives |T| - k: the same rows either way."""
    db = tmp_path / "ties.duckdb"
    shutil.copyfile(filled012, db)
    con = connect(db, write=True)
    try:
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        assert con.execute("SELECT count(*) FROM window_top WHERE rank_less IS NOT NULL").fetchone()[0] == \
            con.execute("SELECT count(DISTINCT (image_id, window_idx)) FROM window_concepts "
                        "WHERE rank_less <> ? - k", [n]).fetchone()[0]
        # image 99, two windows of K = 4: window 0 without ties, window 1 with k = 2 and 3 tied
        rows = pa.table({
            "image_id": pa.array([99] * 8, pa.int32()),
            "window_idx": pa.array([0] * 4 + [1] * 4, pa.int32()),
            "k": pa.array([4, 3, 2, 1, 1, 2, 3, 4], pa.int16()),       # any row order
            "synset_id": pa.array([7, 6, 5, 4, 9, 8, 3, 2], pa.int32()),
            "rank_less": pa.array([n - 4, n - 3, n - 2, n - 1, n - 1, n - 3, n - 3, n - 4], pa.int32()),
        })
        with transaction(con):
            insert_tables(con, {"window_concepts": rows})
        stored = con.execute("SELECT window_idx, synset_ids, rank_less FROM window_top WHERE image_id = 99 "
                             "ORDER BY window_idx").fetchall()
        assert stored == [(0, [4, 5, 6, 7], None), (1, [9, 8, 3, 2], [n - 1, n - 3, n - 3, n - 4])]
        back = con.execute("SELECT window_idx, k, synset_id, rank_less FROM window_concepts WHERE image_id = 99 "
                           "ORDER BY window_idx, k").fetchall()
        want = sorted(zip(rows["window_idx"].to_pylist(), rows["k"].to_pylist(), rows["synset_id"].to_pylist(),
                          rows["rank_less"].to_pylist()))
        assert back == want
    finally:
        con.close()


def _used_blocks(con) -> int:
    return con.execute("SELECT used_blocks FROM pragma_database_size() "
                       "WHERE database_name = current_database()").fetchone()[0]


def test_the_compact_layout_is_smaller_than_the_rows_it_replaces(filled012, tmp_path):
    """The same windows' top-K in both layouts, each copied alone into a fresh file: window_top takes
    less than half the bytes of window_concepts' K rows per window (a guard, not a benchmark: the
    figures at paper settings are in docs/storage.md)."""
    sizes = {}
    for name, (table, order) in {"rows": ("window_concepts", "window_idx, k"),
                                 "lists": ("window_top", "window_idx")}.items():
        f = tmp_path / f"{name}.duckdb"
        con = duckdb.connect(str(f))
        con.execute(f"ATTACH '{filled012}' AS src (READ_ONLY)")
        con.execute("CREATE TABLE t AS SELECT 1 AS one")
        con.execute("CHECKPOINT")
        empty = _used_blocks(con)
        # enough rows that whole blocks measure it: the rows repeated under other image ids
        con.execute(f"CREATE TABLE x AS SELECT c.* REPLACE (image_id + r * 1000 AS image_id) "
                    f"FROM src.{table} c, range(3000) t(r) ORDER BY r, image_id, {order}")  # names from the dict
        con.execute("CHECKPOINT")
        sizes[name] = _used_blocks(con) - empty
        con.close()
    assert sizes["lists"] * 2 < sizes["rows"], sizes
    assert np.all(np.array(list(sizes.values())) > 0)


def test_the_upgrade_runs_in_batches_with_progress_and_equals_the_sql_alone(filled012, tmp_path, monkeypatch):
    """convis-db converts window_concepts a batch of images at a time with a bar counting images (here one
    image per batch); 012's SQL run alone (as an older tool or a test would) gives the same window_top."""
    import contextlib

    from convis_db.store import migration_steps
    from convis_db.store.migrations import available_migrations, migrate

    monkeypatch.setattr(migration_steps, "BATCH_IMAGES", 1)
    bars = []

    @contextlib.contextmanager
    def progress(desc, total, unit="it"):
        bars.append([desc, total, unit, 0])
        yield lambda n=1, **postfix: bars[-1].__setitem__(3, bars[-1][3] + n)

    stepped, alone = tmp_path / "stepped.duckdb", tmp_path / "alone.duckdb"
    copy_into_schema_below(filled012, stepped, 12)
    shutil.copyfile(stepped, alone)
    con = duckdb.connect(str(stepped))
    assert 12 in migrate(con, str(stepped), progress=progress)
    by_steps = con.execute("SELECT * FROM window_top ORDER BY image_id, window_idx").fetchall()
    con.close()
    assert bars[0] == ["Upgrading: each window's top concepts as one row (schema 012)", 3, "images", 3]
    assert all(any(f"(schema {v})" in bar[0] for v in ("013", "016", "022")) for bar in bars[1:])  # later upgrades

    (sql,) = [m.sql for m in available_migrations() if m.version == 12]
    con = duckdb.connect(str(alone))
    con.execute(sql)
    assert con.execute("SELECT * FROM window_top ORDER BY image_id, window_idx").fetchall() == by_steps
    assert len(by_steps) == con.execute("SELECT sum(n_windows) FROM images").fetchone()[0]
    con.close()


def test_opening_an_older_file_for_writing_shows_the_upgrade(filled012, tmp_path):
    """Database(write=True, progress=...) (the CLI passes its bars) hands the factory to the upgrade."""
    import contextlib

    from convis_db.api import Database

    old = tmp_path / "old.duckdb"
    copy_into_schema_below(filled012, old, 12)
    bars = []

    @contextlib.contextmanager
    def progress(desc, total, unit="it"):
        bars.append((desc, total, unit))
        yield lambda n=1, **postfix: None

    db = Database(old, device="cpu", write=True, progress=progress)
    try:
        assert 12 in applied_versions(db.con)
    finally:
        db.close()
    assert bars[0] == ("Upgrading: each window's top concepts as one row (schema 012)", 3, "images")
    assert [bar[0] for bar in bars[1:]] == ["Upgrading: concept scores as exact integers (schema 013)",
                                            "Upgrading: the concept-ordered search keys (schema 013)",
                                            "Upgrading: self peaks of concepts with descendants only (schema 016)",
                                            "Upgrading: peaks as segment indexes (schema 022)"]

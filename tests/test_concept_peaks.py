"""Schema 013 (issue 24; issue 22 item 10): peaks as exact integer terms (concept_peaks), the slim search
keys (concept_order), and image_scores / concept_index as views answering every query as the tables did.

A database is filled at the current schema and copied into the schema below 013 (DOUBLE peaks in
image_scores and again in concept_index, as an earlier convis-db wrote them); the upgrade rewrites that
file, and both files are asked the same questions, row for row and bit for bit.
"""

from __future__ import annotations

import contextlib
import shutil

import duckdb
import numpy as np
import pytest
from schema_history import copy_into_schema_below
from test_compact_concepts import _everything
from test_upgrade_work_peaks_and_profile import SETTINGS

from convis_db.ingest import Ingestor
from convis_db.store.db import connect
from convis_db.store.migrations import applied_versions, available_migrations, has_table, migrate
from noise_images import write_noise_pngs

#: The columns image_scores and concept_index held before schema 013, in their order.
OLD_COLUMNS = ("image_id, synset_id, score, work_peak_x, work_peak_y, self_score, work_self_peak_x, "
               "work_self_peak_y, image_max_rank_less, image_rank_less")


@pytest.fixture(scope="module")
def captured(tiny_db, tmp_path_factory):
    """tiny_db (current schema) with three ingested images, and the engine's explanation of each (by path)."""
    import torch

    from convis_db.store import image_store

    folder = tmp_path_factory.mktemp("images013")
    write_noise_pngs(folder, [(70, 90), (90, 64), (64, 64)], seed=13)
    db = tmp_path_factory.mktemp("filled013") / "filled.duckdb"
    shutil.copyfile(tiny_db, db)
    explanations = {}
    real = image_store.image_tables

    def capture(exp, sha256, path, *args, **kwargs):
        explanations[path] = exp
        return real(exp, sha256, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image_store, "image_tables", capture)
        with Ingestor(db, device=torch.device("cpu"), settings=SETTINGS, batch_size=16) as ing:
            assert ing.run([folder]).count("ingested") == 3
    return db, explanations


def _rows(db, sql: str) -> list:
    con = connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _bits(values) -> np.ndarray:
    return np.asarray(values, np.float64).view(np.int64)


def test_a_fresh_ingest_stores_the_engines_doubles_bit_for_bit(captured):
    """The image_scores view gives back the DOUBLEs the engine computed (as the table stored them before
    013), and concept_peaks holds the engine's own integer terms."""
    db, explanations = captured
    con = connect(db)
    try:
        for path, exp in explanations.items():
            image_id = con.execute("SELECT image_id FROM images WHERE path = ?", [path]).fetchone()[0]
            rows = con.execute(f"SELECT {OLD_COLUMNS}, map_peak, self_map_peak FROM image_scores "
                               "WHERE image_id = ? ORDER BY synset_id", [image_id]).fetchall()
            score, self_score = [r[2] for r in rows], [r[5] for r in rows]
            np.testing.assert_array_equal(_bits(score), _bits(exp.scores.score))
            np.testing.assert_array_equal(_bits(self_score), _bits(exp.self_scores.score))
            assert [r[10] for r in rows] == score and [r[11] for r in rows] == self_score  # the new names
            assert [r[3:5] for r in rows] == list(zip(exp.scores.x.tolist(), exp.scores.y.tolist()))
            terms = con.execute("SELECT map_sum, map_windows, self_sum, self_windows FROM concept_full_peaks "
                                "WHERE image_id = ? ORDER BY synset_id", [image_id]).fetchall()
            assert [t[:2] for t in terms] == list(zip(exp.scores.sum.tolist(), exp.scores.windows.tolist()))
            assert [t[2:] for t in terms] == list(zip(exp.self_scores.sum.tolist(), exp.self_scores.windows.tolist()))
    finally:
        con.close()
    # concept_index (the view over concept_order) holds image_scores' rows, every column equal
    assert sorted(_rows(db, f"SELECT {OLD_COLUMNS}, map_peak, self_map_peak FROM concept_index")) == \
        sorted(_rows(db, f"SELECT {OLD_COLUMNS}, map_peak, self_map_peak FROM image_scores"))


def test_the_search_keys_are_slim_and_the_peaks_are_integers(captured):
    db, _ = captured
    con = connect(db)
    try:
        def columns(table):
            return [(r[0], r[1]) for r in con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
                [table]).fetchall()]

        assert columns("concept_order") == [("synset_id", "INTEGER"), ("image_id", "INTEGER"),
                                            ("map_sum", "INTEGER"), ("map_windows", "INTEGER"),
                                            ("image_max_rank_less", "INTEGER")]
        assert {t for _, t in columns("concept_peaks")} == {"INTEGER"}
        assert not has_table(con, "image_scores") and not has_table(con, "concept_index")  # views now
        assert con.execute("SELECT count(*) FROM concept_order").fetchone()[0] == \
            con.execute("SELECT count(*) FROM concept_peaks").fetchone()[0]
    finally:
        con.close()


def _upgraded_answers(db) -> dict:
    """_everything, plus the raw rows of image_scores and concept_index (old columns, as DOUBLE bits)."""
    out = _everything(db)
    for name in ("image_scores", "concept_index"):
        rows = _rows(db, f"SELECT {OLD_COLUMNS} FROM {name} ORDER BY image_id, synset_id")
        out[name] = [r[:2] + (_bits(r[2]).item(),) + r[3:5] + (_bits(r[5]).item(),) + r[6:] for r in rows]
    return out


def test_a_database_from_before_013_upgrades_and_answers_the_same(captured, tmp_path):
    db, _ = captured
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(db, old, 13)
    raw = duckdb.connect(str(old), read_only=True)  # as the earlier convis-db left it: DOUBLE peaks, twice
    assert max(applied_versions(raw)) == 12 and has_table(raw, "image_scores") and has_table(raw, "concept_index")
    raw.close()
    current = _upgraded_answers(db)
    assert current["search image False"] and current["regions"] and current["images_with"]

    con = connect(old)  # even read-only, the open upgrades it: both tables rewritten
    assert 13 in applied_versions(con)
    assert has_table(con, "concept_map_terms") and has_table(con, "concept_order")  # concept_peaks' since 022
    assert not has_table(con, "image_scores") and not has_table(con, "concept_index")
    con.close()
    assert _upgraded_answers(old) == current


def test_the_upgrade_converts_to_the_engines_ratios_in_lowest_terms(captured, tmp_path):
    db, _ = captured
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(db, old, 13)
    connect(old, write=True).close()
    con = duckdb.connect(str(old), read_only=True)
    try:
        con.execute(f"ATTACH '{db}' AS fresh (READ_ONLY)")
        pairs = con.execute("SELECT o.map_sum, o.map_windows, f.map_sum, f.map_windows, o.self_sum, o.self_windows, "
                            "f.self_sum, f.self_windows FROM concept_full_peaks o "
                            "JOIN fresh.concept_full_peaks f USING (image_id, synset_id)").fetchall()
    finally:
        con.close()
    assert len(pairs) == 3 * _rows(db, "SELECT count(*) FROM synsets")[0][0]
    for a, b, c, d, e, f, g, h in pairs:
        assert a * d == c * b and d % b == 0  # the same ratio, with the fewest windows that give it
        assert e * h == g * f and h % f == 0


def test_the_upgrade_runs_in_batches_with_progress_and_equals_the_sql_alone(captured, tmp_path, monkeypatch):
    """convis-db converts image_scores a batch of images at a time and concept_index a batch of concepts
    at a time, with bars; 013's SQL run alone (as a test or an older tool would) gives the same tables."""
    from convis_db.store import migration_steps

    db, _ = captured
    monkeypatch.setattr(migration_steps, "BATCH_IMAGES", 1)
    monkeypatch.setattr(migration_steps, "BATCH_CONCEPTS", 7)
    bars = []

    @contextlib.contextmanager
    def progress(desc, total, unit="it"):
        bars.append([desc, total, unit, 0])
        yield lambda n=1, **postfix: bars[-1].__setitem__(3, bars[-1][3] + n)

    stepped, alone = tmp_path / "stepped.duckdb", tmp_path / "alone.duckdb"
    copy_into_schema_below(db, stepped, 13)
    shutil.copyfile(stepped, alone)
    n_synsets = _rows(db, "SELECT count(*) FROM synsets")[0][0]
    tables = {}
    for path in (stepped, alone):
        con = duckdb.connect(str(path))
        if path == stepped:
            assert 13 in migrate(con, str(path), progress=progress)
        else:
            for mig in available_migrations():  # 013's SQL alone, and the later ones' (016 splits the rows)
                if mig.version >= 13:
                    con.execute(mig.sql)
        tables[path] = [con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                        for t in ("concept_full_peaks", "concept_order")]
        con.close()
    assert bars == [["Upgrading: concept scores as exact integers (schema 013)", 3, "images", 3],
                    ["Upgrading: the concept-ordered search keys (schema 013)", n_synsets, "concepts", n_synsets],
                    ["Upgrading: self peaks of concepts with descendants only (schema 016)", 3, "images", 3],
                    ["Upgrading: peaks as segment indexes (schema 022)", 3, "images", 3]]
    assert tables[stepped] == tables[alone]
    assert len(tables[stepped][0]) == len(tables[stepped][1]) == 3 * n_synsets


def test_a_value_that_is_no_ratio_of_integers_stops_the_upgrade_and_keeps_the_file(captured, tmp_path):
    from convis_db.errors import ConvisError

    db, _ = captured
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(db, old, 13)
    con = duckdb.connect(str(old))
    con.execute("UPDATE image_scores SET self_score = 0.1234567 WHERE image_id = 2 AND synset_id = 5")
    con.close()
    with pytest.raises((ConvisError, duckdb.Error), match="no ratio of integers"):
        connect(old, write=True).close()
    con = duckdb.connect(str(old), read_only=True)  # untouched: the upgrade's transaction rolled back
    assert max(applied_versions(con)) == 12 and has_table(con, "image_scores")
    con.close()

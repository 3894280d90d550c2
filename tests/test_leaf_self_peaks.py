"""Issue 24: a leaf of T (no descendant but itself in closure) has one map, so its "self" peak terms
(self_sum, self_windows, work_self_peak_x/y, image_rank_less) equal its map terms (map_sum, map_windows,
work_peak_x/y, image_max_rank_less) exactly. A layout that stores the self terms of inner concepts only
relies on this; these tests check it on the engine's output (numba kernels and the torch path) and on
the stored rows.

Why it holds by construction: the engine computes both peaks with the one function `saliency.peaks` over
two (|T|, windows) arrays whose leaf rows are the same integers (max over a leaf and its descendants is
the leaf's own row), row by row, the same chunks in the same positions, so equal rows give equal peaks,
ties included (first segment in row-major order in both paths).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_upgrade_work_peaks_and_profile import SETTINGS

from convis_db.engine import saliency
from convis_db.ingest import Ingestor
from convis_db.store.db import connect
from noise_images import write_noise_pngs


def _leaves(con) -> np.ndarray:
    rows = con.execute("""SELECT synset_id FROM synsets s WHERE NOT EXISTS (
                              SELECT 1 FROM closure c WHERE c.ancestor_id = s.synset_id
                              AND c.descendant_id <> s.synset_id) ORDER BY synset_id""").fetchall()
    return np.array([r[0] for r in rows], np.int64)


def _ingest(tiny_db, tmp_path, monkeypatch, no_kernels: bool, settings=SETTINGS):
    import torch

    from convis_db.store import image_store

    folder = tmp_path / "images"
    folder.mkdir()
    write_noise_pngs(folder, [(70, 90), (90, 64), (64, 64), (40, 120)], seed=24)
    db = tmp_path / "leaf.duckdb"
    shutil.copyfile(tiny_db, db)
    explanations = []
    real = image_store.image_tables

    def capture(exp, *args, **kwargs):
        explanations.append(exp)
        return real(exp, *args, **kwargs)

    monkeypatch.setattr(image_store, "image_tables", capture)
    if no_kernels:  # the torch path of saliency.peaks (as on a GPU)
        monkeypatch.setattr(saliency, "load_kernels", lambda: None)
    with Ingestor(db, device=torch.device("cpu"), settings=settings, batch_size=16) as ing:
        assert ing.run([folder]).count("ingested") == 4
    return db, explanations


@pytest.mark.parametrize("no_kernels", [False, True], ids=["kernels", "torch"])
def test_a_leafs_self_peak_is_its_map_peak(tiny_db, tmp_path, monkeypatch, no_kernels):
    db, explanations = _ingest(tiny_db, tmp_path, monkeypatch, no_kernels)
    con = connect(db)
    try:
        leaves = _leaves(con)
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        assert 0 < len(leaves) < n  # the fixture hierarchy has both kinds
        for exp in explanations:
            m, s = exp.scores, exp.self_scores
            for name in ("sum", "windows", "x", "y"):
                assert np.array_equal(getattr(m, name)[leaves], getattr(s, name)[leaves]), name
            assert np.array_equal(m.score[leaves].view(np.int64), s.score[leaves].view(np.int64))
            level = exp.image_level
            assert level is not None
            assert np.array_equal(level.max_rank_less[leaves], level.rank_less[leaves])
        stored = con.execute("""
            SELECT count(*), count(*) FILTER (WHERE self_sum IS NOT DISTINCT FROM map_sum
                AND self_windows IS NOT DISTINCT FROM map_windows AND work_self_peak_x = work_peak_x
                AND work_self_peak_y = work_peak_y AND image_rank_less IS NOT DISTINCT FROM image_max_rank_less)
            FROM concept_full_peaks WHERE synset_id IN (SELECT unnest(?::INTEGER[]))""", [leaves.tolist()]).fetchone()
        assert stored[0] == 4 * len(leaves) and stored[1] == stored[0]
        # inner concepts do differ somewhere (else the test would prove nothing about the split)
        inner = con.execute("""SELECT count(*) FROM concept_full_peaks WHERE synset_id NOT IN
                               (SELECT unnest(?::INTEGER[])) AND (self_sum <> map_sum OR work_self_peak_x <> work_peak_x
                               OR work_self_peak_y <> work_peak_y OR self_windows <> map_windows)""",
                            [leaves.tolist()]).fetchone()[0]
        assert inner > 0
    finally:
        con.close()


#: Every view and table macro a reader asks for rows with self terms, and how to list them all.
VIEW_QUERIES = {
    "image_scores": "SELECT * FROM image_scores ORDER BY image_id, synset_id",
    "concept_index": "SELECT * FROM concept_index ORDER BY synset_id, image_id",
    "image_concepts": "SELECT * FROM image_concepts ORDER BY image_id, synset_id",
    "concept_rows": "SELECT r.* FROM synsets s, concept_rows(s.synset_id) r ORDER BY r.synset_id, r.image_id",
    "concept_keys": "SELECT r.* FROM synsets s, concept_keys(s.synset_id) r ORDER BY r.synset_id, r.image_id",
    "concept_scores": "SELECT i.image_id, c.* FROM images i, concept_scores(i.image_id) c ORDER BY ALL",
    "images_with": "SELECT * FROM images_with('entity.n.01', 0.0)",
    "images_with map": "SELECT * FROM images_with('entity.n.01', 0.0, level := 'map', top := 2)",
}


def _bits_of(rows: list) -> list:
    """Rows with every float as its IEEE bits (a bit-for-bit comparison: -0.0 and 0.0 differ, NaN equals)."""
    return [tuple(np.float64(v).view(np.int64).item() if isinstance(v, float) else v for v in row) for row in rows]


def _views(con) -> dict:
    return {name: _bits_of(con.execute(sql).fetchall()) for name, sql in VIEW_QUERIES.items()}


@pytest.fixture(scope="module")
def filled(tiny_db, tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("images016")
    write_noise_pngs(folder, [(70, 90), (90, 64), (64, 64)], seed=16)
    db = tmp_path_factory.mktemp("filled016") / "filled.duckdb"
    shutil.copyfile(tiny_db, db)
    with Ingestor(db, device=torch.device("cpu"), settings=SETTINGS, batch_size=16) as ing:
        assert ing.run([folder]).count("ingested") == 3
    return db


def test_a_database_from_before_016_upgrades_and_every_view_gives_the_same_rows(filled, tmp_path):
    """A file at the schema before 016 (self terms in every concept_peaks row, as the earlier writer
    stored them) answers every view and macro bit for bit as before its upgrade, and as a database
    written in the new layout; the upgrade leaves the self terms of inner concepts only."""
    import duckdb
    from schema_history import copy_into_schema_below
    from test_compact_concepts import _everything

    from convis_db.store.migrations import applied_versions, has_column

    old = tmp_path / "old.duckdb"
    copy_into_schema_below(filled, old, 16)
    raw = duckdb.connect(str(old), read_only=True)  # as the earlier convis-db left it
    try:
        assert 16 not in applied_versions(raw) and has_column(raw, "concept_peaks", "self_sum")
        before = _views(raw)
    finally:
        raw.close()
    assert all(before.values())
    fresh = connect(filled)
    try:
        assert _views(fresh) == before  # the new layout, written by ingest, answers as the old one did
        new_everything = _everything(filled)
    finally:
        fresh.close()
    con = connect(old, write=True)
    try:
        assert 16 in applied_versions(con)
        assert not has_column(con, "concept_peaks", "self_sum")
        assert _views(con) == before
        n_inner, n_images = con.execute("SELECT (SELECT count(*) FROM inner_concepts()), "
                                        "(SELECT count(*) FROM images)").fetchone()
        assert con.execute("SELECT count(*) FROM concept_self_peaks").fetchone()[0] == n_inner * n_images
        assert con.execute("SELECT * FROM concept_self_peaks ORDER BY ALL").fetchall() == \
            _rows_of(filled, "SELECT * FROM concept_self_peaks ORDER BY ALL")
    finally:
        con.close()
    assert _everything(old) == new_everything


def _rows_of(db, sql: str) -> list:
    con = connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_leaf_whose_self_terms_differ_stops_the_upgrade_and_keeps_the_file(filled, tmp_path):
    import duckdb
    from schema_history import copy_into_schema_below

    from convis_db.errors import ConvisError
    from convis_db.store.migrations import applied_versions

    old = tmp_path / "old.duckdb"
    copy_into_schema_below(filled, old, 16)
    raw = duckdb.connect(str(old))
    leaf = int(_leaves(raw)[0])
    raw.execute("UPDATE concept_peaks SET self_sum = self_sum + 1 WHERE synset_id = ?", [leaf])
    raw.close()
    with pytest.raises((ConvisError, duckdb.Error), match="is a leaf of T"):
        connect(old, write=True).close()
    raw = duckdb.connect(str(old), read_only=True)
    try:
        assert 16 not in applied_versions(raw)
        assert raw.execute("SELECT count(*) FROM concept_peaks WHERE synset_id = ? AND self_sum <> map_sum",
                           [leaf]).fetchone()[0] == 3
    finally:
        raw.close()

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


def _ingest(tiny_db, tmp_path, monkeypatch, no_kernels: bool):
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
    with Ingestor(db, device=torch.device("cpu"), settings=SETTINGS, batch_size=16) as ing:
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

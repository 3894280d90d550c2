"""The ingest pipeline: image i is written by a writer thread while image i+1 is explained.

Checks that the overlap changes nothing observable: outcomes in file order, adjacent duplicates
skipped, a failed write recorded while the run goes on, and every stored image whole.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import torch

from convis_db.engine.settings import Settings
from convis_db.errors import ImageError
from convis_db.ingest import Ingestor
from noise_images import write_noise_pngs

SETTINGS = Settings(max_pixels=9_000, stride=32, small=32, large=64, top_k=5)


def _images(folder, n, seed=0):
    return write_noise_pngs(folder, [(70, 90)] * n, seed, "img_{i:02d}.png")


def test_outcomes_follow_file_order_and_adjacent_duplicates_are_skipped(tiny_db_copy, tmp_path):
    paths = _images(tmp_path, 4)
    dup = tmp_path / "img_01b.png"  # sorts right after img_01: its twin is still being written
    shutil.copyfile(paths[1], dup)
    files = [paths[0], paths[1], dup, paths[2], paths[3]]
    writer_threads = set()
    import convis_db.ingest.storing as ingest_module

    real = ingest_module.write_image

    def spy(*args, **kwargs):
        writer_threads.add(threading.current_thread().name)
        return real(*args, **kwargs)

    ingest_module.write_image = spy
    try:
        with Ingestor(tiny_db_copy, device=torch.device("cpu"), settings=SETTINGS) as ing:
            report = ing.run(files)
    finally:
        ingest_module.write_image = real
    assert [o.path for o in report.outcomes] == [str(p.absolute()) for p in files]
    assert [o.status for o in report.outcomes] == ["ingested", "ingested", "skipped", "ingested", "ingested"]
    assert "already stored as image" in report.outcomes[2].reason
    assert [o.image_id for o in report.outcomes if o.status == "ingested"] == [1, 2, 3, 4]
    assert all(name.startswith("db-write") for name in writer_threads)


def test_a_failed_write_is_recorded_and_the_run_goes_on(tiny_db_copy, tmp_path, monkeypatch):
    paths = _images(tmp_path, 3, seed=1)
    import convis_db.ingest.storing as ingest_module

    real = ingest_module.write_image

    def failing(cursor, exp, sha, key, *args, **kwargs):
        if key.endswith("img_01.png"):
            raise ImageError(f"{key}: refused by the test")
        return real(cursor, exp, sha, key, *args, **kwargs)

    monkeypatch.setattr(ingest_module, "write_image", failing)
    from convis_db.store.db import connect

    with Ingestor(tiny_db_copy, device=torch.device("cpu"), settings=SETTINGS) as ing:
        report = ing.run(paths)
    assert [o.status for o in report.outcomes] == ["ingested", "failed", "ingested"]
    con = connect(tiny_db_copy)
    try:
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 2
        assert con.execute("SELECT error FROM ingest_failures").fetchone()[0].endswith("refused by the test")
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        for image_id, n_windows in con.execute("SELECT image_id, n_windows FROM images").fetchall():
            assert con.execute("SELECT count(*) FROM windows WHERE image_id = ?", [image_id]).fetchone()[0] == n_windows
            assert con.execute("SELECT count(*) FROM image_scores WHERE image_id = ?", [image_id]).fetchone()[0] == n
    finally:
        con.close()


def test_small_images_share_encoder_batches_without_changing_results(tiny_db, tmp_path):
    """With room for many windows per batch, several small images are explained in one group, and
    their stored scores match those of images explained one per batch."""
    from convis_db.engine.explainer import ConceptEngine
    from convis_db.store.db import connect

    paths = _images(tmp_path, 5, seed=3)
    groups = []
    real = ConceptEngine.explain_many

    def spy(self, pixels_list, sizes=None):
        groups.append(len(pixels_list))
        return real(self, pixels_list, sizes)

    ConceptEngine.explain_many = spy
    try:
        scores = {}
        for batch in (1, 256):
            db = tmp_path / f"b{batch}.duckdb"
            shutil.copyfile(tiny_db, db)
            with Ingestor(db, device=torch.device("cpu"), settings=SETTINGS, batch_size=batch) as ing:
                assert ing.run(paths).count("ingested") == 5
            con = connect(db)
            scores[batch] = con.execute("SELECT image_id, synset_id, score, self_score FROM image_scores "
                                        "ORDER BY image_id, synset_id").fetchnumpy()
            n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
            con.close()
    finally:
        ConceptEngine.explain_many = real
    assert max(groups) > 1  # shared batches happened with batch_size 256 ...
    assert groups[:5] == [1, 1, 1, 1, 1]  # ... and not with batch_size 1
    for key in ("image_id", "synset_id"):
        np.testing.assert_array_equal(scores[1][key], scores[256][key])
    # Batch composition can move float32 embeddings by ~1e-7, which can swap two near-tied cosines:
    # allow one rank step (1/|T|), no more.
    for key in ("score", "self_score"):
        np.testing.assert_allclose(scores[1][key], scores[256][key], atol=1.0 / n + 1e-12)

"""Working-to-original pixel conversion: one formula, equal to the SQL views' for every value."""

from __future__ import annotations

import re

import shutil

import duckdb
import numpy as np
import pytest
from PIL import Image

import convis_db
from convis_db import Settings
from convis_db.engine.pixels import original_box, original_point, original_points, sql_original_point
from convis_db.store.migrations import available_migrations


def test_points_equal_the_views_formula_exactly():
    scales = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 1 / 3, 7 / 5, 1.2345678901]
    values = np.arange(0, 700)
    con = duckdb.connect()
    try:
        # schema 010's statement of the macro, run here as it is
        statement = re.search(r"CREATE OR REPLACE MACRO original_px\(.*?;",
                              next(m for m in available_migrations() if m.version == 10).sql, re.S)
        con.execute(statement.group(0))
        for scale in scales:
            # What migrations 003-005 write in the views, evaluated by DuckDB.
            views = np.array(con.execute(
                "SELECT CAST(round((v + 0.5) * ? - 0.5) AS INTEGER) FROM unnest(?::INTEGER[]) t(v)",
                [scale, values.tolist()]).fetchall())[:, 0]
            ours_sql = np.array(con.execute(
                f"SELECT {sql_original_point('v', '?')} FROM unnest(?::INTEGER[]) t(v)",
                [scale, values.tolist()]).fetchall())[:, 0]
            ours = original_points(values, scale)
            assert (ours == views).all() and (ours_sql == views).all(), scale
            assert [original_point(int(v), scale) for v in values[:50]] == views[:50].tolist()
    finally:
        con.close()


def test_python_round_would_differ_at_whole_centres():
    """Why there is one home: (v + 0.5) * 2 - 0.5 is always a half, which round() sends to even."""
    differ = [v for v in range(20) if int(round((v + 0.5) * 2.0 - 0.5)) != original_point(v, 2.0)]
    assert differ and all(original_point(v, 2.0) == 2 * v + 1 for v in range(20))


def test_boxes_cover_and_clip():
    assert original_box(0, 0, 10, 5, 2.0, 100, 100) == (0, 0, 20, 10)
    assert original_box(3, 4, 7, 9, 1.5, 10, 12) == (4, 6, 10, 12)   # ceil(10.5) = 11 clipped to 10
    assert original_box(-2, -1, 4, 4, 1.0, 50, 50) == (0, 0, 4, 4)


def test_the_sql_point_is_the_one_macro():
    assert sql_original_point("sc.work_peak_x") == "original_px(sc.work_peak_x, i.scale)"


@pytest.fixture(scope="module")
def odd_scale_db(tmp_path_factory, tiny_db):
    """Images whose working size is not a whole fraction of the original (scale 1.4...), windows of
    the equal layout reaching past the image's edges."""
    folder = tmp_path_factory.mktemp("pixels")
    path = folder / "odd.duckdb"
    shutil.copyfile(tiny_db, path)
    rng = np.random.default_rng(5)
    files = []
    for i, (w, h) in enumerate([(333, 251), (257, 389)]):
        files.append(folder / f"odd{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(files[-1])
    with convis_db.open(path, device="cpu", write=True) as db:
        db.ingest(files, settings=Settings(max_pixels=30_000, stride=48))
    return path


def test_window_boxes_of_the_view_equal_original_box(odd_scale_db):
    """window_top_concepts' box formula (schema 005) against the Python home, for every window."""
    with convis_db.open(odd_scale_db, device="cpu") as db:
        rows = db.sql("""SELECT DISTINCT v.image_id, v.window_idx, v.x0, v.y0, v.x1, v.y1,
                                w.x0, w.y0, w.x1, w.y1, i.scale, i.width, i.height
                         FROM window_top_concepts v JOIN windows w USING (image_id, window_idx)
                         JOIN images i USING (image_id)""").fetchall()
        scales = {r[10] for r in rows}
        assert len({r[0] for r in rows}) == 2 and all(s != round(s) for s in scales)
        assert any(r[6] < 0 or r[7] < 0 or r[8] * r[10] > r[11] or r[9] * r[10] > r[12] for r in rows)  # clipped
        for r in rows:
            assert r[2:6] == original_box(*r[6:10], r[10], r[11], r[12]), r


def test_search_peaks_equal_the_python_conversion(odd_scale_db):
    """search's peaks (SQL, original_px) equal original_point of the stored working-pixel peaks."""
    with convis_db.open(odd_scale_db, device="cpu") as db:
        for concept in ("entity.n.01", "dog.n.01"):
            for hit in db.search(concept, by="map"):
                image = db.stored_image(hit.image_id)
                sid = db.synset_id(concept)
                wx, wy = db.image_scores(hit.image_id).peak[sid]
                assert (hit.peak_x, hit.peak_y) == (original_point(wx, image.scale), original_point(wy, image.scale))

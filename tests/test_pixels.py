"""Working-to-original pixel conversion: one formula, equal to the SQL views' for every value."""

from __future__ import annotations

import duckdb
import numpy as np

from convis_db.engine.pixels import original_box, original_point, original_points, sql_original_point


def test_points_equal_the_views_formula_exactly():
    scales = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 1 / 3, 7 / 5, 1.2345678901]
    values = np.arange(0, 700)
    con = duckdb.connect()
    try:
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

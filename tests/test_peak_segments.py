"""Schema 022 (issue 24): each peak stored as the index of its map segment on each axis, its pixel
computed back by SQL macros from the image's lattice.

The macros are checked against the engine's own segments (engine/saliency.axis_segments) over every
layout and a grid of strides, large sides and axis lengths; the stored rows against the engine's output
of the images written; a file upgraded from schema 021 (by convis-db in batches and by 022's SQL alone)
against the file before; and a peak that is no segment's centre is refused, in a file and in a shard.
"""

from __future__ import annotations

import contextlib
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from schema_history import copy_into_schema_below
from test_concept_top import older_file
from test_leaf_self_peaks import _ingest
from test_split_halves import _shard

from convis_db.engine.saliency import axis_segments
from convis_db.engine.settings import Settings
from convis_db.engine.windows import LAYOUTS, lattice_origin, windows_on_axis
from convis_db.errors import ConvisError
from convis_db.store import migration_steps
from convis_db.store.db import connect
from convis_db.store.migrations import applied_versions, available_migrations

#: The views' rows as every reader sees them.
VIEWS = {
    "concept_peaks": "SELECT * FROM concept_peaks ORDER BY image_id, synset_id",
    "concept_self_peaks": "SELECT * FROM concept_self_peaks ORDER BY image_id, synset_id",
    "image_scores": "SELECT * FROM image_scores ORDER BY image_id, synset_id",
    "concept_index": "SELECT * FROM concept_index ORDER BY synset_id, image_id",
    "image_concepts": "SELECT * FROM image_concepts ORDER BY ALL",
}


def _macros() -> str:
    (mig,) = [m for m in available_migrations() if m.version == 22]
    return ";\n".join(migration_steps.statement(mig.sql, f"CREATE OR REPLACE MACRO {name}(") for name in
                      ("lattice_origin", "lattice_first_start", "lattice_starts_before_end", "segment_start",
                       "segment_centre", "segment_of"))


def test_the_macros_give_the_engines_segments():
    rows = []
    for layout in LAYOUTS:
        for stride in range(1, 25):
            for large in range(stride, 3 * stride + 7):
                origin = lattice_origin(layout, stride, large)
                for length in [*range(1, 70), 300, 473, 632]:
                    seg = axis_segments(length, stride, large, windows_on_axis(length, stride, large, layout), origin)
                    for j, (centre, start, stop) in enumerate(zip(seg.centres, seg.start, seg.stop)):
                        rows.append((layout, stride, large, length, j, int(centre), int(start), int(stop)))
    cases = pa.table(list(zip(*rows)), names=["layout", "s", "l", "length", "j", "centre", "start", "stop"])
    con = duckdb.connect()
    try:
        con.execute(_macros())
        con.register("cases", cases)
        wrong = con.execute(
            """SELECT count(*) FILTER (WHERE segment_centre(j, length, s, l, layout) <> centre),
                      count(*) FILTER (WHERE segment_start(j, s, l, lattice_origin(layout, s, l)) <> start),
                      count(*) FILTER (WHERE segment_of(centre, s, l, layout) <> j),
                      count(*) FILTER (WHERE segment_of(start, s, l, layout) <> j),
                      count(*) FILTER (WHERE segment_of(stop - 1, s, l, layout) <> j),
                      count(*)
               FROM cases""").fetchone()
    finally:
        con.close()
    assert wrong[:-1] == (0,) * 5 and wrong[-1] > 900_000   # every pixel of a segment maps to it


@pytest.fixture(scope="module")
def written(tiny_db, tmp_path_factory):
    """(database, the engine's explanations of its four images, in image id order)."""
    mp = pytest.MonkeyPatch()
    try:
        return _ingest(tiny_db, tmp_path_factory.mktemp("segments"), mp, no_kernels=False)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def written_uneven(tiny_db, tmp_path_factory):
    """The same images explained with a stride that does not divide the large side (24 and 64): segments
    of two lengths alternate, the closed forms' other branch."""
    mp = pytest.MonkeyPatch()
    try:
        return _ingest(tiny_db, tmp_path_factory.mktemp("segments-uneven"), mp, no_kernels=False,
                       settings=Settings(max_pixels=9_000, stride=24, small=32, large=64, top_k=5))
    finally:
        mp.undo()


@pytest.mark.parametrize("files", ["written", "written_uneven"])
def test_stored_peaks_are_the_engines_pixels(files, request):
    db, explanations = request.getfixturevalue(files)
    con = connect(db)
    try:
        ids = [r[0] for r in con.execute("SELECT image_id FROM images ORDER BY image_id").fetchall()]
        assert len(ids) == len(explanations) == 4
        inner = {r[0] for r in con.execute("SELECT synset_id FROM inner_concepts()").fetchall()}
        for image_id, exp in zip(ids, explanations):
            got = np.array(con.execute("SELECT work_peak_x, work_peak_y, work_self_peak_x, work_self_peak_y "
                                       "FROM image_scores WHERE image_id = ? ORDER BY synset_id",
                                       [image_id]).fetchall())
            want = np.column_stack([exp.scores.x, exp.scores.y, exp.self_scores.x, exp.self_scores.y])
            np.testing.assert_array_equal(got, want)
            ys, xs = axis_segments(exp.grid.height, exp.grid.stride, exp.grid.large, exp.grid.rows, exp.grid.origin), \
                axis_segments(exp.grid.width, exp.grid.stride, exp.grid.large, exp.grid.cols, exp.grid.origin)
            if files == "written_uneven":   # segments of two lengths inside the axis: the other branch
                assert len(set(np.diff(xs.start)[:-1].tolist())) == 2
            centres = con.execute("SELECT segment_centres_x, segment_centres_y FROM images WHERE image_id = ?",
                                  [image_id]).fetchone()
            assert centres == (xs.centres.tolist(), ys.centres.tolist())   # written from the engine's segments
            stored = np.array(con.execute("SELECT peak_segment_x, peak_segment_y FROM concept_map_terms "
                                          "WHERE image_id = ? ORDER BY synset_id", [image_id]).fetchall())
            np.testing.assert_array_equal(xs.centres[stored[:, 0]], exp.scores.x)   # indexes of the segments
            np.testing.assert_array_equal(ys.centres[stored[:, 1]], exp.scores.y)
            assert con.execute("SELECT count(*) FROM concept_self_terms WHERE image_id = ?",
                               [image_id]).fetchone()[0] == len(inner)
    finally:
        con.close()


def _rows(con) -> dict[str, list]:
    return {name: con.execute(sql).fetchall() for name, sql in VIEWS.items()}


def test_a_schema_021_file_upgrades_with_the_same_rows(written, tmp_path, monkeypatch):
    db, _ = written
    con = connect(db)
    try:
        now = _rows(con)
        lists = con.execute("SELECT image_id, segment_centres_x, segment_centres_y FROM images ORDER BY 1").fetchall()
    finally:
        con.close()
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(db, old, 22)
    sql_only = tmp_path / "sql_only.duckdb"
    shutil.copyfile(old, sql_only)
    raw = duckdb.connect(str(old), read_only=True)
    try:
        assert max(applied_versions(raw)) == 21
        assert raw.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'concept_peaks'"
                           ).fetchone() == ("BASE TABLE",)
        before = _rows(raw)
    finally:
        raw.close()
    assert before == now and all(len(rows) for rows in now.values())

    bars: list[list] = []
    monkeypatch.setattr(migration_steps, "BATCH_IMAGES", 1)   # one image per statement

    @contextlib.contextmanager
    def progress(desc, total, unit="it"):
        bars.append([desc, total, unit, 0])
        yield lambda n=1, **postfix: bars[-1].__setitem__(3, bars[-1][3] + n)

    from convis_db.store.migrations import migrate

    raw = duckdb.connect(str(old))
    try:
        assert 22 in migrate(raw, str(old), progress=progress)
    finally:
        raw.close()
    assert ["Upgrading: peaks as segment indexes (schema 022)", 4, "images", 4] in bars
    con = connect(old)
    try:
        assert _rows(con) == before
        # the upgrade's lists, from the SQL macros, are the ones the engine's segments gave the new file
        assert con.execute("SELECT image_id, segment_centres_x, segment_centres_y FROM images ORDER BY 1"
                           ).fetchall() == lists
        assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'concept_peaks'"
                           ).fetchone() == ("VIEW",)
    finally:
        con.close()

    (mig,) = [m for m in available_migrations() if m.version == 22]
    raw = duckdb.connect(str(sql_only))
    try:
        raw.execute(mig.sql)   # a tool applying the SQL alone gets the same rows
        assert _rows(raw) == before
    finally:
        raw.close()


def _refused_and_kept(old, message: str) -> None:
    """Opening the schema 021 file `old` for writing refuses its upgrade with `message`, and leaves it at 021."""
    with pytest.raises((ConvisError, duckdb.Error), match=message):
        connect(old, write=True).close()
    raw = duckdb.connect(str(old), read_only=True)
    try:
        assert max(applied_versions(raw)) == 21
    finally:
        raw.close()


@pytest.mark.parametrize("table, column", [("concept_peaks", "work_peak_x"), ("concept_self_peaks", "work_self_peak_y")])
def test_an_upgrade_refuses_a_peak_off_its_segments_centre_and_keeps_the_file(written, tmp_path, table, column):
    old, raw = older_file(written[0], tmp_path, 22)
    synset = raw.execute(f"SELECT min(synset_id) FROM {table} WHERE image_id = 2").fetchone()[0]
    raw.execute(f"UPDATE {table} SET {column} = {column} + 1 WHERE image_id = 2 AND synset_id = ?", [synset])
    raw.close()
    _refused_and_kept(old, f"image 2 concept {synset}: the .*peak .* is not the centre")


def test_an_upgrade_refuses_rows_of_no_image_and_keeps_the_file(written, tmp_path):
    old, raw = older_file(written[0], tmp_path, 22)
    raw.execute("INSERT INTO concept_self_peaks SELECT 99, synset_id, self_sum, self_windows, work_self_peak_x, "
                "work_self_peak_y, image_rank_less FROM concept_self_peaks WHERE image_id = 1")
    raw.close()
    _refused_and_kept(old, "concept_peaks holds rows of image 99, which images does not hold: delete them")


@pytest.mark.parametrize("column", ["work_peak_x", "work_self_peak_y"])
def test_a_merge_refuses_a_peak_off_its_segments_centre(tiny_db, tmp_path, column):
    from convis_db.distributed.shards import finished_shards, merge_folder
    from convis_db.store.shard_checks import ShardError

    db = tmp_path / "db.duckdb"
    shutil.copyfile(tiny_db, db)
    shards = _shard(db, tmp_path)
    (folder,) = finished_shards(shards).values()
    peaks = pq.read_table(folder / "concept_peaks.parquet")
    values = peaks.column(column).to_numpy().copy()
    values[9] = values[9] + 1 if values[9] < 20 else values[9] - 1   # a neighbour pixel, inside the image
    at = peaks.schema.get_field_index(column)
    pq.write_table(peaks.set_column(at, column, pa.array(values, peaks.schema.field(at).type)),
                   folder / "concept_peaks.parquet")
    con = connect(db, write=True)
    try:
        with pytest.raises(ShardError, match=f"column {column}, row 9: a peak that is not the centre"):
            merge_folder(con, shards)
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 0
    finally:
        con.close()

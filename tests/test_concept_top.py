"""concept_top (schema 019): each concept's best TOP_KEEP images per ranking, kept by the concept index's
refresh, answer search and images_with(..., top := N <= TOP_KEEP) exactly as ranking every key does;
with concept_counts (schema 020), count too.

The collections are generated in SQL (no model): scores drawn from a few values, so that ties of the
image-level count, of the map peak (sums over different window counts) and of both are common, and the
image id decides, as the queries rank."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from convis_db.query import search
from convis_db.store import concept_index
from convis_db.store.concept_index import TOP_KEEP, refresh_concept_index, reindex_from_scores
from convis_db.store.db import connect
from convis_db.store.image_store import concept_peaks_inserts
from convis_db.store.migration_steps import segment_centres_sql
from convis_db.store.migrations import applied_versions

SCHEMA = Path(__file__).resolve().parent.parent / "schema"


def add_images(con, first: int, last: int, seed: int) -> None:
    """Images first..last with rows for every synset: map_sum in 0..11 over 1-3 windows, the image-level
    count in 0..4 (NULL for every seventh image: no image-level scores)."""
    con.execute("""INSERT INTO images (image_id, sha256, path, model_id, width, height, work_width, work_height,
                        scale, stride, small, large, max_pixels, top_k, grid_rows, grid_cols, n_windows)
                   SELECT i, sha256(i::VARCHAR), 'generated/' || i || '.jpg', (SELECT min(model_id) FROM models),
                          160, 120, 160, 120, 1.0, 16, 32, 48, 20000, 8, 6, 8, 48
                   FROM range(?, ? + 1) t(i)""", [first, last])
    con.execute(segment_centres_sql())   # schema 022: the segment centres a peak is one of
    h = f"hash(i * 7919 + s * 104729 + {seed})"

    def centre(pixel: str, length: int) -> str:   # the centre of the segment holding the pixel
        return f"segment_centre(segment_of(({pixel})::INT, 16, 48, 'origin'), {length}, 16, 48, 'origin')"

    rows = f"""SELECT i::INT AS image_id, s::INT AS synset_id,
                      ({h} % 12)::INT AS map_sum, (1 + ({h} // 12) % 3)::INT AS map_windows,
                      {centre(f"({h} // 36) % 160", 160)} AS work_peak_x,
                      {centre(f"({h} // 5760) % 120", 120)} AS work_peak_y,
                      CASE WHEN i % 7 = 0 THEN NULL ELSE (({h} // 99) % 5)::INT END AS image_max_rank_less,
                      ({h} % 12)::INT AS self_sum, (1 + ({h} // 12) % 3)::INT AS self_windows,
                      {centre(f"({h} // 36) % 160", 160)} AS work_self_peak_x,
                      {centre(f"({h} // 5760) % 120", 120)} AS work_self_peak_y,
                      CASE WHEN i % 7 = 0 THEN NULL ELSE (({h} // 99) % 5)::INT END AS image_rank_less
               FROM range({first}, {last} + 1) a(i), (SELECT synset_id AS s FROM synsets)"""
    for statement in concept_peaks_inserts(rows):
        con.execute(statement)
    con.execute("INSERT INTO image_embeddings SELECT i::INT, [0.0]::FLOAT[] FROM range(?, ? + 1) t(i) "
                "WHERE i % 7 <> 0", [first, last])


@pytest.fixture
def collection(tiny_db: Path, tmp_path: Path, monkeypatch) -> Path:
    """tiny_db's hierarchy with 140 generated images, indexed, concept_top kept (TOP_FROM lowered)."""
    monkeypatch.setattr(concept_index, "TOP_FROM", 100)
    db = tmp_path / "top.duckdb"
    shutil.copyfile(tiny_db, db)
    con = connect(db, write=True)
    add_images(con, 1, 140, seed=1)
    refresh_concept_index(con)
    con.close()
    return db


def concepts(con) -> list[tuple[int, str]]:
    """Eight concepts spread over the synset ids (leaves and inner ones)."""
    rows = con.execute("SELECT synset_id, name FROM synsets ORDER BY synset_id").fetchall()
    return rows[::max(1, len(rows) // 8)][:8]


def searched(con, name: str, path) -> list:
    """Every search this test asks, through `path` (search._search_kept or search._search_keys)."""
    out = []
    for by in ("image", "map"):
        r = search.ranking(con, name, by)
        for limit in (1, 7, 20, TOP_KEEP):
            for min_score in (0.0, 0.0004, 0.5):
                out.append(path(con, r, min_score, limit))
    return out


def images_with(con, name: str) -> list:
    return [con.execute("SELECT * FROM images_with(?, ?, level := ?, top := ?)", [name, m, lvl, top]).fetchall()
            for lvl in ("image", "map", None) for top in (1, 7, 20, TOP_KEEP) for m in (0.0, 0.0004, 0.5)]


def slow_images_with(con, name: str) -> list:
    """images_with ranking every key: the same file with concept_top marked as not kept."""
    kept = con.execute("SELECT top_through FROM concept_index_state").fetchone()[0]
    con.execute("UPDATE concept_index_state SET top_through = NULL")
    try:
        return images_with(con, name)
    finally:
        con.execute("UPDATE concept_index_state SET top_through = ?", [kept])


def test_the_macro_keeps_as_many_as_the_library():
    macro = (SCHEMA / "019_concept_top.sql").read_text()
    assert re.findall(r"coalesce\(top, 9223372036854775807\) <= (\d+)", macro) == [str(TOP_KEEP)]


def test_kept_lists_answer_as_every_key_does(collection):
    con = connect(collection, write=True)
    try:
        assert concept_index.top_kept(con)
        kept = con.execute("SELECT level, count(*), count(DISTINCT synset_id) FROM concept_top GROUP BY level "
                           "ORDER BY level").fetchall()
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        assert kept == [("image", TOP_KEEP * n, n), ("map", TOP_KEEP * n, n)]
        ties = con.execute("""SELECT count(*) FROM (SELECT synset_id, image_max_rank_less FROM concept_peaks
                              GROUP BY ALL HAVING count(*) > 1)""").fetchone()[0]
        assert ties > 0
        for _, name in concepts(con):
            assert searched(con, name, search._search_kept) == searched(con, name, search._search_keys)
            assert images_with(con, name) == slow_images_with(con, name)
            # search_images itself takes the kept lists here, and its answer is the keys' answer
            assert search.search_images(con, name, limit=20) == \
                [dict(zip(("image_id", "path", "score", "map_score", "image_score", "peak_x", "peak_y", "width",
                           "height"), row)) | {"synset": name, "by": "image"}
                 for row in search._search_keys(con, search.ranking(con, name, None), 0.0, 20)]
        # a top of more than TOP_KEEP ranks every key, and answers whole
        name = concepts(con)[0][1]
        many = con.execute("SELECT count(*) FROM images_with(?, 0.0, level := 'map', top := ?)",
                           [name, TOP_KEEP + 1]).fetchone()[0]
        assert many == TOP_KEEP + 1
    finally:
        con.close()


def test_images_past_the_watermark_are_ranked_with_the_kept_lists(collection):
    """Between an ingest and its refresh the newest images are in no list: images_with ranks them with
    the kept rows; search ranks every key then."""
    con = connect(collection, write=True)
    try:
        add_images(con, 141, 170, seed=2)  # stored, not indexed
        assert not concept_index.all_indexed(con) and concept_index.top_kept(con)
        for _, name in concepts(con):
            assert images_with(con, name) == slow_images_with(con, name)
        got = {row[0] for _, name in concepts(con)
               for row in con.execute("SELECT * FROM images_with(?, 0.0, level := 'map', top := 20)", [name]).fetchall()}
        assert got & set(range(141, 171))
    finally:
        con.close()


def test_a_refresh_merges_the_new_images_as_a_rebuild_would(collection):
    con = connect(collection, write=True)
    try:
        add_images(con, 141, 230, seed=3)
        refresh_concept_index(con)
        assert concept_index.top_kept(con)
        merged = con.execute("SELECT * FROM concept_top ORDER BY ALL").fetchall()
        counts = kept_counts(con)
        assert counts == recounted(con)  # schema 020: the counts merged in too
        con.execute("DELETE FROM concept_top")  # what concept_top_rows reads besides concept_peaks
        rebuilt = con.execute("SELECT * FROM concept_top_rows(0, 230, ?) ORDER BY ALL", [TOP_KEEP]).fetchall()
        assert merged == rebuilt
        # new image-level scores (a backfill) rebuild the lists and the counts from the stored rows
        con.execute("UPDATE concept_map_terms SET image_max_rank_less = 4 WHERE image_id IN (7, 14, 21)")
        reindex_from_scores(con)
        assert concept_index.top_kept(con)
        assert con.execute("SELECT count(*) FROM concept_top WHERE image_id = 7 AND level = 'image'").fetchone()[0]
        assert kept_counts(con) == recounted(con) != counts
        for sid, name in concepts(con)[:4]:
            assert images_with(con, name) == slow_images_with(con, name)
            assert counted(con, name, sid, keys=False) == counted(con, name, sid, keys=True)
    finally:
        con.close()


def test_small_collections_keep_no_lists(tiny_db: Path, tmp_path: Path):
    """Below TOP_FROM indexed images the lists would cost more bytes than they save time."""
    db = tmp_path / "small.duckdb"
    shutil.copyfile(tiny_db, db)
    con = connect(db, write=True)
    try:
        add_images(con, 1, 60, seed=4)
        refresh_concept_index(con)
        assert con.execute("SELECT top_through FROM concept_index_state").fetchone()[0] is None
        assert con.execute("SELECT count(*) FROM concept_top").fetchone()[0] == 0
        assert not concept_index.top_kept(con)
        sid, name = concepts(con)[1]
        assert len(con.execute("SELECT * FROM images_with(?, 0.0, top := 20)", [name]).fetchall()) == 20
        # nor counts (schema 020): count counts the keys
        assert con.execute("SELECT count(*) FROM concept_counts").fetchone()[0] == 0
        assert counted(con, name, sid, keys=False) == counted(con, name, sid, keys=True)
    finally:
        con.close()


def older_file(source: Path, tmp_path: Path, below: int):
    """(path, plain DuckDB connection) of a file holding `source`'s rows at the schema below `below`, as
    the convis-db of that schema left it."""
    import duckdb
    from schema_history import copy_into_schema_below

    old = tmp_path / "old.duckdb"
    copy_into_schema_below(source, old, below)
    raw = duckdb.connect(str(old))
    assert max(applied_versions(raw)) == below - 1
    return old, raw


def test_a_schema_018_file_upgrades_and_answers_as_before(collection, tmp_path):
    old, raw = older_file(collection, tmp_path, 19)
    names = [n for _, n in concepts(raw)]
    before = [raw.execute("SELECT * FROM images_with(?, 0.0004, top := 20)", [n]).fetchall() for n in names]
    raw.close()
    con = connect(old, write=True)
    try:
        assert 19 in applied_versions(con)
        assert con.execute("SELECT top_through FROM concept_index_state").fetchone()[0] is None
        assert con.execute("SELECT count(*) FROM concept_counts").fetchone()[0] == 0  # 020: nothing kept
        assert [con.execute("SELECT * FROM images_with(?, 0.0004, top := 20)", [n]).fetchall()
                for n in names] == before
    finally:
        con.close()


# -- schema 020: concept_counts, and count from the kept rows -------------------------------------------

def recounted(con) -> list[tuple]:
    """concept_counts as counting concept_order's keys and reading concept_top's lists give it."""
    return con.execute("""
        SELECT o.synset_id, count(*), count(o.image_max_rank_less),
               (SELECT min(image_max_rank_less) FROM concept_top t WHERE t.synset_id = o.synset_id AND level = 'image'),
               (SELECT min(map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE))
                FROM concept_top t WHERE t.synset_id = o.synset_id AND level = 'map')
        FROM concept_order o GROUP BY o.synset_id ORDER BY o.synset_id""").fetchall()


def kept_counts(con) -> list[tuple]:
    return con.execute("SELECT * FROM concept_counts ORDER BY synset_id").fetchall()


def thresholds(con, sid: int) -> list[float]:
    """Thresholds that reach every branch of _count_kept for concept `sid`: none, 0, each kept list's
    worst score and the scores about it (ties included), the best, above the best."""
    n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
    worst = con.execute("""SELECT min(image_max_rank_less) FILTER (WHERE level = 'image') / ?::DOUBLE,
                                  min(map_sum::DOUBLE / (map_windows::DOUBLE * ?::DOUBLE)) FILTER (WHERE level = 'map'),
                                  max(map_sum::DOUBLE / (map_windows::DOUBLE * ?::DOUBLE))
                           FROM concept_top WHERE synset_id = ?""", [n, n, n, sid]).fetchone()
    out = [-1.0, 0.0, 1e-9, 0.0004, 0.5, 1.0]
    for w in (w for w in worst if w is not None):  # None: no lists kept
        out += [w, w * (1 - 1e-12), w * (1 + 1e-12), w + 1 / n]
    return out


def counted(con, name: str, sid: int, keys: bool) -> list[int]:
    """count_images for every ranking and threshold: as shipped, or (keys) counting every key."""
    out = []
    for by in ("image", "map"):
        for t in thresholds(con, sid):
            if keys:
                r = search.ranking(con, name, by)
                out.append(int(con.execute(f"SELECT count(*) FROM {r.source} sc WHERE {r.score} >= ?",
                                           [r.sid, t]).fetchone()[0]))
            else:
                out.append(search.count_images(con, name, t, by=by))
    return out


def test_count_from_the_kept_rows_is_the_count_of_every_key(collection, monkeypatch):
    con = connect(collection, write=True)
    try:
        assert kept_counts(con) == recounted(con)
        used = []
        real = search._count_kept
        monkeypatch.setattr(search, "_count_kept", lambda *a: used.append(real(*a)) or used[-1])
        for sid, name in concepts(con):
            assert counted(con, name, sid, keys=False) == counted(con, name, sid, keys=True)
        decided = [u for u in used if u is not None]
        # both the counts and the lists decided some, and the keys were counted for the rest
        assert 0 < len(decided) < len(used)
        assert any(u == 0 for u in decided) and any(u > 100 for u in decided)
        # an image past the watermark: every key is counted (the kept rows do not hold it)
        add_images(con, 141, 150, seed=5)
        used.clear()
        sid, name = concepts(con)[2]
        assert counted(con, name, sid, keys=False) == counted(con, name, sid, keys=True)
        assert used == []
    finally:
        con.close()


def test_a_schema_019_file_upgrades_with_its_counts(collection, tmp_path):
    old, raw = older_file(collection, tmp_path, 20)
    assert raw.execute("SELECT top_through FROM concept_index_state").fetchone()[0] == 140
    picked = concepts(raw)
    before = [raw.execute("SELECT * FROM images_with(?, 0.0004, top := 20)", [n]).fetchall() for _, n in picked]
    raw.close()
    con = connect(old, write=True)
    try:
        assert 20 in applied_versions(con)
        assert kept_counts(con) == recounted(con) != []
        assert concept_index.top_kept(con)
        for sid, name in picked:
            assert counted(con, name, sid, keys=False) == counted(con, name, sid, keys=True)
        assert [con.execute("SELECT * FROM images_with(?, 0.0004, top := 20)", [n]).fetchall()
                for _, n in picked] == before
    finally:
        con.close()


def test_a_list_that_holds_every_image_counts_them(collection, monkeypatch):
    """Fewer images with image-level scores than a list holds: the image list holds them all and answers
    every threshold, its last too (at least 1 here, so that thresholds in (0, last] need the list)."""
    con = connect(collection, write=True)
    try:
        con.execute("UPDATE concept_map_terms SET image_max_rank_less = CASE WHEN image_id > 60 THEN NULL "
                    "ELSE image_max_rank_less + 1 END")
        reindex_from_scores(con)
        assert all(0 < row[2] < TOP_KEEP and row[3] >= 1 for row in kept_counts(con))
        used = []
        real = search._count_kept
        monkeypatch.setattr(search, "_count_kept", lambda *a: used.append(real(*a)) or used[-1])
        for sid, name in concepts(con):
            assert counted(con, name, sid, keys=False) == counted(con, name, sid, keys=True)
        image_level = used[:len(used) // len(concepts(con)) // 2]  # the first concept's image-level counts
        assert None not in image_level
    finally:
        con.close()

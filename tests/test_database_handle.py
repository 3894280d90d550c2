"""The Database as a notebook holds it: one connection per file and process, close() that closes,
arguments checked at the door with Python wording, result collections that become tables, and
coordinates in original pixels."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import convis_db
from convis_db import Settings
from convis_db.errors import ConvisError, DatabaseClosedError, DatabaseLockedError, NotFoundError, UsageError
from convis_db.paths import sample_images_dir
from convis_db.store import handles


@pytest.fixture(scope="module")
def stored(tmp_path_factory, tiny_db) -> Path:
    """The tiny database with two sample images ingested (treat as read-only)."""
    path = tmp_path_factory.mktemp("handle") / "stored.duckdb"
    shutil.copyfile(tiny_db, path)
    images = sorted(sample_images_dir().glob("*.png"))[:2]
    with convis_db.open(path, device="cpu", write=True) as db:
        assert db.ingest(images, settings=Settings(max_pixels=40_000, stride=32)).count("ingested") == 2
    assert not handles.is_open(path)
    return path


@pytest.fixture
def copy(stored, tmp_path) -> Path:
    target = tmp_path / "copy.duckdb"
    shutil.copyfile(stored, target)
    return target


# -- 1. one connection per file ------------------------------------------------------------------

def test_a_second_open_in_the_same_mode_shares_the_connection(stored):
    with convis_db.open(stored, device="cpu") as first:
        second = convis_db.open(str(stored), device="cpu")
        assert second.con is first.con and "shared with 1 other handle" in repr(first)
        second.close()
        assert "closed" in repr(second) and "shared" not in repr(first)
        assert first.count("entity.n.01") == 2  # the first keeps working after the second closed
    assert not handles.is_open(stored)


def test_a_second_open_in_the_other_mode_fails_itself_and_leaves_the_first_working(copy):
    with convis_db.open(copy, device="cpu", write=True) as writer:
        with pytest.raises(DatabaseLockedError, match="already open for writing in this process"):
            convis_db.open(copy, device="cpu")
        assert "read-write" in repr(writer) and writer.count("entity.n.01") == 2
        again = convis_db.open(copy, device="cpu", write=True)  # same mode: shared
        report = again.ingest(sorted(sample_images_dir().glob("*.jpg"))[:1])
        assert report.count("ingested") == 1 and writer.count("entity.n.01") == 3  # one file, one truth
        again.close()
        with pytest.raises(DatabaseLockedError):  # ingest kept the connection: no gap for a reader to take
            convis_db.open(copy, device="cpu")
        assert writer.search("entity.n.01", limit=1) and "read-write" in repr(writer)
    with convis_db.open(copy, device="cpu") as reader:
        with pytest.raises(DatabaseLockedError, match="already open read-only in this process"):
            convis_db.open(copy, device="cpu", write=True)
        assert reader.count("entity.n.01") == 3 and "read-only" in repr(reader)


# -- 2. close() closes ---------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda db: db.search("entity.n.01"), lambda db: db.count("entity.n.01"), lambda db: db.sql("SELECT 1"),
    lambda db: db.images(), lambda db: db.stats(), lambda db: db.map(1, "entity.n.01"), lambda db: db.explain(1),
    lambda db: db.concepts("dog"), lambda db: db.profile, lambda db: db.con, lambda db: db.top_concepts(1),
    lambda db: db.regions("entity.n.01"), lambda db: db.ingest([]), lambda db: db.hierarchy,
])
def test_every_call_after_close_raises_closed(stored, call):
    db = convis_db.open(stored, device="cpu")
    db.close()
    with pytest.raises(DatabaseClosedError, match="is closed"):
        call(db)
    assert db.closed and not handles.is_open(stored)
    db.close()  # twice is harmless


def test_the_with_block_closes_and_frees_the_file_for_a_writer(copy):
    with convis_db.open(copy, device="cpu") as db:
        pass
    with pytest.raises(DatabaseClosedError):
        db.search("entity.n.01")
    with convis_db.open(copy, device="cpu", write=True) as writer:  # the read-only connection is gone
        assert writer.writable


# -- 4. arguments checked at the door -------------------------------------------------------------

@pytest.mark.parametrize("call, words", [
    (lambda db: db.search(123), "concept=123 (int): pass a string"),
    (lambda db: db.search("entity.n.01", limit="5"), "limit='5' (str): pass a whole number"),
    (lambda db: db.search("entity.n.01", limit=-1), "limit=-1 is below 0"),
    (lambda db: db.search("entity.n.01", min_score="high"), "min_score='high' (str): pass a number between 0 and 1"),
    (lambda db: db.search("entity.n.01", min_score=2), "outside [0, 1]"),
    (lambda db: db.search("entity.n.01", by="pixels"), "by='pixels' (str): pass one of None, 'image', 'map'"),
    (lambda db: db.count("entity.n.01", only_self="yes"), "only_self='yes' (str): pass True or False"),
    (lambda db: db.map(1.5, "entity.n.01"), "image=1.5 (float)"),
    (lambda db: db.map(1, None), "needs the concept"),
    (lambda db: db.map(1, 5), "concept=5 (int)"),
    (lambda db: db.explain(1, depth="2"), "depth='2'"),
    (lambda db: db.regions("entity.n.01", min_score=-0.1), "min_score=-0.1"),
    (lambda db: db.concepts(""), "query is empty"),
    (lambda db: db.sql("SELECT ?", params=5), "params=5"),
    (lambda db: db.ingest(123), "write=True"),  # read-only first: that is what to fix
])
def test_bad_arguments_are_usage_errors_worded_for_python(stored, call, words):
    with convis_db.open(stored, device="cpu") as db:
        with pytest.raises(UsageError) as info:
            call(db)
    assert words in str(info.value) and "--" not in str(info.value)


def test_ingest_arguments_and_settings_are_checked_before_anything_runs(copy, tmp_path):
    with convis_db.open(copy, device="cpu", write=True) as db:
        with pytest.raises(UsageError, match=r"paths=123 \(int\)"):
            db.ingest(123)
        with pytest.raises(UsageError, match="every item must be a file or folder path"):
            db.ingest([tmp_path, 5])
        with pytest.raises(UsageError, match="settings="):
            db.ingest(tmp_path, settings="fast")
        assert db.count("entity.n.01") == 2  # nothing changed
    with pytest.raises(UsageError, match=r"Settings\(stride='32'\): stride must be an int") as info:
        Settings(stride="32")
    with pytest.raises(UsageError, match="Settings: stride=0 must be at least 1") as info:
        Settings(stride=0)
    assert "--" not in str(info.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"vocab": ["dog"]}, "vocab=['dog'] (list): pass a string"),
    ({"model": 32}, "model=32 (int)"),
    ({"batch_size": 0}, "batch_size=0 is below 1"),
    ({"device": 0}, "device=0"),
])
def test_create_checks_its_arguments_before_making_a_file(tmp_path, kwargs, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        convis_db.create(tmp_path / "new.duckdb", **kwargs)
    assert not (tmp_path / "new.duckdb").exists()


def test_cli_keeps_its_own_wording(run_cli, tmp_path):
    result = run_cli("--db", str(tmp_path / "absent.duckdb"), "stats")
    assert result.exit_code == 2 and "convis-db --db" in result.output
    with pytest.raises(ConvisError, match=r"convis_db.create\(") as info:
        convis_db.open(tmp_path / "absent.duckdb")
    assert "--db" not in str(info.value)


# -- 5. results as tables ------------------------------------------------------------------------

def test_result_collections_become_arrow_and_pandas_tables(stored):
    with convis_db.open(stored, device="cpu") as db:
        hits = db.search("entity.n.01")
        table = hits.to_arrow()
        assert table.num_rows == 2 and table.column_names[:4] == ["image_id", "path", "synset", "score"]
        assert table.column("score").to_pylist() == [h.score for h in hits]
        frame = hits.df()
        assert list(frame["image_id"]) == [h.image_id for h in hits]
        empty = db.search("entity.n.01", min_score=1.0, offset=5)
        assert empty.to_arrow().num_rows == 0 and "score" in empty.to_arrow().column_names
        for rows in (db.regions("entity.n.01", min_score=0.5), db.concepts("dog"), db.children("entity.n.01"),
                     db.ancestors("dog.n.01"), db.images(), db.top_concepts(1)):
            assert rows.to_arrow().num_rows == len(rows) and rows.df().shape[0] == len(rows)
            assert "<table>" in rows._repr_html_()


def test_reprs_are_short(stored):
    with convis_db.open(stored, device="cpu") as db:
        many = db.ancestors("dog.n.01")
        assert len(many) > 5
        text = repr(many)
        assert text.startswith(f"<Concepts: {len(many)} concepts>") and len(text.splitlines()) <= 8
        assert max(len(line) for line in text.splitlines()) < 200
        assert f"... {len(many) - 5} more" in text
        assert repr(db.search("entity.n.01")).startswith("<SearchHits: 2 hits, ranked by")
        exp = db.explain(1, depth=6, top=5)
        assert len(repr(exp)) < 1000 and repr(exp).startswith("<Explanation of image 1")
        assert len(repr(exp.tree)) < 200
    report = _ingest_report(stored)
    assert len(repr(report)) < 300 and "skipped" in repr(report)
    assert report.df().shape[0] == len(report.outcomes)


def _ingest_report(stored):
    tmp = stored.parent / "report.duckdb"
    shutil.copyfile(stored, tmp)
    with convis_db.open(tmp, device="cpu", write=True) as db:
        return db.ingest(sorted(sample_images_dir().glob("*.png"))[:2])


def test_df_without_pandas_says_how_to_get_it(stored, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    with convis_db.open(stored, device="cpu") as db:
        hits = db.search("entity.n.01")
        monkeypatch.setattr(builtins, "__import__", no_pandas)
        with pytest.raises(ConvisError, match=r"pip install 'convis-db\[pandas\]'.*to_arrow"):
            hits.df()
        assert hits.to_arrow().num_rows == 2


# -- 6. original pixels --------------------------------------------------------------------------

def test_map_peak_and_hits_share_original_pixels(stored):
    with convis_db.open(stored, device="cpu") as db:
        for concept in ("entity.n.01", "dog.n.01", "car.n.01"):
            hit = db.search(concept, by="map")[0]
            m = db.map(hit.image_id, concept)
            assert (m.peak.x, m.peak.y) == (hit.peak_x, hit.peak_y) == (m.peak["x"], m.peak["y"])
            assert m.peak.score == pytest.approx(hit.map_score, abs=1e-12)
            assert m.values[m.peak.work_y, m.peak.work_x] == m.values.max()
            assert m.size == (hit.width, hit.height) and m.work_size == (m.values.shape[1], m.values.shape[0])
            assert f"at ({hit.peak_x}, {hit.peak_y})" in repr(m) and f"{hit.width}x{hit.height} px" in repr(m)


def test_top_concepts_of_an_image(stored):
    with convis_db.open(stored, device="cpu") as db:
        tops = db.top_concepts(1, limit=3)
        rows = db.sql("""SELECT s.name, sc.self_score FROM image_scores sc JOIN synsets s USING (synset_id)
                         WHERE image_id = 1 ORDER BY sc.self_score DESC, s.depth DESC, s.name LIMIT 3""").fetchall()
        assert [(t.synset, t.self_score) for t in tops] == [(n, pytest.approx(s)) for n, s in rows]
        assert [t.synset for t in db.top_concepts(db.image(1).path, limit=3)] == [t.synset for t in tops]
        assert np.all(np.diff([t.self_score for t in tops]) <= 0)


def test_what_the_explorer_reads_is_a_method(stored):
    """The explorer's reads (issue 22, item 7) as Database methods: a page of images with the total,
    each image's best concept, the models, the full stored record, the score arrays, synset ids."""
    with convis_db.open(stored, device="cpu") as db:
        every = db.images()
        assert every.total == len(every) >= 2
        page = db.images(limit=1, offset=1)
        assert [r.image_id for r in page] == [every[1].image_id] and page.total == every.total
        assert len(db.images(offset=1)) == len(every) - 1
        best = db.best_concepts([r.image_id for r in every] + [10**6])
        assert set(best) == {r.image_id for r in every}
        assert all(best[r.image_id] == db.top_concepts(r.image_id, limit=1)[0] for r in every)
        assert db.best_concepts([]) == {}
        models = db.models()
        assert [m.n_images for m in models if m.n_images] == [len(every)]
        assert db.sql("SELECT count(*) FROM models").fetchall()[0][0] == len(models)
        stored_image = db.stored_image(1)
        assert (stored_image.image_id, stored_image.path, stored_image.n_windows) == (1, db.image(1).path,
                                                                                      db.image(1).n_windows)
        sid = db.synset_id("dog.n.01")
        assert db.hierarchy.names[sid] == "dog.n.01"
        with pytest.raises(UsageError, match="pick a sense"):  # a word with several senses
            db.synset_id("dog")
        with pytest.raises(NotFoundError):
            db.synset_id("dgo.n.01")
        scores = db.image_scores(1)
        score, self_score = db.sql("SELECT score, self_score FROM image_scores WHERE image_id = 1 AND synset_id = ?",
                                   [sid]).fetchall()[0]
        assert (scores.score[sid], scores.self_score[sid]) == (pytest.approx(score), pytest.approx(self_score))
        assert db.image_file(1) == db.image(1).path
        with pytest.raises(UsageError):
            db.best_concepts("1,2")

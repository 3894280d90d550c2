"""Schema 010 (issue 13): the working-pixel peaks renamed work_*, the database_profile view, and foreign
keys on the tables init writes. A database made before 010 answers read-only, upgrades, and answers the
same once upgraded; opening it read-only upgrades it first (every reader reads the current schema)."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest
import torch
from schema_history import copy_into_schema_below

from convis_db.engine.settings import Settings
from convis_db.ingest import Ingestor
from convis_db.store.db import connect
from convis_db.store.migrations import applied_versions, has_column
from noise_images import write_noise_pngs

SETTINGS = Settings(max_pixels=9_000, stride=16, small=32, large=64, top_k=5)
CPU = torch.device("cpu")
PROFILE_COLUMNS = ["model_id", "model", "pretrained", "is_random", "embed_dim", "image_size", "definition_precision",
                   "layout", "max_pixels", "stride", "small", "large", "top_k", "embeddings", "vocabulary",
                   "hierarchy", "n_synsets", "n_images", "n_models"]


@pytest.fixture(scope="module")
def filled_db(tiny_db, tmp_path_factory):
    """tiny_db (current schema) with two ingested images."""
    folder = tmp_path_factory.mktemp("images010")
    write_noise_pngs(folder, [(70, 90), (90, 64)], seed=10)
    db = tmp_path_factory.mktemp("filled010") / "filled.duckdb"
    shutil.copyfile(tiny_db, db)
    with Ingestor(db, device=CPU, settings=SETTINGS, batch_size=16) as ing:
        assert ing.run([folder]).count("ingested") == 2
    return db


def _answers(db) -> dict:
    """What the queries over stored scores answer: the Python API (search, regions, explain), the
    explorer's tree, and the SQL views and macros."""
    import convis_db
    from convis_db.query.search import count_images
    from convis_db.web.explorer import Explorer

    out = {}
    with convis_db.open(db, device="cpu") as api:
        for by in ("image", "map"):
            for only_self in (False, True):
                out[f"search {by} {only_self}"] = [h.as_dict() if hasattr(h, "as_dict") else vars(h)
                                                   for h in api.search("dog.n.01", by=by, only_self=only_self)]
                out[f"count {by} {only_self}"] = count_images(api.con, "dog.n.01", by=by, only_self=only_self)
        out["regions"] = [vars(r) for r in api.regions("entity.n.01", min_score=0.9)]
        out["explain"] = [api.explain(i, depth=3, top=2).tree.as_dict() for i in (1, 2)]
        con = api.con
        for name, sql in {
            # the view's columns since schema 005 (013 adds map_peak and self_map_peak beside them)
            "image_concepts": "SELECT image_id, path, synset, synset_id, score, peak_x, peak_y, self_score, depth, "
                              "definition, image_score, image_self_score FROM image_concepts "
                              "ORDER BY image_id, synset_id",
            "images_with": "SELECT * FROM images_with('dog.n.01', 0.0)",
            "images_with map": "SELECT * FROM images_with('dog.n.01', 0.0, level := 'map')",
            "concept_scores": "SELECT * FROM concept_scores(2)",
            "regions_with": "SELECT * FROM regions_with('entity.n.01', 0.0)",
            "window_top_concepts": "SELECT * FROM window_top_concepts ORDER BY ALL",
        }.items():
            out[name] = con.execute(sql).fetchall()
    explorer = Explorer(db)
    try:
        out["explorer children"] = explorer.children(1, "entity.n.01")
        out["explorer search"] = explorer.search("dog.n.01")
    finally:
        explorer.close()
    return out


def test_a_database_from_before_010_is_upgraded_when_opened_read_only_and_answers_the_same(filled_db, tmp_path, caplog):
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(filled_db, old, 10)
    current = _answers(filled_db)
    assert current["search image False"] and current["regions"] and current["images_with"]
    raw = duckdb.connect(str(old), read_only=True)
    assert max(applied_versions(raw)) == 9 and has_column(raw, "image_scores", "peak_x")
    raw.close()

    with caplog.at_level("WARNING", logger="convis_db.store.db"):
        con = connect(old)  # read-only: upgraded once through its own writable connection, then read
    assert "upgrading it to the current schema" in caplog.text
    assert 10 in applied_versions(con)
    for table in ("image_scores", "concept_index"):
        assert has_column(con, table, "work_peak_x") and has_column(con, table, "work_self_peak_y")
        assert not has_column(con, table, "peak_x") and not has_column(con, table, "self_peak_x")
    profile = con.execute("SELECT * FROM database_profile").fetchall()
    con.close()
    assert _answers(old) == current
    con = connect(filled_db)
    assert profile == con.execute("SELECT * FROM database_profile").fetchall()
    con.close()

    caplog.clear()
    before = old.read_bytes()
    with caplog.at_level("WARNING", logger="convis_db.store.db"):
        connect(old).close()  # current now: a read-only open writes nothing
    assert old.read_bytes() == before and "upgrading" not in caplog.text


def test_an_older_file_another_process_holds_is_refused_whole_and_left_as_it_was(filled_db, tmp_path):
    """The upgrade needs the file to itself: while another process reads it, opening it fails in one
    line naming the holder, and the file keeps its schema."""
    import subprocess
    import sys

    from convis_db.errors import DatabaseLockedError

    old = tmp_path / "old.duckdb"
    copy_into_schema_below(filled_db, old, 10)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], "
                               "read_only=True); print('open', flush=True); time.sleep(60)", str(old)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(DatabaseLockedError, match="earlier convis-db and must be upgraded once") as err:
            connect(old)
        assert "\n" not in str(err.value) and str(holder.pid) in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    raw = duckdb.connect(str(old), read_only=True)
    assert max(applied_versions(raw)) == 9
    raw.close()


def _profile(db) -> list[dict]:
    con = connect(db)
    try:
        rel = con.execute("SELECT * FROM database_profile")
        names = [d[0] for d in rel.description]
        return [dict(zip(names, r)) for r in rel.fetchall()]
    finally:
        con.close()


def test_database_profile_has_one_row_empty_initialised_and_filled(tmp_path, tiny_db, filled_db):
    empty = tmp_path / "empty.duckdb"
    connect(empty, write=True, create=True).close()  # migrated, nothing stored
    (row,) = _profile(empty)
    assert list(row) == PROFILE_COLUMNS
    assert row["model"] is None and row["n_images"] == row["n_synsets"] == row["n_models"] == 0
    assert row["layout"] == "equal" and row["embeddings"] == "float32"

    (row,) = _profile(tiny_db)  # one model, no image yet: the image settings are NULL
    assert (row["model"], row["pretrained"] != "", row["is_random"], row["embed_dim"]) == ("tiny-clip", True, False, 16)
    assert row["max_pixels"] is row["stride"] is row["top_k"] is None
    assert row["n_images"] == 0 and row["n_models"] == 1 and row["hierarchy"] == "extended"
    con = connect(tiny_db)
    assert row["n_synsets"] == con.execute("SELECT count(*) FROM synsets").fetchone()[0]
    con.close()

    (row,) = _profile(filled_db)
    stored = {k: row[k] for k in ("max_pixels", "stride", "small", "large", "top_k")}
    assert stored == {k: v for k, v in SETTINGS.as_dict().items() if k in stored}
    assert row["n_images"] == 2 and row["layout"] == SETTINGS.layout and row["definition_precision"] == "fp32"


def test_foreign_keys_refuse_orphans_and_allow_what_init_does(tiny_db, tmp_path, tiny_config):
    from convis_db.init_db import initialise
    from convis_db.models.registry import resolve_model

    db = tmp_path / "fk.duckdb"
    shutil.copyfile(tiny_db, db)
    # init --model other: a second model, its definitions, and its precision (an UPDATE of models)
    con = duckdb.connect(str(db), read_only=True)
    source = con.execute("SELECT source FROM vocabulary").fetchone()[0]  # the stored word file
    con.close()
    report = initialise(db, source, resolve_model(str(tiny_config), "none"), CPU)
    assert report.model_id == 2 and report.embedded_definitions == report.n_synsets
    con = connect(db, write=True)
    try:
        assert con.execute("SELECT count(DISTINCT model_id), count(*) FROM definition_embeddings").fetchone() == (
            2, 2 * report.n_synsets)
        con.execute("UPDATE models SET definition_precision = 'bf16' WHERE model_id = 2")
        orphans = ("INSERT INTO definition_embeddings VALUES (99, 0, [1.0])",      # no such model
                   "INSERT INTO definition_embeddings VALUES (1, 99999, [1.0])",   # no such synset
                   "INSERT INTO isa_edges VALUES (0, 99999, 'hypernym')",
                   "INSERT INTO closure VALUES (99999, 0, 1)")
        for sql in orphans:
            with pytest.raises(duckdb.ConstraintException, match="foreign key"):
                con.execute(sql)
        # What 010's comment says DuckDB allows on the referenced tables, and what it refuses.
        con.execute("UPDATE synsets SET definition = definition || '' WHERE synset_id = 0")  # no index: fine
        with pytest.raises(duckdb.ConstraintException, match="foreign key"):
            con.execute("UPDATE synsets SET name = name || 'x' WHERE synset_id = 0")  # UNIQUE: delete + insert
        con.execute("BEGIN")
        con.execute("ALTER TABLE synsets ADD COLUMN later_column INTEGER")  # as a later migration may
        with pytest.raises(duckdb.Error, match="depend on it"):
            con.execute("ALTER TABLE models RENAME COLUMN definition_precision TO p")
        con.execute("ROLLBACK")
        keys = {(r[0], tuple(r[1])) for r in con.execute(
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE constraint_type = 'FOREIGN KEY' AND database_name = current_database()").fetchall()}
        assert keys == {("isa_edges", ("parent_id",)), ("isa_edges", ("child_id",)),
                        ("closure", ("ancestor_id",)), ("closure", ("descendant_id",)),
                        ("definition_embeddings", ("model_id",)), ("definition_embeddings", ("synset_id",))}
    finally:
        con.close()
    assert _profile(db)[0]["n_models"] == 2


def test_readme_cosine_example_equals_numpy(filled_db):
    """README's nearest-definitions example (list_cosine_similarity on FLOAT[] lists) against numpy, and
    the fixed-size cast the README names gives the same cosines."""
    from test_queries import readme_sql_examples

    from convis_db.store.image_store import load_image_embedding
    from convis_db.store.model_store import load_definition_embeddings

    (sql,) = [s for s in readme_sql_examples() if "FROM image_embeddings e" in s]
    con = connect(filled_db)
    try:
        got = con.execute(sql).fetchall()
        x, defs = load_image_embedding(con, 1), load_definition_embeddings(con, 1)
        names = [r[0] for r in con.execute("SELECT name FROM synsets ORDER BY synset_id").fetchall()]
        d = con.execute("SELECT embed_dim FROM database_profile").fetchone()[0]
        fixed = con.execute(
            f"SELECT array_cosine_similarity(e.embedding::FLOAT[{int(d)}], de.embedding::FLOAT[{int(d)}]) "
            "FROM image_embeddings e, definition_embeddings de WHERE e.image_id = 1 AND de.model_id = 1 "
            "ORDER BY de.synset_id").fetchall()
    finally:
        con.close()
    cos = defs.astype(np.float64) @ x / (np.linalg.norm(defs, axis=1) * np.linalg.norm(x))
    order = sorted(range(len(names)), key=lambda i: (-round(cos[i], 4), names[i]))[:5]
    assert [g[0] for g in got] == [names[i] for i in order]
    np.testing.assert_allclose([g[1] for g in got], np.round(cos[order], 4), atol=1e-4)
    np.testing.assert_allclose([r[0] for r in fixed], cos, atol=1e-5)


def test_original_px_macro_is_the_one_pixel_conversion(filled_db):
    """The views' peaks go through original_px, which equals engine.pixels.original_points on every
    value, halves included (where Python's round() would round to even)."""
    from convis_db.engine.pixels import original_points

    rng = np.random.default_rng(1)
    v = np.concatenate([np.arange(0, 40), rng.integers(0, 2000, 200)]).astype(np.int64)
    scale = np.concatenate([np.full(40, 2.0), rng.uniform(0.5, 8.0, 200)])
    con = connect(filled_db)
    try:
        got = con.execute("SELECT original_px(v, s) FROM (SELECT unnest(?::BIGINT[]) AS v, unnest(?::DOUBLE[]) AS s)",
                          [v.tolist(), scale.tolist()]).fetchnumpy()
        np.testing.assert_array_equal(next(iter(got.values())), original_points(v, scale))
        rows = con.execute("""SELECT ic.peak_x, ic.peak_y, sc.work_peak_x, sc.work_peak_y, i.scale FROM image_concepts ic
                              JOIN image_scores sc USING (image_id, synset_id) JOIN images i USING (image_id)""").fetchall()
    finally:
        con.close()
    px, py, wx, wy, s = (np.array(c) for c in zip(*rows))
    np.testing.assert_array_equal(px, original_points(wx, s))
    np.testing.assert_array_equal(py, original_points(wy, s))

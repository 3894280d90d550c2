"""search, regions, explain and concepts browsing, checked against brute force over the stored rows.

The brute force recomputes every map from the stored window embeddings and definition embeddings
with the equations (numpy, window by window), independent of the engine's shortcuts (segment sums,
monotone ranks, the concept index).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from convis_db.store.db import connect

QUERY_WORDS = ["dog", "cat", "bird", "sparrow", "car", "bicycle", "apple", "pizza", "tree", "boat"]


@pytest.fixture(scope="session")
def query_db(tmp_path_factory, tiny_spec) -> Path:
    """Six generated images ingested with the tiny checkpoint (small settings, read-only for tests)."""
    from convis_db.engine.settings import Settings
    from convis_db.ingest import Ingestor
    from convis_db.init_db import initialise

    root = tmp_path_factory.mktemp("querydb")
    vocab = root / "words.txt"
    vocab.write_text("\n".join(QUERY_WORDS))
    db = root / "q.duckdb"
    initialise(db, str(vocab), tiny_spec, torch.device("cpu"))
    rng = np.random.default_rng(7)
    paths = []
    for i in range(6):
        h, w = (120, 160) if i % 2 else (150, 110)
        arr = np.full((h, w, 3), rng.integers(0, 255, 3), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        arr[y:y + h // 3, x:x + w // 3] = rng.integers(0, 255, 3)
        arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
        p = root / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    with Ingestor(db, device=torch.device("cpu"),
                  settings=Settings(max_pixels=12_000, stride=16, small=32, large=48, top_k=8)) as ing:
        report = ing.run(paths)
    assert report.count("ingested") == 6
    return db


def stored_image(con, image_id: int):
    """(work width, work height, window rows, cosines z) of a stored image, from its stored rows."""
    ww, wh, model_id = con.execute("SELECT work_width, work_height, model_id FROM images WHERE image_id = ?",
                                   [image_id]).fetchone()
    wins = con.execute("SELECT x0, y0, x1, y1, embedding FROM windows WHERE image_id = ? ORDER BY window_idx",
                       [image_id]).fetchall()
    emb = np.array([w[4] for w in wins], np.float32)
    defs = np.array([r[0] for r in con.execute(
        "SELECT embedding FROM definition_embeddings WHERE model_id = ? ORDER BY synset_id", [model_id]).fetchall()],
        np.float32)
    return ww, wh, wins, emb @ defs.T  # the same float32 product FAISS's pairwise_distances computes


def brute_force_maps(con, image_id: int, synset_ids: list[int]) -> dict[int, np.ndarray]:
    """Every requested concept's map for one image, straight from the equations and the stored rows."""
    ww, wh, wins, z = stored_image(con, image_id)
    n = z.shape[1]
    # Integer counts |{s': z(s') < z(s)}| = n * rank_sim, summed exactly and divided once at the end.
    rank = np.array([[np.count_nonzero(row < v) for v in row] for row in z])
    maps = {}
    for sid in synset_ids:
        desc = [r[0] for r in con.execute("SELECT descendant_id FROM closure WHERE ancestor_id = ?", [sid]).fetchall()]
        mrs = rank[:, desc].max(axis=1)
        total = np.zeros((wh, ww), np.int64)
        count = np.zeros((wh, ww), np.int64)
        for (x0, y0, x1, y1, _), value in zip(wins, mrs):  # boxes may start before the image (equal layout)
            total[max(y0, 0):min(y1, wh), max(x0, 0):min(x1, ww)] += value
            count[max(y0, 0):min(y1, wh), max(x0, 0):min(x1, ww)] += 1
        maps[sid] = total / (count * n)
    return maps


def _sid(con, name):
    return con.execute("SELECT synset_id FROM synsets WHERE name = ?", [name]).fetchone()[0]


@pytest.mark.parametrize("concept", ["dog.n.01", "animal.n.01", "entity.n.01", "bird.n.01"])
def test_search_matches_brute_force(query_db, concept):
    from convis_db.query.search import search_images
    from convis_db.store.db import connect

    con = connect(query_db)
    sid = _sid(con, concept)
    expected = {}
    for (image_id,) in con.execute("SELECT image_id FROM images").fetchall():
        expected[image_id] = brute_force_maps(con, image_id, [sid])[sid].max()
    rows = search_images(con, concept, 0.0, 100, by="map")
    assert [r["image_id"] for r in rows] == sorted(expected, key=lambda i: (-np.float32(expected[i]), i))
    for r in rows:
        assert r["score"] == pytest.approx(expected[r["image_id"]], abs=1e-6)
    # Scores are DOUBLE: compare in double (float32 rounding of (|T|-1)/|T| can land either side).
    threshold = float(np.median(list(expected.values())))
    filtered = search_images(con, concept, threshold, 100, by="map")
    assert {r["image_id"] for r in filtered} == {i for i, v in expected.items() if v >= threshold}
    con.close()


def test_search_only_self_uses_the_synset_alone(query_db):
    from convis_db.query.search import search_images
    from convis_db.store.db import connect

    con = connect(query_db)
    sid = _sid(con, "animal.n.01")
    rows = search_images(con, "animal.n.01", 0.0, 100, only_self=True, by="map")
    for r in rows:
        # rank_sim of the synset alone: the map of a one-synset "descendant set".
        desc = brute_force_self(con, r["image_id"], sid)
        assert r["score"] == pytest.approx(desc, abs=1e-6)
    con.close()


def brute_force_self(con, image_id, sid):
    ww, wh, wins, z = stored_image(con, image_id)
    values = (z < z[:, [sid]]).sum(axis=1)
    total = np.zeros((wh, ww), np.int64)
    count = np.zeros((wh, ww), np.int64)
    for (x0, y0, x1, y1, _), v in zip(wins, values):
        total[max(y0, 0):y1, max(x0, 0):x1] += v
        count[max(y0, 0):y1, max(x0, 0):x1] += 1
    return (total / (count * z.shape[1])).max()


def test_search_sees_images_not_yet_in_the_concept_index(query_db, tmp_path):
    """A crash between an image's commit and the index refresh must not hide the image from search."""
    import shutil

    from convis_db.query.search import search_images
    from convis_db.store.db import connect

    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(query_db, copy)
    con = connect(copy, write=True)
    before = search_images(con, "dog.n.01", 0.0, 100)
    con.execute("DELETE FROM concept_order WHERE image_id > 3")
    con.execute("UPDATE concept_index_state SET indexed_through = 3")
    assert search_images(con, "dog.n.01", 0.0, 100) == before
    from convis_db.store.concept_index import refresh_concept_index, rebuild_concept_index

    assert refresh_concept_index(con) == 3
    assert search_images(con, "dog.n.01", 0.0, 100) == before
    rebuild_concept_index(con)
    assert con.execute("SELECT count(*) FROM concept_index").fetchone()[0] == \
        con.execute("SELECT count(*) FROM image_scores").fetchone()[0]
    assert search_images(con, "dog.n.01", 0.0, 100) == before
    con.close()


@pytest.mark.parametrize("concept", ["animal.n.01", "entity.n.01"])
def test_regions_match_brute_force_components(query_db, concept):
    from convis_db.query.regions import find_regions
    from convis_db.store.db import connect

    con = connect(query_db)
    sid = _sid(con, concept)
    scores = dict(con.execute("SELECT image_id, score FROM image_scores WHERE synset_id = ?", [sid]).fetchall())
    threshold = float(np.percentile(list(scores.values()), 40))
    found = find_regions(con, concept, threshold, limit=10_000)
    expected = []
    for image_id, (w, h, ww, _wh) in {r[0]: r[1:] for r in con.execute(
            "SELECT image_id, width, height, work_width, work_height FROM images").fetchall()}.items():
        m = brute_force_maps(con, image_id, [sid])[sid]
        labels, n = ndimage.label(m >= threshold)
        scale = w / ww
        for sl in ndimage.find_objects(labels):
            expected.append((image_id, int(np.floor(sl[1].start * scale)), int(np.floor(sl[0].start * scale)),
                             min(w, int(np.ceil(sl[1].stop * scale))), min(h, int(np.ceil(sl[0].stop * scale)))))
    got = sorted((r["image_id"], r["x0"], r["y0"], r["x1"], r["y1"]) for r in found)
    assert got == sorted(expected)
    assert all(r["score"] >= threshold for r in found)
    # Pruning by the stored score is exact: no image below the threshold has a region.
    assert {r["image_id"] for r in found} == {i for i, s in scores.items() if s >= threshold}
    con.close()


def test_explain_ranks_children_by_score(query_db):
    from convis_db.query.explain import explain_image
    from convis_db.store.db import connect

    con = connect(query_db)
    result = explain_image(con, "2", depth=3, top=2)
    tree = result["tree"]
    assert tree["synset"] == "entity.n.01"
    rows = con.execute("SELECT s.name, sc.score, sc.self_score FROM image_scores sc JOIN synsets s USING (synset_id) "
                       "WHERE image_id = 2").fetchall()
    scores = {r[0]: r[1] for r in rows}
    self_scores = {r[0]: r[2] for r in rows}

    def check(node, depth):
        assert node["score"] == pytest.approx(scores[node["synset"]], abs=1e-6)
        children = [r[0] for r in con.execute("SELECT name FROM children(?)", [node["synset"]]).fetchall()]
        # Ties on score go to the higher self_score, then the name.
        best = sorted(children, key=lambda c: (-scores[c], -self_scores[c], c))[:2]
        assert [c["synset"] for c in node["children"]] == (best if depth > 0 else [])
        # A parent's score covers its descendants, so it is never below a child's.
        for c in node["children"]:
            assert c["score"] <= node["score"] + 1e-9
            check(c, depth - 1)

    check(tree, 3)
    con.close()


def test_query_commands_cli(query_db, run_cli):
    res = run_cli("--db", query_db, "search", "dog.n.01", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows and set(rows[0]) >= {"image_id", "path", "score", "peak_x", "peak_y", "synset"}
    res = run_cli("--db", query_db, "search", "dog.n.01", "--csv")
    assert res.stdout.splitlines()[0] == "image_id,score,image_score,map_score,peak_x,peak_y,path"
    res = run_cli("--db", query_db, "regions", "entity.n.01", "--image", "1", "--min-score", "0", "--json")
    assert res.exit_code == 0, res.output
    regions = json.loads(res.stdout)
    assert len(regions) == 1 and regions[0]["x0"] == 0 and regions[0]["y0"] == 0  # the whole image
    res = run_cli("--db", query_db, "explain", "1", "--depth", "2", "--json")
    assert json.loads(res.stdout)["tree"]["synset"] == "entity.n.01"
    res = run_cli("--db", query_db, "explain", "1", "--depth", "2")
    assert "entity.n.01" in res.stdout and "physical_entity.n.01" in res.stdout
    res = run_cli("--db", query_db, "concepts", "animal.n.01", "--children", "--json")
    assert {r["synset"] for r in json.loads(res.stdout)} >= {"chordate.n.01"}
    res = run_cli("--db", query_db, "concepts", "dog.n.01", "--ancestors", "--json")
    ancestors = json.loads(res.stdout)
    assert ancestors[-1]["synset"] == "entity.n.01" and ancestors[0]["distance"] == 1


@pytest.mark.parametrize("args, needle", [
    (["search", "dgo.n.01"], "dog.n.01"),
    (["regions", "animl.n.01"], "animal.n.01"),
    (["search", "zebra.n.01"], "is a WordNet synset but not in this database's vocabulary"),
    (["search", "dgo.n.01"], "did you mean"),
    (["explain", "999"], "no stored image"),
    (["search", "dog"], "pick a sense"),
])
def test_query_errors_are_clear(query_db, run_cli, args, needle):
    res = run_cli("--db", query_db, *args)
    assert res.exit_code == 2
    assert needle in res.stderr
    assert "Traceback" not in res.output


def readme_sql_examples() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Querying with SQL", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for chunk in section.split("```sql")[1:]:
        blocks.append(chunk.split("```", 1)[0].strip())
    return blocks


def test_readme_has_at_least_six_sql_examples():
    assert len(readme_sql_examples()) >= 6


@pytest.mark.parametrize("index", range(len(readme_sql_examples())))
def test_readme_sql_example_runs(query_db, run_cli, index):
    """Each README example runs through `convis-db sql` (read-only) and returns rows."""
    sql = readme_sql_examples()[index]
    res = run_cli("--db", query_db, "sql", "--json", "--", sql)  # '--': the SQL starts with a comment
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert isinstance(rows, list)
    if "vehicle.n.01' AND a.synset" not in sql:  # that comparison may legitimately be empty
        assert rows, f"example {index} returned no rows:\n{sql}"


def test_regions_with_is_exact_above_its_bound(query_db):
    """regions_with from stored top-K equals windows whose max_rank_sim (recomputed) reaches the threshold,
    for thresholds above 1 - top_k/|T|."""
    from convis_db.store.db import connect

    con = connect(query_db)
    n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
    top_k = con.execute("SELECT max(top_k) FROM images").fetchone()[0]
    bound = 1 - top_k / n
    sid = _sid(con, "entity.n.01")
    for concept in ("entity.n.01", "animal.n.01", "artifact.n.01"):
        sid = _sid(con, concept)
        desc = [r[0] for r in con.execute("SELECT descendant_id FROM closure WHERE ancestor_id = ?", [sid]).fetchall()]
        for threshold in (bound + 1e-6, (bound + 1) / 2):
            got = set(con.execute("SELECT image_id, window_idx FROM regions_with(?, ?)", [concept, threshold]).fetchall())
            expected = set()
            for (image_id, model_id) in con.execute("SELECT image_id, model_id FROM images").fetchall():
                emb = np.array([r[0] for r in con.execute(
                    "SELECT embedding FROM windows WHERE image_id = ? ORDER BY window_idx", [image_id]).fetchall()], np.float32)
                defs = np.array([r[0] for r in con.execute(
                    "SELECT embedding FROM definition_embeddings WHERE model_id = ? ORDER BY synset_id",
                    [model_id]).fetchall()], np.float32)
                z = emb @ defs.T
                best = z[:, desc].max(axis=1)
                mrs = (z < best[:, None]).sum(axis=1) / n
                expected |= {(image_id, w) for w in np.flatnonzero(np.float32(mrs) >= np.float32(threshold))}
            assert got == expected, (concept, threshold)
    con.close()


@pytest.mark.parametrize("level", ["image", "map", None])
def test_search_ranks_as_the_images_with_macro(query_db, level):
    """search (query/search.py's Ranking) and schema 010's images_with macro: the same images in the
    same order with the same scores and peaks, for every concept of T and several thresholds; and
    count equals the macro's row count."""
    import convis_db

    with convis_db.open(query_db, device="cpu") as db:
        names = [r[0] for r in db.sql("SELECT name FROM synsets ORDER BY synset_id").fetchall()]
        assert len(names) > 30
        compared = 0
        for name in names[::3]:  # a third of T (a third of the time), all depths
            for min_score in (0.0, 0.9):
                hits = db.search(name, by=level, min_score=min_score, limit=100)
                macro = db.sql("SELECT image_id, score, peak_x, peak_y, map_score, image_score "
                               "FROM images_with($concept, $min_score, level := $level)",
                               params={"concept": name, "min_score": min_score, "level": level}).fetchall()
                assert [(h.image_id, h.score, h.peak_x, h.peak_y, h.map_score, h.image_score) for h in hits] == macro
                assert db.count(name, by=level, min_score=min_score) == len(macro)
                compared += len(macro)
        assert compared > 50
        scores = db.sql("SELECT score, count(*) AS n FROM images_with('entity.n.01', 0) GROUP BY score HAVING n > 1")
        assert scores.fetchall(), "no tied scores: the tie-breaks were not exercised"



def _answers(db_path: Path) -> dict:
    """What search, count and regions' candidates answer on a file."""
    from convis_db.query.regions import candidate_images
    from convis_db.query.search import count_images, search_images

    con = connect(db_path)
    out: dict = {}
    try:
        names = [r[0] for r in con.execute("SELECT name FROM synsets ORDER BY synset_id").fetchall()]
        for name in names[::4]:
            for by in ("image", "map"):
                for min_score in (0.0, 0.9):
                    out[name, by, min_score] = (search_images(con, name, min_score, 4, by=by),
                                                count_images(con, name, min_score, by=by))
            out[name, "regions"] = list(candidate_images(con, _sid(con, name), 0.5, 2))
    finally:
        con.close()
    return out


def _images_with(con, names: list[str], top: int | None = None) -> dict:
    sql = "SELECT * FROM images_with(?, ?, level := ?)" if top is None else \
        f"SELECT * FROM images_with(?, ?, level := ?, top := {int(top)})"
    return {(name, level, min_score): con.execute(sql, [name, min_score, level]).fetchall()
            for name in names for level in ("image", "map", None) for min_score in (0.0, 0.9)}


def test_images_with_answers_as_before_schema_014_and_top_keeps_its_first_rows(query_db, tmp_path):
    """Schema 014: images_with ranks the concept's search keys and reads the peaks of the rows it
    returns. A file at schema 013 answers with the macro before 014 (read by plain DuckDB, not
    upgraded) exactly what it answers once upgraded; `top := N` gives the first N of those rows; search,
    count and regions' candidates answer the same on both files."""
    import duckdb
    from schema_history import copy_into_schema_below

    from convis_db.store.migrations import applied_versions

    old = tmp_path / "old.duckdb"
    copy_into_schema_below(query_db, old, 14)
    raw = duckdb.connect(str(old), read_only=True)
    assert max(applied_versions(raw)) == 13
    names = [r[0] for r in raw.execute("SELECT name FROM synsets ORDER BY synset_id").fetchall()][::3]
    before = _images_with(raw, names)
    raw.close()
    assert sum(len(v) for v in before.values()) > 50
    con = connect(old)  # upgrades the file (to 014)
    assert max(applied_versions(con)) >= 14
    assert _images_with(con, names) == before
    assert _images_with(con, names, top=3) == {k: v[:3] for k, v in before.items()}
    con.close()
    answers = _answers(old)
    assert answers == _answers(query_db)
    assert any(v[1] for k, v in answers.items() if k[1] != "regions") and any(
        v for k, v in answers.items() if k[1] == "regions")


def test_search_and_count_answer_alike_with_and_without_pending_images(query_db, tmp_path, monkeypatch):
    """search_images and count_images read concept_order alone when no image is past the index's
    watermark (concept_index.all_indexed, issue 24): the same answers as through the concept_keys and
    concept_rows macros, and as with images pending (the macros' second branch), for both levels,
    only_self, thresholds and ties; and regions' candidates likewise."""
    import shutil

    import convis_db.query.search as search
    from convis_db.query.regions import candidate_images
    from convis_db.store.concept_index import all_indexed, refresh_concept_index

    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(query_db, copy)
    con = connect(copy, write=True)
    names = [r[0] for r in con.execute("SELECT name FROM synsets ORDER BY synset_id").fetchall()][::5]
    names += [] if "entity.n.01" in names else ["entity.n.01"]  # its map peaks tie (checked below)

    def answers():
        found = {(name, by, only_self, min_score): (search.search_images(con, name, min_score, 4, only_self, by),
                                                    search.count_images(con, name, min_score, only_self, by))
                 for name in names for by in ("image", "map") for only_self in (False, True)
                 for min_score in (0.0, 0.9)}
        return found | {(name, "regions"): list(candidate_images(con, _sid(con, name), 0.5, 2)) for name in names}

    assert all_indexed(con)
    assert search.keys_source(con) == search.INDEXED_KEYS
    fast = answers()
    with monkeypatch.context() as m:  # the same file through the macros (their second branch empty)
        m.setattr(search, "all_indexed", lambda con: False)
        assert search.keys_source(con, only_self=True) == "concept_rows(?)"
        assert answers() == fast
    con.execute("DELETE FROM concept_order WHERE image_id > 3")
    con.execute("UPDATE concept_index_state SET indexed_through = 3")
    assert not all_indexed(con)
    assert search.keys_source(con) == "concept_keys(?)"
    assert answers() == fast
    assert refresh_concept_index(con) == 3
    assert all_indexed(con)
    assert answers() == fast
    ties = con.execute("SELECT count(*) FROM (SELECT map_sum, map_windows FROM concept_order WHERE synset_id = "
                       "(SELECT synset_id FROM synsets WHERE name = 'entity.n.01') GROUP BY ALL HAVING count(*) > 1)")
    assert ties.fetchone()[0], "no tied map peaks: the tie-breaks were not exercised"
    searched = [v for k, v in fast.items() if k[1] != "regions"]
    assert sum(c for _, c in searched) > 0 and any(len(s) == 4 for s, _ in searched)
    con.close()


def _keys_and_rows(con, sids: list[int], names: list[str]) -> dict:
    """concept_keys, concept_rows and images_with as a file answers them (rows in the macros' order,
    then sorted where a macro leaves the order open)."""
    out = {}
    for sid in sids:
        out["keys", sid] = sorted(con.execute("SELECT * FROM concept_keys(?)", [sid]).fetchall(), key=repr)
        out["rows", sid] = sorted(con.execute("SELECT * FROM concept_rows(?)", [sid]).fetchall(), key=repr)
    return out | _images_with(con, names)


def test_concept_keys_answer_as_before_schema_018_with_images_pending(query_db, tmp_path):
    """Schema 018 reads the images past the index's watermark through a join with concept_index_state
    instead of a scalar subquery. A file at schema 017, with its newest images past the watermark (their
    keys not yet in concept_order, as between an ingest and its refresh), answers concept_keys,
    concept_rows and images_with alike before and after the upgrade, and as the same file with every
    image indexed; with nothing pending too."""
    import duckdb
    from schema_history import copy_into_schema_below

    from convis_db.store.migrations import applied_versions

    old = tmp_path / "old.duckdb"
    copy_into_schema_below(query_db, old, 18)
    raw = duckdb.connect(str(old))
    assert max(applied_versions(raw)) == 17
    images = [r[0] for r in raw.execute("SELECT image_id FROM images ORDER BY image_id").fetchall()]
    assert len(images) >= 3
    names = [r[0] for r in raw.execute("SELECT name FROM synsets ORDER BY synset_id").fetchall()][::4]
    sids = [r[0] for r in raw.execute("SELECT synset_id FROM synsets WHERE name IN (SELECT unnest(?))",
                                      [names]).fetchall()]
    indexed = _keys_and_rows(raw, sids, names)
    watermark = images[len(images) // 2 - 1]
    raw.execute("DELETE FROM concept_order WHERE image_id > ?", [watermark])
    raw.execute("UPDATE concept_index_state SET indexed_through = ?", [watermark])
    pending = _keys_and_rows(raw, sids, names)
    raw.close()
    assert pending == indexed
    assert sum(len(v) for k, v in indexed.items() if k[0] == "keys") > 50
    con = connect(old)  # upgrades the file (to 018)
    assert max(applied_versions(con)) >= 18
    assert _keys_and_rows(con, sids, names) == pending
    assert con.execute("SELECT count(*) FROM concept_order WHERE image_id > ?", [watermark]).fetchone()[0] == 0
    con.close()
    indexed_now = connect(query_db)
    try:
        assert _keys_and_rows(indexed_now, sids, names) == indexed
    finally:
        indexed_now.close()

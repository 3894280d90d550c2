"""Equal window coverage and the paper's image-level similarity (issue 11, schema 005).

* New databases use the 'equal' lattice; map peaks are then not drawn to the border (they were with
  the old 'origin' lattice, where border pixels are averaged over fewer windows).
* Image-level scores: x = E_I(whole image) through the model's own open_clip preprocessing, and exact
  rank counts against T, equal to a naive computation.
* A database made before schema 005 opens read-only and answers, upgrades to 'origin' for all of its
  images (new ones too), and gets image-level scores with `ingest --backfill-image-level`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from PIL import Image

import naive_convis as naive
from convis_db.engine.explainer import ConceptEngine
from convis_db.engine.saliency import grid_segments, segment_means
from convis_db.engine.settings import Settings
from schema_history import copy_into_schema_below

CPU = torch.device("cpu")
SETTINGS = Settings(max_pixels=9000, stride=16, small=32, large=48, top_k=5)


def _random_image(rng: np.random.Generator, h: int, w: int, blocky: bool) -> np.ndarray:
    if not blocky:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    base = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    return np.kron(base, np.ones((16, 16, 1), np.uint8))[:h, :w]


@pytest.fixture(scope="module")
def tiny_parts(tiny_db: Path, tiny_spec):
    from convis_db.models.clip import load_model
    from convis_db.store.db import connect
    from convis_db.store.hierarchy_store import load_hierarchy
    from convis_db.store.model_store import load_definition_embeddings, pick_model

    con = connect(tiny_db)
    try:
        defs = load_definition_embeddings(con, pick_model(con, None))
        levels = load_hierarchy(con).propagation_levels
        descendants = naive.descendants_from_closure(con)
    finally:
        con.close()
    return load_model(tiny_spec, CPU), defs, levels, descendants


# =========================================================================== peaks and the border


def _border_share_ratios(engine: ConceptEngine, images: list[np.ndarray], band: int) -> dict[str, float]:
    """Share of the rank_sim maps' maxima (ties weighted equally) lying within `band` pixels of the
    borders, over that band's share of the area, for the band along all four borders and for the one
    along the top and left borders only; 1 means no preference for the border."""
    ratios: dict[str, list[float]] = {"all": [], "top_left": []}
    for pixels in images:
        img, grid = engine.working_image(pixels)
        counts = engine.ranker.rank(engine.encode_windows(img, grid), 1).rank_less.T.contiguous()
        means = segment_means(counts, grid, engine.n).numpy()     # (n, seg_y, seg_x)
        ys, xs = grid_segments(grid)
        full = np.repeat(np.repeat(means, ys.lengths, axis=1), xs.lengths, axis=2)
        h, w = full.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w]
        at_max = full >= full.max(axis=(1, 2), keepdims=True) - 1e-12
        bands = {"top_left": (yy < band) | (xx < band)}
        bands["all"] = bands["top_left"] | (yy >= h - band) | (xx >= w - band)
        for name, in_band in bands.items():
            share = ((at_max & in_band).sum(axis=(1, 2)) / at_max.sum(axis=(1, 2))).mean()
            ratios[name].append(share / in_band.mean())
    return {name: float(np.mean(v)) for name, v in ratios.items()}


def test_map_peaks_are_not_concentrated_in_the_border_band(tiny_parts):
    """Over random images with the tiny random model, the equal lattice puts about as many map peaks in
    the 16-pixel border band as the band's share of the area (measured: 1.09x along all borders); the
    old lattice, whose top and left pixels are averaged over fewer windows, put 1.8x as many there, and
    2.6x along the top and left borders."""
    model, defs, levels, _ = tiny_parts
    rng = np.random.default_rng(2024)
    images = [_random_image(rng, 144, 176, blocky=bool(k % 2)) for k in range(8)]
    ratio = {}
    for layout in ("equal", "origin"):
        settings = Settings(max_pixels=144 * 176, stride=16, small=32, large=48, top_k=1, layout=layout)
        engine = ConceptEngine(model, defs, levels, settings, batch_size=256)
        ratio[layout] = _border_share_ratios(engine, images, 16)
    print("border share / area share:", ratio)
    assert ratio["equal"]["all"] < 1.35 and ratio["equal"]["top_left"] < 1.35, ratio
    assert ratio["origin"]["top_left"] > 2.0 and ratio["origin"]["all"] > 1.5, ratio


# =========================================================================== image level, in a new database


@pytest.fixture(scope="module")
def new_db(tiny_db: Path, tmp_path_factory):
    """Two generated images ingested into a copy of tiny_db (a new database: the equal layout)."""
    from convis_db.ingest import Ingestor

    folder = tmp_path_factory.mktemp("newdb")
    db = folder / "new.duckdb"
    shutil.copyfile(tiny_db, db)
    rng = np.random.default_rng(5)
    paths = []
    for i, (h, w) in enumerate([(80, 96), (70, 130)]):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(_random_image(rng, h, w, blocky=bool(i))).save(paths[-1])
    with Ingestor(db, device=CPU, settings=SETTINGS, batch_size=64) as ingestor:
        report = ingestor.run(paths)
    assert report.count("ingested") == 2
    return db, paths


def test_a_new_database_uses_the_equal_layout_and_stores_it(new_db):
    from convis_db.store.db import connect
    from convis_db.store.image_store import database_layout, get_image

    db, paths = new_db
    con = connect(db)
    try:
        assert database_layout(con) == "equal"
        assert con.execute("SELECT DISTINCT layout FROM images").fetchall() == [("equal",)]
        image = get_image(con, str(paths[0]))
        assert image.grid.layout == "equal" and image.grid.origin == -(SETTINGS.large - SETTINGS.stride)
        x0, y0 = con.execute("SELECT min(x0), min(y0) FROM windows WHERE image_id = ?", [image.image_id]).fetchone()
        assert x0 == y0 == -(SETTINGS.large - SETTINGS.stride)
        # In original pixels (the SQL views) boxes are clipped to the image.
        boxes = con.execute("SELECT min(x0), min(y0), max(x1), max(y1) FROM window_top_concepts WHERE image_id = ?",
                            [image.image_id]).fetchone()
        assert boxes == (0, 0, image.width, image.height)
    finally:
        con.close()


def test_image_level_scores_match_open_clip_preprocessing_and_naive_ranks(new_db, tiny_parts, tiny_spec):
    """x equals open_clip's own eval transform + encoder; the stored counts equal a naive count."""
    import open_clip

    from convis_db.engine.images import read_image
    from convis_db.store.db import connect
    from convis_db.store.image_store import get_image, load_image_embedding

    model, defs, _, descendants = tiny_parts
    db, paths = new_db
    reference, _, preprocess = open_clip.create_model_and_transforms(tiny_spec.name, pretrained=tiny_spec.pretrained)
    reference.eval()
    con = connect(db)
    try:
        n = len(defs)
        for path in paths:
            image = get_image(con, str(path))
            pixels = read_image(path).pixels
            with torch.inference_mode():
                ref = reference.encode_image(preprocess(Image.fromarray(pixels))[None])[0].double().numpy()
            ref /= np.linalg.norm(ref)
            x = load_image_embedding(con, image.image_id)
            assert x.shape == (model.embed_dim,) and np.abs(x - ref).max() < 1e-5
            own, best = naive.image_level_counts(x.astype(np.float64), defs, descendants)
            rows = con.execute("SELECT image_rank_less, image_max_rank_less FROM image_scores WHERE image_id = ? "
                               "ORDER BY synset_id", [image.image_id]).fetchnumpy()
            assert (rows["image_rank_less"] == own).all() and (rows["image_max_rank_less"] == best).all()
            assert best.max() == n - 1  # entity.n.01 holds the best synset
            view = con.execute("SELECT image_score, image_self_score FROM image_concepts WHERE image_id = ? "
                               "ORDER BY synset_id", [image.image_id]).fetchnumpy()
            np.testing.assert_allclose(view["image_score"], best / n, rtol=0, atol=1e-12)
            np.testing.assert_allclose(view["image_self_score"], own / n, rtol=0, atol=1e-12)
    finally:
        con.close()


def test_search_by_image_and_map_and_images_with(new_db):
    from convis_db.query.search import choose_level, search_images
    from convis_db.store.db import connect

    db, _ = new_db
    con = connect(db)
    try:
        assert choose_level(con, None) == ("image", [])
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        for concept in ("dog.n.01", "tiger.n.02", "person.n.01"):
            sid = con.execute("SELECT synset_id FROM synsets WHERE name = ?", [concept]).fetchone()[0]
            truth = con.execute("SELECT image_id, score, image_max_rank_less FROM image_scores WHERE synset_id = ?",
                                [sid]).fetchall()
            by_image = sorted(truth, key=lambda r: (-r[2], -r[1], r[0]))
            by_map = sorted(truth, key=lambda r: (-r[1], r[0]))
            got = search_images(con, concept, by="image")
            assert [r["image_id"] for r in got] == [r[0] for r in by_image]
            assert [r["score"] for r in got] == [r[2] / n for r in by_image]
            assert all(r["by"] == "image" and r["map_score"] is not None for r in got)
            got = search_images(con, concept, by="map")
            assert [(r["image_id"], r["score"]) for r in got] == [(r[0], r[1]) for r in by_map]
            # The SQL macro: the old two-argument call (now ranked by image level here) and both levels.
            old_call = con.execute("SELECT image_id, score FROM images_with(?, 0.0)", [concept]).fetchall()
            assert old_call == [(r[0], r[2] / n) for r in by_image]
            as_map = con.execute("SELECT image_id, score, map_score FROM images_with(?, 0.0, level := 'map')",
                                 [concept]).fetchall()
            assert as_map == [(r[0], r[1], r[1]) for r in by_map]
        with pytest.raises(duckdb.Error, match="level"):
            con.execute("SELECT * FROM images_with('dog.n.01', 0.0, level := 'pixels')").fetchall()
    finally:
        con.close()


def test_search_cli_by_image_and_map(new_db, run_cli):
    db, _ = new_db
    res = run_cli("--db", db, "search", "dog.n.01", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows and all(r["by"] == "image" and r["image_score"] == r["score"] for r in rows)
    res = run_cli("--db", db, "search", "dog.n.01", "--by", "map", "--json")
    assert res.exit_code == 0 and all(r["map_score"] == r["score"] for r in json.loads(res.stdout))
    res = run_cli("--db", db, "search", "dog.n.01", "--by", "pixels")
    assert res.exit_code == 2 and "pixels" in res.stderr


# =========================================================================== a database made before schema 005


def _schema_004_copy(source: Path, target: Path) -> None:
    """What convis-db wrote before schema 005: the tables of migrations 001-004 with the rows of `source`."""
    copy_into_schema_below(source, target, 5)


@pytest.fixture
def old_db(tiny_db: Path, tmp_path: Path):
    """A schema-004 database holding two images explained with the old (origin) lattice."""
    from convis_db.ingest import Ingestor
    from convis_db.store.db import connect

    source = tmp_path / "source.duckdb"
    shutil.copyfile(tiny_db, source)
    con = connect(source, write=True)
    con.execute("UPDATE window_layout SET layout = 'origin'")  # as the code before schema 005 did
    con.close()
    rng = np.random.default_rng(9)
    paths = []
    for i, (h, w) in enumerate([(80, 96), (96, 80), (64, 120)]):
        paths.append(tmp_path / f"old{i}.png")
        Image.fromarray(_random_image(rng, h, w, blocky=bool(i % 2))).save(paths[-1])
    with Ingestor(source, device=CPU, settings=SETTINGS, batch_size=64) as ingestor:
        assert ingestor.run(paths[:2]).count("ingested") == 2
    target = tmp_path / "old.duckdb"
    _schema_004_copy(source, target)
    return target, paths


def test_an_old_database_upgrades_when_opened_and_keeps_its_layout(old_db, tiny_parts, caplog):
    from convis_db.ingest import Ingestor
    from convis_db.query.maps import MapService
    from convis_db.query.search import choose_level, search_images
    from convis_db.store.db import connect
    from convis_db.store.image_store import database_layout, get_image, image_level_counts, load_window_embeddings
    from convis_db.store.migrations import applied_versions, pending_versions

    model, defs, _, descendants = tiny_parts
    db, paths = old_db
    raw = duckdb.connect(str(db), read_only=True)
    assert max(applied_versions(raw)) == 4
    raw.close()
    # Opened read-only: upgraded first, keeping the origin lattice of its images; grids, maps and search
    # answer; search falls back to the map score (the images have no image-level scores yet).
    caplog.set_level("INFO", logger="convis_db")
    con = connect(db)
    try:
        assert pending_versions(con) == [] and database_layout(con) == "origin"
        image = get_image(con, str(paths[0]))
        assert image.grid.layout == "origin"
        nexp = naive.from_embeddings(load_window_embeddings(con, image.image_id), defs, image.work_height,
                                     image.work_width, SETTINGS.stride, SETTINGS.large, "origin")
        sid = con.execute("SELECT synset_id FROM synsets WHERE name = 'dog.n.01'").fetchone()[0]
        got = MapService(con).for_stored(image, "dog.n.01").saliency
        assert np.abs(got - nexp.concept_map(descendants[sid])).max() < 1e-5
        level, notes = choose_level(con, None)
        assert level == "map" and "--backfill-image-level" in notes[0]
        assert len(search_images(con, "dog.n.01")) == 2
        assert search_images(con, "dog.n.01", by="image") == []
        assert len(con.execute("SELECT * FROM images_with('dog.n.01', 0.0)").fetchall()) == 2
        # the map service's stored lookup (eval's) rebuilds the same grid.
        from convis_db.engine.images import read_image

        _, grid, _ = MapService(con).windows_of(read_image(image.path))
        assert grid == image.grid
    finally:
        con.close()
    # The explorer draws the same origin-layout map, without image-level scores.
    from convis_db.web.explorer import Explorer

    explorer = Explorer(db)
    try:
        assert np.abs(explorer.saliency(image, sid) - got).max() == 0
        detail = explorer.image_detail(image.image_id)
        assert detail["has_image_level"] is False and detail["top_concepts"][0]["image_score"] is None
        found = explorer.search("dog.n.01")
        assert found["by"] == "map" and found["total"] == 2 and "--backfill-image-level" in found["notes"][0]
    finally:
        explorer.close()

    # The upgrade kept the origin layout; a new image uses it too, even when the caller's settings carry
    # the new default layout.
    with Ingestor(db, device=CPU, settings=SETTINGS, batch_size=64) as ingestor:
        assert ingestor.settings.layout == "origin"
        assert ingestor.run([paths[2]]).count("ingested") == 1
    assert "'origin' window layout" in caplog.text
    con = connect(db)
    try:
        assert con.execute("SELECT layout FROM window_layout").fetchall() == [("origin",)]
        assert con.execute("SELECT DISTINCT layout FROM images").fetchall() == [("origin",)]
        assert con.execute("SELECT min(x0), min(y0) FROM windows").fetchone() == (0, 0)
        assert image_level_counts(con) == (1, 3)
        from convis_db.query.stats import database_stats

        stats = database_stats(con, str(db))
        assert (stats["window_layout"], stats["images_with_image_level"]) == ("origin", 1) and stats["schema_version"] >= 5
        level, notes = choose_level(con, None)
        assert level == "image" and notes and notes[0].startswith("2 of 3 images have no image-level scores")
        assert len(search_images(con, "dog.n.01", by="image")) == 1
    finally:
        con.close()


def test_backfill_adds_image_level_scores_to_an_old_database(old_db, tiny_parts, run_cli, tiny_config):
    from convis_db.store.db import connect
    from convis_db.store.image_store import image_level_counts, load_image_embedding

    _, defs, _, descendants = tiny_parts
    db, paths = old_db
    res = run_cli("--db", db, "search", "dog.n.01", "--by", "image")
    assert res.exit_code == 0 and "--backfill-image-level" in res.stderr
    res = run_cli("--db", db, "--quiet", "ingest", "--backfill-image-level", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["backfilled"] == 2
    con = connect(db)
    try:
        assert image_level_counts(con) == (2, 2)
        n = len(defs)
        for image_id in (1, 2):
            own, best = naive.image_level_counts(load_image_embedding(con, image_id).astype(np.float64), defs,
                                                 descendants)
            rows = con.execute("SELECT image_rank_less, image_max_rank_less FROM image_scores WHERE image_id = ? "
                               "ORDER BY synset_id", [image_id]).fetchnumpy()
            assert (rows["image_rank_less"] == own).all() and (rows["image_max_rank_less"] == best).all()
        assert con.execute("SELECT count(*) FROM concept_index WHERE image_max_rank_less IS NULL").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM concept_index").fetchone()[0] == 2 * n
    finally:
        con.close()
    res = run_cli("--db", db, "search", "dog.n.01", "--json")
    assert res.exit_code == 0 and "note" not in res.stderr
    assert [r["by"] for r in json.loads(res.stdout)] == ["image", "image"]
    # Nothing left to do: a second backfill is a no-op.
    res = run_cli("--db", db, "--quiet", "ingest", "--backfill-image-level", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["summary"]["backfilled"] == 0
    # A backfill killed before its final reindex leaves stale index rows: the next run rewrites them.
    con = connect(db, write=True)
    con.execute("UPDATE concept_order SET image_max_rank_less = NULL WHERE image_id = 1")
    con.close()
    res = run_cli("--db", db, "--quiet", "ingest", "--backfill-image-level", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["summary"]["backfilled"] == 0
    con = connect(db)
    try:
        assert con.execute("SELECT count(*) FROM concept_index WHERE image_max_rank_less IS NULL").fetchone()[0] == 0
    finally:
        con.close()

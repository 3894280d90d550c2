"""The visual explorer's JSON API (`convis-db serve`), through Flask's test client on a small database.

The database is built once per session (tiny random-weights CLIP, nine words, three generated
pictures) and shared with tests/test_web_browser.py through `web_db`.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("flask")

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny-clip.json"
WEB_WORDS = ["dog", "cat", "tiger", "car", "bicycle", "apple", "pizza", "tree", "bird"]


def _scenes() -> dict[str, Image.Image]:
    """Three small drawn pictures (sizes differ so that aspect ratios are exercised)."""
    out = {}
    img = Image.new("RGB", (240, 160), (135, 190, 235))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 110, 240, 160], fill=(70, 150, 60))
    d.ellipse([170, 18, 215, 63], fill=(250, 210, 40))
    d.rectangle([40, 70, 60, 115], fill=(110, 70, 40))
    d.ellipse([20, 35, 85, 85], fill=(40, 120, 50))
    out["garden.png"] = img
    img = Image.new("RGB", (180, 180), (240, 235, 220))
    d = ImageDraw.Draw(img)
    d.polygon([(30, 90), (90, 35), (150, 90)], fill=(170, 50, 40))
    d.rectangle([45, 90, 135, 160], fill=(210, 180, 130))
    d.rectangle([80, 120, 100, 160], fill=(90, 60, 40))
    out["house.png"] = img
    img = Image.new("RGB", (220, 140), (30, 30, 45))
    d = ImageDraw.Draw(img)
    for i, colour in enumerate([(230, 80, 70), (240, 200, 60), (80, 190, 120), (70, 130, 230)]):
        d.ellipse([15 + 50 * i, 40 + (i % 2) * 25, 60 + 50 * i, 85 + (i % 2) * 25], fill=colour)
    out["dots.png"] = img
    return out


def build_web_db(directory: Path) -> Path:
    """Initialise and ingest the explorer's test database under `directory` (once: reused if present)."""
    db = directory / "web.duckdb"
    ready = directory / "ready"
    if ready.exists():
        return db
    from convis_db.engine.settings import Settings
    from convis_db.ingest import Ingestor
    from convis_db.init_db import initialise
    from convis_db.models.registry import resolve_model

    directory.mkdir(parents=True, exist_ok=True)
    words = directory / "words.txt"
    words.write_text("\n".join(WEB_WORDS) + "\n", encoding="utf-8")
    initialise(db, str(words), resolve_model(str(TINY_CONFIG), "none"), torch.device("cpu"))
    paths = []
    for name, img in _scenes().items():
        path = directory / "images" / name
        path.parent.mkdir(exist_ok=True)
        img.save(path)
        paths.append(path)
    with Ingestor(db, device=torch.device("cpu"), settings=Settings(max_pixels=20000, stride=32)) as ingestor:
        report = ingestor.run(paths)
    assert report.count("ingested") == len(paths), report.summary()
    ready.write_text("ok")
    return db


@pytest.fixture(scope="session")
def web_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_web_db(tmp_path_factory.getbasetemp() / "convis-web")


@pytest.fixture(scope="module")
def app(web_db: Path):
    from convis_db.web.app import create_app

    application = create_app(web_db)
    application.testing = True
    yield application
    application.extensions["convis_explorer"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def explorer(app):
    return app.extensions["convis_explorer"]


def get_json(client, url: str, status: int = 200) -> dict:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code, response.get_data(as_text=True)[:500])
    assert response.is_json, url
    return response.get_json()


def png_of(response) -> Image.Image:
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.mimetype == "image/png"
    img = Image.open(io.BytesIO(response.data))
    img.load()
    return img


# -- the page --------------------------------------------------------------------------------------
def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/static/app.js" in html and "/static/style.css" in html
    assert 'id="search-input"' in html and 'id="threshold"' in html and 'data-style="heatmap"' in html
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.data) > 1000
        # No CDN: nothing is loaded from another host.
        assert not re.search(r"""(src|href)\s*=\s*["']https?://""", response.get_data(as_text=True))
    assert not re.search(r"""(src|href)\s*=\s*["']https?://""", html)


def test_stats(client):
    stats = get_json(client, "/api/stats")
    assert stats["images"] == 3
    assert stats["synsets"] > len(WEB_WORDS)
    assert stats["random_weights"] is True
    assert stats["root"] == "entity.n.01"
    assert "tiny-clip" in stats["model"]
    assert set(stats["cache"]) == {"saliency", "png", "similarities", "pictures", "scores"}


# -- images ----------------------------------------------------------------------------------------
def test_images_list_and_pages(client):
    data = get_json(client, "/api/images")
    assert data["total"] == 3 and data["offset"] == 0
    names = [im["name"] for im in data["images"]]
    assert names == ["garden.png", "house.png", "dots.png"]
    first = data["images"][0]
    assert (first["width"], first["height"]) == (240, 160)
    assert first["top_concept"]["synset"].count(".") >= 2 and 0 < first["top_concept"]["self_score"] <= 1
    page = get_json(client, "/api/images?offset=1&limit=1")
    assert [im["name"] for im in page["images"]] == ["house.png"] and page["total"] == 3
    assert get_json(client, "/api/images?limit=0", 400)["error"]["type"] == "UsageError"
    assert "not an integer" in get_json(client, "/api/images?offset=x", 400)["error"]["message"]


def test_image_detail(client):
    data = get_json(client, "/api/images/2")
    assert data["name"] == "house.png" and data["file_status"] == "ok"
    assert data["work_width"] * data["work_height"] <= 20000 and data["n_windows"] > 0
    assert data["settings"]["stride"] == 32 and data["random_weights"] is True
    assert len(data["top_concepts"]) == 5
    # Both scores of each top concept: the map peak and the image-level max_rank_sim of the whole image.
    assert data["has_image_level"] is True
    assert all(0 < c["image_score"] <= 1 and 0 <= c["image_self_score"] <= c["image_score"] for c in data["top_concepts"])
    err = get_json(client, "/api/images/99", 404)["error"]
    assert err["type"] == "NotFoundError" and "99" in err["message"]
    assert get_json(client, "/api/images/abc", 404)["error"]["status"] == 404


def test_thumbnail(client):
    response = client.get("/api/images/1/thumb.jpg?size=120")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    # Sizes are rounded up to the fixed thumbnail sizes (120 -> 128; the browser scales it down).
    assert Image.open(io.BytesIO(response.data)).size == (128, 85)
    # Never enlarged past the original.
    assert Image.open(io.BytesIO(client.get("/api/images/1/thumb.jpg?size=1000").data)).size == (240, 160)


# -- the concept tree ------------------------------------------------------------------------------
def test_children_of_root_match_explain(client, web_db):
    from convis_db.query.explain import explain_image
    from convis_db.store.db import connect

    data = get_json(client, "/api/images/1/children")
    assert data["node"]["synset"] == "entity.n.01"
    assert [b["synset"] for b in data["breadcrumbs"]] == ["entity.n.01"]
    con = connect(web_db)
    try:
        tree = explain_image(con, "1", depth=1, top=1000)["tree"]
    finally:
        con.close()
    assert [c["synset"] for c in data["children"]] == [c["synset"] for c in tree["children"]]
    assert data["n_children"] == len(tree["children"]) == tree["n_children"]
    for mine, theirs in zip(data["children"], tree["children"], strict=True):
        for key in ("score", "self_score", "peak_x", "peak_y", "n_children", "definition"):
            assert mine[key] == pytest.approx(theirs[key]), key
    assert [c["rank"] for c in data["children"]] == list(range(1, len(data["children"]) + 1))
    scores = [c["score"] for c in data["children"]]
    assert scores == sorted(scores, reverse=True)
    # Each node shows the image-level scores next to the map score: the stored exact counts over |T|.
    con = connect(web_db)
    try:
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        stored = dict(con.execute(
            "SELECT s.name, sc.image_max_rank_less FROM image_scores sc JOIN synsets s USING (synset_id) "
            "WHERE sc.image_id = 1").fetchall())
    finally:
        con.close()
    assert data["node"]["image_score"] == pytest.approx((n - 1) / n)  # entity.n.01 holds the best synset
    for c in data["children"]:
        assert c["image_score"] == stored[c["synset"]] / n and c["image_self_score"] <= c["image_score"]


def test_children_descend_with_trail(client):
    root = get_json(client, "/api/images/1/children")
    first = next(c for c in root["children"] if c["n_children"])
    level1 = get_json(client, f"/api/images/1/children?synset={first['synset']}&trail=entity.n.01,{first['synset']}")
    assert [b["synset"] for b in level1["breadcrumbs"]] == ["entity.n.01", first["synset"]]
    assert level1["node"]["synset"] == first["synset"]
    assert level1["node"]["score"] == pytest.approx(first["score"])
    second = next(c for c in level1["children"] if c["n_children"])
    trail = f"entity.n.01,{first['synset']},{second['synset']}"
    level2 = get_json(client, f"/api/images/1/children?synset={second['synset']}&trail={trail}")
    assert [b["synset"] for b in level2["breadcrumbs"]] == trail.split(",")


def test_children_of_a_deep_concept_get_the_path_to_the_root(client, explorer):
    data = get_json(client, "/api/images/3/children?synset=dog.n.01&trail=dog.n.01")  # not a chain from the root
    crumbs = [b["synset"] for b in data["breadcrumbs"]]
    assert crumbs[0] == "entity.n.01" and crumbs[-1] == "dog.n.01"
    assert crumbs == list(reversed(explorer.hierarchy.path_to_root(explorer.hierarchy.id_of["dog.n.01"])))
    for parent, child in zip(crumbs, crumbs[1:]):
        assert explorer.hierarchy.id_of[child] in explorer.hierarchy.children[explorer.hierarchy.id_of[parent]]
    # A made-up trail is ignored in favour of the real path.
    bogus = get_json(client, "/api/images/3/children?synset=dog.n.01&trail=entity.n.01,dog.n.01")
    assert [b["synset"] for b in bogus["breadcrumbs"]] == crumbs


def test_children_errors(client):
    err = get_json(client, "/api/images/1/children?synset=dgo.n.01", 404)["error"]
    assert err["type"] == "NotFoundError" and "dog.n.01" in err["message"]  # did you mean
    err = get_json(client, "/api/images/1/children?synset=dog", 400)["error"]
    assert "is a word, not a synset name" in err["message"] and "dog.n.01" in err["message"]
    assert get_json(client, "/api/images/42/children", 404)["error"]["type"] == "NotFoundError"


# -- concepts --------------------------------------------------------------------------------------
def test_concept_suggestions(client):
    data = get_json(client, "/api/concepts?q=dog")
    names = [c["synset"] for c in data["concepts"]]
    assert names[:2] == ["dog.n.01", "dog.n.03"]
    assert data["concepts"][0]["match"] == "exact" and data["concepts"][0]["definition"]
    prefix = [c["synset"] for c in get_json(client, "/api/concepts?q=Bi")["concepts"]]
    assert "bicycle.n.01" in prefix and "bird.n.01" in prefix
    assert all(c["match"] == "prefix" for c in get_json(client, "/api/concepts?q=bi")["concepts"])
    sub = get_json(client, "/api/concepts?q=icycl")["concepts"]
    assert [c["synset"] for c in sub] == ["bicycle.n.01"] and sub[0]["match"] == "substring"
    by_name = get_json(client, "/api/concepts?q=tiger.n")["concepts"]
    assert by_name and all(c["synset"].startswith("tiger.n") for c in by_name)
    assert len(get_json(client, "/api/concepts?q=a&limit=3")["concepts"]) == 3
    assert get_json(client, "/api/concepts?q=")["concepts"] == []
    assert get_json(client, "/api/concepts?q=zzzzqq")["concepts"] == []
    spaced = [c["synset"] for c in get_json(client, "/api/concepts?q=domestic dog")["concepts"]]
    assert spaced == ["dog.n.01"]


def test_concept_detail(client):
    data = get_json(client, "/api/concepts/dog.n.01")
    assert data["path"][0] == "entity.n.01" and data["path"][-1] == "dog.n.01"
    assert data["parents"] and data["lemmas"][0] == "dog"
    animal = get_json(client, "/api/concepts/animal.n.01")
    assert animal["n_descendants"] >= 1 and animal["children"]
    assert get_json(client, "/api/concepts/nothing.n.09", 404)["error"]["type"] == "NotFoundError"


# -- search ----------------------------------------------------------------------------------------
def test_search_matches_the_library(client, web_db):
    from convis_db.query.search import search_images
    from convis_db.store.db import connect

    data = get_json(client, "/api/search?synset=animal.n.01")
    con = connect(web_db)
    try:
        expected = search_images(con, "animal.n.01", 0.0, 100)
        expected_self = search_images(con, "animal.n.01", 0.0, 100, only_self=True)
    finally:
        con.close()
    assert data["total"] == 3 and data["synset"] == "animal.n.01" and data["concept"]["definition"]
    assert data["by"] == "image" and data["notes"] == []  # every image has image-level scores
    assert all(r["score"] == r["image_score"] and 0 < r["map_score"] <= 1 for r in data["results"])
    assert [r["image_id"] for r in data["results"]] == [r["image_id"] for r in expected]
    assert [r["score"] for r in data["results"]] == pytest.approx([r["score"] for r in expected])
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    assert data["results"][0]["name"].endswith(".png") and "peak_x" in data["results"][0]
    own = get_json(client, "/api/search?synset=animal.n.01&only_self=1")
    assert [r["image_id"] for r in own["results"]] == [r["image_id"] for r in expected_self] and own["only_self"]
    page = get_json(client, "/api/search?synset=animal.n.01&limit=1&offset=1")
    assert [r["image_id"] for r in page["results"]] == [expected[1]["image_id"]] and page["results"][0]["rank"] == 2
    cut = expected[1]["score"]
    above = get_json(client, f"/api/search?synset=animal.n.01&min_score={cut}")
    assert above["total"] == sum(r["score"] >= cut for r in expected) == len(above["results"])
    # by=map ranks by the map peak, as the library does.
    con = connect(web_db)
    try:
        expected_map = search_images(con, "animal.n.01", 0.0, 100, by="map")
    finally:
        con.close()
    by_map = get_json(client, "/api/search?synset=animal.n.01&by=map")
    assert by_map["by"] == "map" and [r["image_id"] for r in by_map["results"]] == [r["image_id"] for r in expected_map]
    assert all(r["score"] == r["map_score"] for r in by_map["results"])


def test_search_errors(client):
    assert "required" in get_json(client, "/api/search", 400)["error"]["message"]
    assert get_json(client, "/api/search?synset=dog", 400)["error"]["type"] == "UsageError"
    assert get_json(client, "/api/search?synset=dgo.n.01", 404)["error"]["type"] == "NotFoundError"
    assert get_json(client, "/api/search?synset=dog.n.01&min_score=nan", 400)["error"]["type"] == "UsageError"
    assert get_json(client, "/api/search?synset=dog.n.01&only_self=maybe", 400)["error"]["type"] == "UsageError"
    assert "pixels" in get_json(client, "/api/search?synset=dog.n.01&by=pixels", 400)["error"]["message"]
    assert get_json(client, "/api/nothing/here", 404)["error"]["status"] == 404


# -- maps ------------------------------------------------------------------------------------------
def test_map_png_sizes_styles_and_threshold(client):
    mask = png_of(client.get("/api/map/1/animal.n.01.png?size=96"))
    assert mask.size == (96, 64) and mask.mode == "RGB"
    heat = png_of(client.get("/api/map/1/animal.n.01.png?size=96&style=heatmap"))
    assert heat.size == (96, 64)
    assert not np.array_equal(np.asarray(mask), np.asarray(heat))
    cut = png_of(client.get("/api/map/1/animal.n.01.png?size=96&threshold=0.6"))
    assert np.asarray(cut).mean() > np.asarray(mask).mean()  # more of the mask turns white
    full = png_of(client.get("/api/map/2/entity.n.01.png?size=2048"))
    assert full.size == (180, 180)  # never enlarged past the original
    tall = png_of(client.get("/api/map/3/dog.n.01.png?size=55&only_self=1"))
    assert tall.size == (55, 35)


def test_flat_maps_are_drawn_at_their_level(client, explorer):
    """The root's map is flat ((|T|-1)/|T| everywhere): drawn at that level, not as an all-white mask."""
    image = explorer.image(1)
    saliency = explorer.saliency(image, explorer.hierarchy.id_of["entity.n.01"])
    assert saliency.min() == saliency.max() == pytest.approx((explorer.n_synsets - 1) / explorer.n_synsets)
    level = float(saliency.max())
    picture = explorer.picture(image, 96).astype(np.float32)
    got = np.asarray(png_of(client.get("/api/map/1/entity.n.01.png?size=96")))
    want = np.clip(level * picture + (1 - level) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(got, want) and got.std() > 10
    heat = np.asarray(png_of(client.get("/api/map/1/entity.n.01.png?size=96&style=heatmap")))
    assert not np.array_equal(heat, got) and heat.std() > 5
    hidden = np.asarray(png_of(client.get("/api/map/1/entity.n.01.png?size=96&threshold=1")))
    assert (hidden == 255).all()  # the level is below the threshold: nothing shows


def test_map_png_equals_render_of_the_stored_map(client, web_db):
    from convis_db.engine.images import read_image
    from convis_db.engine.render import render
    from convis_db.query.maps import MapService
    from convis_db.store.db import connect
    from convis_db.store.image_store import get_image

    got = np.asarray(png_of(client.get("/api/map/2/tree.n.01.png?size=180&style=heatmap&threshold=0.25")))
    con = connect(web_db)
    try:
        cmap = MapService(con).for_stored(get_image(con, "2"), "tree.n.01")
    finally:
        con.close()
    want = render(read_image(cmap.image_path).pixels, cmap.saliency, "heatmap", 0.25)
    assert np.array_equal(got, want)


def test_saliency_equals_map_service_exactly(explorer, web_db):
    """The cached, batched maps (direct counts, then sorted rows) equal the library's maps bit for bit."""
    from convis_db.query.maps import MapService
    from convis_db.store.db import connect
    from convis_db.store.image_store import get_image

    concepts = ["entity.n.01", "animal.n.01", "dog.n.01", "vehicle.n.01", "tree.n.01", "food.n.02", "apple.n.01"]
    con = connect(web_db)
    try:
        service = MapService(con)
        for image_id in (1, 3):
            image = get_image(con, str(image_id))
            for concept in concepts:
                for only_self in (False, True):
                    want = service.for_stored(image, concept, only_self).saliency
                    got = explorer.saliency(explorer.image(image_id), explorer.hierarchy.id_of[concept], only_self)
                    assert got.dtype == want.dtype and got.shape == want.shape
                    assert np.array_equal(got, want), (image_id, concept, only_self)
            assert explorer.similarity_cache.get(("stored", image_id)).sorted is not None  # the fast path was exercised
    finally:
        con.close()


def test_map_caches_and_etags(client, explorer):
    url = "/api/map/3/bird.n.01.png?size=70&style=mask&threshold=0.1"
    before_png, before_sal = explorer.png_cache.info(), explorer.saliency_cache.info()
    first = client.get(url)
    assert first.status_code == 200 and first.headers["ETag"]
    second = client.get(url)
    assert second.data == first.data
    assert explorer.png_cache.info()["hits"] == before_png["hits"] + 1
    # Another style of the same map re-renders but reuses the raw map.
    client.get(url.replace("style=mask", "style=heatmap"))
    sal = explorer.saliency_cache.info()
    assert sal["misses"] - before_sal["misses"] == 1 and sal["hits"] > before_sal["hits"]
    # Threshold 0.1 and 0.10 are one cache entry; the browser revalidates with the ETag.
    assert client.get(url.replace("0.1", "0.10")).headers["ETag"] == first.headers["ETag"]
    assert client.get(url, headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    assert client.get(url.replace("size=70", "size=71")).headers["ETag"] != first.headers["ETag"]


def test_map_errors(client):
    for query, word in (("style=sepia", "style"), ("threshold=1.5", "threshold"), ("threshold=abc", "threshold"),
                        ("size=4", "size"), ("size=99999", "size")):
        err = get_json(client, f"/api/map/1/dog.n.01.png?{query}", 400)["error"]
        assert err["type"] == "UsageError" and word in err["message"]
    assert get_json(client, "/api/map/77/dog.n.01.png", 404)["error"]["type"] == "NotFoundError"
    assert get_json(client, "/api/map/1/doggo.n.01.png", 404)["error"]["type"] == "NotFoundError"


def test_concurrent_map_requests_agree_with_serial_ones(app, explorer):
    urls = [f"/api/map/{i}/{c}.png?size=64" for i in (1, 2, 3) for c in ("cat.n.01", "car.n.01", "pizza.n.01")]
    explorer.png_cache.clear()
    explorer.saliency_cache.clear()
    explorer.similarity_cache.clear()

    def fetch(url: str) -> bytes:
        response = app.test_client().get(url)
        assert response.status_code == 200
        return response.data

    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(fetch, urls * 2))
    explorer.png_cache.clear()
    serial = [fetch(u) for u in urls]
    assert parallel == serial * 2


def test_missing_image_file_is_drawn_on_grey(web_db):
    from convis_db.web.app import create_app

    application = create_app(web_db)
    ex = application.extensions["convis_explorer"]
    try:
        ex._images[1] = dataclasses.replace(ex.image(1), path="/nonexistent/garden.png")
        client = application.test_client()
        assert get_json(client, "/api/images/1")["file_status"] == "missing"
        picture = np.asarray(png_of(client.get("/api/map/1/entity.n.01.png?size=60&style=heatmap")))
        assert picture.shape == (40, 60, 3)
        thumb = client.get("/api/images/1/thumb.jpg?size=60")
        assert thumb.status_code == 200
    finally:
        ex.close()


# -- pieces ----------------------------------------------------------------------------------------
def test_lru_cache_budget():
    from convis_db.cache import LRUCache

    cache = LRUCache("t", max_bytes=100)
    cache.put("a", 1, 40)
    cache.put("b", 2, 40)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3, 40)       # evicts b
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    cache.put("huge", 4, 1000)  # larger than the budget: not kept, nothing evicted
    assert "huge" not in cache and len(cache) == 2
    cache.put("a", 5, 90)       # replacing an entry updates its size
    assert cache.get("a") == 5 and "c" not in cache
    info = cache.info()
    assert info["bytes"] == 90 and info["hits"] >= 4 and info["misses"] == 0


# -- the command -----------------------------------------------------------------------------------
def test_serve_is_registered_with_its_options():
    from click.testing import CliRunner

    from convis_db.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--db", "--host", "--port", "--open", "127.0.0.1", "8765"):
        assert option in result.output


def test_serve_reports_a_busy_port_and_a_missing_database(web_db, tmp_path):
    from click.testing import CliRunner

    from convis_db.cli import cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--db", str(web_db), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "port is in use" in result.output and "--port" in result.output
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "none.duckdb"), "serve", "--port", "0"])
    assert result.exit_code == 2 and "no database at" in result.output


def test_the_explorer_is_a_user_of_the_python_api(web_db, tmp_path):
    """The explorer reads through a read-only convis_db.Database: its search, counts, stats and maps
    are the API's (and a writable Database is refused, so the explorer never holds a writer)."""
    import convis_db
    from convis_db.errors import UsageError
    from convis_db.web.explorer import Explorer

    db = convis_db.open(web_db, device="cpu")
    explorer = Explorer(db)
    try:
        assert explorer.db is db and not hasattr(explorer, "con")  # it reads through the methods only
        found = explorer.search("entity.n.01", limit=2, offset=1)
        hits = db.search("entity.n.01", offset=1, limit=2)
        assert [r["image_id"] for r in found["results"]] == [h.image_id for h in hits]
        assert found["total"] == db.count("entity.n.01") and found["by"] == hits.by
        image = explorer.image(1)
        sid = explorer.synset_id("entity.n.01")
        np.testing.assert_array_equal(explorer.saliency(image, sid), db.map(1, "entity.n.01").values)
        assert explorer.stats()["images"] == db.stats()["images"]
    finally:
        explorer.close()
    copy = tmp_path / "copy.duckdb"  # the module's app holds web_db open read-only
    shutil.copyfile(web_db, copy)
    with convis_db.open(copy, device="cpu", write=True) as writer, pytest.raises(UsageError, match="read-only"):
        Explorer(writer)

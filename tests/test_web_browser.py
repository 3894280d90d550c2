"""End to end: `convis-db serve` in a subprocess, driven in headless Chromium with Playwright.

Needs Debian's chromium (/usr/bin/chromium; scripts/setup.sh installs it) and the playwright Python
package (the `test` extra); Playwright's own browser downloads are never used. Without them the test
skips, except under CI (CI=true), where a missing browser is a setup bug and fails.

Screenshots land in a temporary folder, so test runs leave the checkout clean; refresh the ones in
the docs with CONVIS_SCREENSHOT_DIR=docs/screenshots pytest tests/test_web_browser.py.
"""

from __future__ import annotations

import json
import tempfile
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from test_web_api import build_web_db  # the shared session database (tests/ is on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CONVIS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SCREENSHOTS = Path(os.environ.get("CONVIS_SCREENSHOT_DIR", Path(tempfile.gettempdir()) / "convis-db-screenshots"))
TIMEOUT_MS = 20_000


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} — CI must have it: scripts/setup.sh installs Debian's chromium and the test extra.")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright as factory
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install -e '.[test]')")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    return factory


@pytest.fixture(scope="module")
def web_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_web_db(tmp_path_factory.getbasetemp() / "convis-web")


@pytest.fixture(scope="module")
def server_url(web_db: Path, sync_playwright):
    """`convis-db serve --port 0` in a subprocess; yields the URL it prints."""
    code = "import sys; from convis_db.cli import main; sys.argv[0] = 'convis-db'; main()"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", code, "--db", str(web_db), "serve", "--host", "127.0.0.1",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    url = None
    try:
        while url is None:
            try:
                line = lines.get(timeout=90)
            except queue.Empty:
                break
            if line == "":
                break
            seen.append(line)
            match = re.search(r" at (http://127\.0\.0\.1:\d+/)", line)
            if match:
                url = match.group(1)
        assert url, "the server did not start:\n" + "".join(seen)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, "".join(seen)  # SIGTERM stops the server cleanly


def api(url: str, path: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=30) as response:
        return json.load(response)


def wait_images_loaded(page, selector: str) -> None:
    """Every <img> matching `selector` finished loading a real picture (naturalWidth > 0)."""
    page.wait_for_function(
        """sel => { const imgs = [...document.querySelectorAll(sel)];
                    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=selector, timeout=TIMEOUT_MS)


def shoot(page, name: str, full_page: bool = False) -> None:
    """A screenshot for docs/web.md, stored as a 256-colour PNG (about a third of the size)."""
    from PIL import Image

    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=full_page)
    Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def crumbs(page) -> list[str]:
    return [t.strip() for t in page.locator("#breadcrumbs .crumb").all_inner_texts()]


def test_browse_descend_search_in_chromium(server_url: str, sync_playwright):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            page.set_default_timeout(TIMEOUT_MS)

            # The gallery: three images with thumbnails, the random-weights banner.
            page.goto(server_url)
            page.wait_for_selector("#gallery .image-card")
            assert page.locator("#gallery .image-card").count() == 3
            assert page.locator("#gallery .image-card .name").all_inner_texts() == ["garden.png", "house.png", "dots.png"]
            wait_images_loaded(page, "#gallery img.thumb")
            page.wait_for_selector("#banner:not([hidden])")
            assert "random" in page.inner_text("#banner")
            shoot(page, "gallery.png")

            # Open the first image: the tree from entity.n.01, children ranked by score, each with its map.
            page.locator("#gallery .image-card").first.click()
            page.wait_for_selector("#children .child-card")
            assert crumbs(page) == ["Images", "garden.png", "entity.n.01"]
            root = api(server_url, "/api/images/1/children?synset=entity.n.01")
            shown = page.locator("#children .child-card .name").all_inner_texts()
            assert shown == [c["synset"] for c in root["children"]]
            wait_images_loaded(page, "img.map")

            # Descend two levels, each time into the best-ranked child that has children of its own.
            trail = ["entity.n.01"]
            for _ in range(2):
                level = api(server_url, f"/api/images/1/children?synset={trail[-1]}&trail={','.join(trail)}")
                pick = next(c["synset"] for c in level["children"] if c["n_children"])
                page.locator(f"#children .child-card.has-children[data-synset='{pick}']").click()
                trail.append(pick)
                page.wait_for_function("want => document.querySelector('#node-title')?.textContent === want", arg=pick)
                assert crumbs(page) == ["Images", "garden.png", *trail]
                assert page.locator("#breadcrumbs .crumb.current").inner_text() == pick
                wait_images_loaded(page, "img.map")
            below = api(server_url, f"/api/images/1/children?synset={trail[-1]}&trail={','.join(trail)}")
            assert page.locator("#children .child-card .name").all_inner_texts() == [c["synset"] for c in below["children"]]
            assert "#/image/1/" + "/".join(trail) in page.url
            main_map = page.locator("img.map.main")
            assert main_map.evaluate("i => i.naturalWidth") > 0
            shoot(page, "image-tree.png", full_page=True)

            # Climb back with a breadcrumb.
            page.locator("#breadcrumbs a.crumb", has_text=trail[1]).click()
            page.wait_for_function("want => document.querySelector('#node-title')?.textContent === want", arg=trail[1])
            assert crumbs(page) == ["Images", "garden.png", *trail[:2]]

            # Search a concept: suggestions, then the collection ranked by score, each with its map.
            page.fill("#search-input", "dog")
            page.wait_for_selector("#suggestions li[data-synset='dog.n.01']")
            first_suggestion = page.locator("#suggestions li").first.get_attribute("data-synset")
            assert first_suggestion == "dog.n.01"
            shoot(page, "search-suggestions.png")
            page.locator("#suggestions li[data-synset='dog.n.01']").click()
            page.wait_for_selector("#results .result-card")
            assert "dog.n.01" in page.inner_text("#concept-title")
            ranked = api(server_url, "/api/search?synset=dog.n.01")["results"]
            names = page.locator("#results .result-card .name").all_inner_texts()
            assert names == [r["name"] for r in ranked] and len(names) == 3
            assert crumbs(page)[-1] == "dog.n.01" and crumbs(page)[1] == "entity.n.01"
            wait_images_loaded(page, "#results img.map")
            shoot(page, "concept-search.png")

            # The heatmap style and the threshold slider re-render every map on the page.
            page.click("#style-heatmap")
            page.locator("#threshold").fill("0.5")
            assert page.inner_text("#threshold-value") == "0.50"
            page.wait_for_function("""() => [...document.querySelectorAll('img.map')].every(
                i => i.src.includes('style=heatmap') && i.src.includes('threshold=0.50'))""")
            assert page.get_attribute("#style-heatmap", "aria-pressed") == "true"
            wait_images_loaded(page, "#results img.map")
            shoot(page, "heatmap-threshold.png")
            page.click("#style-mask")
            page.locator("#threshold").fill("0")

            # A result opens that image at dog.n.01, with the full path from the root in the breadcrumbs.
            page.locator("#results .result-card").first.click()
            page.wait_for_function("() => document.querySelector('#node-title')?.textContent === 'dog.n.01'")
            path = crumbs(page)[2:]
            assert path[0] == "entity.n.01" and path[-1] == "dog.n.01" and len(path) > 3
            assert crumbs(page)[1] == ranked[0]["name"]
            wait_images_loaded(page, "img.map.main")

            # An unknown concept shows the API's message.
            page.goto(server_url + "#/concept/dgo.n.01")
            page.wait_for_selector("#error:not([hidden])")
            assert "did you mean" in page.inner_text("#error")
            errors = [e for e in errors if "404" not in e]  # the deliberate 404 above logs a console error
        finally:
            browser.close()
    assert not errors, errors

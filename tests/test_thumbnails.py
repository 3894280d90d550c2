"""The explorer's pictures in bounded memory (issue 21, item 2).

Forty concurrent `thumb.jpg?size=100..139` of a 110-Mpx PNG used to decode the original forty times
at once. Now sizes round up to a few fixed ones, each original is decoded once (reduced where the
format allows) into a cached base, and decodes are bounded in count and in pixels. These tests check
that logic on a small image; benchmarks/bench_thumbnails.py measures the memory of the real load.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convis_db.engine import images as images_mod
from convis_db.engine.settings import Settings
from convis_db.ingest import Ingestor
from convis_db.web import explorer as explorer_mod
from convis_db.web.explorer import DECODE_SLOTS, THUMB_SIZES, Explorer, fitted, thumb_size

pytestmark = pytest.mark.fault

FAST_SETTINGS = Settings(max_pixels=20_000, stride=32, top_k=5)


def _smooth(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    colour = rng.uniform(0, 255, size=(1, 1, 3)).astype(np.float32)
    return np.clip(colour * x + (255 - colour) * y, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo_db(tmp_path_factory, tiny_db) -> tuple[Path, list[Path]]:
    """A database with a 4200x3000 JPEG (larger than the explorer's base size) and three small PNGs."""
    folder = tmp_path_factory.mktemp("thumbs")
    db = folder / "t.duckdb"
    shutil.copyfile(tiny_db, db)
    big = folder / "big.jpg"
    Image.fromarray(_smooth(4200, 3000, 1)).save(big, quality=90)
    small = []
    for i in range(3):
        small.append(folder / f"small{i}.png")
        Image.fromarray(_smooth(300 + 10 * i, 200, 2 + i)).save(small[-1])
    with Ingestor(db, device=torch.device("cpu"), settings=FAST_SETTINGS) as ing:
        assert ing.run([big, *small]).count("ingested") == 4
    return db, [big, *small]


@pytest.fixture
def explorer(photo_db):
    ex = Explorer(photo_db[0])
    yield ex
    ex.close()


def test_sizes_round_up_to_a_few_fixed_ones():
    assert [thumb_size(s) for s in (16, 64, 65, 100, 128, 139, 320, 321, 2048)] == \
        [64, 64, 128, 128, 128, 192, 320, 480, 2048]
    assert len({thumb_size(s) for s in range(16, 2049)}) == len(THUMB_SIZES) <= 12


def test_thirty_distinct_sizes_decode_the_original_once(explorer, monkeypatch):
    """30 concurrent thumbnails of 30 distinct sizes: one decode, reduced in the JPEG decoder, two
    pictures served (sizes 110..139 round to 128 and 192), and the next round is all cache hits."""
    monkeypatch.setattr(images_mod, "REDUCE_ABOVE_PIXELS", 1_000_000)  # the 12.6-Mpx JPEG counts as big
    decoded = []
    real = explorer_mod.read_image

    def spy(path, at_least=None):
        out = real(path, at_least=at_least)
        decoded.append(out)
        return out

    monkeypatch.setattr(explorer_mod, "read_image", spy)
    sizes = list(range(110, 140))
    with ThreadPoolExecutor(max_workers=30) as pool:
        answers = list(pool.map(lambda s: explorer.thumbnail_jpeg(1, s), sizes))
    assert explorer.decodes == 1 and len(decoded) == 1
    original = decoded[0]
    assert original.size == (4200, 3000) and original.pixels.shape[:2] == (1500, 2100)  # JPEG scaled 1/2
    got = {Image.open(io.BytesIO(data)).size for data, _ in answers}
    assert got == {fitted(4200, 3000, 128), fitted(4200, 3000, 192)}
    assert len({etag for _, etag in answers}) == 2
    base = explorer.picture_cache.get(("base", 1), count=False)
    assert base.shape[:2] == (1463, 2048)
    hits = explorer.png_cache.hits
    for s in sizes:
        explorer.thumbnail_jpeg(1, s)
    assert explorer.png_cache.hits == hits + len(sizes) and explorer.decodes == 1
    assert explorer.decode_pixels.held == 0


def test_decodes_in_flight_are_bounded_in_count_and_pixels(explorer, monkeypatch):
    """Many requests over several images: never more than DECODE_SLOTS decodes at once, nor more
    decoded pixels than the budget (one image larger than the budget alone), each image decoded once."""
    monkeypatch.setattr(explorer.decode_pixels, "max_pixels", 130_000)  # two small originals at a time
    lock = threading.Lock()
    in_flight, most = [0], [0]
    real = explorer_mod.read_image

    def slow(path, at_least=None):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.05)
            return real(path, at_least=at_least)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(explorer_mod, "read_image", slow)
    jobs = [(image_id, size) for image_id in (1, 2, 3, 4) for size in (64, 100, 300, 700, 1500)] * 2
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda job: explorer.thumbnail_jpeg(*job), jobs))
    assert 1 <= most[0] <= DECODE_SLOTS
    assert explorer.decodes == 4
    assert explorer.decode_pixels.held == 0
    assert explorer.decode_pixels.peak <= 130_000 or explorer.decode_pixels.peak == 4200 * 3000  # alone


def test_missing_file_is_a_grey_picture_without_decoding(photo_db, tmp_path):
    db, files = photo_db
    moved = tmp_path / "copy.duckdb"
    shutil.copyfile(db, moved)
    ex = Explorer(moved)
    try:
        ex._file_status[2] = "missing"
        data, _ = ex.thumbnail_jpeg(2, 100)
        assert Image.open(io.BytesIO(data)).size == fitted(300, 200, 128) and ex.decodes == 0
        assert ex.file_status(ex.image(3)) == "ok" and ex.decodes == 0  # a hash of the bytes, no decode
    finally:
        ex.close()

"""Ingest memory bounded for huge photos (issue 21, item 3).

Decoding ahead of the model is bounded in pixels (not only in files), big originals are decoded
reduced (never below their working size), and the decoded pixels go as soon as the image is
explained. benchmarks/bench_ingest_memory.py measures the real memory; these tests check the logic
on small images with a small budget, and that ordinary images decode exactly as before.
"""

from __future__ import annotations

import io
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from convis_db.engine import images as images_mod
from convis_db.engine.images import PixelBudget, decode_bytes, decode_cost, read_image, reduction_factor
from convis_db.engine.settings import Settings
from convis_db.engine.windows import working_size
from convis_db.ingest import Ingestor
from convis_db.ingest import plan as plan_mod
from convis_db.ingest.plan import IngestPlan
from convis_db.store.db import connect
from faults.checks import assert_whole, query

pytestmark = pytest.mark.fault

FAST_SETTINGS = Settings(max_pixels=20_000, stride=32, top_k=5)


def _noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_pixel_budget_waits_and_lets_one_big_image_through_alone():
    budget = PixelBudget(100)
    budget.take(60)
    assert budget.fits(40) and not budget.fits(41)
    started = threading.Event()

    def second():
        budget.take(50)  # waits for the first to be given back
        started.set()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.05)
    assert not started.is_set()
    budget.give(60)
    t.join(5)
    assert started.is_set() and budget.held == 50
    budget.give(50)
    budget.take(1000)  # larger than the whole budget: alone, never forever
    assert budget.held == 1000 and budget.peak == 1000
    budget.give(1000)


def test_reduction_factor_keeps_at_least_the_asked_size():
    assert reduction_factor(8640, 6480, (632, 474)) == 8  # 1080 x 810 >= 632 x 474; 540 would not be
    assert reduction_factor(1000, 800, (632, 506)) == 1
    assert reduction_factor(1265, 1012, (632, 506)) == 2  # ceil(1265 / 2) = 633
    for w, h in ((8640, 6480), (7000, 3001), (999, 9999)):
        ww, wh = working_size(w, h, 300_000)
        f = reduction_factor(w, h, (ww, wh))
        assert -(-w // f) >= ww and -(-h // f) >= wh
        assert f == 64 or -(-w // (2 * f)) < ww or -(-h // (2 * f)) < wh


def test_ordinary_images_decode_exactly_as_before(tmp_path):
    """At or below REDUCE_ABOVE_PIXELS nothing changes: same pixels, no full_size."""
    for name, save in (("a.png", {}), ("b.jpg", {"quality": 90})):
        path = tmp_path / name
        Image.fromarray(_noise(640, 480, 1)).save(path, **save)
        full, asked = read_image(path), read_image(path, at_least=20_000)
        assert asked.full_size is None and np.array_equal(full.pixels, asked.pixels)
        assert decode_cost(path, 20_000) == 640 * 480


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_big_originals_decode_reduced_to_no_less_than_the_working_size(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(images_mod, "REDUCE_ABOVE_PIXELS", 100_000)
    path = tmp_path / f"big.{fmt}"
    Image.fromarray(_noise(1600, 1200, 2)).save(path)
    out = read_image(path, at_least=20_000)
    ww, wh = working_size(1600, 1200, 20_000)
    assert out.size == (1600, 1200) and out.full_size == (1600, 1200)
    assert out.pixels.shape[1] >= ww and out.pixels.shape[0] >= wh
    assert out.pixels.shape[:2] == (150, 200)  # 1/8: 200 x 150 >= 163 x 122
    assert decode_cost(path, 20_000) == (150 * 200 if fmt == "jpg" else 1600 * 1200)
    # PNG: Image.reduce box averages of the full decode.
    if fmt == "png":
        expected = np.asarray(Image.open(path).convert("RGB").reduce(8))
        assert np.array_equal(out.pixels, expected)


def test_rotated_big_jpeg_keeps_its_upright_size(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "REDUCE_ABOVE_PIXELS", 100_000)
    img = Image.fromarray(_noise(1600, 1200, 3))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    out = decode_bytes(buf.getvalue(), "rotated.jpg", at_least=(300, 400))
    assert out.size == (1200, 1600) and out.pixels.shape[:2] == (400, 300)


def test_decoding_ahead_stays_within_the_pixel_budget(tiny_db_copy, tmp_path, monkeypatch):
    """Nine small images (60 x 50 = 3,000 px each) with a budget of 7,000 px: never more than two read
    ahead of the consumer, every image handed over in order, and the budget back to 0 at the end."""
    files = []
    for i in range(9):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(_noise(60, 50, 10 + i)).save(files[-1])
    started, consumed, most = [0], [0], [0]
    lock = threading.Lock()
    real = plan_mod.read_image

    def spy(path, at_least=None):
        with lock:
            started[0] += 1
            most[0] = max(most[0], started[0] - consumed[0])
        return real(path, at_least)

    monkeypatch.setattr(plan_mod, "read_image", spy)
    con = connect(tiny_db_copy, write=True)
    try:
        plan = IngestPlan(con, decode_threads=4, work_pixels=20_000, budget_pixels=7_000)
        seen = []
        for path, future in plan.decoded(files):
            time.sleep(0.01)  # let the decode threads run ahead as far as they may
            assert plan.budget.held <= 7_000
            seen.append((path, future.result().sha256))
            with lock:
                consumed[0] += 1
        assert [p for p, _ in seen] == files
        assert most[0] <= 2 and plan.budget.peak <= 7_000 and plan.budget.held == 0
        # A budget below one image still reads every file, one at a time.
        plan = IngestPlan(con, decode_threads=4, work_pixels=20_000, budget_pixels=1_000)
        assert [p for p, f in plan.decoded(files) if f.result()] == files
        assert plan.budget.peak == 3_000 and plan.budget.held == 0
    finally:
        con.close()


def test_a_stopped_run_gives_its_budget_back(tiny_db_copy, tmp_path):
    files = []
    for i in range(6):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(_noise(40, 30, 20 + i)).save(files[-1])
    con = connect(tiny_db_copy, write=True)
    try:
        plan = IngestPlan(con, decode_threads=2, work_pixels=20_000)
        gen = plan.decoded(files)
        next(gen)
        assert plan.budget.held > 0
        gen.close()
        assert plan.budget.held == 0
    finally:
        con.close()


def test_a_big_photo_is_stored_with_its_original_size(tiny_db, tmp_path, monkeypatch):
    """Reduced decoding changes no stored geometry: width, height and the working size are the
    original's, and the image is whole."""
    monkeypatch.setattr(images_mod, "REDUCE_ABOVE_PIXELS", 100_000)
    db = tmp_path / "big.duckdb"
    shutil.copyfile(tiny_db, db)
    path = tmp_path / "big.jpg"
    Image.fromarray(_noise(1601, 1203, 4)).save(path, quality=90)
    with Ingestor(db, device=torch.device("cpu"), settings=FAST_SETTINGS) as ing:
        assert ing.run([path]).count("ingested") == 1
    [(w, h, ww, wh)] = query(db, "SELECT width, height, work_width, work_height FROM images")
    assert (w, h) == (1601, 1203) and (ww, wh) == working_size(1601, 1203, FAST_SETTINGS.max_pixels)
    assert assert_whole(db) == 1

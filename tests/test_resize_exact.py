"""The exact CPU resize (engine/resize.py) gives, bit for bit, what the engine computed before it:
crops cut from the padded image and resized with F.interpolate (bicubic), concatenated, encoded.

Checked at three levels: single crops against F.interpolate (several sides, crops at every kind of
position, one or two threads); PatchCutter against the unfold + F.interpolate path it replaces (the
whole-image width pass and the banded one); and the engine's window embeddings, ranks, top-K and
map peaks against the former engine loop (torch.cat of the small and large patches), with a tiny
random CLIP of 224-pixel input at the paper's patch sides (64 and 128 -> 224).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convis_db.engine import resize as resize_mod
from convis_db.engine import windows as windows_mod
from convis_db.engine.explainer import ConceptEngine, window_batches
from convis_db.engine.resize import exact_resizer, torch_resize
from convis_db.engine.settings import Settings
from convis_db.engine.windows import PatchCutter, WindowGrid, normalise

CPU = torch.device("cpu")
CONFIG_224 = Path(__file__).resolve().parent / "data" / "tiny-clip-224.json"
pytest.importorskip("numba", reason="the exact resize kernel is compiled by numba (a dependency)")


@pytest.mark.parametrize("size,out", [(64, 224), (128, 224), (24, 32), (50, 224), (96, 336), (7, 9)])
@pytest.mark.parametrize("threads", [1, 2])
def test_crops_equal_f_interpolate(size: int, out: int, threads: int) -> None:
    resizer = exact_resizer(size, out)
    assert resizer is not None, "this torch build's bicubic arithmetic should be one of the known forms"
    g = torch.Generator().manual_seed(size + out)
    image = torch.randn(3, 3 * size, 2 * size + 11, generator=g)
    image[1] *= 255.0  # other magnitudes: other rounding
    # Corners, edges, interior and odd offsets; the same column twice (its width pass is shared).
    ys = np.array([0, 0, 2 * size, 2 * size, 5, size + 3, 5])
    xs = np.array([0, size + 11, 0, size + 11, 7, 1, 7 + 3])
    got = torch.empty(len(ys), 3, out, out)
    resizer.resize_into(image, ys, xs, got, threads=threads)
    crops = torch.stack([image[:, y:y + size, x:x + size] for y, x in zip(ys, xs)])
    want = torch_resize(crops, out)
    assert torch.equal(got, want), f"max |diff| {(got - want).abs().max():.3g}"


@pytest.mark.parametrize("aligned", [True, False])
def test_streamed_rows_equal_plain_stores(aligned: bool) -> None:
    """The height pass streams its rows to memory (non-temporal stores) into an aligned batch buffer and
    stores them plainly elsewhere (a view one float off the boundary): both give F.interpolate's samples."""
    resizer = exact_resizer(64, 224)
    image = torch.randn(3, 150, 170, generator=torch.Generator().manual_seed(3))
    ys, xs = np.array([0, 16, 86, 40]), np.array([0, 32, 106, 32])
    memory = torch.full((1 + len(ys) * 3 * 224 * 224 + 8,), -1.0)
    first = 0 if aligned else 1
    got = memory[first:first + len(ys) * 3 * 224 * 224].view(len(ys), 3, 224, 224)
    assert resize_mod.streams(got) == (aligned and resize_mod.STREAM_STORES)
    resizer.resize_into(image, ys, xs, got, threads=2)
    crops = torch.stack([image[:, y:y + 64, x:x + 64] for y, x in zip(ys, xs)])
    assert torch.equal(got, torch_resize(crops, 224))
    assert (memory[:first] == -1).all() and (memory[first + got.numel():] == -1).all()  # nothing written outside


def test_shrinking_is_left_to_torch() -> None:
    assert exact_resizer(128, 32) is None  # antialiased: torch's own kernel
    assert exact_resizer(224, 224) is None  # no resize at all


def old_patches(image_norm: torch.Tensor, grid: WindowGrid, size: int, out: int, start: int, stop: int) -> torch.Tensor:
    """The patch cutting of the engine before the exact resize (unfold view, one F.interpolate per batch)."""
    before = -grid.origin
    padded = F.pad(image_norm, (before, grid.large, before, grid.large), value=0.0)
    view = padded.unfold(1, size, grid.stride).unfold(2, size, grid.stride)
    idx = torch.arange(start, stop)
    crops = view[:, idx // grid.cols, idx % grid.cols].permute(1, 0, 2, 3)
    return F.interpolate(crops, size=(out, out), mode="bicubic", align_corners=False, antialias=size > out)


@pytest.mark.parametrize("band", ["whole image", "ring", "tightest ring"])
def test_patch_cutter_equals_old_path(band: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The width pass kept for the whole image, or in a ring of rows that wraps (the default keeps the first
    batch's span and a patch side more; the tightest keeps only what one batch asks for)."""
    if band == "whole image":
        monkeypatch.setattr(windows_mod, "band_rows", lambda span, size, height: height)
    elif band == "tightest ring":
        monkeypatch.setattr(windows_mod, "band_rows", lambda span, size, height: span)
    rng = np.random.default_rng(3)
    pixels = torch.from_numpy(rng.integers(0, 256, (3, 150, 211), dtype=np.uint8))
    img = normalise(pixels, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    grid = WindowGrid(150, 211, 16, 64, 128)
    cutter = PatchCutter(img, grid, 224)
    for start, stop in [(0, 37), (37, 100), (100, 101), (101, 150), (150, grid.n_windows)]:  # in order, as the engine asks
        for size in (grid.small, grid.large):
            got = torch.empty(stop - start, 3, 224, 224)
            cutter.patches_into(size, start, stop, got)
            assert torch.equal(got, old_patches(img, grid, size, 224, start, stop)), (size, start, stop)


def old_window_embeddings(engine: ConceptEngine, img: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """The engine's encode loop before this change: small and large patches concatenated per batch."""
    size = engine.model.image_size
    out = torch.empty(grid.n_windows, engine.model.embed_dim)
    for batch in window_batches([grid.n_windows], engine.batch_size):
        small = [old_patches(img, grid, grid.small, size, a, b) for _, a, b in batch]
        large = [old_patches(img, grid, grid.large, size, a, b) for _, a, b in batch]
        feats = engine.model.encode_image_batch(torch.cat(small + large))
        n = sum(b - a for _, a, b in batch)
        e = (feats[:n] + feats[n:]) / 2
        offset = 0
        for _, a, b in batch:
            out[a:b] = e[offset:offset + b - a]
            offset += b - a
    return out


@pytest.fixture(scope="module")
def model_224():
    from convis_db.models.clip import load_model
    from convis_db.models.registry import resolve_model

    return load_model(resolve_model(str(CONFIG_224), "none"), CPU)


@pytest.mark.parametrize("layout", ["equal", "origin"])
def test_engine_results_equal_old_path(model_224, tiny_db: Path, layout: str) -> None:
    """Embeddings bit for bit, hence ranks, top-K, peaks and maps, against the former encode loop."""
    from convis_db.store.db import connect
    from convis_db.store.hierarchy_store import load_hierarchy
    from convis_db.store.model_store import load_definition_embeddings, pick_model

    con = connect(tiny_db)
    try:
        defs = load_definition_embeddings(con, pick_model(con, None))  # 16-d, like the 224-px tiny model
        levels = load_hierarchy(con).propagation_levels
    finally:
        con.close()
    settings = Settings(max_pixels=30_000, stride=16, small=64, large=128, top_k=10, layout=layout)
    engine = ConceptEngine(model_224, defs, levels, settings, batch_size=96)  # several batches, the last partial
    pixels = np.random.default_rng(7).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    pixels[40:90, 60:150] = (200, 30, 30)
    exp = engine.explain_pixels(pixels)
    img, grid = engine.working_image(pixels)
    old_emb = old_window_embeddings(engine, img, grid)
    assert torch.equal(torch.from_numpy(exp.embeddings), old_emb)
    old = engine.explain_embeddings(old_emb, grid)
    np.testing.assert_array_equal(exp.top_ids, old.top_ids)
    np.testing.assert_array_equal(exp.top_rank_less, old.top_rank_less)
    for got, want in ((exp.scores, old.scores), (exp.self_scores, old.self_scores)):
        np.testing.assert_array_equal(got.score, want.score)
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)

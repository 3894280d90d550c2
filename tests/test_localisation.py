"""Maps localise what they should: the real engine on a toy colour encoder (tests/toy_encoder.py).

A red object on a grey-green background: the map of the concept that means "red" (a leaf, and an inner
node through its red descendant) has its peak on the object, and its thresholded largest component
overlaps the object's box (IoU >= 0.5). A colour absent from the image does not localise the object.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from convis_db.engine.explainer import ConceptEngine
from convis_db.engine.settings import Settings
from toy_encoder import ToyColourModel, scene, toy_hierarchy

H, W = 96, 128
SETTINGS = Settings(max_pixels=H * W, stride=8, small=16, large=24, top_k=3)  # working image = original

#: Object boxes (x0, y0, x1, y1): central, top-left corner, touching the right and bottom borders.
BOXES = {
    "centre": (50, 30, 90, 66),
    "top-left": (0, 0, 36, 40),
    "bottom-right": (84, 56, 128, 96),
    "wide": (10, 60, 110, 90),
}


def iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    ix = max(0, min(ax1, bx1) - max(ax0, bx0))
    iy = max(0, min(ay1, by1) - max(ay0, by0))
    inter = ix * iy
    return inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)


def localise(saliency: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the largest connected region above `threshold` of the min-max range."""
    lo, hi = float(saliency.min()), float(saliency.max())
    assert hi > lo, "a constant map localises nothing"
    mask = (saliency - lo) / (hi - lo) >= threshold
    labels, n = ndimage.label(mask)
    assert n >= 1
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def inside(x: int, y: int, box) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


@pytest.fixture(scope="module")
def toy():
    model = ToyColourModel()
    tree = toy_hierarchy()
    defs = model.encode_text(tree.definitions)
    engine = ConceptEngine(model, defs, tree.arrays().propagation_levels, SETTINGS, batch_size=64)
    return model, tree, defs, engine


@pytest.fixture(scope="module")
def encoded(toy):
    """Per box: the image, its working grid and window embeddings."""
    _, _, _, engine = toy
    out = {}
    for i, (name, box) in enumerate(BOXES.items()):
        pixels = scene(H, W, box, seed=i)
        img, grid = engine.working_image(pixels)
        assert (grid.height, grid.width) == (H, W)
        out[name] = (pixels, grid, engine.encode_windows(img, grid))
    return out


def test_toy_encoder_has_colour_semantics(toy):
    model, tree, defs, _ = toy
    m = torch.tensor(model.mean).view(3, 1, 1)
    s = torch.tensor(model.std).view(3, 1, 1)

    def patch(rgb):
        t = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, 16, 16) / 255.0
        return ((t - m) / s)[None]

    def best(emb):
        return tree.names[int(np.argmax(defs @ emb[0].numpy()))]

    assert best(model.encode_image_batch(patch((210, 35, 30)))) == "red.n.01"
    assert best(model.encode_image_batch(patch((30, 40, 220)))) in ("blue.n.01", "navy.n.01")
    assert best(model.encode_image_batch(patch((110, 135, 105)))) in ("moss.n.01", "olive.n.01", "green.n.01")
    # The padding (0 in normalised space, the mean colour) is neutral, not a colour.
    assert best(model.encode_image_batch(torch.zeros(1, 3, 16, 16))) in ("entity.n.01", "grey.n.01")


@pytest.mark.parametrize("box_name", list(BOXES))
@pytest.mark.parametrize("concept", ["red.n.01", "warm_colour.n.01"])
def test_red_concept_localises_the_red_object(box_name: str, concept: str, toy, encoded):
    _, tree, _, engine = toy
    box = BOXES[box_name]
    _, grid, emb = encoded[box_name]
    saliency = engine.mapper.concept_map(emb, grid, tree.descendants(concept))
    found = localise(saliency)
    assert iou(found, box) >= 0.5, f"{concept}: found {found}, object at {box}"
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    assert inside(x, y, box), f"{concept}: peak at ({x}, {y}) outside {box}"
    # Inside the object the map is higher than anywhere far from it.
    mask = np.zeros_like(saliency, bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    far = ~ndimage.binary_dilation(mask, iterations=SETTINGS.large)
    if far.any():
        assert saliency[mask].mean() > saliency[far].max()


@pytest.mark.parametrize("box_name", list(BOXES))
@pytest.mark.parametrize("concept", ["blue.n.01", "cool_colour.n.01"])
def test_absent_colour_does_not_localise_the_object(box_name: str, concept: str, toy, encoded):
    _, tree, _, engine = toy
    box = BOXES[box_name]
    _, grid, emb = encoded[box_name]
    saliency = engine.mapper.concept_map(emb, grid, tree.descendants(concept))
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    assert not inside(x, y, box), f"{concept} peaks on the red object at ({x}, {y})"
    assert iou(localise(saliency), box) < 0.5


@pytest.mark.parametrize("box_name", ["centre", "bottom-right"])
def test_explain_pixels_scores_and_top_concepts_follow_the_object(box_name: str, toy):
    model, tree, _, engine = toy
    box = BOXES[box_name]
    exp = engine.explain_pixels(scene(H, W, box, seed=42))
    red = tree.id("red.n.01")
    warm = tree.id("warm_colour.n.01")
    blue = tree.id("blue.n.01")
    assert inside(int(exp.scores.x[red]), int(exp.scores.y[red]), box)
    assert inside(int(exp.scores.x[warm]), int(exp.scores.y[warm]), box)
    n = len(tree.names)
    assert exp.scores.score[red] == pytest.approx((n - 1) / n)   # every window on the object ranks red first
    assert exp.self_scores.score[red] > exp.self_scores.score[blue]
    # warm_colour's own definition is vague; through its red descendant it scores as red does.
    assert exp.scores.score[warm] == exp.scores.score[red] > exp.self_scores.score[warm]
    # Windows whose large patch lies on the object list red first.
    for w, (x0, y0, x1, y1) in enumerate(exp.boxes.tolist()):
        if box[0] <= x0 and x1 <= box[2] and box[1] <= y0 and y1 <= box[3]:
            assert exp.top_ids[w, 0] == red, (w, tree.names[exp.top_ids[w, 0]])

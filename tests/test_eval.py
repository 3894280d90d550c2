"""The evaluation harness: metrics, dataset readers, WSOL and OOD on a toy colour encoder, and `eval` end to end.

The toy encoder embeds a patch by the fraction of its pixels that are clearly red / clearly blue, and
the definition matrix puts "red" and "blue" synsets on those axes among random distractors, so the
real ConceptEngine produces maps that localise red objects: the metrics are exercised on maps with
real structure, with controls (misplaced boxes, identical in/out sets) that must score low or 0.5.
"""

from __future__ import annotations

import csv
import json
import shutil
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import mannwhitneyu

import convis_db
from convis_db.engine.explainer import ConceptEngine
from convis_db.engine.images import read_image
from convis_db.engine.settings import Settings
from convis_db.errors import NotFoundError, UsageError
from convis_db.evaluation import metrics
from convis_db.evaluation.datasets import (
    imagenet_classes,
    load_coco,
    load_cub,
    load_wsol_dataset,
    offset_to_wnid,
    parse_category_map,
)
from convis_db.evaluation.explainers import ConVisExplainer, image_embedding
from convis_db.evaluation.ood import (
    MAP_SCORES,
    SCORES,
    TABLE_I,
    WordNetLabeller,
    check_prompts,
    evaluate_ood,
    zero_shot_classifier,
)
from convis_db.evaluation.wsol import evaluate_wsol

CPU = torch.device("cpu")


# =========================================================================== toy encoder and data
class ToyColourModel:
    """What ConceptEngine uses of a LoadedModel; embeds a patch by its red and blue pixel fractions."""

    device = CPU
    image_size = 8
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    embed_dim = 3

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        rgb = pixels.float() * 0.5 + 0.5
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        red = ((r > 0.6) & (g < 0.4) & (b < 0.4)).float().mean((1, 2))
        blue = ((b > 0.6) & (r < 0.4) & (g < 0.4)).float().mean((1, 2))
        emb = torch.stack([red, blue, (1 - red - blue).clamp(min=0) + 0.05], dim=1)
        return torch.nn.functional.normalize(emb, dim=-1)

    def encode_text(self, texts) -> np.ndarray:
        """A text is 'red' or 'blue' when it says so (a little of the third axis, so prompts differ)."""
        rows = [[1.0 if "red" in t else 0.0, 1.0 if "blue" in t else 0.0, 0.1 + 0.01 * len(t)] for t in texts]
        emb = np.array(rows, np.float32)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


RED, BLUE = 0, 1
TOY_CONCEPTS = {"red.n.01": (RED, np.array([RED])), "blue.n.01": (BLUE, np.array([BLUE]))}


def toy_definitions(n_distractors: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = np.vstack([[1, 0, 0], [0, 1, 0], [0, 0, 1], np.abs(rng.normal(size=(n_distractors, 3)))]).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def toy_engine() -> ConceptEngine:
    # Originals are 96x72; the working image is about 68x51, so boxes must be rescaled to be right.
    settings = Settings(max_pixels=3456, stride=4, small=8, large=16, top_k=5)
    return ConceptEngine(ToyColourModel(), toy_definitions(), [], settings)


@pytest.fixture
def toy_convis(toy_engine) -> ConVisExplainer:
    return ConVisExplainer(toy_engine, lambda c: TOY_CONCEPTS[c])


W, H = 96, 72
CORNERS = [(6, 5), (60, 6), (7, 42), (62, 40)]   # top-left corners of the objects, one per quadrant


def scene(rng, objects: list[tuple[tuple[int, int, int, int], str]], w: int = W, h: int = H) -> np.ndarray:
    """A greenish noisy background with solid-ish red or blue rectangles (x0, y0, x1, y1)."""
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = rng.integers(0, 120, (h, w))
    img[..., 1] = rng.integers(80, 220, (h, w))
    img[..., 2] = rng.integers(0, 120, (h, w))
    for (x0, y0, x1, y1), colour in objects:
        shape = (y1 - y0, x1 - x0)
        hot, cold = rng.integers(180, 256, shape), rng.integers(0, 60, shape + (2,))
        if colour == "red":
            img[y0:y1, x0:x1, 0], img[y0:y1, x0:x1, 1:] = hot, cold
        else:
            img[y0:y1, x0:x1, 2], img[y0:y1, x0:x1, :2] = hot, cold
    return img


def object_box(i: int, rng, corner: int | None = None) -> tuple[int, int, int, int]:
    x, y = CORNERS[(i if corner is None else corner) % 4]
    x, y = x + int(rng.integers(0, 4)), y + int(rng.integers(0, 4))
    return (x, y, min(W, x + 26 + (i % 3) * 2), min(H, y + 22 + (i % 2) * 3))


def write_cub(root: Path, images: list[np.ndarray], boxes: list[tuple], split: list[int] | None = None,
              suffix: str = ".png") -> Path:
    (root / "images" / "001.Thing").mkdir(parents=True, exist_ok=True)
    lines, box_lines = [], []
    for i, (img, (x0, y0, x1, y1)) in enumerate(zip(images, boxes), 1):
        rel = f"001.Thing/thing_{i:03d}{suffix}"
        Image.fromarray(img).save(root / "images" / rel)
        lines.append(f"{i} {rel}")
        box_lines.append(f"{i} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(box_lines) + "\n")
    if split is not None:
        (root / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, s in enumerate(split, 1)))
    return root


@pytest.fixture(scope="module")
def red_scenes() -> tuple[list[np.ndarray], list[tuple]]:
    rng = np.random.default_rng(7)
    boxes = [object_box(i, rng) for i in range(8)]
    return [scene(rng, [(b, "red")]) for b in boxes], boxes


# =========================================================================== metrics
def brute_force_auroc(pos, neg) -> float:
    pairs = [(p > n) + 0.5 * (p == n) for p, n in product(pos, neg)]
    return float(np.mean(pairs))


@pytest.mark.parametrize("seed", range(6))
def test_auroc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_pos, n_neg = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    # Few distinct values, so ties within and across groups are common.
    pos = rng.integers(0, 6, n_pos).astype(float)
    neg = rng.integers(0, 6, n_neg).astype(float) - (seed % 3)
    assert metrics.auroc(pos, neg) == pytest.approx(brute_force_auroc(pos, neg), abs=1e-12)


def test_auroc_edges_and_errors():
    assert metrics.auroc([2, 3], [0, 1]) == 1.0
    assert metrics.auroc([0, 1], [2, 3]) == 0.0
    assert metrics.auroc([1, 1, 1], [1, 1]) == 0.5
    assert metrics.auroc([0.5], [0.5 - 1e-9]) == 1.0
    with pytest.raises(UsageError, match="both groups"):
        metrics.auroc([], [1.0])
    with pytest.raises(ValueError):
        metrics.auroc([np.nan], [1.0])


def test_auroc_matches_mann_whitney_u():
    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 8, 40).astype(float), rng.integers(0, 8, 25).astype(float)
    u = mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert metrics.auroc(pos, neg) == pytest.approx(u / (len(pos) * len(neg)), abs=1e-12)


def test_threshold_grid():
    taus = metrics.thresholds(0.01)
    assert len(taus) == 100 and taus[0] == 0.0 and taus[-1] == 0.99 and taus[29] == 0.29
    assert list(metrics.thresholds(0.25)) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(UsageError):
        metrics.thresholds(0.0)


def test_box_iou_and_conversion():
    assert metrics.xywh_to_box(10, 20, 30, 40) == (10, 20, 40, 60)
    assert metrics.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert metrics.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert metrics.box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert metrics.best_iou(None, np.array([[0, 0, 1, 1]])) == 0.0
    assert metrics.best_iou((0, 0, 10, 10), np.array([[50, 50, 60, 60], [0, 0, 10, 10]])) == 1.0


def test_largest_component_box():
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:6] = True           # 9 pixels
    mask[10:18, 12:20] = True       # 64 pixels: the largest
    mask[9, 11] = True              # touches the big one diagonally: 8-connected, so part of it
    assert metrics.largest_component_box(mask) == (11, 9, 20, 18)
    assert metrics.largest_component_box(np.zeros((4, 4), bool)) is None


def test_threshold_boxes_shrink_and_constant_maps():
    yy, xx = np.mgrid[0:40, 0:50]
    bump = np.exp(-((xx - 30) ** 2 + (yy - 15) ** 2) / 50.0)
    taus = metrics.thresholds(0.1)
    boxes = metrics.threshold_boxes(bump, taus)
    assert boxes[0] == (0, 0, 50, 40)
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    assert areas == sorted(areas, reverse=True) and areas[-1] < 50
    for tau, box in zip(taus, boxes):   # the count cache gives the same boxes as a direct computation
        assert box == metrics.largest_component_box(metrics.normalise01(bump) >= tau)
    assert metrics.threshold_boxes(np.ones((5, 6)), taus) == [(0, 0, 6, 5)] + [None] * (len(taus) - 1)


def naive_components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1), half-open, of the 8-connected components of a mask, by flood fill."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    boxes = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or seen[y, x]:
                continue
            stack, xs, ys = [(y, x)], [], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                xs.append(cx)
                ys.append(cy)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return boxes


def naive_iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def naive_max_box_acc_v2(maps, gts, taus, deltas=(0.3, 0.5, 0.7)) -> float:
    """Choe et al.'s MaxBoxAccV2 straight from its definition: mean over delta of
    max over tau of the fraction of images with some component box reaching IoU delta with some GT box."""
    best_per_delta = []
    for delta in deltas:
        accuracies = []
        for tau in taus:
            correct = 0
            for m, gt in zip(maps, gts):
                norm = (m - m.min()) / (m.max() - m.min())
                boxes = naive_components(norm >= tau)
                correct += any(naive_iou(b, g) >= delta for b in boxes for g in gt)
            accuracies.append(correct / len(maps))
        best_per_delta.append(max(accuracies))
    return sum(best_per_delta) / len(best_per_delta)


@pytest.mark.parametrize("seed", range(3))
def test_max_box_acc_v2_equals_naive_definition(seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:18, 0:22]
    maps, gts = [], []
    for _ in range(6):
        m = 0.2 * rng.random((18, 22))
        for _ in range(int(rng.integers(1, 4))):     # a few blobs: several components at most taus
            cx, cy, r = rng.uniform(0, 22), rng.uniform(0, 18), rng.uniform(1.5, 4)
            m += rng.uniform(0.5, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        maps.append(m)
        gts.append(np.array([[int(rng.integers(0, 12)), int(rng.integers(0, 9)), 0, 0] for _ in range(2)]))
        gts[-1][:, 2] = gts[-1][:, 0] + rng.integers(3, 10, 2)
        gts[-1][:, 3] = gts[-1][:, 1] + rng.integers(3, 9, 2)
    taus = metrics.thresholds(0.05)
    all_ious = np.array([metrics.iou_curve_all_components(m, g, taus) for m, g in zip(maps, gts)])
    largest = np.array([metrics.iou_curve(m, g, taus) for m, g in zip(maps, gts)])
    assert (all_ious >= largest - 1e-12).all()          # the largest component's box is one of them
    v2 = metrics.max_box_acc_v2(all_ious)
    assert v2["max_box_acc_v2"] == pytest.approx(naive_max_box_acc_v2(maps, gts, taus), abs=1e-12)
    assert [p["iou_threshold"] for p in v2["per_iou"]] == [0.3, 0.5, 0.7]
    assert v2["per_iou"][0]["max_box_acc"] >= v2["per_iou"][1]["max_box_acc"] >= v2["per_iou"][2]["max_box_acc"]


def test_component_boxes_and_pairwise_iou():
    mask = np.zeros((10, 12), bool)
    mask[1:3, 1:3] = True
    mask[5:9, 6:11] = True
    mask[4, 5] = True                 # diagonal neighbour of the second block
    assert sorted(map(tuple, metrics.component_boxes(mask))) == sorted(naive_components(mask))
    assert metrics.component_boxes(np.zeros((3, 3), bool)).shape == (0, 4)
    a = np.array([[0, 0, 10, 10], [5, 0, 15, 10]])
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20]])
    np.testing.assert_allclose(metrics.pairwise_iou(a, b),
                               [[metrics.box_iou(x, y) for y in b] for x in a], atol=1e-15)


# =========================================================================== dataset readers
def test_cub_reader_splits_and_order(tmp_path, red_scenes):
    images, boxes = red_scenes
    root = write_cub(tmp_path / "cub", images[:4], boxes[:4], split=[1, 0, 0, 1])
    auto = load_cub(root, "red.n.01")
    assert auto.info["split"] == "test" and [s.key for s in auto.samples] == ["2", "3"]
    assert [s.key for s in load_cub(root, split="train").samples] == ["1", "4"]
    everything = load_cub(root, split="all", n=3)
    assert [s.key for s in everything.samples] == ["1", "2", "3"]
    x0, y0, x1, y1 = boxes[0]
    np.testing.assert_allclose(everything.samples[0].boxes, [[x0, y0, x1, y1]])
    assert everything.samples[0].image_path == root / "images" / "001.Thing" / "thing_001.png"
    assert everything.samples[0].concept == "bird.n.01"


def test_cub_reader_errors(tmp_path, red_scenes):
    with pytest.raises(UsageError, match="images.txt"):
        load_cub(tmp_path)
    images, boxes = red_scenes
    root = write_cub(tmp_path / "cub", images[:2], boxes[:2])
    assert load_cub(root).info["split"] == "all"   # no train_test_split.txt
    with pytest.raises(UsageError, match="train_test_split"):
        load_cub(root, split="test")
    (root / "bounding_boxes.txt").write_text("1 1 2 3\n")
    with pytest.raises(UsageError, match=r"bounding_boxes.txt:1"):
        load_cub(root)
    (root / "bounding_boxes.txt").write_text("1 1 2 3 4\n")
    with pytest.raises(UsageError, match="no box for image 2"):
        load_cub(root)


def write_coco(root: Path, rng, n_images: int = 4) -> tuple[Path, Path]:
    """Images each with a red and a blue object in different quadrants; plus a crowd box and a distractor."""
    img_dir = root / "val"
    img_dir.mkdir(parents=True)
    images, anns = [], []
    for i in range(n_images):
        red, blue = object_box(i, rng), object_box(i + 1, rng, corner=i + 2)
        name = f"{1000 + i:012d}.png"
        Image.fromarray(scene(rng, [(red, "red"), (blue, "blue")])).save(img_dir / name)
        images.append({"id": 1000 + i, "file_name": name, "width": W, "height": H})
        for cat, (x0, y0, x1, y1) in ((1, red), (2, blue)):
            anns.append({"id": len(anns) + 1, "image_id": 1000 + i, "category_id": cat, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0]})
    anns.append({"id": 999, "image_id": 1000, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 96, 72]})
    anns.append({"id": 998, "image_id": 1001, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 5, 5]})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "red thing"}, {"id": 2, "name": "blue thing"}, {"id": 3, "name": "ghost"}]}
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, img_dir


def test_category_map_parsing(tmp_path):
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"red thing": "red.n.01"}))
    assert parse_category_map([str(f), "blue thing=blue.n.01"]) == {"red thing": "red.n.01", "blue thing": "blue.n.01"}
    for bad in ("nonsense", "=dog.n.01"):
        with pytest.raises(UsageError, match="category-map"):
            parse_category_map([bad])
    f.write_text("[1, 2]")
    with pytest.raises(UsageError, match="JSON object"):
        parse_category_map([str(f)])


def test_coco_reader(tmp_path):
    ann, img_dir = write_coco(tmp_path, np.random.default_rng(0))
    data = load_coco(ann, img_dir, {"red thing": "red.n.01", "blue thing": "blue.n.01"})
    assert len(data.samples) == 8 and data.info["images"] == 4 and data.info["crowd_annotations_skipped"] == 1
    first = data.samples[0]
    assert first.key == "1000:red thing" and first.concept == "red.n.01" and first.boxes.shape == (1, 4)
    assert (first.width, first.height) == (W, H)
    assert data.concepts == ["blue.n.01", "red.n.01"]
    assert len(load_coco(ann, img_dir, {"blue thing": "blue.n.01"}, n=2).samples) == 2
    with pytest.raises(UsageError, match="did you mean: red thing"):
        load_coco(ann, img_dir, {"red thin": "red.n.01"})
    with pytest.raises(UsageError, match="--category-map"):
        load_coco(ann, img_dir, {})
    with pytest.raises(UsageError, match="--images"):
        load_wsol_dataset(ann)


def test_imagenet_folders(tmp_path):
    for d in ("n00000001", "n00000002", "notes", "n123"):
        (tmp_path / d).mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "n00000001" / f"{i}.png")
    (tmp_path / "n00000001" / "readme.txt").write_text("x")
    classes, ignored = imagenet_classes(tmp_path, per_class=2)
    assert list(classes) == ["n00000001", "n00000002"] and ignored == ["n123", "notes"]
    assert [p.name for p in classes["n00000001"]] == ["0.png", "1.png"]
    assert offset_to_wnid(1530575) == "n01530575"
    with pytest.raises(UsageError, match="WordNet id"):
        imagenet_classes(tmp_path / "notes")


# =========================================================================== WSOL on the toy encoder
def test_wsol_toy_cub_localises_red_objects(tmp_path, red_scenes, toy_convis):
    images, boxes = red_scenes
    root = write_cub(tmp_path / "cub", images, boxes)
    report = evaluate_wsol(load_cub(root, "red.n.01"), toy_convis)
    assert report.n == 8 and report.failures == []
    assert report.max_box_acc >= 0.8
    assert 0.0 < report.best_tau < 1.0
    assert report.accuracy[0] == 0.0            # tau = 0 boxes the whole image
    assert report.best_tau == report.taus[int(np.argmax(report.accuracy))]
    payload = report.as_dict()
    assert len(payload["per_tau"]) == 100 and payload["max_box_acc"] == report.max_box_acc
    # MaxBoxAccV2: all components' boxes, so at IoU 0.5 never below MaxBoxAcc's curve.
    assert 0.0 <= payload["max_box_acc_v2"] <= 1.0 and report.max_box_acc_v2 == payload["max_box_acc_v2"]
    assert [p["iou_threshold"] for p in payload["max_box_acc_v2_per_iou"]] == [0.3, 0.5, 0.7]
    assert all(r["v2_box_acc_iou50"] >= r["box_acc"] for r in payload["per_tau"])
    json.dumps(payload)


def test_wsol_controls_score_low(tmp_path, red_scenes, toy_convis):
    images, boxes = red_scenes[0][:4], red_scenes[1][:4]   # one object per quadrant
    # Boxes given to the wrong images (each object sits in another quadrant), and boxes moved away.
    shuffled = write_cub(tmp_path / "shuffled", images, boxes[1:] + boxes[:1])
    assert evaluate_wsol(load_cub(shuffled, "red.n.01"), toy_convis).max_box_acc <= 0.25
    moved = [((x0 + 40) % 60, y0, (x0 + 40) % 60 + (x1 - x0), y1) for x0, y0, x1, y1 in boxes]
    moved_root = write_cub(tmp_path / "moved", images, moved)
    assert evaluate_wsol(load_cub(moved_root, "red.n.01"), toy_convis).max_box_acc <= 0.25
    # Asking for the wrong concept: there is nothing blue, the maps carry no location.
    assert evaluate_wsol(load_cub(write_cub(tmp_path / "blue", images, boxes), "blue.n.01"),
                         toy_convis).max_box_acc <= 0.25


def test_wsol_unreadable_images_are_listed_not_fatal(tmp_path, red_scenes, toy_convis):
    images, boxes = red_scenes
    root = write_cub(tmp_path / "cub", images[:3], boxes[:3])
    (root / "images" / "001.Thing" / "thing_002.png").write_bytes(b"not a png")
    report = evaluate_wsol(load_cub(root, "red.n.01"), toy_convis)
    assert report.n == 2 and len(report.failures) == 1 and report.failures[0]["key"] == "2"
    for i in (1, 3):
        (root / "images" / "001.Thing" / f"thing_{i:03d}.png").unlink()
    with pytest.raises(UsageError, match="could be evaluated"):
        evaluate_wsol(load_cub(root, "red.n.01"), toy_convis)


def test_wsol_toy_coco_per_category(tmp_path, toy_convis):
    ann, img_dir = write_coco(tmp_path, np.random.default_rng(3))
    report = evaluate_wsol(load_coco(ann, img_dir, {"red thing": "red.n.01", "blue thing": "blue.n.01"}), toy_convis)
    assert report.n == 8 and report.max_box_acc >= 0.8
    per = report.per_concept()
    assert set(per) == {"red.n.01", "blue.n.01"} and all(v["max_box_acc"] >= 0.8 for v in per.values())
    # One encoding per image although each image answers two concepts.
    assert toy_convis.encoded == 4
    # Swapped synsets: red boxes judged against the blue map and vice versa.
    swapped = evaluate_wsol(load_coco(ann, img_dir, {"red thing": "blue.n.01", "blue thing": "red.n.01"}), toy_convis)
    assert swapped.max_box_acc <= 0.25


def test_wsol_rejects_size_mismatch(tmp_path, toy_convis):
    ann, img_dir = write_coco(tmp_path, np.random.default_rng(4), n_images=1)
    data = json.loads(ann.read_text())
    data["images"][0]["width"] = 200
    ann.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="could be evaluated.*annotated 200x72"):
        evaluate_wsol(load_coco(ann, img_dir, {"red thing": "red.n.01"}), toy_convis)


# =========================================================================== OOD on the toy encoder
def write_class(folder: Path, rng, colour: str, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        box = object_box(i, rng, corner=int(rng.integers(0, 4)))
        Image.fromarray(scene(rng, [(box, colour)])).save(folder / f"{i:03d}.png")


RED_WNID, BLUE_WNID, OTHER_WNID = "n00000001", "n00000002", "n00000003"
TOY_LABELS = {RED_WNID: ("in", "red.n.01"), BLUE_WNID: ("out", "blue.n.01"), OTHER_WNID: (None, "other.n.01")}


def _toy_ood_folders(tmp_path, seed: int = 11, n_train: int = 6, n_test: int = 5):
    rng = np.random.default_rng(seed)
    write_class(tmp_path / "train" / RED_WNID, rng, "red", n_train)
    write_class(tmp_path / "train" / BLUE_WNID, rng, "blue", 2)     # not in-distribution: not a reference
    for wnid, colour in ((RED_WNID, "red"), (BLUE_WNID, "blue"), (OTHER_WNID, "blue")):
        write_class(tmp_path / "test" / wnid, rng, colour, n_test)
    train, _ = imagenet_classes(tmp_path / "train")
    test, _ = imagenet_classes(tmp_path / "test")
    return train, test


def test_ood_toy_colour_separable(tmp_path, toy_convis):
    train, test = _toy_ood_folders(tmp_path)
    report = evaluate_ood(toy_convis, "red.n.01", train, test, TOY_LABELS.__getitem__, negative="blue.n.01")
    out = report.as_dict()
    assert out["n_train"] == 6 and out["n_test_in"] == 5 and out["n_test_out"] == 5
    assert {c["wnid"]: c["label"] for c in out["classes"]} == {RED_WNID: "in", BLUE_WNID: "out", OTHER_WNID: "ignored"}
    # One in-distribution class: no linear probe (it needs two).
    assert set(out["auroc"]) == set(SCORES) - {"mls_linear_probe"} and set(out["table_i"]) == set(TABLE_I)
    for name, value in out["auroc"].items():
        # The toy's whole-image embeddings take two or three values per class: too few distinct
        # points for a forest to rank (isolation_forest_scores is tested on clusters below), so its
        # AUROC here is only checked to be one.
        if name == "isolation_forest":
            assert 0.0 <= value <= 1.0, value
        else:
            assert value >= 0.9, (name, value)
    rows = {r["score"]: r for r in out["scores"]}
    assert rows["max_rank_sim"]["mean_in"] > rows["max_rank_sim"]["mean_out"]
    assert [r["score"] for r in out["scores"] if r["table_i"]] == list(TABLE_I)
    assert out["protocol"]["mls_classes"] == [{"wnid": RED_WNID, "synset": "red.n.01", "name": "red"}]
    assert out["protocol"]["isolation_forest"]["fit_on"] == 6
    json.dumps(out)


def test_ood_scores_equal_their_definitions(tmp_path, toy_convis, toy_engine):
    """Every column recomputed here from its definition, straight from the toy model and definitions."""
    from sklearn.ensemble import IsolationForest

    train, test = _toy_ood_folders(tmp_path, seed=5, n_train=4, n_test=3)
    prompts = ("a photo of a {}.", "a red-free drawing of the {}")
    report = evaluate_ood(toy_convis, "red.n.01", train, test, TOY_LABELS.__getitem__, negative="blue.n.01",
                          prompts=prompts, seed=3)
    model, defs = toy_engine.model, toy_definitions()
    ref = np.stack([image_embedding(model, read_image(p).pixels) for p in train[RED_WNID]])
    forest = IsolationForest(n_estimators=100, random_state=3).fit(ref)
    texts = model.encode_text([p.format("red") for p in prompts])
    class_emb = texts.mean(0) / np.linalg.norm(texts.mean(0))
    n = len(defs)
    for item in report.items:
        decoded = read_image(item.path)
        x = image_embedding(model, decoded.pixels)
        z = defs.astype(np.float64) @ x.astype(np.float64)
        # rank_sim(x, s) = |{s' : z(x, s') < z(x, s)}| / |T|; red.n.01's only descendant is itself.
        rank = sum(1 for v in z if v < z[RED]) / n
        assert item.scores["rank_sim"] == pytest.approx(rank, abs=1e-12)
        assert item.scores["max_rank_sim"] == item.scores["rank_sim"]
        assert item.scores["mls"] == pytest.approx(100.0 * float(class_emb @ x), rel=1e-5)
        assert item.scores["isolation_forest"] == pytest.approx(float(forest.score_samples(x[None])[0]), rel=1e-6)
        assert item.scores["clip_image_baseline"] == pytest.approx(float((ref @ x).max()), rel=1e-6)
        # The map columns are the peaks of the saliency maps, as stored by ingest.
        assert item.scores["map_max_rank_sim"] == pytest.approx(toy_convis.saliency(decoded, "red.n.01").max())


def test_isolation_forest_separates_clusters():
    from convis_db.evaluation.ood import isolation_forest_scores

    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    reference = centre + 0.1 * rng.normal(size=(200, 16))
    inside, outside = centre + 0.1 * rng.normal(size=(30, 16)), centre + 1.0 + 0.1 * rng.normal(size=(30, 16))
    scores = isolation_forest_scores(reference, np.vstack([inside, outside]), seed=1)
    assert metrics.auroc(scores[:30], scores[30:]) >= 0.95
    np.testing.assert_array_equal(scores, isolation_forest_scores(reference, np.vstack([inside, outside]), seed=1))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_probe_mls_is_the_max_logit(n_classes):
    from sklearn.linear_model import LogisticRegression

    from convis_db.evaluation.ood import linear_probe_mls

    rng = np.random.default_rng(n_classes)
    centres = 3 * rng.normal(size=(n_classes + 1, 8))        # the last centre is out-of-distribution
    reference = np.vstack([c + rng.normal(size=(40, 8)) for c in centres[:-1]])
    labels = [f"c{i}" for i in range(n_classes) for _ in range(40)]
    test = np.vstack([centres[0] + rng.normal(size=(20, 8)), centres[-1] + rng.normal(size=(20, 8))])
    mls = linear_probe_mls(reference, labels, test)
    probs = LogisticRegression(max_iter=2000, random_state=0).fit(reference, labels).predict_proba(test)
    if n_classes == 2:   # the symmetric logits (-d/2, d/2): their softmax is scikit-learn's probability
        np.testing.assert_allclose(1 / (1 + np.exp(-2 * mls)), probs.max(axis=1), rtol=1e-9)
    else:
        assert mls.shape == (40,)
    assert linear_probe_mls(reference, ["c0"] * len(reference), test) is None


def test_ood_without_maps_and_prompt_checks(tmp_path, toy_convis):
    train, test = _toy_ood_folders(tmp_path, seed=8, n_train=3, n_test=2)
    encoded = toy_convis.encoded
    report = evaluate_ood(toy_convis, "red.n.01", train, test, TOY_LABELS.__getitem__, map_scores=False)
    assert toy_convis.encoded == encoded          # no window was encoded
    assert set(report.auroc) == set(SCORES) - set(MAP_SCORES) - {"mls_linear_probe"}
    assert check_prompts([]) == ("a photo of a {}.",)
    for bad in ("a photo of a dog", "a {} of a {}", "a {name}", "a {} {"):
        with pytest.raises(UsageError, match="exactly one"):
            check_prompts([bad])
    emb = zero_shot_classifier(toy_convis.engine.model, ["red", "blue"], ("a {}", "the {} one"))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)


def test_ood_identical_groups_give_one_half(tmp_path, toy_convis):
    rng = np.random.default_rng(12)
    write_class(tmp_path / "train" / RED_WNID, rng, "red", 2)
    write_class(tmp_path / "test" / RED_WNID, rng, "red", 3)
    shutil.copytree(tmp_path / "test" / RED_WNID, tmp_path / "test" / BLUE_WNID)   # "OOD" = the same images
    train, _ = imagenet_classes(tmp_path / "train")
    test, _ = imagenet_classes(tmp_path / "test")
    report = evaluate_ood(toy_convis, "red.n.01", train, test, TOY_LABELS.__getitem__)
    assert report.auroc == {name: 0.5 for name in SCORES if name != "mls_linear_probe"}


def test_ood_needs_both_groups_and_a_reference(tmp_path, toy_convis):
    rng = np.random.default_rng(13)
    write_class(tmp_path / "train" / BLUE_WNID, rng, "blue", 1)
    write_class(tmp_path / "test" / RED_WNID, rng, "red", 1)
    train, _ = imagenet_classes(tmp_path / "train")
    test, _ = imagenet_classes(tmp_path / "test")
    with pytest.raises(UsageError, match="no training image is in-distribution"):
        evaluate_ood(toy_convis, "red.n.01", train, test, TOY_LABELS.__getitem__)
    with pytest.raises(UsageError, match="out-of-distribution"):
        evaluate_ood(toy_convis, "red.n.01", test, test, TOY_LABELS.__getitem__)


def test_image_embedding_is_clip_preprocessing(toy_engine):
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, 15:45, 0] = 255          # a red square in the centre, blue bands at the sides
    pixels[:, :15, 2] = pixels[:, 45:, 2] = 255
    emb = image_embedding(toy_engine.model, pixels)
    assert emb.shape == (3,) and np.linalg.norm(emb) == pytest.approx(1.0)
    assert emb[RED] > 0.9 and emb[BLUE] < 0.1   # the centre crop keeps the red square only


# =========================================================================== with a real (tiny) database
EVAL_WORDS = ["bird", "dog", "hunting_dog", "cat"]   # the default (reference) T looks words up raw


@pytest.fixture(scope="module")
def eval_db(tmp_path_factory, tiny_spec) -> Path:
    """bird/dog/hunting dog/cat with the tiny model, and one ingested image that fixes light settings."""
    from convis_db.ingest import Ingestor
    from convis_db.init_db import initialise

    folder = tmp_path_factory.mktemp("evaldb")
    words = folder / "words.txt"
    words.write_text("\n".join(EVAL_WORDS) + "\n")
    db = folder / "eval.duckdb"
    initialise(db, str(words), tiny_spec, CPU)
    seed_image = folder / "seed.png"
    Image.fromarray(scene(np.random.default_rng(0), [((10, 10, 40, 40), "red")])).save(seed_image)
    with Ingestor(db, device=CPU, settings=Settings(max_pixels=16384, stride=32, small=64, large=128)) as ing:
        assert ing.run([seed_image]).summary()["ingested"] == 1
    return db


def _offset(db: Path, name: str) -> int:
    from convis_db.store.db import connect  # the same configuration as the test's open connection

    con = connect(db)
    try:
        return con.execute("SELECT wn_offset FROM synsets WHERE name = ?", [name]).fetchone()[0]
    finally:
        con.close()


def test_wordnet_labeller(eval_db, wn):
    beagle = offset_to_wnid(wn.synset("beagle.n.01").offset())   # a hunting dog that is not in T
    con = convis_db.open(eval_db, device="cpu")
    try:
        labeller = WordNetLabeller(con, "bird.n.01", "hunting_dog.n.01")
        assert labeller(offset_to_wnid(_offset(eval_db, "bird.n.01"))) == ("in", "bird.n.01")
        assert labeller(offset_to_wnid(_offset(eval_db, "hunting_dog.n.01"))) == ("out", "hunting_dog.n.01")
        assert labeller(beagle) == ("out", "beagle.n.01")
        assert labeller(offset_to_wnid(_offset(eval_db, "cat.n.01"))) == (None, "cat.n.01")
        assert labeller("n99999999") == (None, None)
        assert WordNetLabeller(con, "bird.n.01")(offset_to_wnid(_offset(eval_db, "cat.n.01"))) == ("out", "cat.n.01")
        with pytest.raises(NotFoundError, match="not a WordNet noun synset"):
            WordNetLabeller(con, "bird.n.01", "hunting_dogg.n.01")
    finally:
        con.close()


def test_database_convis_reuses_stored_windows(eval_db):
    import convis_db
    from convis_db.evaluation.explainers import convis_for_database

    seed = eval_db.parent / "seed.png"
    with convis_db.open(eval_db, device="cpu") as db:
        explainer = convis_for_database(db)
        decoded = read_image(seed)
        saliency = explainer.saliency(decoded, "bird.n.01")
        assert explainer.reused == 1 and explainer.encoded == 0
        np.testing.assert_array_equal(saliency, db.map(seed, "bird.n.01").values)
        other = read_image(eval_db.parent / "seed.png")
        other.sha256 = "0" * 64     # the same pixels as a new file: encoded with the stored profile
        np.testing.assert_allclose(explainer.saliency(other, "bird.n.01"), saliency, atol=1e-6)
        assert explainer.encoded == 1
        assert explainer.maps is db.map_service()   # eval's maps come from the database's one map service


def _json(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_cli_eval_wsol_cub_both_methods(run_cli, eval_db, tmp_path, red_scenes):
    images, boxes = red_scenes
    root = write_cub(tmp_path / "cub", images[:3], boxes[:3], split=[0, 1, 0], suffix=".jpg")
    out = _json(run_cli("-q", "--db", eval_db, "eval", "wsol", root, "--json"))
    assert out["dataset"] == "cub" and out["split"] == "test" and out["n"] == 2
    assert out["method"] == "convis (max_rank_sim)" and out["concept"] == "bird.n.01"
    assert len(out["per_tau"]) == 100 and 0 <= out["max_box_acc"] <= 1 and 0 <= out["max_box_acc_v2"] <= 1
    assert out["best_tau"] in [r["tau"] for r in out["per_tau"]]
    assert max(r["box_acc"] for r in out["per_tau"]) == out["max_box_acc"]

    ge = _json(run_cli("-q", "--db", eval_db, "eval", "wsol", root, "--method", "grad-eclip", "--text",
                       "a photo of a bird", "--n", "1", "--tau-step", "0.1", "--json"))
    assert ge["method"] == "grad-eclip (text: 'a photo of a bird')" and ge["n"] == 1 and len(ge["per_tau"]) == 10

    text = run_cli("-q", "--db", eval_db, "eval", "wsol", root, "--only-self", "--split", "all")
    assert text.exit_code == 0, text.stderr
    assert text.stdout.startswith("MaxBoxAcc ") and "rank_sim of the synset alone" in text.stdout
    assert "<- best" in text.stdout and "\nMaxBoxAccV2 " in text.stdout and "v2@50" in text.stdout


def test_cli_eval_wsol_coco(run_cli, eval_db, tmp_path):
    ann, img_dir = write_coco(tmp_path, np.random.default_rng(5), n_images=2)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"red thing": "bird.n.01"}))
    out = _json(run_cli("-q", "--db", eval_db, "eval", "wsol", ann, "--images", img_dir, "--category-map", mapping,
                        "--category-map", "blue thing=cat.n.01", "--json"))
    assert out["dataset"] == "coco" and out["n"] == 4 and set(out["per_concept"]) == {"bird.n.01", "cat.n.01"}
    assert out["crowd_annotations_skipped"] == 1


@pytest.mark.parametrize("args, message", [
    (["--method", "convis", "--text", "x"], "--text"),
    (["--method", "grad-eclip", "--only-self"], "--only-self"),
    (["--concept", "birdd.n.01"], "did you mean"),
])
def test_cli_eval_wsol_usage_errors(run_cli, eval_db, tmp_path, red_scenes, args, message):
    images, boxes = red_scenes
    root = write_cub(tmp_path / "cub", images[:1], boxes[:1])
    result = run_cli("-q", "--db", eval_db, "eval", "wsol", root, *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_cli_eval_ood(run_cli, eval_db, tmp_path, wn):
    rng = np.random.default_rng(21)
    bird = offset_to_wnid(_offset(eval_db, "bird.n.01"))
    hunting = offset_to_wnid(_offset(eval_db, "hunting_dog.n.01"))
    beagle = offset_to_wnid(wn.synset("beagle.n.01").offset())
    cat = offset_to_wnid(_offset(eval_db, "cat.n.01"))
    write_class(tmp_path / "train" / bird, rng, "red", 2)
    for wnid, colour, n in ((bird, "red", 2), (hunting, "blue", 1), (beagle, "blue", 1), (cat, "blue", 1)):
        write_class(tmp_path / "test" / wnid, rng, colour, n)
    (tmp_path / "test" / "README").mkdir()
    scores = tmp_path / "scores.csv"
    out = _json(run_cli("-q", "--db", eval_db, "eval", "ood", "--train", tmp_path / "train", "--test",
                        tmp_path / "test", "--positive", "bird.n.01", "--negative", "hunting_dog.n.01",
                        "--scores", scores, "--json"))
    assert out["n_train"] == 2 and out["n_test_in"] == 2 and out["n_test_out"] == 2
    assert set(out["auroc"]) == set(SCORES) - {"mls_linear_probe"} and list(out["table_i"]) == list(TABLE_I)
    assert all(0 <= v <= 1 for v in out["auroc"].values())
    assert out["protocol"]["mls_classes"] == [{"wnid": bird, "synset": "bird.n.01", "name": "bird"}]
    labels = {c["wnid"]: c["label"] for c in out["classes"]}
    assert labels == {bird: "in", hunting: "out", beagle: "out", cat: "ignored"}
    assert out["ignored_folders"] == ["test/README"]
    with open(scores, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["label"] for r in rows} == {"in", "out"} and set(out["auroc"]) <= set(rows[0])

    text = run_cli("-q", "--db", eval_db, "eval", "ood", "--train", tmp_path / "train", "--test", tmp_path / "test",
                   "--positive", "bird.n.01", "--no-maps", "--prompt", "a photo of a {}.", "--prompt", "a {}")
    assert text.exit_code == 0, text.stderr
    assert "out = every other class" in text.stdout and "Table I" in text.stdout
    for name in (*TABLE_I, "clip_image_baseline"):
        assert name in text.stdout
    assert "map_max_rank_sim" not in text.stdout and "'a {}'" in text.stdout

    bad_prompt = run_cli("-q", "--db", eval_db, "eval", "ood", "--train", tmp_path / "train", "--test",
                         tmp_path / "test", "--positive", "bird.n.01", "--prompt", "a bird")
    assert bad_prompt.exit_code == 2 and "exactly one" in bad_prompt.stderr

    bad = run_cli("-q", "--db", eval_db, "eval", "ood", "--train", tmp_path / "train", "--test", tmp_path / "test",
                  "--positive", "cat.n.01", "--negative", "bird.n.01")
    assert bad.exit_code == 2 and "no training image is in-distribution" in bad.stderr


def test_row_dots_give_equal_rows_equal_scores_wherever_they_stand():
    """The OOD scores' products (ood.row_dots): a copy of a row scores exactly as the row does at any
    place in the matrix (a BLAS product need not), and the values are a @ b.T's."""
    from convis_db.evaluation.ood import row_dots

    rng = np.random.default_rng(3)
    b = rng.standard_normal((7, 96)).astype(np.float32)
    a = rng.standard_normal((45, 96)).astype(np.float32)
    a[[5, 17, 33, 44]] = a[2]
    got = row_dots(a, b)
    for i in (5, 17, 33, 44):
        assert np.array_equal(got[i], got[2])
    np.testing.assert_allclose(got, a @ b.T, rtol=1e-5, atol=1e-5)

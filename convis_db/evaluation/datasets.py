"""Readers of the evaluation layouts: CUB-200-2011, COCO instances, and ImageNet-style class folders.

Every malformed input is a UsageError naming the file, the line and the expected format.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convis_db.engine.images import IMAGE_SUFFIXES
from convis_db.errors import UsageError, did_you_mean
from convis_db.evaluation.metrics import xywh_to_box

log = logging.getLogger(__name__)

CUB_FILES = ("images.txt", "bounding_boxes.txt")
WNID = re.compile(r"^n(\d{8})$")


@dataclass
class WsolSample:
    """One localisation question: where is `concept` in the image? Boxes in original pixels, half-open."""

    key: str                      # CUB image id, or "<coco image id>:<category name>"
    image_path: Path
    concept: str                  # synset name whose map is evaluated
    boxes: np.ndarray             # (k, 4) float64 x0, y0, x1, y1
    width: int | None = None      # annotated size, when the format gives it (COCO)
    height: int | None = None
    category: str | None = None   # COCO category name


@dataclass
class WsolDataset:
    kind: str                     # "cub" or "coco"
    source: str
    samples: list[WsolSample]
    info: dict = field(default_factory=dict)

    @property
    def concepts(self) -> list[str]:
        return sorted({s.concept for s in self.samples})


# ------------------------------------------------------------------------------------ CUB
def is_cub_root(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in CUB_FILES)


def _read_id_lines(path: Path, n_fields: int, what: str) -> dict[str, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}.") from exc
    rows: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=n_fields - 1) if n_fields == 2 else line.split()
        if len(parts) != n_fields:
            raise UsageError(f"{path}:{lineno}: expected {what}, got {line.strip()!r}.")
        rows[parts[0]] = parts[1:]
    return rows


def load_cub(root: str | Path, concept: str = "bird.n.01", n: int | None = None, split: str = "auto") -> WsolDataset:
    """The CUB-200-2011 layout: images.txt ("id relpath"), bounding_boxes.txt ("id x y w h"),
    images/<relpath>, and optionally train_test_split.txt ("id is_training").

    split: test / train / all; auto = test when train_test_split.txt exists (Choe et al. evaluate
    on the 5,794 test images), else all. Images are taken in images.txt order; n keeps the first n.
    """
    root = Path(root)
    if not is_cub_root(root):
        missing = [f for f in CUB_FILES if not (root / f).is_file()]
        raise UsageError(f"{root} is not a CUB-200-2011 folder: missing {', '.join(missing)}. Expected images.txt "
                         "('id relative/path.jpg'), bounding_boxes.txt ('id x y w h') and an images/ folder.")
    images = _read_id_lines(root / "images.txt", 2, "'image_id relative/path.jpg'")
    raw_boxes = _read_id_lines(root / "bounding_boxes.txt", 5, "'image_id x y width height'")
    split_file = root / "train_test_split.txt"
    if split not in ("auto", "test", "train", "all"):
        raise UsageError(f"--split {split!r} is not one of auto, test, train, all.")
    chosen = split
    if split == "auto":
        chosen = "test" if split_file.is_file() else "all"
    keep: set[str] | None = None
    if chosen in ("test", "train"):
        if not split_file.is_file():
            raise UsageError(f"--split {chosen} needs {split_file} ('image_id is_training'); use --split all.")
        flags = _read_id_lines(split_file, 2, "'image_id is_training'")
        want = "1" if chosen == "train" else "0"
        keep = {i for i, (flag,) in flags.items() if flag.strip() == want}
    samples: list[WsolSample] = []
    for image_id, (rel,) in images.items():
        if keep is not None and image_id not in keep:
            continue
        if image_id not in raw_boxes:
            raise UsageError(f"{root / 'bounding_boxes.txt'} has no box for image {image_id} ({rel}).")
        try:
            x, y, w, h = (float(v) for v in raw_boxes[image_id])
        except ValueError as exc:
            raise UsageError(f"{root / 'bounding_boxes.txt'}: image {image_id}: box values must be numbers.") from exc
        samples.append(WsolSample(image_id, root / "images" / rel.strip(), concept,
                                  np.array([xywh_to_box(x, y, w, h)], dtype=np.float64)))
        if n is not None and len(samples) >= n:
            break
    if not samples:
        raise UsageError(f"{root}: no image in split {chosen!r}.")
    return WsolDataset("cub", str(root), samples, {"split": chosen, "concept": concept})


# ------------------------------------------------------------------------------------ COCO
def parse_category_map(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """--category-map values: JSON files ({"dog": "dog.n.01", ...}) and/or "name=synset" pairs, merged."""
    mapping: dict[str, str] = {}
    for value in values:
        path = Path(value).expanduser()
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UsageError(f"--category-map {value}: not a readable JSON file ({exc}).") from exc
            pairs_ok = isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
            if not pairs_ok:
                raise UsageError(f"--category-map {value}: expected a JSON object of category name -> synset name, "
                                 'e.g. {"dog": "dog.n.01"}.')
            mapping.update({k.strip(): v.strip() for k, v in data.items()})
        elif "=" in value:
            name, synset = value.rsplit("=", 1)
            if not name.strip() or not synset.strip():
                raise UsageError(f"--category-map {value!r}: expected name=synset, e.g. dog=dog.n.01.")
            mapping[name.strip()] = synset.strip()
        else:
            raise UsageError(f"--category-map {value!r}: neither a JSON file nor name=synset (e.g. dog=dog.n.01).")
    return mapping


def load_coco(annotations: str | Path, image_dir: str | Path, category_map: dict[str, str],
              n: int | None = None) -> WsolDataset:
    """COCO instances: one sample per (image, mapped category present in it), with every non-crowd box
    of that category as ground truth. Images in the file's order; n keeps the first n images that
    have at least one mapped category."""
    annotations, image_dir = Path(annotations), Path(image_dir)
    if not category_map:
        raise UsageError("COCO evaluation needs --category-map (name=synset pairs or a JSON file) naming which "
                         "categories to localise and the WordNet synset of each, e.g. --category-map dog=dog.n.01.")
    if not image_dir.is_dir():
        raise UsageError(f"--images {image_dir}: not a folder. Pass the folder holding the COCO images.")
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{annotations}: not a readable COCO annotation JSON ({exc}).") from exc
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise UsageError(f"{annotations}: not COCO instances format (needs 'images', 'annotations', 'categories').")
    by_name = {c["name"]: c["id"] for c in data["categories"]}
    for name in category_map:
        if name not in by_name:
            raise UsageError(did_you_mean(name, list(by_name), f"category in {annotations.name}",
                                          "Category names are those of the JSON's 'categories'."))
    wanted = {by_name[name]: name for name in category_map}
    boxes: dict[tuple, list] = {}
    crowd_only = 0
    for ann in data["annotations"]:
        cat = ann.get("category_id")
        if cat not in wanted:
            continue
        if ann.get("iscrowd", 0):
            crowd_only += 1
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{annotations}: annotation {ann.get('id')} has no valid bbox [x, y, w, h].") from exc
        if w <= 0 or h <= 0:
            continue
        boxes.setdefault((ann["image_id"], cat), []).append(xywh_to_box(x, y, w, h))
    samples: list[WsolSample] = []
    n_images = 0
    cats_in_order = sorted(wanted)
    for img in data["images"]:
        present = [c for c in cats_in_order if (img["id"], c) in boxes]
        if not present:
            continue
        n_images += 1
        for c in present:
            name = wanted[c]
            samples.append(WsolSample(f"{img['id']}:{name}", image_dir / img["file_name"], category_map[name],
                                      np.array(boxes[(img["id"], c)], dtype=np.float64),
                                      width=img.get("width"), height=img.get("height"), category=name))
        if n is not None and n_images >= n:
            break
    if not samples:
        raise UsageError(f"{annotations}: no image has a non-crowd box of {', '.join(category_map)}.")
    return WsolDataset("coco", str(annotations), samples,
                       {"images": n_images, "categories": dict(category_map), "crowd_annotations_skipped": crowd_only})


def load_wsol_dataset(dataset: str | Path, *, images: str | Path | None = None, concept: str = "bird.n.01",
                      category_map: dict[str, str] | None = None, n: int | None = None,
                      split: str = "auto") -> WsolDataset:
    """A CUB folder, or a COCO instances JSON (with `images`)."""
    path = Path(dataset)
    if path.is_dir():
        if images is not None or category_map:
            raise UsageError(f"{path} is a folder (CUB layout); --images and --category-map are for COCO JSON files.")
        return load_cub(path, concept, n, split)
    if path.is_file() and path.suffix.lower() == ".json":
        if images is None:
            raise UsageError(f"{path} is a COCO annotation file: pass the image folder with --images DIR.")
        return load_coco(path, images, category_map or {}, n)
    raise UsageError(f"{dataset}: expected a CUB-200-2011 folder (with images.txt, bounding_boxes.txt, images/) "
                     "or a COCO instances .json file.")


# ------------------------------------------------------------------------------------ ImageNet folders
def wnid_offset(wnid: str) -> int | None:
    m = WNID.match(wnid)
    return int(m.group(1)) if m else None


def offset_to_wnid(offset: int) -> str:
    return f"n{int(offset):08d}"


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def imagenet_classes(root: str | Path, per_class: int | None = None) -> tuple[dict[str, list[Path]], list[str]]:
    """{wnid: image files (sorted, the first per_class)} for subfolders named n########, and the names
    of other subfolders (ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder. Pass an ImageNet-style folder with one subfolder per class "
                         "named by WordNet id (n02084071, ...).")
    classes: dict[str, list[Path]] = {}
    ignored: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if wnid_offset(sub.name) is None:
            ignored.append(sub.name)
            continue
        files = image_files(sub)
        classes[sub.name] = files[:per_class] if per_class else files
    if not classes:
        raise UsageError(f"{root} has no class folders named by WordNet id ('n' + 8-digit noun offset, e.g. "
                         "n01530575).")
    return classes, ignored

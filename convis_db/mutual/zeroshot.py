"""The zero-shot prediction and the language encoder's side of the explanation.

Each label becomes a text embedding: every prompt template filled with the label, encoded, the unit
vectors averaged and re-normalised (one template is CLIP's plain prompt; several are CLIP's prompt
ensemble). The prediction is the label whose embedding is closest to the image embedding.

The language encoder's textual concepts are the bank entries that lie around the predicted class in
the joint space: the `language_topk` entries with the highest cosine to its text embedding (the
authors' "weight dissection" of the zero-shot classifier's row).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convis_db.errors import UsageError


#: At most this many zero-shot labels (ImageNet-21k has 21,843 classes): every label is encoded by the
#: text tower before anything is explained, so a longer list is refused at once instead of running for hours.
MAX_LABELS = 25_000
#: A labels file larger than this is refused before it is read (25,000 labels of 600 bytes fit).
MAX_LABELS_FILE_BYTES = 16 * 1024 * 1024
_LABELS_FORMATS = "one label per line, a JSON list of strings, or a JSON object whose keys are the labels"


def _read_labels_text(p: Path) -> str:
    """The text of a labels file, or a one-line UsageError: missing, too large, binary, not UTF-8."""
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise UsageError(f"{p}: is a folder; give a labels file ({_LABELS_FORMATS}).")
        if size > MAX_LABELS_FILE_BYTES:
            raise UsageError(f"{p}: {size:,} bytes is too large for a labels file (at most "
                             f"{MAX_LABELS_FILE_BYTES // (1024 * 1024)} MiB, {MAX_LABELS:,} labels).")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{p}: no such labels file.") from None
    except OSError as exc:
        raise UsageError(f"{p}: cannot read the labels file ({exc.strerror or exc}).") from None
    if b"\x00" in raw:
        raise UsageError(f"{p}: a binary file, not a labels file; give {_LABELS_FORMATS}.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{p}: not UTF-8 text (byte {exc.start}); save the labels file as UTF-8.") from None


def _load_json(p: Path, raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{p}: not valid JSON ({exc}); give {_LABELS_FORMATS}.") from None
    except RecursionError:
        raise UsageError(f"{p}: the JSON is nested too deeply; give {_LABELS_FORMATS}.") from None


def _check_count(labels: Sequence, source: str) -> None:
    if len(labels) > MAX_LABELS:
        raise UsageError(f"{source}: {len(labels):,} labels; at most {MAX_LABELS:,} can be classified at once "
                         "(each is encoded by the text tower first). Split the label set.")


def check_labels(labels: Sequence[str], source: str = "labels") -> list[str]:
    """Stripped, non-empty labels: at least two, at most MAX_LABELS, each listed once (UsageError otherwise)."""
    _check_count(labels, source)
    labels = [label.strip() for label in labels]
    labels = [label for label in labels if label]
    if len(labels) < 2:
        raise UsageError(f"{source}: zero-shot classification needs at least two labels (got {len(labels)}).")
    counts = Counter(labels)
    dupes = sorted(label for label, n in counts.items() if n > 1)
    if dupes:
        shown = ", ".join(dupes[:10]) + (f" and {len(dupes) - 10} more" if len(dupes) > 10 else "")
        raise UsageError(f"{source}: duplicate labels: {shown}. List each class once.")
    return labels


def parse_labels(text: str | None = None, path: str | None = None) -> list[str]:
    """Labels from a comma-separated string or a file (one per line, '#' comments; or a JSON list of
    strings / an object whose keys are the labels, e.g. the authors' descriptor file)."""
    if (text is None) == (path is None):
        raise UsageError("give the zero-shot classes with --labels \"a,b,c\" or --labels-file FILE (one of them).")
    if text is not None:
        return check_labels(text.split(","), "--labels")
    p = Path(path)
    raw = _read_labels_text(p)
    if p.suffix.lower() == ".json":
        data = _load_json(p, raw)
        if isinstance(data, dict):
            labels = list(data.keys())
        elif isinstance(data, list):
            _check_count(data, str(p))
            bad = next((i for i, x in enumerate(data) if not isinstance(x, str)), None)
            if bad is not None:
                raise UsageError(f"{p}: entry {bad + 1} is a {type(data[bad]).__name__}, not a label string; "
                                 f"give {_LABELS_FORMATS}.")
            labels = data
        else:
            raise UsageError(f"{p}: a JSON {type(data).__name__}; give {_LABELS_FORMATS}.")
    else:
        lines = raw.splitlines()
        _check_count(lines, str(p))
        labels = [line.split("#", 1)[0] for line in lines]
    return check_labels(labels, str(p))


def read_labels_file(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """(labels, {folder: label}). A JSON object of strings maps folder names to labels (ImageNet wnids
    to class names, say); anything else is read by parse_labels and folders are matched by name."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        data = _load_json(p, _read_labels_text(p))
        if isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values()):
            _check_count(data, str(p))
            labels = list(dict.fromkeys(data.values()))
            check_labels(labels, str(p))
            return labels, {str(k): v for k, v in data.items()}
    return parse_labels(None, str(p)), {}


def check_templates(templates: Sequence[str]) -> list[str]:
    out = [t for t in templates if t]
    if not out:
        raise UsageError("give at least one prompt template, such as 'a photo of a {}.'")
    for t in out:
        if t.count("{}") != 1:
            raise UsageError(f"prompt template {t!r} must contain '{{}}' exactly once (where the label goes).")
    return out


def class_embeddings(model, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(n_labels, E) float32: per label, the re-normalised mean of its prompts' unit text embeddings."""
    templates = check_templates(templates)
    prompts = [t.format(label) for label in labels for t in templates]
    emb = np.asarray(model.encode_text(prompts), dtype=np.float64).reshape(len(labels), len(templates), -1).mean(axis=1)
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def predict(image_embeddings: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted index per image, cosines (n_images, n_labels)); ties go to the first label."""
    cos = np.atleast_2d(image_embeddings).astype(np.float64) @ classes.astype(np.float64).T
    return np.argmax(cos, axis=1), cos


def language_concepts(class_embedding: np.ndarray, bank_embeddings: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The k bank entries closest (cosine) to the class's text embedding, best first, ties to the lower index."""
    cos = bank_embeddings.astype(np.float64) @ class_embedding.astype(np.float64)
    order = np.argsort(-cos, kind="stable")[: min(k, len(cos))]
    return [int(i) for i in order], [float(cos[i]) for i in order]

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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convis_db.errors import UsageError


def parse_labels(text: str | None = None, path: str | None = None) -> list[str]:
    """Labels from a comma-separated string or a file (one per line, '#' comments; or a JSON list /
    object whose keys are the labels, e.g. the authors' descriptor file)."""
    if (text is None) == (path is None):
        raise UsageError("give the zero-shot classes with --labels \"a,b,c\" or --labels-file FILE (one of them).")
    if text is not None:
        labels = [t.strip() for t in text.split(",")]
        source = "--labels"
    else:
        p = Path(path)
        try:
            raw = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{p}: cannot read the labels file ({exc.strerror or exc}).") from None
        source = str(p)
        if p.suffix.lower() == ".json":
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{p}: not valid JSON ({exc}); give a list of labels or a {{label: ...}} object.") from None
            labels = [str(x) for x in (data.keys() if isinstance(data, dict) else data)] if isinstance(data, (dict, list)) else []
        else:
            labels = [line.split("#", 1)[0].strip() for line in raw.splitlines()]
    labels = [label for label in labels if label]
    if len(labels) < 2:
        raise UsageError(f"{source}: zero-shot classification needs at least two labels (got {len(labels)}).")
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise UsageError(f"{source}: duplicate labels: {', '.join(dupes)}. List each class once.")
    return labels


def read_labels_file(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """(labels, {folder: label}). A JSON object of strings maps folder names to labels (ImageNet wnids
    to class names, say); anything else is read by parse_labels and folders are matched by name."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values()):
            labels = list(dict.fromkeys(data.values()))
            if len(labels) < 2:
                raise UsageError(f"{p}: zero-shot classification needs at least two labels (got {len(labels)}).")
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

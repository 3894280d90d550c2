"""Out-of-distribution detection with concept scores (the paper's Table I), on ImageNet-layout folders.

Protocol (all precise choices; docs/evaluation.md explains them):

* Classes are the subfolders named by WordNet id (n + 8-digit noun offset). A class is
  in-distribution (ID) when its synset is the --positive concept or one of its descendants (is-a,
  instance-of included), out-of-distribution (OOD) when it is the --negative concept or one of its
  descendants (or, without --negative, any class that is not ID). Classes under neither are ignored
  and listed. A class under both counts as ID.
* The reference set is the ID classes of --train; the test set is every ID and OOD image of --test.
* Three image-level scores, higher meaning "more in-distribution", each turned into an AUROC with
  the ID test images as positives:
  - max_rank_sim: the peak of the image's ConVis saliency map for the positive concept with
    max_rank_sim (the concept and all its descendants), i.e. the stored `image_scores.score`;
  - rank_sim: the same with rank_sim of the positive synset alone (`image_scores.self_score`);
  - clip_image_baseline: the largest cosine between the test image's whole-image CLIP embedding
    (short side resized to the model's input, centre crop) and those of the reference images.
  The ConVis scores use no training image: they are zero-shot through the definitions of T.
* AUROC is the Mann-Whitney statistic with ties counting one half.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convis_db.engine.images import read_image
from convis_db.errors import ConvisError, NotFoundError, UsageError
from convis_db.evaluation.datasets import wnid_offset
from convis_db.evaluation.explainers import ConVisExplainer, image_embedding
from convis_db.evaluation.metrics import auroc
from convis_db.progress import Progress, no_progress

log = logging.getLogger(__name__)

SCORES = ("max_rank_sim", "rank_sim", "clip_image_baseline")
IN, OUT = "in", "out"

#: wnid -> (label "in" / "out" / None for ignored, synset name or None when unknown)
Labeller = Callable[[str], tuple[str | None, str | None]]


@dataclass
class OodItem:
    path: str
    wnid: str
    label: str
    scores: dict[str, float]


@dataclass
class OodReport:
    positive: str
    negative: str | None
    n_train: int
    items: list[OodItem]
    classes: list[dict]
    ignored_folders: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def scores(self, name: str, label: str) -> np.ndarray:
        return np.array([i.scores[name] for i in self.items if i.label == label], dtype=np.float64)

    @property
    def auroc(self) -> dict[str, float]:
        return {name: auroc(self.scores(name, IN), self.scores(name, OUT)) for name in SCORES}

    def summary_rows(self) -> list[dict]:
        aucs = self.auroc
        return [{"score": name, "auroc": aucs[name], "mean_in": float(self.scores(name, IN).mean()),
                 "mean_out": float(self.scores(name, OUT).mean())} for name in SCORES]

    def as_dict(self) -> dict:
        return {
            "positive": self.positive, "negative": self.negative, "n_train": self.n_train,
            "n_test_in": int(sum(i.label == IN for i in self.items)),
            "n_test_out": int(sum(i.label == OUT for i in self.items)),
            "auroc": self.auroc, "scores": self.summary_rows(), "classes": self.classes,
            "ignored_folders": self.ignored_folders, "failures": self.failures,
        }


# ------------------------------------------------------------------------------------ labels
class WordNetLabeller:
    """Labels ImageNet class folders against a database's T, falling back on WordNet itself for
    classes whose synset is not in T (T holds every ancestor of its synsets, so a class in T has the
    same ancestors either way)."""

    def __init__(self, con, positive: str, negative: str | None = None):
        self.con = con
        self.positive = positive
        self.negative = negative
        self._wn = None
        for name in (positive, negative):
            if name is not None and not self._in_t(name):
                self._wordnet_synset(name)  # raises for a name that is no noun synset at all

    def _in_t(self, name: str) -> bool:
        return self.con.execute("SELECT 1 FROM synsets WHERE name = ?", [name]).fetchone() is not None

    @property
    def wn(self):
        if self._wn is None:
            from convis_db.wordnet.source import open_wordnet

            self._wn = open_wordnet()
        return self._wn

    def _wordnet_synset(self, name: str):
        from nltk.corpus.reader.wordnet import WordNetError

        try:
            return self.wn.synset(name)
        except (WordNetError, ValueError) as exc:
            raise NotFoundError(f"{name!r} is not a WordNet noun synset (e.g. bird.n.01, hunting_dog.n.01).") from exc

    def ancestors(self, offset: int) -> tuple[str | None, set[str]]:
        """(synset name, names of it and all its ancestors) of a noun offset; (None, empty) if unknown."""
        row = self.con.execute("SELECT synset_id, name FROM synsets WHERE wn_offset = ?", [offset]).fetchone()
        if row is not None:
            names = {r[0] for r in self.con.execute(
                "SELECT a.name FROM closure c JOIN synsets a ON a.synset_id = c.ancestor_id WHERE c.descendant_id = ?",
                [row[0]]).fetchall()}
            return row[1], names
        from nltk.corpus.reader.wordnet import WordNetError

        try:
            with warnings.catch_warnings():   # nltk warns, then returns None, for an unknown offset
                warnings.simplefilter("ignore", UserWarning)
                syn = self.wn.synset_from_pos_and_offset("n", offset)
        except (WordNetError, ValueError, KeyError):
            return None, set()
        if syn is None:
            return None, set()
        names = {syn.name()} | {s.name() for s in syn.closure(lambda s: s.hypernyms() + s.instance_hypernyms())}
        return syn.name(), names

    def __call__(self, wnid: str) -> tuple[str | None, str | None]:
        offset = wnid_offset(wnid)
        if offset is None:
            return None, None
        name, ancestors = self.ancestors(offset)
        if name is None:
            return None, None
        if self.positive in ancestors:
            return IN, name
        if self.negative is None or self.negative in ancestors:
            return OUT, name
        return None, name


# ------------------------------------------------------------------------------------ the experiment
def evaluate_ood(explainer: ConVisExplainer, positive: str, train: dict[str, list[Path]],
                 test: dict[str, list[Path]], labeller: Labeller, *, negative: str | None = None,
                 ignored_folders: list[str] | None = None, progress: Progress = no_progress) -> OodReport:
    """Score every test image three ways and collect labels; `report.auroc` gives Table I's numbers."""
    sid, ids = explainer.concept_ids(positive)
    labels = {wnid: labeller(wnid) for wnid in sorted(set(train) | set(test))}
    classes = [{"wnid": w, "synset": s, "label": lab or "ignored", "n_train": len(train.get(w, [])),
                "n_test": len(test.get(w, []))} for w, (lab, s) in labels.items()]
    reference = [p for w, paths in train.items() if labels[w][0] == IN for p in paths]
    if not reference:
        raise UsageError(f"no training image is in-distribution: no --train class folder is {positive} or under it. "
                         "Check --train and --positive.")
    tests = [(p, w, labels[w][0]) for w, paths in test.items() if labels[w][0] in (IN, OUT) for p in paths]
    for lab, what in ((IN, f"{positive} or under it"), (OUT, "out-of-distribution")):
        if not any(t[2] == lab for t in tests):
            raise UsageError(f"no --test class folder is {what}; AUROC needs both groups. Classes seen: "
                             + ", ".join(f"{c['wnid']} ({c['synset'] or 'unknown'}: {c['label']})" for c in classes))
    model = explainer.engine.model
    failures: list[dict] = []
    ref_emb = []
    with progress("OOD reference images", len(reference), "img") as tick:
        for path in reference:
            try:
                ref_emb.append(image_embedding(model, read_image(path).pixels))
            except ConvisError as exc:
                failures.append({"path": str(path), "reason": str(exc)})
            tick(1)
    if not ref_emb:
        raise UsageError(f"none of the {len(reference)} in-distribution training images could be read; "
                         f"first failure: {failures[0]['reason']}")
    ref = np.stack(ref_emb)
    items: list[OodItem] = []
    id_sets = [ids, np.array([sid])]
    with progress("OOD test images", len(tests), "img") as tick:
        for path, wnid, lab in tests:
            try:
                decoded = read_image(path)
                full, alone = explainer.maps(decoded, id_sets)
                emb = image_embedding(model, decoded.pixels)
            except ConvisError as exc:
                failures.append({"path": str(path), "reason": str(exc)})
                tick(1)
                continue
            items.append(OodItem(str(path), wnid, lab, {
                "max_rank_sim": float(full.max()), "rank_sim": float(alone.max()),
                "clip_image_baseline": float((ref @ emb).max())}))
            tick(1)
    return OodReport(positive, negative, len(ref_emb), items, classes, list(ignored_folders or []), failures)

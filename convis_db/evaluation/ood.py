"""Out-of-distribution detection with concept scores (the paper's Table I), on ImageNet-layout folders.

Protocol (all precise choices; docs/evaluation.md explains them):

* Classes are the subfolders named by WordNet id (n + 8-digit noun offset). A class is
  in-distribution (ID) when its synset is the --positive concept or one of its descendants (through
  T's is-a links: instance-of too when T is `extended`), out-of-distribution (OOD) when it is the
  --negative concept or one of its descendants (or, without --negative, any class that is not ID).
  Classes under neither are ignored and listed. A class under both counts as ID.
* The reference set is the ID classes of --train; the test set is every ID and OOD image of --test.
* Every score is image-level, higher meaning "more in-distribution", and turned into an AUROC with
  the ID test images as positives. Table I's four columns:
  - max_rank_sim: the paper's protocol: x = E_I(x), the whole-image CLIP embedding (short side
    resized to the model's input, centre crop; `image_embedding`), ranked against every synset of T
    with the engine's ranker; the max of rank_sim over the positive concept and its descendants
    (exact integer counts / |T|);
  - rank_sim: the same for the positive synset alone;
  - mls: the maximum zero-shot logit over the ID classes, logit_scale * cos(x, t_c), where t_c is
    the mean of the L2-normalised text embeddings of the prompts (default "a photo of a {}.")
    filled with the class synset's first lemma (underscores as spaces), re-normalised;
  - isolation_forest: scikit-learn's IsolationForest fit on the reference set's whole-image CLIP
    embeddings; the score is `score_samples` (higher = less anomalous).
  Extra columns: clip_image_baseline (the largest cosine to a reference image), mls_linear_probe
  (the maximum logit of a logistic regression trained on the reference embeddings over the ID
  classes, closer to the authors' supervised MLS; only with two or more ID training classes), and, unless
  map scores are turned off, map_max_rank_sim / map_rank_sim: the peak of the image's ConVis
  saliency map (what `image_scores.score` / `self_score` store).
  The ConVis scores and MLS use no training image; IsolationForest and the CLIP baseline do.
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

#: The columns of the paper's Table I, in its order of methods: ConVis's two, then the baselines.
TABLE_I = ("max_rank_sim", "rank_sim", "mls", "isolation_forest")
EXTRA = ("clip_image_baseline", "mls_linear_probe")
MAP_SCORES = ("map_max_rank_sim", "map_rank_sim")
SCORES = TABLE_I + EXTRA + MAP_SCORES
IN, OUT = "in", "out"
#: CLIP's zero-shot prompt; several prompts are averaged per class (prompt ensembling).
DEFAULT_PROMPTS = ("a photo of a {}.",)
#: The logit scale when a model has none to read (CLIP's trained value is 100).
DEFAULT_LOGIT_SCALE = 100.0

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
    score_names: tuple[str, ...] = SCORES
    protocol: dict = field(default_factory=dict)   # prompts, MLS classes, forest settings

    def scores(self, name: str, label: str) -> np.ndarray:
        return np.array([i.scores[name] for i in self.items if i.label == label], dtype=np.float64)

    @property
    def auroc(self) -> dict[str, float]:
        return {name: auroc(self.scores(name, IN), self.scores(name, OUT)) for name in self.score_names}

    def summary_rows(self) -> list[dict]:
        aucs = self.auroc
        return [{"score": name, "table_i": name in TABLE_I, "auroc": aucs[name],
                 "mean_in": float(self.scores(name, IN).mean()), "mean_out": float(self.scores(name, OUT).mean())}
                for name in self.score_names]

    def as_dict(self) -> dict:
        aucs = self.auroc
        return {
            "positive": self.positive, "negative": self.negative, "n_train": self.n_train,
            "n_test_in": int(sum(i.label == IN for i in self.items)),
            "n_test_out": int(sum(i.label == OUT for i in self.items)),
            "table_i": {name: aucs[name] for name in TABLE_I}, "auroc": aucs, "scores": self.summary_rows(),
            "protocol": self.protocol, "classes": self.classes,
            "ignored_folders": self.ignored_folders, "failures": self.failures,
        }


# ------------------------------------------------------------------------------------ labels
class WordNetLabeller:
    """Labels ImageNet class folders against a database's T, falling back on WordNet itself for
    classes whose synset is not in T (T holds every ancestor of its synsets, so a class in T has the
    same ancestors either way). `db`: a convis_db.Database (its hierarchy and SQL)."""

    def __init__(self, db, positive: str, negative: str | None = None):
        from convis_db.wordnet.hierarchy import EXTENDED, LEGACY_HIERARCHY

        self.db = db
        self.positive = positive
        self.negative = negative
        self._wn = None
        # Classes outside T climb WordNet the way T was built: instance links only in an extended T.
        self.follow_instances = db.stats().get("hierarchy", LEGACY_HIERARCHY) == EXTENDED
        for name in (positive, negative):
            if name is not None and not self._in_t(name):
                self._wordnet_synset(name)  # raises for a name that is no noun synset at all

    def _in_t(self, name: str) -> bool:
        return name in self.db.hierarchy.id_of

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
        rows = self.db.sql("SELECT synset_id, name FROM synsets WHERE wn_offset = ? LIMIT 1", [offset]).fetchall()
        row = rows[0] if rows else None
        if row is not None:
            h = self.db.hierarchy
            names = {row[1]} | {h.names[a] for a, _ in h.ancestors(row[0])}
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
        up = (lambda s: s.hypernyms() + s.instance_hypernyms()) if self.follow_instances else (lambda s: s.hypernyms())
        names = {syn.name()} | {s.name() for s in syn.closure(up)}
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


# ------------------------------------------------------------------------------------ baselines
def class_prompt_name(synset: str) -> str:
    """The class name put into the prompts: the synset's first lemma, underscores as spaces
    (nltk names a synset after its first lemma: 'hunting_dog.n.01' -> 'hunting dog')."""
    return synset.split(".")[0].replace("_", " ")


def check_prompts(prompts) -> tuple[str, ...]:
    prompts = tuple(prompts) or DEFAULT_PROMPTS
    for p in prompts:
        try:
            ok = p.count("{}") == 1 and p.format("x") is not None
        except (KeyError, IndexError, ValueError):   # other braces: '{name}', '{'
            ok = False
        if not ok:
            raise UsageError(f"--prompt {p!r} needs exactly one {{}} where the class name goes (and no other "
                             "braces), e.g. 'a photo of a {}.'.")
    return prompts


def zero_shot_classifier(model, names: list[str], prompts: tuple[str, ...]) -> np.ndarray:
    """(C, D) class embeddings: per class, the mean of the L2-normalised prompt embeddings, re-normalised
    (CLIP's prompt ensembling; one prompt gives its own embedding)."""
    texts = [p.format(name) for name in names for p in prompts]
    emb = np.asarray(model.encode_text(texts), dtype=np.float32).reshape(len(names), len(prompts), -1)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    mean = emb.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def logit_scale(model) -> float:
    """CLIP's learned temperature exp(t) (100 for the OpenAI models); a constant factor for AUROC."""
    try:
        return float(model.model.logit_scale.detach().exp())
    except AttributeError:
        return DEFAULT_LOGIT_SCALE


def isolation_forest_scores(reference: np.ndarray, test: np.ndarray, *, n_estimators: int = 100,
                            seed: int = 0) -> np.ndarray:
    """IsolationForest (scikit-learn) fit on the reference embeddings; `score_samples` of the test
    embeddings: the negated mean path-length anomaly score, higher = more like the reference set."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(reference)
    return forest.score_samples(test)


def row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b.T, computed once per distinct row of `a`, so that equal rows (two copies of one image) get
    equal entries wherever they stand. A BLAS matrix product sums a row in an order that depends on its
    place in the block (OpenBLAS's AVX-512 kernels do), which put two copies of one image a rounding
    apart and broke a tie the AUROC must see (identical groups score 0.5); the product itself stays
    BLAS's."""
    unique, inverse = np.unique(a, axis=0, return_inverse=True)
    return (unique @ b.T)[inverse.reshape(-1)]


def linear_probe_mls(reference: np.ndarray, labels: list[str], test: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """The maximum logit of a multinomial logistic regression (scikit-learn, L2, C=1) trained on the
    reference embeddings with their class labels; None with fewer than two classes. With two classes
    scikit-learn's single decision value d stands for the symmetric logits (-d/2, d/2), as the
    L2-penalised multinomial model's logits sum to zero."""
    if len(set(labels)) < 2:
        return None
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=2000, random_state=seed).fit(reference, labels)
    logits = probe.decision_function(test)
    if logits.ndim == 1:
        return np.abs(logits) / 2.0
    return logits.max(axis=1)


def image_rank_scores(explainer: ConVisExplainer, embeddings: np.ndarray, ids: np.ndarray,
                      sid: int) -> tuple[np.ndarray, np.ndarray]:
    """(max_rank_sim, rank_sim) of whole-image embeddings against every synset of T, by the engine's
    own ranking (integer counts of synsets with a smaller cosine, / |T|)."""
    mapper = explainer.engine.mapper
    sims = mapper.similarities(embeddings)
    full = sims.counts(np.asarray(ids)).cpu().numpy()
    alone = sims.counts(np.array([sid])).cpu().numpy()
    return full / mapper.n, alone / mapper.n


# ------------------------------------------------------------------------------------ the experiment
def evaluate_ood(explainer: ConVisExplainer, positive: str, train: dict[str, list[Path]],
                 test: dict[str, list[Path]], labeller: Labeller, *, negative: str | None = None,
                 ignored_folders: list[str] | None = None, progress: Progress = no_progress,
                 prompts: tuple[str, ...] = DEFAULT_PROMPTS, map_scores: bool = True, n_estimators: int = 100,
                 seed: int = 0) -> OodReport:
    """Score every test image with Table I's four scores and the extra ones; `report.auroc` gives
    the AUROCs. `map_scores=False` skips the map peaks (no window encoding: one encoder pass per
    image)."""
    prompts = check_prompts(prompts)
    sid, ids = explainer.concept_ids(positive)
    labels = {wnid: labeller(wnid) for wnid in sorted(set(train) | set(test))}
    classes = [{"wnid": w, "synset": s, "label": lab or "ignored", "n_train": len(train.get(w, [])),
                "n_test": len(test.get(w, []))} for w, (lab, s) in labels.items()]
    reference = [(p, w) for w, paths in train.items() if labels[w][0] == IN for p in paths]
    if not reference:
        raise UsageError(f"no training image is in-distribution: no --train class folder is {positive} or under it. "
                         "Check --train and --positive.")
    tests = [(p, w, labels[w][0]) for w, paths in test.items() if labels[w][0] in (IN, OUT) for p in paths]
    for lab, what in ((IN, f"{positive} or under it"), (OUT, "out-of-distribution")):
        if not any(t[2] == lab for t in tests):
            raise UsageError(f"no --test class folder is {what}; AUROC needs both groups. Classes seen: "
                             + ", ".join(f"{c['wnid']} ({c['synset'] or 'unknown'}: {c['label']})" for c in classes))
    model = explainer.engine.model
    id_classes = [(w, s) for w, (lab, s) in labels.items() if lab == IN and s]
    class_names = [class_prompt_name(s) for _, s in id_classes]
    classifier = zero_shot_classifier(model, class_names, prompts)
    scale = logit_scale(model)
    failures: list[dict] = []
    ref_emb, ref_labels = [], []
    with progress("OOD reference images", len(reference), "img") as tick:
        for path, wnid in reference:
            try:
                ref_emb.append(image_embedding(model, read_image(path).pixels))
                ref_labels.append(wnid)
            except ConvisError as exc:
                failures.append({"path": str(path), "reason": str(exc)})
            tick(1)
    if not ref_emb:
        raise UsageError(f"none of the {len(reference)} in-distribution training images could be read; "
                         f"first failure: {failures[0]['reason']}")
    ref = np.stack(ref_emb)
    kept: list[tuple[str, str, str]] = []
    test_emb, peaks = [], []
    id_sets = [ids, np.array([sid])]
    with progress("OOD test images", len(tests), "img") as tick:
        for path, wnid, lab in tests:
            try:
                decoded = read_image(path)
                emb = image_embedding(model, decoded.pixels)
                if map_scores:
                    full, alone = explainer.maps_of(decoded, id_sets)
                    peaks.append((float(full.max()), float(alone.max())))
            except ConvisError as exc:
                failures.append({"path": str(path), "reason": str(exc)})
                tick(1)
                continue
            kept.append((str(path), wnid, lab))
            test_emb.append(emb)
            tick(1)
    if not kept:
        raise UsageError(f"none of the {len(tests)} test images could be read; first failure: {failures[0]['reason']}")
    emb = np.stack(test_emb).astype(np.float32)
    max_rank, alone_rank = image_rank_scores(explainer, emb, ids, sid)
    columns = {
        "max_rank_sim": max_rank, "rank_sim": alone_rank,
        "mls": scale * row_dots(emb, classifier).max(axis=1),
        "isolation_forest": isolation_forest_scores(ref, emb, n_estimators=n_estimators, seed=seed),
        "clip_image_baseline": row_dots(emb, ref).max(axis=1),
    }
    probe = linear_probe_mls(ref, ref_labels, emb, seed)
    if probe is not None:
        columns["mls_linear_probe"] = probe
    if map_scores:
        columns["map_max_rank_sim"] = np.array([p[0] for p in peaks])
        columns["map_rank_sim"] = np.array([p[1] for p in peaks])
    names = tuple(n for n in SCORES if n in columns)
    items = [OodItem(path, wnid, lab, {n: float(columns[n][i]) for n in names})
             for i, (path, wnid, lab) in enumerate(kept)]
    protocol = {"prompts": list(prompts), "logit_scale": scale,
                "mls_classes": [{"wnid": w, "synset": s, "name": n} for (w, s), n in zip(id_classes, class_names)],
                "isolation_forest": {"n_estimators": n_estimators, "seed": seed, "fit_on": len(ref_emb)},
                "linear_probe_classes": len(set(ref_labels)),
                "map_scores": map_scores}
    return OodReport(positive, negative, len(ref_emb), items, classes, list(ignored_folders or []), failures,
                     names, protocol)

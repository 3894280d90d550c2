"""One image's mutual-knowledge explanation: the steps of the method put together.

1. zero-shot prediction over the labels (zeroshot.py);
2. visual concepts: the patch tokens decomposed into regions (patches.py, decompose.py);
3. each region embedded through a red-ellipse visual prompt and described by bank entries
   (prompts.py, textual.py);
4. the language side: bank entries around the predicted class (zeroshot.py);
5. mutual concepts = texts on both sides; MI, MI dynamics and AUC (information.py);
6. optionally Deletion / Insertion / AccDrop / AccInc (faithfulness.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from convis_db.mutual.bank import ConceptBank
from convis_db.mutual.decompose import Decomposition, decompose_together
from convis_db.mutual.faithfulness import FaithfulnessCurves, faithfulness_curves
from convis_db.mutual.information import area_under, mean_curve, mi_dynamics
from convis_db.mutual.patches import check_supported, patch_tokens, square_input, to_model_batch
from convis_db.mutual.prompts import Ellipse, concept_embeddings
from convis_db.mutual.settings import DEFAULT_TEMPLATE, LANGUAGE_SHARE_WARNING, MutualSettings
from convis_db.mutual.textual import assign_textual_concepts, rank_by_relevance
from convis_db.mutual.zeroshot import check_templates, class_embeddings, language_concepts, predict

log = logging.getLogger(__name__)


@dataclass
class TextualConcept:
    entry: int                  # bank entry (synset_id for the definitions bank)
    text: str                   # the definition or descriptor
    name: str                   # synset name, or the descriptor's classes
    score: float                # vision/mutual: logit_scale * cos(text, image); language: cos(text, class)
    synset_id: int | None = None
    class_score: float | None = None   # mutual: cos(text, predicted class)

    def as_dict(self) -> dict:
        return {"entry": self.entry, "text": self.text, "name": self.name, "synset_id": self.synset_id,
                "score": self.score, "class_score": self.class_score}


@dataclass
class VisualConcept:
    index: int
    n_patches: int
    importance: float                    # logit_scale * cos(concept embedding, predicted class)
    box: tuple[int, int, int, int]       # (x0, y0, x1, y1) original pixels, exclusive ends
    patch_mask: np.ndarray               # (gh, gw) bool
    ellipse: Ellipse                     # in model-input pixels
    texts: list[TextualConcept] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"index": self.index, "n_patches": self.n_patches, "importance": self.importance,
                "box": list(self.box), "patch_mask": self.patch_mask.astype(int).tolist(),
                "texts": [t.as_dict() for t in self.texts]}


@dataclass
class MutualExplanation:
    image_path: str
    width: int                            # original image size
    height: int
    input_size: int                       # the square model input
    grid: tuple[int, int]                 # patch grid (rows, cols)
    labels: list[str]
    templates: list[str]
    predicted_index: int
    class_cosines: list[float]            # cos(image, class) per label
    settings: MutualSettings
    bank_kind: str
    visual_concepts: list[VisualConcept]
    vision_concepts: list[TextualConcept]     # every visual concept's texts, ranked by relevance
    language_concepts: list[TextualConcept]
    mutual_concepts: list[TextualConcept]
    mi_curve: list[float]
    faithfulness: FaithfulnessCurves | None = None
    sha256: str = ""
    #: With settings.auc == "pca+kmeans": the MI curves of both decompositions ({"pca": ..., "kmeans": ...});
    #: the AUC is then that of their mean curve (the authors' notebook's single-image AUC).
    auc_curves: dict[str, list[float]] | None = None
    notes: list[str] = field(default_factory=list)   # what the user should know (fewer concepts than asked, ...)
    explanation_id: int | None = None     # the mutual_explanations row, once stored

    @property
    def predicted(self) -> str:
        return self.labels[self.predicted_index]

    @property
    def mi(self) -> float:
        return self.mi_curve[0] if self.mi_curve else 0.0

    @property
    def auc_curve(self) -> list[float]:
        """The curve the AUC is the area of: mi_curve, or the mean of the PCA and k-means curves."""
        return mean_curve(list(self.auc_curves.values())) if self.auc_curves else self.mi_curve

    @property
    def auc(self) -> float:
        return area_under(self.auc_curve)

    def as_dict(self) -> dict:
        out = {
            "image": self.image_path, "width": self.width, "height": self.height, "input_size": self.input_size,
            "patch_grid": list(self.grid), "labels": self.labels, "templates": self.templates,
            "predicted": self.predicted, "predicted_cosine": self.class_cosines[self.predicted_index],
            "class_cosines": dict(zip(self.labels, self.class_cosines)), "bank": self.bank_kind,
            "decomposition": self.settings.decomposition,
            "visual_concepts": [v.as_dict() for v in self.visual_concepts],
            "vision_concepts": [t.as_dict() for t in self.vision_concepts],
            "language_concepts": [t.as_dict() for t in self.language_concepts],
            "mutual_concepts": [t.as_dict() for t in self.mutual_concepts],
            "mi": self.mi, "mi_curve": self.mi_curve, "auc": self.auc,
            "auc_mode": self.settings.auc, "settings": asdict(self.settings), "notes": list(self.notes),
        }
        if self.auc_curves:
            out["auc_curves"] = self.auc_curves
        if self.explanation_id is not None:
            out["explanation_id"] = self.explanation_id
        if self.faithfulness is not None:
            out["faithfulness"] = self.faithfulness.as_dict()
        return out


def other_name(decomposition: str) -> str:
    return "kmeans" if decomposition == "pca" else "pca"


def _box(mask: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    gh, gw = mask.shape
    return (int(math.floor(cols.min() * width / gw)), int(math.floor(rows.min() * height / gh)),
            int(math.ceil((cols.max() + 1) * width / gw)), int(math.ceil((rows.max() + 1) * height / gh)))


class MutualExplainer:
    """Explains zero-shot predictions of one model over one label set with one concept bank."""

    def __init__(self, model, bank: ConceptBank, labels: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,),
                 settings: MutualSettings | None = None):
        check_supported(model)
        self.model = model
        self.bank = bank
        self.labels = list(labels)
        self.templates = check_templates(list(templates))
        self.settings = settings or MutualSettings()
        self.classes = class_embeddings(model, self.labels, self.templates)
        self._bank_emb = np.asarray(bank.embeddings, dtype=np.float32)
        self.notes = []
        share = self.settings.language_topk / max(len(bank), 1)
        if share > LANGUAGE_SHARE_WARNING:
            note = (f"the language side takes {min(self.settings.language_topk, len(bank))} of the bank's {len(bank)} "
                    f"texts ({min(share, 1.0):.0%}): nearly every text counts as near the class, so the mutual "
                    "concepts and MI say little; lower the language top-k (the authors' notebook takes 50 from "
                    "the descriptors of 1,000 ImageNet classes) or use a larger bank.")
            log.warning("%s", note)
            self.notes.append(note)

    def _text(self, entry: int, score: float, class_score: float | None = None) -> TextualConcept:
        b = self.bank
        return TextualConcept(entry=entry, text=b.texts[entry], name=b.names[entry], score=score,
                              synset_id=b.synset_ids[entry] if b.synset_ids is not None else None,
                              class_score=class_score)

    def _encode(self, pixels: np.ndarray):
        """(square input, normalised batch, (gh, gw, D) tokens, (E,) image embedding) of one image."""
        image = square_input(pixels, int(self.model.image_size))
        batch = to_model_batch(self.model, [image])
        tokens, image_emb = patch_tokens(self.model, batch)
        return image, batch, tokens[0].cpu().numpy(), image_emb[0].cpu().numpy()

    def _decompose(self, tokens: list[np.ndarray], decomposition: str | None = None) -> list[Decomposition]:
        s = self.settings
        return decompose_together(tokens, decomposition or s.decomposition, s.n_concepts, s.foreground,
                                  s.foreground_threshold, s.kmeans_seed, s.foreground_method)

    def _decompositions(self, tokens: list[np.ndarray]) -> list[tuple[Decomposition, Decomposition | None]]:
        """Per image, the decomposition, and the other one too when the AUC is the PCA/k-means mean."""
        main = self._decompose(tokens)
        if self.settings.auc != "pca+kmeans":
            return [(d, None) for d in main]
        other = self._decompose(tokens, other_name(self.settings.decomposition))
        return list(zip(main, other))

    def explain(self, pixels: np.ndarray, image_path: str = "", faithfulness: bool = False,
                sha256: str = "") -> MutualExplanation:
        """The explanation of an (H, W, 3) uint8 image."""
        image, batch, tokens, image_emb = self._encode(pixels)
        dec, other = self._decompositions([tokens])[0]
        return self._explain(pixels, image, batch, image_emb, dec, image_path, faithfulness, sha256, other)

    def explain_together(self, images: Sequence[tuple[np.ndarray, str, str]],
                         faithfulness: bool = False) -> list[MutualExplanation]:
        """Explanations of several (pixels, path, sha256) images whose patch tokens are decomposed together
        (one PCA / k-means over all of them, as the authors do for a set of images of one class)."""
        encoded = [self._encode(px) for px, _, _ in images]
        decs = self._decompositions([e[2] for e in encoded])
        return [self._explain(px, e[0], e[1], e[3], d, path, faithfulness, sha, other)
                for (px, path, sha), e, (d, other) in zip(images, encoded, decs)]

    def _vision_side(self, image: np.ndarray, labels: np.ndarray, image_emb: np.ndarray):
        """(concept embeddings, ellipses, per-concept entries, entries ranked by relevance, their scores)."""
        s = self.settings
        emb, ellipses = concept_embeddings(self.model, image, labels)
        per_concept = assign_textual_concepts(emb, self._bank_emb, s, image_emb)
        entries, scores = rank_by_relevance([e for c in per_concept for e in c], image_emb, self._bank_emb,
                                            s.logit_scale)
        return emb, ellipses, per_concept, entries, scores

    def _notes(self, dec: Decomposition, found: int) -> list[str]:
        s = self.settings
        notes = list(self.notes)
        if found < s.n_concepts:
            n_fg, n_all = int(dec.foreground.sum()), int(dec.foreground.size)
            where = (f"the foreground holds {n_fg} of the image's {n_all} patches" if s.foreground
                     else f"the image has {n_all} patches")
            if s.decomposition == "pca":
                why = ("each patch joins the principal component where it scores highest, and the other components "
                       "won no patch")
            else:
                why = "k-means left the other clusters empty"
            notes.append(f"asked for {s.n_concepts} visual concepts, found {found}: {where}; {why}. "
                         "Ask for fewer, or use --no-foreground to decompose every patch.")
        return notes

    def _explain(self, pixels: np.ndarray, image: np.ndarray, batch, image_emb: np.ndarray, dec: Decomposition,
                 image_path: str, faithfulness: bool, sha256: str,
                 other: Decomposition | None = None) -> MutualExplanation:
        s = self.settings
        labels = dec.labels
        pred, cos = predict(image_emb, self.classes)
        pred = int(pred[0])
        masks = [labels == c for c in range(int(labels.max()) + 1)] if (labels >= 0).any() else []
        emb, ellipses, per_concept, vision_entries, vision_scores = self._vision_side(image, labels, image_emb)
        relevance = dict(zip(vision_entries, vision_scores))
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        importance = (s.logit_scale * unit.astype(np.float64) @ self.classes[pred].astype(np.float64)).tolist()
        h0, w0 = pixels.shape[:2]
        visual = [VisualConcept(index=c, n_patches=int(m.sum()), importance=float(importance[c]),
                                box=_box(m, w0, h0), patch_mask=m, ellipse=ellipses[c],
                                texts=[self._text(e, relevance[e]) for e in per_concept[c]])
                  for c, m in enumerate(masks)]
        lang_entries, lang_scores = language_concepts(self.classes[pred], self._bank_emb, s.language_topk)
        lang_score = dict(zip(lang_entries, lang_scores))
        mutual = [self._text(e, relevance[e], lang_score[e]) for e in vision_entries if e in lang_score]
        curve = mi_dynamics(vision_entries, lang_entries)
        auc_curves = None
        if other is not None:
            other_entries = self._vision_side(image, other.labels, image_emb)[3]
            curves = {s.decomposition: curve, other_name(s.decomposition): mi_dynamics(other_entries, lang_entries)}
            auc_curves = {k: curves[k] for k in ("pca", "kmeans")}
        curves_f = None
        if faithfulness and visual:
            order = sorted(range(len(visual)), key=lambda c: (-visual[c].importance, c))
            curves_f = faithfulness_curves(self.model, batch, labels, order, self.classes, pred, s.logit_scale)
        return MutualExplanation(
            image_path=image_path, width=int(w0), height=int(h0), input_size=int(image.shape[0]),
            grid=tuple(labels.shape), labels=self.labels, templates=self.templates, predicted_index=pred,
            class_cosines=cos[0].tolist(), settings=s, bank_kind=self.bank.kind, visual_concepts=visual,
            vision_concepts=[self._text(e, sc) for e, sc in zip(vision_entries, vision_scores)],
            language_concepts=[self._text(e, sc) for e, sc in zip(lang_entries, lang_scores)],
            mutual_concepts=mutual, mi_curve=curve, faithfulness=curves_f,
            sha256=sha256, auc_curves=auc_curves, notes=self._notes(dec, len(visual)))

    def explain_file(self, path: str, faithfulness: bool = False) -> MutualExplanation:
        from pathlib import Path

        from convis_db.engine.images import read_image

        decoded = read_image(path)
        return self.explain(decoded.pixels, str(Path(path).absolute()), faithfulness, decoded.sha256)

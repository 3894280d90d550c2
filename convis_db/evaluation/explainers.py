"""The saliency sources under evaluation, behind one small interface.

An explainer turns (decoded image, concept) into a saliency map of any resolution with the image's
aspect ratio (ConVis maps are at the working resolution, Grad-ECLIP maps at the original one); the
evaluators resize maps to the original image before comparing them with boxes.

`ConVisExplainer` takes any engine with ConceptEngine's `working_image`, `encode_windows` and `mapper`
(tests pass a ConceptEngine built on a toy colour encoder); `convis_for_database` builds one with a
database's model, hierarchy and settings, as `MapService.for_file` does (images already ingested
reuse their stored window embeddings; others are encoded with the database's model and profile),
and keeps the last image's window embeddings so that several concepts of one image (COCO) or both
OOD scores cost one encoding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from convis_db.engine import whole_image
from convis_db.engine.explainer import ConceptEngine
from convis_db.engine.images import DecodedImage
from convis_db.engine.windows import WindowGrid
from convis_db.explainers.grad_eclip import DEFAULT_MAX_SHORT_SIDE, grad_eclip, text_embedding
from convis_db.query.maps import engine_for_database
from convis_db.store.model_store import load_database_model

log = logging.getLogger(__name__)

ConceptIds = Callable[[str], tuple[int, np.ndarray]]   # concept -> (its id, it and its descendants' ids)
StoredLookup = Callable[[str], "tuple[np.ndarray, WindowGrid] | None"]  # sha256 -> stored windows


class Explainer(Protocol):
    name: str
    description: str

    def prepare(self, concepts: list[str]) -> None:
        """Resolve every concept (and load what is needed) before the first image: fail early."""

    def saliency(self, image: DecodedImage, concept: str) -> np.ndarray:
        """A (h, w) map with the image's aspect ratio; higher means more of `concept`."""


class ConVisExplainer:
    """Concept Visualization maps: max_rank_sim (the concept and its descendants) or, with only_self,
    rank_sim of the synset alone."""

    name = "convis"

    def __init__(self, engine: ConceptEngine, concept_ids: ConceptIds, only_self: bool = False,
                 stored: StoredLookup | None = None):
        self.engine = engine
        self.concept_ids = concept_ids
        self.only_self = only_self
        self.stored = stored
        self._last: tuple[str, np.ndarray | torch.Tensor, WindowGrid] | None = None
        self.reused = 0      # images whose stored window embeddings were used
        self.encoded = 0     # images encoded now

    @property
    def description(self) -> str:
        return "convis (rank_sim of the synset alone)" if self.only_self else "convis (max_rank_sim)"

    def prepare(self, concepts: list[str]) -> None:
        for c in concepts:
            self.concept_ids(c)

    def window_embeddings(self, image: DecodedImage) -> tuple[np.ndarray | torch.Tensor, WindowGrid]:
        key = image.sha256 or image.path
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        found = self.stored(image.sha256) if self.stored is not None and image.sha256 else None
        if found is not None:
            emb, grid = found
            self.reused += 1
        else:
            img, grid = self.engine.working_image(image.pixels)
            emb = self.engine.encode_windows(img, grid)
            self.encoded += 1
        self._last = (key, emb, grid)
        return emb, grid

    def maps(self, image: DecodedImage, id_sets: list[np.ndarray]) -> list[np.ndarray]:
        """One working-resolution map per set of synset ids, from one set of window embeddings."""
        emb, grid = self.window_embeddings(image)
        mapper = self.engine.mapper
        return [mapper.concept_map(emb, grid, np.asarray(ids)) for ids in id_sets]

    def saliency(self, image: DecodedImage, concept: str) -> np.ndarray:
        sid, ids = self.concept_ids(concept)
        return self.maps(image, [np.array([sid]) if self.only_self else ids])[0]


class GradEclipExplainer:
    """Grad-ECLIP maps of the cosine between the image and a text embedding per concept."""

    name = "grad-eclip"

    def __init__(self, model, embedding_for: Callable[[str], np.ndarray], text_label: str = "definition",
                 max_short_side: int | None = DEFAULT_MAX_SHORT_SIDE):
        self.model = model
        self.embedding_for = embedding_for
        self.text_label = text_label
        self.max_short_side = max_short_side
        self._cache: dict[str, np.ndarray] = {}

    @property
    def description(self) -> str:
        return f"grad-eclip (text: {self.text_label})"

    def _embedding(self, concept: str) -> np.ndarray:
        if concept not in self._cache:
            self._cache[concept] = self.embedding_for(concept)
        return self._cache[concept]

    def prepare(self, concepts: list[str]) -> None:
        from convis_db.explainers.grad_eclip import _vit_parts

        _vit_parts(self.model.model)
        for c in concepts:
            self._embedding(c)

    def saliency(self, image: DecodedImage, concept: str) -> np.ndarray:
        result = grad_eclip(self.model, image.pixels, self._embedding(concept), max_short_side=self.max_short_side)
        return result.saliency


# ------------------------------------------------------------------------------------ whole images
def image_embedding(model, pixels: np.ndarray) -> np.ndarray:
    """CLIP's own view of the whole image, (D,) float32 unit vector; `model` is a LoadedModel or
    look-alike. A delegate: the one implementation is convis_db.engine.whole_image.image_embedding."""
    return whole_image.image_embedding(model, pixels)


# ------------------------------------------------------------------------------------ with a database



def database_concept_ids(con) -> ConceptIds:
    from convis_db.store.hierarchy_store import descendant_ids, find_synset_name

    cache: dict[str, tuple[int, np.ndarray]] = {}

    def resolve(concept: str) -> tuple[int, np.ndarray]:
        if concept not in cache:
            sid = find_synset_name(con, concept)
            cache[concept] = (sid, descendant_ids(con, sid))
        return cache[concept]

    return resolve


def database_stored_windows(con, model_id: int) -> StoredLookup:
    from convis_db.store.image_store import EmbeddingsNotStoredError, find_by_sha, load_window_embeddings

    def lookup(sha256: str):
        stored = find_by_sha(con, sha256)
        if stored is None or stored.model_id != model_id:
            return None
        try:
            return load_window_embeddings(con, stored.image_id), stored.grid
        except EmbeddingsNotStoredError:  # init --embeddings none: encode it like a new image
            return None

    return lookup


def convis_for_database(con, device: torch.device, only_self: bool = False, batch_size: int | None = None,
                        precision: str | None = None) -> ConVisExplainer:
    engine, model_id = engine_for_database(con, device, batch_size, precision)
    return ConVisExplainer(engine, database_concept_ids(con), only_self, database_stored_windows(con, model_id))


def grad_eclip_for_database(con, device: torch.device, text: str | None = None,
                            max_short_side: int | None = DEFAULT_MAX_SHORT_SIDE) -> GradEclipExplainer:
    """Grad-ECLIP with the database's model; the text is `text` for every concept, else each concept's
    definition (its stored embedding d_s = E_T(def(s)), the text ConVis ranks against)."""
    from convis_db.store.hierarchy_store import find_synset_name
    from convis_db.store.model_store import load_definition_embeddings

    model_id, loaded = load_database_model(con, device)
    if text is not None:
        fixed = text_embedding(loaded, text)
        return GradEclipExplainer(loaded, lambda concept: fixed, f"{text!r}", max_short_side)
    definitions = load_definition_embeddings(con, model_id)
    return GradEclipExplainer(loaded, lambda concept: definitions[find_synset_name(con, concept)],
                              "the concept's definition", max_short_side)

"""The saliency sources under evaluation, behind one small interface.

An explainer turns (decoded image, concept) into a saliency map of any resolution with the image's
aspect ratio (ConVis maps are at the working resolution, Grad-ECLIP maps at the original one); the
evaluators resize maps to the original image before comparing them with boxes.

`ConVisExplainer` takes any engine with ConceptEngine's `window_similarities` and `mapper` (tests
pass a ConceptEngine built on a toy colour encoder); `convis_for_database` builds one on the map
service (query/maps.py), so eval's maps are the CLI's and the explorer's: images already ingested
reuse their stored window embeddings, others are encoded with the database's model and profile.
An image's window similarities are kept, so that several concepts of one image (COCO) or both OOD
scores cost one encoding and one matrix product.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from convis_db.engine import whole_image
from convis_db.engine.explainer import ConceptEngine, WindowSimilarities
from convis_db.engine.images import DecodedImage
from convis_db.engine.windows import WindowGrid
from convis_db.explainers.grad_eclip import DEFAULT_MAX_SHORT_SIDE, grad_eclip
from convis_db.query.maps import MapService

if TYPE_CHECKING:
    from convis_db.api import Database

log = logging.getLogger(__name__)

ConceptIds = Callable[[str], tuple[int, np.ndarray]]   # concept -> (its id, it and its descendants' ids)


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
                 maps: MapService | None = None):
        self.engine = engine
        self.concept_ids = concept_ids
        self.only_self = only_self
        self.maps = maps      # a database's map service: stored windows where the image is stored
        self._last: tuple[str, WindowSimilarities, WindowGrid] | None = None
        self.reused = 0      # images whose stored window embeddings were used
        self.encoded = 0     # images encoded now

    @property
    def description(self) -> str:
        return "convis (rank_sim of the synset alone)" if self.only_self else "convis (max_rank_sim)"

    def prepare(self, concepts: list[str]) -> None:
        for c in concepts:
            self.concept_ids(c)

    def windows(self, image: DecodedImage) -> tuple[WindowSimilarities, WindowGrid]:
        """The image's window similarities (stored or encoded now), kept for its next concepts."""
        key = image.sha256 or image.path
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        if self.maps is not None:
            sims, grid, stored = self.maps.windows_of(image)
        else:
            (sims, grid), stored = self.engine.window_similarities(image.pixels), None
        if stored is not None:
            self.reused += 1
        else:
            self.encoded += 1
        self._last = (key, sims, grid)
        return sims, grid

    def maps_of(self, image: DecodedImage, id_sets: list[np.ndarray]) -> list[np.ndarray]:
        """One working-resolution map per set of synset ids, from one set of window similarities."""
        sims, grid = self.windows(image)
        mapper = self.engine.mapper
        return [mapper.concept_map(sims, grid, np.asarray(ids)) for ids in id_sets]

    def saliency(self, image: DecodedImage, concept: str) -> np.ndarray:
        sid, ids = self.concept_ids(concept)
        return self.maps_of(image, [np.array([sid]) if self.only_self else ids])[0]


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
def convis_for_database(db: Database, only_self: bool = False, batch_size: int | None = None) -> ConVisExplainer:
    """ConVis maps of a database's model, hierarchy and settings (on its device and precision), from
    its map service."""
    maps = db.map_service(batch_size)
    return ConVisExplainer(maps.engine(), maps.concept_ids, only_self, maps)


def grad_eclip_for_database(db: Database, text: str | None = None,
                            max_short_side: int | None = DEFAULT_MAX_SHORT_SIDE) -> GradEclipExplainer:
    """Grad-ECLIP with the database's model; the text is `text` for every concept, else each concept's
    definition (its stored embedding d_s = E_T(def(s)), the text ConVis ranks against): the database's
    one Grad-ECLIP service supplies both."""
    service = db.grad_eclip_service()
    loaded = service.database_model
    if text is not None:
        fixed = service.text_embedding(text)
        return GradEclipExplainer(loaded, lambda concept: fixed, f"{text!r}", max_short_side)
    return GradEclipExplainer(loaded, lambda concept: service.concept_embedding(concept)[1],
                              "the concept's definition", max_short_side)

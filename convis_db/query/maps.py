"""The one map service: a concept's saliency map for a stored image (from its window embeddings, no
model run; or its windows encoded again where the database keeps none) or for a new image (encoded
with the database's model and settings). The CLI's `map` and `regions`, the explorer, eval and the
Python API all get their maps here.

Each image's window x synset cosines are kept (WindowSimilarities, in an LRU cache with a byte
budget), so that more concepts of the same image cost no matrix product, and their rows are sorted
once several concepts are asked (engine/explainer.py); the maps are identical either way.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convis_db.cache import LRUCache
from convis_db.engine.explainer import ConceptEngine, ConceptMapper, WindowSimilarities
from convis_db.engine.images import DecodedImage, read_image
from convis_db.engine.pixels import original_point
from convis_db.engine.saliency import full_map
from convis_db.engine.ranking import SynsetRanker
from convis_db.engine.windows import WindowGrid
from convis_db.errors import ImageError, NotFoundError
from convis_db.profile import DatabaseProfile, read_profile
from convis_db.store.hierarchy_store import StoredHierarchy, find_synset_name, load_hierarchy
from convis_db.store.image_store import (EmbeddingsNotStoredError, StoredImage, find_by_sha, get_image,
                                        load_window_embeddings)
from convis_db.store.model_store import load_definition_embeddings

log = logging.getLogger(__name__)

#: The similarity cache's default budget (one default image's matrix is about 1,100 windows x 7k
#: synsets x 4 B = 31 MB).
DEFAULT_CACHE_BYTES = 256 << 20


@dataclass
class ConceptMap:
    synset: str
    synset_id: int
    saliency: np.ndarray            # (work_h, work_w) float64, raw values of the formula (exact ratios)
    grid: WindowGrid
    width: int                      # original image size
    height: int
    image_id: int | None            # stored image, or None for a file computed on the fly
    image_path: str
    source: str                     # "database" or "computed"
    only_self: bool = False
    precision: str | None = None    # the image encoder's: the stored image's (None: unrecorded) or this run's

    @property
    def scale(self) -> float:
        return self.width / self.grid.width

    @property
    def peak(self) -> dict:
        """Value and location of the first maximum in row-major order, in working and original pixels."""
        y, x = np.unravel_index(int(np.argmax(self.saliency)), self.saliency.shape)
        return {"score": float(self.saliency[y, x]), "x": int(x), "y": int(y),
                "x_orig": original_point(x, self.scale), "y_orig": original_point(y, self.scale)}

    def original_pixels(self) -> np.ndarray:
        return read_image(self.image_path).pixels


class MapService:
    """Makes maps against one database; keeps the definitions, the images' similarities and (when a
    new file or an image without stored embeddings needs it) the model loaded.

    `cache` holds WindowSimilarities by image (the explorer passes its own, with its budget); `lock`
    is held around every use of the connection (the explorer shares one between threads)."""

    def __init__(self, con, device: torch.device | None = None, precision: str | None = None, *,
                 profile: DatabaseProfile | None = None, cache: LRUCache | None = None, lock=None,
                 batch_size: int | None = None, hierarchy: StoredHierarchy | None = None):
        self.con = con
        self.device = device or torch.device("cpu")
        self.precision = precision  # for new files only (None: the device's default); stored maps run no model
        self.batch_size = batch_size
        self.cache = cache if cache is not None else LRUCache("similarities", DEFAULT_CACHE_BYTES)
        self.lock = lock  # the caller's (None: the service is used from one thread)
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._profile = profile
        self._hierarchy = hierarchy
        self._mappers: dict[int, ConceptMapper] = {}
        self._concepts: dict[str, tuple[int, np.ndarray]] = {}
        self._engine: ConceptEngine | None = None

    @property
    def profile(self) -> DatabaseProfile:
        if self._profile is None:
            with self._lock:
                self._profile = read_profile(self.con)
        return self._profile

    @property
    def hierarchy(self) -> StoredHierarchy:
        if self._hierarchy is None:
            with self._lock:
                self._hierarchy = load_hierarchy(self.con)
        return self._hierarchy

    def mapper(self, model_id: int) -> ConceptMapper:
        if model_id not in self._mappers:
            with self._lock:
                defs = load_definition_embeddings(self.con, model_id)
            self._mappers[model_id] = ConceptMapper(SynsetRanker(defs, self.device))
        return self._mappers[model_id]

    def engine(self) -> ConceptEngine:
        """The database's engine (its model, loaded once), for new files and re-encoded windows."""
        if self._engine is None:
            with self._lock:
                self._engine = self.profile.build_engine(self.con, self.device, self.precision,
                                                         batch_size=self.batch_size)
        return self._engine

    def concept_ids(self, concept: str, only_self: bool = False) -> tuple[int, np.ndarray]:
        """(the synset's id, the ids a map takes the max over: it and its descendants, or it alone)."""
        if concept not in self._concepts:
            sid = self.hierarchy.id_of.get(concept)
            if sid is None:  # not an exact name: the store's error (nearest names, or a word's senses)
                with self._lock:
                    sid = find_synset_name(self.con, concept)
            self._concepts[concept] = (sid, self.hierarchy.descendants(sid))
        sid, descendants = self._concepts[concept]
        return sid, (np.array([sid], np.int64) if only_self else descendants)

    # -- windows ---------------------------------------------------------------------------------
    def stored_windows(self, image: StoredImage) -> WindowSimilarities:
        """A stored image's window similarities: from its stored embeddings, or, in a database that
        keeps none (init --embeddings none), its windows encoded again from the image file, if the
        file is still there unchanged."""
        key = ("stored", image.image_id)
        sims = self.cache.get(key)
        if sims is None:
            sims = self.mapper(image.model_id).similarities(self._stored_embeddings(image))
            self.cache.put(key, sims, sims.nbytes)
        return sims

    def _stored_embeddings(self, image: StoredImage) -> np.ndarray:
        try:
            with self._lock:
                return load_window_embeddings(self.con, image.image_id)
        except EmbeddingsNotStoredError as exc:
            engine = self.engine()
            try:  # decoded as ingest decoded it (big originals reduced), so the windows are the stored scores'
                decoded = read_image(image.path, engine.settings.max_pixels)
            except ImageError as err:
                raise EmbeddingsNotStoredError(f"{exc} Its file cannot be read ({err}).") from err
            if decoded.sha256 != image.sha256:
                raise EmbeddingsNotStoredError(f"{exc} Its file {image.path} has changed since it was ingested.") from exc
            img, grid = engine.working_image(decoded.pixels, decoded.size)
            log.info("image %d: window embeddings not stored; encoded again from %s", image.image_id, image.path)
            return engine.encode_windows(img, grid).cpu().numpy()

    def windows_of(self, decoded: DecodedImage) -> tuple[WindowSimilarities, WindowGrid, StoredImage | None]:
        """An image's window similarities and grid: the stored ones when its content (sha256) is
        stored with the database's model, else encoded now; with the stored image (None: new)."""
        stored = None
        if decoded.sha256:
            with self._lock:
                stored = find_by_sha(self.con, decoded.sha256)
        if stored is not None and stored.model_id == self.profile.model_id:
            return self.stored_windows(stored), stored.grid, stored
        key = ("new", decoded.sha256 or id(decoded))
        hit = self.cache.get(key)
        if hit is None:
            hit = self.engine().window_similarities(decoded.pixels, decoded.size)
            self.cache.put(key, hit, hit[0].nbytes)
        return hit[0], hit[1], None

    def saliency(self, sims: WindowSimilarities, grid: WindowGrid, synset_ids: np.ndarray,
                 cache_key=None) -> np.ndarray:
        """The raw working-resolution map over `synset_ids` from an image's similarities; `cache_key`
        (where they are cached) is put again so the cache counts the sorted rows' bytes."""
        counts = sims.counts(synset_ids)
        if cache_key is not None:
            self.cache.put(cache_key, sims, sims.nbytes)  # its size grows once its rows are sorted
        return full_map(counts, grid, sims.n)

    # -- maps ------------------------------------------------------------------------------------
    def for_stored(self, image: StoredImage, concept: str, only_self: bool = False) -> ConceptMap:
        sid, ids = self.concept_ids(concept, only_self)
        saliency = self.saliency(self.stored_windows(image), image.grid, ids, ("stored", image.image_id))
        return ConceptMap(concept, sid, saliency, image.grid, image.width, image.height, image.image_id,
                          image.path, "database", only_self, image.precision)

    def for_file(self, path: str | Path, concept: str, only_self: bool = False) -> ConceptMap:
        decoded = read_image(path, self.profile.settings_for(None).max_pixels)  # as ingest would decode it
        sid, ids = self.concept_ids(concept, only_self)
        sims, grid, stored = self.windows_of(decoded)
        if stored is not None:
            return self.for_stored(stored, concept, only_self)
        saliency = self.saliency(sims, grid, ids)
        return ConceptMap(concept, sid, saliency, grid, decoded.width, decoded.height, None,
                          str(Path(path).absolute()), "computed", only_self,
                          getattr(self.engine().model, "precision", None))

    def for_ref(self, ref: str, concept: str, only_self: bool = False) -> ConceptMap:
        """IMAGE as a stored id/path/hash, else a file on disk."""
        try:
            with self._lock:
                image = get_image(self.con, ref)
        except NotFoundError:
            if Path(ref).is_file():
                return self.for_file(ref, concept, only_self)
            raise
        return self.for_stored(image, concept, only_self)

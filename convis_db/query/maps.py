"""One concept's saliency map for a stored image (from its window embeddings, no model run) or for a
new image file (encoded on the fly with the database's model and settings)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convis_db.engine.explainer import ConceptEngine, ConceptMapper
from convis_db.engine.images import read_image
from convis_db.engine.pixels import original_point
from convis_db.engine.ranking import SynsetRanker
from convis_db.engine.settings import Settings
from convis_db.engine.windows import WindowGrid
from convis_db.errors import ImageError, NotFoundError
from convis_db.store.hierarchy_store import descendant_ids, find_synset_name, load_hierarchy
from convis_db.store.image_store import (EmbeddingsNotStoredError, StoredImage, database_layout, find_by_sha,
                                        get_image, load_window_embeddings, stored_profile)
from convis_db.store.model_store import load_database_model, load_definition_embeddings

log = logging.getLogger(__name__)


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
    """Computes maps against one database; keeps the definitions and (when needed) the model loaded."""

    def __init__(self, con, device: torch.device | None = None, precision: str | None = None):
        self.con = con
        self.device = device or torch.device("cpu")
        self.precision = precision  # for new files only (None: the device's default); stored maps run no model
        self._mappers: dict[int, ConceptMapper] = {}
        self._engine: ConceptEngine | None = None

    def mapper(self, model_id: int) -> ConceptMapper:
        if model_id not in self._mappers:
            defs = load_definition_embeddings(self.con, model_id)
            self._mappers[model_id] = ConceptMapper(SynsetRanker(defs, self.device))
        return self._mappers[model_id]

    def concept_ids(self, concept: str, only_self: bool) -> tuple[int, np.ndarray]:
        sid = find_synset_name(self.con, concept)
        return sid, (np.array([sid]) if only_self else descendant_ids(self.con, sid))

    def for_stored(self, image: StoredImage, concept: str, only_self: bool = False) -> ConceptMap:
        sid, ids = self.concept_ids(concept, only_self)
        emb = self.window_embeddings(image)
        saliency = self.mapper(image.model_id).concept_map(emb, image.grid, ids)
        return ConceptMap(concept, sid, saliency, image.grid, image.width, image.height, image.image_id,
                          image.path, "database", only_self, image.precision)

    def window_embeddings(self, image: StoredImage) -> np.ndarray:
        """The stored window embeddings; in a database that keeps none (init --embeddings none), the
        windows encoded again from the image file with the model, if the file is still there unchanged."""
        try:
            return load_window_embeddings(self.con, image.image_id)
        except EmbeddingsNotStoredError as exc:
            try:
                decoded = read_image(image.path)
            except ImageError as err:
                raise EmbeddingsNotStoredError(f"{exc} Its file cannot be read ({err}).") from err
            if decoded.sha256 != image.sha256:
                raise EmbeddingsNotStoredError(f"{exc} Its file {image.path} has changed since it was ingested.") from exc
            engine = self._model_engine()
            img, grid = engine.working_image(decoded.pixels)
            log.info("image %d: window embeddings not stored; encoded again from %s", image.image_id, image.path)
            return engine.encode_windows(img, grid).cpu().numpy()

    def for_file(self, path: str | Path, concept: str, only_self: bool = False) -> ConceptMap:
        decoded = read_image(path)
        stored = find_by_sha(self.con, decoded.sha256)
        if stored is not None:
            return self.for_stored(stored, concept, only_self)
        sid, ids = self.concept_ids(concept, only_self)
        engine = self._model_engine()
        img, grid = engine.working_image(decoded.pixels)
        emb = engine.encode_windows(img, grid)
        saliency = engine.mapper.concept_map(emb, grid, ids)
        return ConceptMap(concept, sid, saliency, grid, decoded.width, decoded.height, None,
                          str(Path(path).absolute()), "computed", only_self,
                          getattr(engine.model, "precision", None))

    def for_ref(self, ref: str, concept: str, only_self: bool = False) -> ConceptMap:
        """IMAGE as a stored id/path/hash, else a file on disk."""
        try:
            return self.for_stored(get_image(self.con, ref), concept, only_self)
        except NotFoundError:
            if Path(ref).is_file():
                return self.for_file(ref, concept, only_self)
            raise

    def _model_engine(self) -> ConceptEngine:
        if self._engine is None:
            self._engine, _ = engine_for_database(self.con, self.device, precision=self.precision)
        return self._engine


def engine_for_database(con, device: torch.device, batch_size: int | None = None,
                        precision: str | None = None) -> tuple[ConceptEngine, int]:
    """The engine for new files: the model and settings of the stored images (one profile per
    database, its window layout included), else the database's model with the paper's settings and the
    database's layout; its encoder in `precision` (None: the device's default). Returns it with the model id."""
    profile = stored_profile(con)
    model_id, loaded = load_database_model(con, device, precision)
    settings = profile[1] if profile else Settings(layout=database_layout(con))
    defs = load_definition_embeddings(con, model_id)
    engine = ConceptEngine(loaded, defs, load_hierarchy(con).propagation_levels, settings, batch_size=batch_size)
    return engine, model_id

"""A database's profile: the one model, settings and window layout its explanations use.

One database holds one model's explanations under one setting (scores are only comparable under
one), and every reader needs the same answer to "which model, which settings?": ingest (to check
what the user asks for), maps of new files and eval (to encode them as the stored images were),
the mutual-knowledge explainer (its model), the explorer and `stats` (to say what the scores mean).
This module is the one place that answers it (`read_profile`), and `DatabaseProfile.build_engine`
the one place that builds a ConceptEngine from a database, with the device-based batch-size
default of `engine.explainer.default_batch_size`.

The answer, from what the file holds:
* the model: the stored images' model; else the one asked for (it must have definition embeddings);
  else the first model with definition embeddings;
* the settings: the stored images'; else what the user asks for (or the paper's), always with the
  database's window layout (schema 005's `window_layout`), and the default top-K cut to |T|.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import duckdb
import torch

from convis_db.engine.settings import Settings
from convis_db.errors import DatabaseError
from convis_db.models.registry import ModelSpec, resolve_model

log = logging.getLogger(__name__)

#: What a caller may ask for: complete Settings, or only the options a user gave (name -> value, None
#: for not given; completed from the stored settings, so that repeating one is not a change).
SettingsRequest = Settings | Mapping[str, int | None] | None


@dataclass
class DatabaseProfile:
    """Which model and settings a database's explanations use (see the module docstring); a
    Database's `profile`.

        >>> db.profile.label, db.profile.settings.stride                  # doctest: +SKIP
        ('ViT-B-32 / openai', 16)
    """

    db_path: str
    model_id: int
    model: dict                          # the models row (store/model_store.model_row)
    stored_settings: Settings | None     # of the stored images; None before the first image
    layout: str                          # the window lattice of every image, new ones included
    n_synsets: int                       # |T|
    embeddings: str                      # how window embeddings are stored: float32 | float16 | none

    @property
    def has_images(self) -> bool:
        return self.stored_settings is not None

    @property
    def label(self) -> str:
        return f"{self.model['name']} / {self.model['pretrained']}"

    @property
    def is_random(self) -> bool:
        return bool(self.model["is_random"])

    @cached_property
    def spec(self) -> ModelSpec:
        """The ModelSpec to load (a config-file model has its stored config registered again)."""
        from convis_db.store.model_store import spec_from_row

        return spec_from_row(self.model)

    @cached_property
    def settings(self) -> Settings:
        """The settings new images get when nothing is asked for (worked out once)."""
        return self.settings_for(None)

    def notes(self) -> list[str]:
        """What a reader of numbers from this database should know (random weights)."""
        if self.is_random:
            return [f"model {self.model['name']} has random weights: these numbers are meaningless (smoke run)."]
        return []

    def as_dict(self) -> dict:
        return {"model": self.label, "model_id": self.model_id, "random_weights": self.is_random,
                "settings": self.settings.as_dict(), "has_images": self.has_images, "window_layout": self.layout,
                "n_synsets": self.n_synsets, "embeddings": self.embeddings}

    # -- settings ------------------------------------------------------------------------------
    def settings_for(self, requested: SettingsRequest) -> Settings:
        """The settings of a run asked for `requested`: the stored ones when the database holds
        images (asking for others is refused: scores are only comparable under one setting), with
        the database's layout and the default top-K cut to |T|; checked to fit in memory."""
        from convis_db.engine.capacity import check_fits

        asked_top_k = _asks_top_k(requested)
        if isinstance(requested, Settings):
            requested = self._fit_top_k(requested, asked_top_k)
        chosen = self._fit_top_k(self._with_layout(self._reconcile(requested)), asked_top_k)
        check_fits(chosen, self.n_synsets)
        return chosen

    def _reconcile(self, requested: SettingsRequest) -> Settings:
        stored = self.stored_settings
        if isinstance(requested, Settings):
            asked: Settings | None = requested
        else:
            given = {k: v for k, v in (requested or {}).items() if v is not None}
            asked = Settings.from_options(given, base=stored) if given else None
        if stored is None:
            return asked or Settings()
        if asked is not None:
            asked = dataclasses.replace(asked, layout=stored.layout)  # not a user option
        if asked is not None and asked != stored:
            old, new = stored.as_dict(), asked.as_dict()
            diff = ", ".join(f"{k} {new[k]} (stored: {old[k]})" for k in old if old[k] != new[k])
            raise DatabaseError(
                f"{self.db_path} holds images ingested with {old}; asked for {diff}. Scores are only comparable "
                "under one setting: drop those options (the stored ones are used), or use another --db."
            )
        return stored

    def _with_layout(self, chosen: Settings) -> Settings:
        if self.layout == "origin":
            log.info("%s uses the 'origin' window layout (made before equal window coverage): new images use it "
                     "too, so that all scores stay comparable. For equal coverage of every pixel, ingest into a "
                     "new database.", self.db_path)
        return chosen if chosen.layout == self.layout else dataclasses.replace(chosen, layout=self.layout)

    def _fit_top_k(self, settings: Settings, asked: bool) -> Settings:
        """The default top-K (100) is cut to |T| for a small vocabulary, so the stored setting says how
        many concepts each window really keeps; a top-K asked for above |T| is refused by check_fits."""
        if settings.top_k > self.n_synsets and not asked:
            log.info("top-k %d cut to the %d concepts of T", settings.top_k, self.n_synsets)
            return dataclasses.replace(settings, top_k=self.n_synsets)
        return settings

    # -- the model and the engine --------------------------------------------------------------
    def load_model(self, device: torch.device, precision: str | None = None):
        """The database's model (a LoadedModel) on `device`, its encoder in `precision` (None: the
        device's default)."""
        from convis_db.models.clip import load_model

        return load_model(self.spec, device, precision)

    def build_engine(self, con: duckdb.DuckDBPyConnection, device: torch.device, precision: str | None = None, *,
                     settings: Settings | None = None, batch_size: int | None = None, model=None):
        """The ConceptEngine for this database: its model (or `model`, a LoadedModel already loaded),
        its definition embeddings and hierarchy, and `settings` (default: `self.settings`).
        `batch_size` None is the device's default (engine.explainer.default_batch_size)."""
        loaded = model if model is not None else self.load_model(device, precision)
        definitions, levels = self.engine_inputs(con)
        return engine_from_inputs(loaded, definitions, levels, settings or self.settings, batch_size)

    def engine_inputs(self, con: duckdb.DuckDBPyConnection):
        """(definition embeddings (|T|, D) float32, the hierarchy's propagation levels): what an engine
        reads from the database besides its model (Ray workers get them from the driver)."""
        from convis_db.store.hierarchy_store import load_hierarchy
        from convis_db.store.model_store import load_definition_embeddings

        return load_definition_embeddings(con, self.model_id), load_hierarchy(con).propagation_levels


def engine_from_inputs(model, definitions, levels, settings: Settings, batch_size: int | None = None):
    """The one engine recipe: a ConceptEngine from a loaded model, the database's engine inputs
    (DatabaseProfile.engine_inputs) and the settings (their window layout included).
    DatabaseProfile.build_engine builds through it, and so does a Ray shard worker, which gets the
    inputs from its driver instead of opening the database."""
    from convis_db.engine.explainer import ConceptEngine

    return ConceptEngine(model, definitions, levels, settings, batch_size=batch_size)


def _asks_top_k(requested: SettingsRequest) -> bool:
    if isinstance(requested, Settings):
        return requested.top_k != Settings().top_k
    return (requested or {}).get("top_k") is not None


def read_profile(con: duckdb.DuckDBPyConnection, db_path: str = "", *, model: str | None = None,
                 pretrained: str | None = None) -> DatabaseProfile:
    """The profile of the database open on `con`; `model`/`pretrained` is what a user asked for
    (refused when not embedded there, or when the stored images use another model)."""
    from convis_db.store.db import require_initialised
    from convis_db.store.image_store import database_layout, embedding_storage
    from convis_db.store.model_store import find_model_id, model_row, pick_model

    n_synsets = require_initialised(con, db_path or "the database")
    stored = _stored_images_profile(con)
    if model:
        spec = resolve_model(model, pretrained or "openai")
        model_id = find_model_id(con, spec)
        if model_id is None:
            raise DatabaseError(
                f"model {spec.label} is not in {db_path}. Embed its definitions first: "
                f"convis-db --db {db_path} init --model {model} --pretrained {spec.pretrained}"
            )
        pick_model(con, spec)  # it must have definition embeddings
        if stored is not None and stored[0] != model_id:
            other = model_row(con, stored[0])
            raise DatabaseError(
                f"{db_path} holds images explained with {other['name']} / {other['pretrained']}; one database "
                f"holds one model's explanations. Use that model, or another --db for {spec.label}."
            )
    else:
        model_id = stored[0] if stored is not None else pick_model(con, None)
    return DatabaseProfile(db_path=str(db_path), model_id=int(model_id), model=model_row(con, model_id),
                           stored_settings=stored[1] if stored else None, layout=database_layout(con),
                           n_synsets=n_synsets, embeddings=embedding_storage(con))


def _stored_images_profile(con: duckdb.DuckDBPyConnection) -> tuple[int, Settings] | None:
    """(model id, settings, layout included) of the stored images, if any: every image of a database
    has the same ones, so the first row says it."""
    row = con.execute("SELECT model_id, max_pixels, stride, small, large, top_k, layout FROM images "
                      "ORDER BY image_id LIMIT 1").fetchone()
    if row is None:
        return None
    model_id, max_pixels, stride, small, large, top_k, lay = row
    return int(model_id), Settings(max_pixels=max_pixels, stride=stride, small=small, large=large, top_k=top_k,
                                   layout=lay or "origin")

"""Explain one shard's files and write the shard: what each distributed worker runs.

The engine comes from the database profile's one recipe (profile.engine_from_inputs), the images
are explained through the plain ingest's own loop (ingest/explaining.ExplainQueue: shared encoder
batches of at least `batch_size` windows counted in the database's window layout, a failed group
retried image by image), and the rows come from the same image_store.image_tables, so a shard holds
what a plain ingest would store. Decoding runs in threads ahead of the model, as in a plain ingest.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from convis_db.engine.explainer import ConceptEngine
from convis_db.engine.images import DecodedImage, PixelBudget
from convis_db.engine.settings import Settings
from convis_db.errors import ConvisError
from convis_db.ingest.explaining import ExplainQueue, Queued
from convis_db.ingest.plan import DECODE_BUDGET_PIXELS, decode_ahead
from convis_db.ingest.report import IngestOutcome
from convis_db.models.clip import load_model
from convis_db.models.registry import ModelSpec
from convis_db.profile import engine_from_inputs
from convis_db.store.image_store import image_tables
from convis_db.distributed.shards import ShardContent, write_shard

log = logging.getLogger(__name__)


@dataclass
class ShardJob:
    """Everything a worker needs, read once from the database by the driver (workers never open it)."""

    spec: ModelSpec
    definitions: np.ndarray          # (|T|, D) float32
    levels: list                     # the hierarchy's propagation levels
    settings: Settings
    storage: str                     # float32 | float16 | none
    shards_dir: str
    batch_size: int = 128            # windows per encoder batch
    known_sha256: set[str] = field(default_factory=set)   # images the database holds already
    skip_paths: set[str] = field(default_factory=set)     # files that failed before (no --retry-failed)
    decode_threads: int = 2
    precision: str | None = None     # asked for (None/auto: each worker's device default), resolved on the worker

    @property
    def manifest(self) -> dict:
        return {"model": {"name": self.spec.name, "pretrained": self.spec.pretrained,
                          "weights_sha256": self.spec.weights_sha256},
                "settings": self.settings.as_dict(), "embeddings": self.storage,
                "n_synsets": int(self.definitions.shape[0]), "batch_size": self.batch_size}


def build_engine(job: ShardJob, device: torch.device) -> ConceptEngine:
    """The engine a plain ingest of the job's database would build (profile.engine_from_inputs, the one
    recipe), from the inputs the driver read; the precision is resolved on the worker's own device."""
    return engine_from_inputs(load_model(_spec_here(job.spec), device, job.precision), job.definitions, job.levels,
                              job.settings, job.batch_size)


def _spec_here(spec: ModelSpec) -> ModelSpec:
    """The spec with a config file this node can read: a model from a config JSON (not one of
    open_clip's own) is registered from the config stored with the database, not from the driver's path."""
    import open_clip

    if spec.config_path and Path(spec.config_path).is_file():
        return spec
    if spec.name in open_clip.list_models() or not spec.config_json:
        return spec
    path = Path(tempfile.mkdtemp(prefix="convis-config-")) / f"{spec.name}.json"
    path.write_text(spec.config_json, encoding="utf-8")
    return replace(spec, config_path=str(path))


def _decoded(future) -> DecodedImage | ConvisError:
    try:
        return future.result()
    except ConvisError as exc:
        return exc


def explain_shard(engine: ConceptEngine, job: ShardJob, name: str, files: list[str]) -> dict:
    """Explain `files` and write shard `name`; returns a small summary (counts, seconds).

    The images go through the plain ingest's own ExplainQueue (ingest/explaining.py): the same
    grouping into encoder batches (by the database's window layout), the same retry image by image
    when a group fails, and the same early flush when a file's twin is still queued; so a shard holds
    exactly the rows a plain ingest of these files would store."""
    t0 = time.perf_counter()
    content = ShardContent(name, list(files))
    seen: set[str] = set()
    queue = ExplainQueue(lambda: engine, job.settings, job.batch_size)
    precision = getattr(engine.model, "precision", None)

    def flush() -> None:
        for done in queue.explain():
            path, image = done.item.outcome.path, done.item.image
            if done.explanation is None:
                content.failures.append((path, image.sha256, done.reason))
                continue
            local_id = len(content.images) + 1
            content.add_image(path, image_tables(done.explanation, image.sha256, path, 0, job.settings, local_id,
                                                 job.storage, precision))

    todo = [p for p in files if p not in job.skip_paths]
    content.skipped.extend((p, "failed before; re-run with --retry-failed to try again.")
                           for p in files if p in job.skip_paths)
    # The plain ingest's read-ahead: bounded in decoded pixels, big photos decoded reduced alike.
    ahead = decode_ahead([Path(p) for p in todo], job.decode_threads, job.settings.max_pixels,
                         PixelBudget(DECODE_BUDGET_PIXELS))
    for path, (_, future) in zip(todo, ahead):  # paths as given (the manifest lists them so)
        decoded = _decoded(future)
        if isinstance(decoded, ConvisError):
            content.failures.append((path, None, str(decoded)))
            continue
        if decoded.sha256 in job.known_sha256:
            content.skipped.append((path, "already stored (same content)."))
            continue
        if decoded.sha256 in seen:
            if queue.holds(decoded.sha256):
                flush()  # as a plain ingest does: its twin is explained first
            content.skipped.append((path, "same content as an earlier file of this run."))
            continue
        seen.add(decoded.sha256)
        if queue.add(Queued(IngestOutcome(path, "pending"), decoded, time.perf_counter())):
            flush()
    flush()
    write_shard(job.shards_dir, content, job.manifest)
    seconds = time.perf_counter() - t0
    log.info("wrote %s: %d images, %d skipped, %d failed in %.1f s", name, len(content.images),
             len(content.skipped), len(content.failures), seconds)
    return {"shard": name, "images": len(content.images), "skipped": len(content.skipped),
            "failed": len(content.failures), "seconds": seconds}

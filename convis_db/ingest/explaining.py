"""Explaining images for ingest: small images are queued and explained together, so that their
windows share encoder batches; a group that fails is explained again image by image to find the
one at fault, and only that one fails."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from convis_db.engine.explainer import ConceptEngine, ImageExplanation
from convis_db.engine.images import DecodedImage
from convis_db.engine.settings import Settings
from convis_db.engine.windows import WindowGrid, working_size
from convis_db.errors import ConvisError
from convis_db.ingest.report import IngestOutcome

log = logging.getLogger(__name__)
_NO_PIXELS = np.empty((0, 0, 3), np.uint8)


@dataclass
class Queued:
    """An image waiting to be explained: its (pending) outcome, pixels and start time."""

    outcome: IngestOutcome
    image: DecodedImage
    t0: float


@dataclass
class Explained:
    """An image of a group, explained (`explanation`) or failed (`reason`)."""

    item: Queued
    explanation: ImageExplanation | None = None
    reason: str = ""


class ExplainQueue:
    """Images queued until their windows fill one encoder batch (`batch_size` windows)."""

    def __init__(self, engine: Callable[[], ConceptEngine], settings: Settings, batch_size: int):
        self._engine = engine          # built on first use: a run that skips every file loads no model
        self.settings = settings
        self.batch_size = batch_size
        self._items: list[Queued] = []
        self._windows = 0

    def __len__(self) -> int:
        return len(self._items)

    def holds(self, sha256: str) -> bool:
        return any(q.image.sha256 == sha256 for q in self._items)

    def add(self, item: Queued) -> bool:
        """Queue an image; True when the queue now fills a batch (time to `explain()`)."""
        self._items.append(item)
        self._windows += self.windows_of(item.image)
        return self._windows >= self.batch_size

    def clear(self) -> None:
        self._items, self._windows = [], 0

    def windows_of(self, image: DecodedImage) -> int:
        w, h = working_size(image.width, image.height, self.settings.max_pixels)
        s = self.settings
        return WindowGrid(h, w, s.stride, s.small, s.large, s.layout).n_windows

    def explain(self) -> list[Explained]:
        """Explain the queued images together and empty the queue."""
        group = self._items
        self.clear()
        if not group:
            return []
        try:
            explanations = self._engine().explain_many([q.image.pixels for q in group], [q.image.size for q in group])
        except (ConvisError, RuntimeError, ValueError, MemoryError):
            return [self._alone(q) for q in group]  # find the image at fault
        for q in group:  # explained: the decoded pixels go now, not when the writes are done (path, hash, size stay)
            q.image = replace(q.image, pixels=_NO_PIXELS, full_size=q.image.size)
        return [Explained(q, e) for q, e in zip(group, explanations)]

    def _alone(self, item: Queued) -> Explained:
        try:
            return Explained(item, self._engine().explain_pixels(item.image.pixels, size=item.image.size))
        except ConvisError as exc:
            return Explained(item, reason=str(exc))
        except (RuntimeError, ValueError, MemoryError) as exc:  # model/device failures on this one image
            log.exception("failed on %s", item.outcome.path)
            return Explained(item, reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

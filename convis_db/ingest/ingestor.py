"""The ingest run: plan (plan.py), explain (explaining.py) and store (storing.py), file by file.

`Ingestor` holds the read-write connection, the database's profile (its model and this run's
settings, from convis_db.profile) and, once needed, the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import duckdb
import torch

from convis_db.engine.explainer import ConceptEngine, default_batch_size
from convis_db.engine.images import read_image
from convis_db.errors import ConvisError, Terminated
from convis_db.ingest.explaining import ExplainQueue, Queued
from convis_db.ingest.plan import IngestPlan, collect_image_paths
from convis_db.ingest.report import IngestOutcome, IngestReport
from convis_db.ingest.signals import StopOnSignal
from convis_db.ingest.storing import ImageStorer
from convis_db.models.precision import resolve_precision
from convis_db.profile import SettingsRequest, read_profile
from convis_db.progress import Progress, no_progress
from convis_db.store.concept_index import index_lacks_image_level, refresh_concept_index, reindex_from_scores
from convis_db.store.db import connect
from convis_db.store.image_store import images_without_image_level, write_image_level

log = logging.getLogger(__name__)


class Ingestor:
    """One ingest run against one database opened for writing.

    `settings` is complete Settings, or the options a user gave (a dict; None for one not given),
    completed from the database's stored settings (see DatabaseProfile.settings_for). `precision`
    (None: the device's default) is the image encoder's, recorded with each image. `model` and
    `pretrained` name the model to use (default: the database's). `con`: a read-write connection
    to use (and leave open) instead of opening the file.
    """

    def __init__(self, db_path: str | Path, *, model: str | None = None, pretrained: str | None = None,
                 device: torch.device, settings: SettingsRequest = None, batch_size: int | None = None,
                 progress: Progress = no_progress, retry_failed: bool = False, decode_threads: int = 2,
                 precision: str | None = None, con: duckdb.DuckDBPyConnection | None = None):
        self.db_path = str(db_path)
        self.device = device
        self.precision = resolve_precision(precision, device)  # before opening: an impossible one changes nothing
        self.batch_size = batch_size or default_batch_size(device)
        self.progress = progress
        self.retry_failed = retry_failed
        self.decode_threads = decode_threads
        # A Database's own read-write connection (convis_db.api), kept open after the run; else one of ours.
        self._owns_con = con is None
        self.con = connect(db_path, write=True) if con is None else con
        try:
            self.profile = read_profile(self.con, self.db_path, model=model, pretrained=pretrained)
            self.settings = self.profile.settings_for(settings)
        except BaseException:
            self.close()
            raise
        log.info("opened %s for writing (other processes can open it once this run ends)", self.db_path)
        self._engine: ConceptEngine | None = None
        self._windows_explained = 0  # for the progress bar's windows/s (queued images count when explained)

    @property
    def model_id(self) -> int:
        return self.profile.model_id

    @property
    def spec(self):
        return self.profile.spec

    def close(self) -> None:
        if self._owns_con:
            self.con.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def engine(self) -> ConceptEngine:
        if self._engine is None:
            self._engine = self.profile.build_engine(self.con, self.device, self.precision, settings=self.settings,
                                                     batch_size=self.batch_size)
        return self._engine

    # -- the run ---------------------------------------------------------------------------------
    def run(self, inputs: Iterable[str | Path], recursive: bool = False) -> IngestReport:
        t0 = time.perf_counter()
        files, problems = collect_image_paths(inputs, recursive)
        report = IngestReport(outcomes=list(problems), model=self.spec.label, precision=self.precision,
                              settings=self.settings.as_dict())
        plan = IngestPlan(self.con, self.retry_failed, self.decode_threads, work_pixels=self.settings.max_pixels)
        queue = ExplainQueue(self.engine, self.settings, self.batch_size)
        with self.progress("Ingesting", len(files), "img") as tick, StopOnSignal() as stop, \
                ImageStorer(self.con, self.db_path, self.model_id, self.settings, self.precision) as storer:
            try:
                with closing(plan.decoded(files)) as decoded:
                    for path, future in decoded:
                        if stop.requested.is_set():
                            break
                        report.outcomes.append(self._one(path, future, plan, queue, storer, report, stop))
                        secs = max(time.perf_counter() - t0, 1e-9)
                        tick(1, windows_per_s=f"{self._windows_explained / secs:.0f}")
                    if not stop.requested.is_set():
                        self._flush(queue, storer, report, stop)  # the last group of small images
                    storer.settle(report)  # the last image's write
            except KeyboardInterrupt as exc:  # a second Ctrl-C, or a second SIGTERM under the CLI (Terminated)
                storer.abort()
                self._rollback_open_transaction()
                report.interrupted = True
                report.stopped_by = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
            if stop.requested.is_set():
                report.interrupted = True
                report.stopped_by = stop.signal_name
            queue.clear()
            # Files read but never explained or written (a stop came first) are not reported as done.
            report.outcomes = [o for o in report.outcomes if o.status != "pending"]
        if report.interrupted:
            log.info("interrupted: stopped after %d of %d files; every stored image is whole",
                     len(report.outcomes) - len(problems), len(files))
        if report.count("ingested") or not report.interrupted:
            with self.progress("Indexing concepts", 1, "run") as tick:
                refresh_concept_index(self.con)
                tick(1)
        report.seconds = time.perf_counter() - t0
        return report

    def _one(self, path: Path, future, plan: IngestPlan, queue: ExplainQueue, storer: ImageStorer,
             report: IngestReport, stop: StopOnSignal) -> IngestOutcome:
        """The outcome of one file: final for a skipped or failed file; "pending" for an image queued
        for explaining (with other small images, in shared encoder batches) and writing, updated in
        place when its write completes."""
        t0 = time.perf_counter()
        outcome, image = plan.admit(path, future)
        if outcome is not None:
            return outcome
        key = str(path.absolute())
        if queue.holds(image.sha256) or storer.pending_sha == image.sha256:
            self._flush(queue, storer, report, stop)  # its twin is on its way into the database: let it arrive
            storer.settle(report)
        stored = plan.already_stored(key, image)
        if stored is not None:
            return stored
        outcome = IngestOutcome(key, "pending")
        if queue.add(Queued(outcome, image, t0)):
            self._flush(queue, storer, report, stop)
        return outcome

    def _flush(self, queue: ExplainQueue, storer: ImageStorer, report: IngestReport, stop: StopOnSignal) -> None:
        """Explain the queued images together, then hand each one's write to the writer in order."""
        for done in queue.explain():
            item = done.item
            if done.explanation is None:
                storer.fail(item.outcome, item.image.sha256, done.reason)
                continue
            self._windows_explained += done.explanation.grid.n_windows
            # The previous image's write has overlapped this compute; wait for it, then hand this one
            # over, so at most one write is in flight and outcomes are final in file order.
            storer.settle(report)
            if stop.requested.is_set():
                return  # Ctrl-C came during the compute: stop after the write in flight
            storer.submit(item.outcome, item.image.sha256, done.explanation, item.t0)

    def _rollback_open_transaction(self) -> None:
        """After a KeyboardInterrupt inside write_image: drop its half-written transaction, if any."""
        try:
            self.con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # no transaction was open

    # -- image-level backfill --------------------------------------------------------------------
    def backfill_image_level(self) -> IngestReport:
        """Add the image-level scores (one whole-image encoder pass each) to stored images that lack them
        (ingested before schema 005), reading each image's file again.

        Re-ingesting cannot do it (stored files are skipped by content hash). A file that is gone or
        changed since it was ingested (its sha256 differs) is reported as failed and left as it is; each
        image is updated in one transaction, and concept_index is rewritten once at the end.
        """
        t0 = time.perf_counter()
        todo = images_without_image_level(self.con)
        report = IngestReport(model=self.spec.label, settings=self.settings.as_dict())
        with self.progress("Image-level scores", len(todo), "img") as tick, StopOnSignal() as stop:
            for image in todo:
                if stop.requested.is_set():
                    report.interrupted, report.stopped_by = True, stop.signal_name
                    break
                report.outcomes.append(self._backfill_one(image))
                tick(1)
        if report.count("backfilled") or index_lacks_image_level(self.con):  # the latter: after a killed run
            with self.progress("Indexing concepts", 1, "run") as tick:
                refresh_concept_index(self.con)
                reindex_from_scores(self.con)
                tick(1)
        log.info("image-level scores: %d images backfilled, %d failed, %d left", report.count("backfilled"),
                 report.count("failed"), len(todo) - len(report.outcomes))
        report.seconds = time.perf_counter() - t0
        return report

    def _backfill_one(self, image) -> IngestOutcome:
        t0 = time.perf_counter()
        try:
            decoded = read_image(image.path)
        except ConvisError as exc:
            return IngestOutcome(image.path, "failed", image.image_id,
                                 reason=f"cannot read the file of stored image {image.image_id} ({exc}); restore it "
                                        "at that path and run again.")
        if decoded.sha256 != image.sha256:
            return IngestOutcome(image.path, "failed", image.image_id,
                                 reason=f"the file changed since it was ingested as image {image.image_id} (sha256 "
                                        "differs); restore the original file and run again.")
        level = self.engine().image_level(decoded.pixels)
        write_image_level(self.con, image.image_id, level)
        return IngestOutcome(image.path, "backfilled", image.image_id, seconds=time.perf_counter() - t0)

"""`ingest`: explain image files and store them, idempotently (by content hash), one transaction each.

A bad file is recorded in ingest_failures with its reason and the run goes on. Files that failed
before are skipped unless `retry_failed`. Decoding runs in background threads so the model never
waits for the disk.

Crash safety: each image (its row, windows, scores and window concepts) is written in one
transaction, so a killed process leaves every stored image whole, and a re-run skips what is stored
(by content hash) and does the rest. A first Ctrl-C (SIGINT) lets the image in hand finish and stops
before the next one; a second one stops at once (the open transaction is rolled back).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import torch

from convis_db.engine.capacity import check_fits
from convis_db.engine.explainer import ConceptEngine, default_batch_size
from convis_db.engine.images import IMAGE_SUFFIXES, DecodedImage, read_image
from convis_db.engine.settings import Settings
from convis_db.errors import ConvisError, DatabaseError, UsageError
from convis_db.models.clip import load_model
from convis_db.models.precision import resolve_precision
from convis_db.models.registry import ModelSpec, resolve_model
from convis_db.progress import Progress, no_progress
from convis_db.store.concept_index import index_lacks_image_level, refresh_concept_index, reindex_from_scores
from convis_db.store.db import connect, require_initialised
from convis_db.store.hierarchy_store import load_hierarchy
from convis_db.store.image_store import (database_layout, failed_paths, find_by_sha, images_without_image_level,
                                        record_failure, stored_profile, write_image, write_image_level)
from convis_db.store.model_store import find_model_id, load_definition_embeddings, model_row, pick_model, spec_from_row

log = logging.getLogger(__name__)


@dataclass
class IngestOutcome:
    path: str
    status: str              # ingested | skipped | failed | backfilled (image-level scores added)
    image_id: int | None = None
    n_windows: int = 0
    seconds: float = 0.0
    reason: str = ""


@dataclass
class IngestReport:
    outcomes: list[IngestOutcome] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by: str | None = None   # SIGINT or SIGTERM when a signal stopped the run
    model: str = ""
    precision: str = ""      # the image encoder's, recorded with every image ingested
    settings: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def windows(self) -> int:
        return sum(o.n_windows for o in self.outcomes if o.status == "ingested")

    def summary(self) -> dict:
        secs = max(self.seconds, 1e-9)
        return {
            "ingested": self.count("ingested"), "skipped": self.count("skipped"), "failed": self.count("failed"),
            "backfilled": self.count("backfilled"),
            "windows": self.windows, "seconds": round(self.seconds, 3),
            "images_per_s": round(self.count("ingested") / secs, 3), "windows_per_s": round(self.windows / secs, 1),
            "interrupted": self.interrupted, "stopped_by": self.stopped_by, "model": self.model,
            "precision": self.precision, "settings": self.settings,
            "stage_seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }


def collect_image_paths(inputs: Iterable[str | Path], recursive: bool) -> tuple[list[Path], list[IngestOutcome]]:
    """Expand files and folders into image paths (sorted per folder); report inputs that cannot be used.

    Symlinked folders are followed once each (by real path), so symlink loops end. A symlink named
    like an image whose target is missing is kept, so that it is reported rather than silently
    dropped.
    """
    files: list[Path] = []
    problems: list[IngestOutcome] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            if not recursive:
                entries = sorted(c for c in p.iterdir() if _is_candidate(c))
                if not entries:
                    problems.append(IngestOutcome(str(p), "failed", reason="folder holds no image files at its top "
                                                  "level; pass --recursive to look in subfolders."))
                files.extend(entries)
                continue
            seen: set[str] = set()
            for root, dirs, names in os.walk(p, followlinks=True):
                real = os.path.realpath(root)
                if real in seen:
                    dirs[:] = []
                    continue
                seen.add(real)
                dirs.sort()
                for name in sorted(names):
                    f = Path(root) / name
                    if _is_candidate(f):
                        files.append(f)
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            problems.append(IngestOutcome(str(p), "failed", reason="no such file or folder."))
    return files, problems


def _is_candidate(path: Path) -> bool:
    """An image file by its suffix: a regular file, or a symlink (a broken one is reported later)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or path.is_symlink())


class _StopOnSignal:
    """While active (main thread only), a first SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler's stop)
    sets `requested` instead of ending the process, so the image in hand is finished and stored; the
    previous handlers are put back at once, so a second signal acts as usual (Ctrl-C raises
    KeyboardInterrupt, a second SIGTERM terminates; the open transaction is then rolled back)."""

    SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.requested.set()
        self.signal_name = signal.Signals(signum).name
        self._restore()
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send SIGTERM again"
        log.warning("%s: finishing the current image, then stopping (%s to stop at once)", self.signal_name, again)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                try:
                    self._previous[signum] = signal.signal(signum, self._handle)
                except ValueError:  # not allowed here (e.g. an embedded interpreter)
                    pass
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


class _PipelinedWriter:
    """Writes one image while the next is being explained: a single database-writer thread with its
    own connection (a DuckDB cursor), at most one write in flight.

    Each write is still one transaction (write_image), so crash safety is unchanged; outcomes are
    recorded in file order because the caller waits for write i before handing over write i+1.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple | None = None

    def __enter__(self) -> _PipelinedWriter:
        self._cursor = self._con.cursor()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-write")
        return self

    def __exit__(self, *exc) -> None:
        if self._pending is not None:  # only after an error: let the write end before closing
            self.abort()
        self._pool.shutdown(wait=True)
        self._cursor.close()

    @property
    def pending_sha(self) -> str | None:
        return self._pending[1] if self._pending else None

    def submit(self, outcome, sha: str, exp, t0: float, write) -> None:
        assert self._pending is None, "wait() for the write in flight first"
        future = self._pool.submit(write, self._cursor)
        self._pending = (outcome, sha, exp, t0, future)

    def wait(self):
        """(outcome, sha, explanation, t0, result) of the write in flight, after it ends; None if none.
        `result()` returns the image id or raises what the write raised."""
        if self._pending is None:
            return None
        outcome, sha, exp, t0, future = self._pending
        self._pending = None
        future.exception()  # wait; a KeyboardInterrupt here leaves the write to abort()
        return outcome, sha, exp, t0, future.result

    def abort(self) -> None:
        """Interrupt the write in flight (its transaction rolls back) and wait for the thread."""
        if self._pending is None:
            return
        future = self._pending[-1]
        self._pending = None
        try:
            self._cursor.interrupt()
        except duckdb.Error:
            pass
        try:
            future.result()
        except BaseException:  # noqa: BLE001 - interrupted on purpose
            pass
        try:
            self._cursor.execute("ROLLBACK")
        except duckdb.Error:
            pass  # the transaction had committed or rolled back already


class Ingestor:
    """Holds the database connection, the model and the engine for one ingest run.

    `settings` are complete settings to use; `options` are the settings options the user gave (None
    for one not given), completed from the database's stored settings when it has images, so that
    repeating one of them is not mistaken for a change. `precision` (None: the device's default) is
    the image encoder's, recorded with each image.
    """

    def __init__(self, db_path: str | Path, *, model: str | None = None, pretrained: str | None = None,
                 device: torch.device, settings: Settings | None = None, batch_size: int | None = None,
                 progress: Progress = no_progress, retry_failed: bool = False, decode_threads: int = 2,
                 options: dict[str, int | None] | None = None, precision: str | None = None):
        self.db_path = str(db_path)
        self.device = device
        self.precision = resolve_precision(precision, device)  # before opening: an impossible one changes nothing
        self.batch_size = batch_size or default_batch_size(device)
        self.progress = progress
        self.retry_failed = retry_failed
        self.decode_threads = decode_threads
        self.con = connect(db_path, write=True)
        try:
            n_synsets = require_initialised(self.con, db_path)
            self.model_id, self.spec = self._choose_model(model, pretrained)
            if settings is not None:  # compared with the stored settings as it will be stored
                settings = self._fit_top_k(settings, n_synsets, options)
            self.settings = self._fit_top_k(self._choose_settings(settings, options), n_synsets, options)
            check_fits(self.settings, n_synsets)
        except BaseException:
            self.con.close()
            raise
        log.info("opened %s for writing (other processes can open it once this run ends)", self.db_path)
        self._engine: ConceptEngine | None = None
        self._stop: threading.Event | None = None
        self._group: list[tuple[IngestOutcome, DecodedImage, float]] = []  # small images explained together
        self._group_windows = 0
        self._windows_explained = 0  # for the progress bar's windows/s (queued images count when explained)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- configuration ---------------------------------------------------------------------------
    def _choose_model(self, model: str | None, pretrained: str | None) -> tuple[int, ModelSpec]:
        if model:
            spec = resolve_model(model, pretrained or "openai")
            mid = find_model_id(self.con, spec)
            if mid is None:
                raise DatabaseError(
                    f"model {spec.label} is not in {self.db_path}. Embed its definitions first: "
                    f"convis-db --db {self.db_path} init --model {model} --pretrained {spec.pretrained}"
                )
            pick_model(self.con, spec)
        else:
            mid = pick_model(self.con, None)
            row = model_row(self.con, mid)
            spec = spec_from_row(row)
        profile = stored_profile(self.con)
        if profile and profile[0] != mid:
            other = model_row(self.con, profile[0])
            raise DatabaseError(
                f"{self.db_path} holds images explained with {other['name']} / {other['pretrained']}; one database "
                f"holds one model's explanations. Use that model, or another --db for {spec.label}."
            )
        return mid, spec

    def _choose_settings(self, requested: Settings | None, options: dict[str, int | None] | None = None) -> Settings:
        """The settings of this run; the window layout is always the database's (one per database)."""
        chosen = self._choose_user_settings(requested, options)
        layout = database_layout(self.con)
        if layout != chosen.layout:
            chosen = dataclasses.replace(chosen, layout=layout)
        if layout == "origin":
            log.info("%s uses the 'origin' window layout (made before equal window coverage): new images use it "
                     "too, so that all scores stay comparable. For equal coverage of every pixel, ingest into a "
                     "new database.", self.db_path)
        return chosen

    def _choose_user_settings(self, requested: Settings | None, options: dict[str, int | None] | None) -> Settings:
        given = {k: v for k, v in (options or {}).items() if v is not None}
        profile = stored_profile(self.con)
        if profile is None:
            if requested is not None:
                return requested
            return parse_settings(**_option_args(given)) or Settings()
        stored = profile[1]
        asked = requested if requested is not None else (
            parse_settings(**_option_args(given), base=stored) if given else None)
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

    @staticmethod
    def _fit_top_k(settings: Settings, n_synsets: int, options: dict[str, int | None] | None) -> Settings:
        """The default top-K (100) is cut to |T| for a small vocabulary, so the stored setting says how
        many concepts each window really keeps (and regions_with_exact_above stays >= 0); a --top-k
        the user asked for above |T| is refused by check_fits."""
        asked = (options or {}).get("top_k") is not None or settings.top_k != Settings().top_k
        if settings.top_k > n_synsets and not asked:
            log.info("top-k %d cut to the %d concepts of T", settings.top_k, n_synsets)
            return dataclasses.replace(settings, top_k=n_synsets)
        return settings

    def engine(self) -> ConceptEngine:
        if self._engine is None:
            loaded = load_model(self.spec, self.device, self.precision)
            defs = load_definition_embeddings(self.con, self.model_id)
            levels = load_hierarchy(self.con).propagation_levels
            self._engine = ConceptEngine(loaded, defs, levels, self.settings, batch_size=self.batch_size)
        return self._engine

    # -- the run ---------------------------------------------------------------------------------
    def run(self, inputs: Iterable[str | Path], recursive: bool = False) -> IngestReport:
        t0 = time.perf_counter()
        files, problems = collect_image_paths(inputs, recursive)
        report = IngestReport(outcomes=list(problems), model=self.spec.label, precision=self.precision,
                              settings=self.settings.as_dict())
        previously_failed = set() if self.retry_failed else failed_paths(self.con)
        with self.progress("Ingesting", len(files), "img") as tick, _StopOnSignal() as stop, \
                _PipelinedWriter(self.con) as writer:
            self._stop = stop.requested
            try:
                with closing(self._decoded(files, previously_failed)) as queue:
                    for path, decoded in queue:
                        if stop.requested.is_set():
                            break
                        report.outcomes.append(self._one(path, decoded, previously_failed, report, writer))
                        secs = max(time.perf_counter() - t0, 1e-9)
                        tick(1, windows_per_s=f"{self._windows_explained / secs:.0f}")
                    if not stop.requested.is_set():
                        self._flush(writer, report)  # the last group of small images
                    self._settle(writer, report)  # the last image's write
            except KeyboardInterrupt:
                writer.abort()
                self._rollback_open_transaction()
                report.interrupted = True
                report.stopped_by = "SIGINT"
            if stop.requested.is_set():
                report.interrupted = True
                report.stopped_by = stop.signal_name
            self._group = []
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
        with self.progress("Image-level scores", len(todo), "img") as tick, _StopOnSignal() as stop:
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

    def _rollback_open_transaction(self) -> None:
        """After a KeyboardInterrupt inside write_image: drop its half-written transaction, if any."""
        try:
            self.con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # no transaction was open

    def _decoded(self, files: list[Path], skip: set[str]) -> Iterator[tuple[Path, Future | None]]:
        """Yield (path, future of DecodedImage) with a few decodes running ahead in threads; files in
        `skip` (failed before) are not read at all (their future is None)."""
        ahead = max(1, self.decode_threads * 2)
        with ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="decode") as pool:
            futures: list[tuple[Path, Future | None]] = []
            try:
                for path in files:
                    skipped = str(path.absolute()) in skip
                    futures.append((path, None if skipped else pool.submit(read_image, path)))
                    if len(futures) > ahead:
                        yield futures.pop(0)
                while futures:
                    yield futures.pop(0)
            finally:  # stopped early: do not decode what will not be used
                for _, future in futures:
                    if future is not None:
                        future.cancel()

    def _one(self, path: Path, decoded: Future | None, previously_failed: set[str],
             report: IngestReport, writer: _PipelinedWriter) -> IngestOutcome:
        """The outcome of one file: final for a skipped or failed file; "pending" for an image queued
        for explaining (with other small images, in shared encoder batches) and writing, updated in
        place when its write completes."""
        key = str(path.absolute())
        if decoded is None or key in previously_failed:
            return IngestOutcome(key, "skipped", reason="failed before; re-run with --retry-failed to try again.")
        t0 = time.perf_counter()
        try:
            image: DecodedImage = decoded.result()
        except ConvisError as exc:
            reason = str(exc)
            record_failure(self.con, key, None, reason)
            log.info("failed %s: %s", key, reason)
            return IngestOutcome(key, "failed", reason=reason)
        if image.sha256 in {queued.sha256 for _, queued, _ in self._group} or writer.pending_sha == image.sha256:
            self._flush(writer, report)  # its twin is on its way into the database: let it arrive
            self._settle(writer, report)
        existing = find_by_sha(self.con, image.sha256)
        if existing is not None:
            return IngestOutcome(key, "skipped", existing.image_id,
                                 reason=f"already stored as image {existing.image_id} ({existing.path}).")
        outcome = IngestOutcome(key, "pending")
        self._group.append((outcome, image, t0))
        self._group_windows += self._windows_of(image)
        if self._group_windows >= self.batch_size:
            self._flush(writer, report)
        return outcome

    def _windows_of(self, image: DecodedImage) -> int:
        from convis_db.engine.windows import WindowGrid, working_size

        w, h = working_size(image.width, image.height, self.settings.max_pixels)
        s = self.settings
        return WindowGrid(h, w, s.stride, s.small, s.large, s.layout).n_windows

    def _flush(self, writer: _PipelinedWriter, report: IngestReport) -> None:
        """Explain the queued images together, then hand each one's write to the writer in order."""
        group, self._group, self._group_windows = self._group, [], 0
        if not group:
            return
        try:
            explanations = self.engine().explain_many([image.pixels for _, image, _ in group])
        except (ConvisError, RuntimeError, ValueError, MemoryError):
            if len(group) == 1:
                explanations = [self._explain_alone(*group[0])]
            else:  # find the image at fault: explain them one by one
                explanations = [self._explain_alone(*item) for item in group]
        for (outcome, image, t0), exp in zip(group, explanations):
            if exp is None:
                continue
            self._windows_explained += exp.grid.n_windows
            # The previous image's write has overlapped this compute; wait for it, then hand this one
            # over, so at most one write is in flight and outcomes are final in file order.
            self._settle(writer, report)
            if self._stop is not None and self._stop.is_set():
                return  # Ctrl-C came during the compute: stop after the write in flight
            key, sha = outcome.path, image.sha256
            writer.submit(outcome, sha, exp, t0,
                          lambda cursor, exp=exp, sha=sha, key=key: write_image(cursor, exp, sha, key, self.model_id,
                                                                                self.settings, self.precision))

    def _explain_alone(self, outcome: IngestOutcome, image: DecodedImage, t0: float):
        """explain_pixels for one image; a failure is recorded on its outcome (returns None)."""
        try:
            return self.engine().explain_pixels(image.pixels)
        except ConvisError as exc:
            reason = str(exc)
        except (RuntimeError, ValueError, MemoryError) as exc:  # model/device failures on this one image
            log.exception("failed on %s", outcome.path)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        record_failure(self.con, outcome.path, image.sha256, reason)
        outcome.status, outcome.reason = "failed", reason
        return None

    def _settle(self, writer: _PipelinedWriter, report: IngestReport) -> None:
        """Wait for the write in flight, if any, and complete its outcome."""
        done = writer.wait()
        if done is None:
            return
        outcome, sha, exp, t0, result = done
        key = outcome.path
        try:
            image_id = result()
        except ConvisError as exc:
            reason = str(exc)
            record_failure(self.con, key, sha, reason)
            outcome.status, outcome.reason = "failed", reason
            return
        except duckdb.InterruptException as exc:  # DuckDB noticed a (second) Ctrl-C; it rolled back
            raise KeyboardInterrupt from exc
        except duckdb.Error as exc:  # the database itself failed (disk full, ...): later images would too
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            fix = ("The disk is full: free space on the disk that holds it" if "no space left" in cause.lower()
                   else "Fix the cause")
            raise DatabaseError(
                f"writing {key} to {self.db_path} failed ({cause}); that image was rolled back and every image "
                f"stored before it is whole. {fix}, then run the same command again."
            ) from exc
        for stage, secs in exp.timings.items():
            report.timings[stage] = report.timings.get(stage, 0.0) + secs
        log.info("ingested %s as image %d (%d windows)", key, image_id, exp.grid.n_windows)
        outcome.status, outcome.image_id = "ingested", image_id
        outcome.n_windows, outcome.seconds = exp.grid.n_windows, time.perf_counter() - t0


_OPTION_NAMES = ("stride", "small", "large", "max_pixels", "top_k")


def _option_args(given: dict[str, int]) -> dict[str, int | None]:
    unknown = set(given) - set(_OPTION_NAMES)
    if unknown:
        raise UsageError(f"unknown settings {sorted(unknown)}; valid: {', '.join(_OPTION_NAMES)}.")
    return {k: given.get(k) for k in _OPTION_NAMES}


def parse_settings(stride: int | None, small: int | None, large: int | None, max_pixels: int | None,
                   top_k: int | None, base: Settings | None = None) -> Settings | None:
    """Settings from CLI options; None when no option was given (use the database's or the defaults)."""
    if all(v is None for v in (stride, small, large, max_pixels, top_k)):
        return base
    b = base or Settings()
    try:
        return Settings(
            max_pixels=max_pixels if max_pixels is not None else b.max_pixels,
            stride=stride if stride is not None else b.stride,
            small=small if small is not None else b.small,
            large=large if large is not None else b.large,
            top_k=top_k if top_k is not None else b.top_k,
            layout=b.layout,
        )
    except UsageError:
        raise

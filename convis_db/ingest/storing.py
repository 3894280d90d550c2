"""Storing explained images: one transaction per image (write_image), written by one thread while
the next image is explained, outcomes completed in file order; failures recorded in ingest_failures."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb

from convis_db.engine.settings import Settings
from convis_db.errors import ConvisError, DatabaseError
from convis_db.ingest.report import IngestOutcome, IngestReport
from convis_db.store.db import cursor
from convis_db.store.image_store import record_failure, write_image

log = logging.getLogger(__name__)


class PipelinedWriter:
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

    def __enter__(self) -> PipelinedWriter:
        self._cursor = cursor(self._con)
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


class ImageStorer:
    """Hands explained images to a PipelinedWriter and completes their outcomes in the report."""

    def __init__(self, con: duckdb.DuckDBPyConnection, db_path: str, model_id: int, settings: Settings,
                 precision: str):
        self.con = con
        self.db_path = db_path
        self.model_id = model_id
        self.settings = settings
        self.precision = precision
        self.writer: PipelinedWriter | None = None

    def __enter__(self) -> ImageStorer:
        self.writer = PipelinedWriter(self.con).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.writer.__exit__(*exc)

    @property
    def pending_sha(self) -> str | None:
        return self.writer.pending_sha

    def fail(self, outcome: IngestOutcome, sha256: str | None, reason: str) -> None:
        """Record a file as failed (skipped by later runs unless retried)."""
        record_failure(self.con, outcome.path, sha256, reason)
        log.info("failed %s: %s", outcome.path, reason)
        outcome.status, outcome.reason = "failed", reason

    def submit(self, outcome: IngestOutcome, sha256: str, exp, t0: float) -> None:
        """Start writing one image (after the write in flight has been settled)."""
        key = outcome.path
        self.writer.submit(outcome, sha256, exp, t0,
                           lambda cursor: write_image(cursor, exp, sha256, key, self.model_id, self.settings,
                                                      self.precision))

    def abort(self) -> None:
        self.writer.abort()

    def settle(self, report: IngestReport) -> None:
        """Wait for the write in flight, if any, and complete its outcome."""
        done = self.writer.wait()
        if done is None:
            return
        outcome, sha, exp, t0, result = done
        key = outcome.path
        try:
            image_id = result()
        except ConvisError as exc:
            self.fail(outcome, sha, str(exc))
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
        report.add_timings(exp.timings)
        log.info("ingested %s as image %d (%d windows)", key, image_id, exp.grid.n_windows)
        outcome.status, outcome.image_id = "ingested", image_id
        outcome.n_windows, outcome.seconds = exp.grid.n_windows, time.perf_counter() - t0

"""Planning an ingest: which files, which to skip (failed before, already stored), and reading them
ahead of the model.

Nothing here runs the model or writes an image; a file that cannot be read is recorded as failed
(`record_failure`) so that later runs skip it unless asked to retry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb

from convis_db.engine.images import IMAGE_SUFFIXES, DecodedImage, PixelBudget, decode_cost, read_image
from convis_db.errors import ConvisError
from convis_db.ingest.report import IngestOutcome
from convis_db.store.image_store import failed_paths, find_by_sha, record_failure


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


#: Decoded pixels that an ingest reads ahead of the model at most (an image larger than this is read
#: alone). 64 Mpx hold about 256 MB while decoding (PIL keeps 4 bytes a pixel).
DECODE_BUDGET_PIXELS = 64_000_000


def decode_ahead(files: list[Path], decode_threads: int, work_pixels: int | None, budget: PixelBudget,
                 skip: Callable[[Path], bool] = lambda path: False) -> Iterator[tuple[Path, Future | None]]:
    """Yield (path, future of DecodedImage) in file order, with a few decodes running ahead in threads:
    the one read-ahead of a plain ingest and of a Ray shard worker. Files for which `skip` is true are
    not read (their future is None).

    Ahead means at most 2 x decode_threads files and, together, at most the budget's pixels (by
    each file's header: what its decode holds). A file's pixels count from its submission until
    the consumer asks for the next file (by then its image is explained, or queued with other
    small ones); the generator never waits for the budget with a decode of its own in hand.
    `work_pixels` (the run's max_pixels) lets big originals be decoded reduced to no less than their
    working size (engine.images.decode_bytes)."""
    ahead = max(1, decode_threads * 2)
    with ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode") as pool:
        futures: list[tuple[Path, Future | None, int]] = []
        try:
            for path in files:
                skipped = skip(path)
                cost = 0 if skipped else decode_cost(path, work_pixels)
                while futures and (len(futures) >= ahead or not budget.fits(cost)):
                    yield from _hand_over(futures.pop(0), budget)
                budget.take(cost)  # fits, or nothing else is in flight: never waits
                future = None if skipped else pool.submit(read_image, path, work_pixels)
                futures.append((path, future, cost))
            while futures:
                yield from _hand_over(futures.pop(0), budget)
        finally:  # stopped early: do not decode what will not be used
            for _, future, cost in futures:
                if future is not None:
                    future.cancel()
                budget.give(cost)


def _hand_over(item: tuple[Path, Future | None, int], budget: PixelBudget) -> Iterator[tuple[Path, Future | None]]:
    path, future, cost = item
    try:
        yield path, future
    finally:
        budget.give(cost)


class IngestPlan:
    """Decides, file by file, what an ingest does with it: skip it (failed before, or its content is
    stored already), record it as failed (unreadable), or hand its decoded image on.

    `work_pixels` (the run's max_pixels) lets big originals be decoded reduced to no less than their
    working size (engine.images.decode_bytes); `budget_pixels` bounds the pixels being decoded or
    waiting for the model, so a batch of huge photos is read one or two at a time, not four."""

    def __init__(self, con: duckdb.DuckDBPyConnection, retry_failed: bool = False, decode_threads: int = 2,
                 work_pixels: int | None = None, budget_pixels: int = DECODE_BUDGET_PIXELS):
        self.con = con
        self.decode_threads = decode_threads
        self.work_pixels = work_pixels
        self.budget = PixelBudget(budget_pixels)
        self.previously_failed: set[str] = set() if retry_failed else failed_paths(con)

    def decoded(self, files: list[Path]) -> Iterator[tuple[Path, Future | None]]:
        """Yield (path, future of DecodedImage) with a few decodes running ahead in threads, within
        this run's pixel budget (decode_ahead); files that failed before are not read at all (their
        future is None)."""
        return decode_ahead(files, self.decode_threads, self.work_pixels, self.budget,
                            skip=lambda path: str(path.absolute()) in self.previously_failed)

    def admit(self, path: Path, decoded: Future | None) -> tuple[IngestOutcome | None, DecodedImage | None]:
        """(final outcome, None) for a file skipped as failed before or failing to decode (recorded);
        else (None, the decoded image)."""
        key = str(path.absolute())
        if decoded is None or key in self.previously_failed:
            return IngestOutcome(key, "skipped", reason="failed before; re-run with --retry-failed to try again."), None
        try:
            return None, decoded.result()
        except ConvisError as exc:
            reason = str(exc)
            record_failure(self.con, key, None, reason)
            return IngestOutcome(key, "failed", reason=reason), None

    def already_stored(self, key: str, image: DecodedImage) -> IngestOutcome | None:
        """The 'skipped' outcome of an image whose content (sha256) is stored already, else None."""
        existing = find_by_sha(self.con, image.sha256)
        if existing is None:
            return None
        return IngestOutcome(key, "skipped", existing.image_id,
                             reason=f"already stored as image {existing.image_id} ({existing.path}).")

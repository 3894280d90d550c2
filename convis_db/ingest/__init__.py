"""`ingest`: explain image files and store them, idempotently (by content hash), one transaction each.

A bad file is recorded in ingest_failures with its reason and the run goes on. Files that failed
before are skipped unless `retry_failed`. Decoding runs in background threads so the model never
waits for the disk.

Crash safety: each image (its row, windows, scores and window concepts) is written in one
transaction, so a killed process leaves every stored image whole, and a re-run skips what is stored
(by content hash) and does the rest. A first Ctrl-C (SIGINT) lets the image in hand finish and stops
before the next one; a second one stops at once (the open transaction is rolled back).

The parts, one job each: `plan` (which files, which to skip, reading ahead), `explaining` (small
images explained together), `storing` (the pipelined writer and failures), `ingestor` (the run).
"""

from convis_db.ingest.ingestor import Ingestor
from convis_db.ingest.plan import collect_image_paths
from convis_db.ingest.report import IngestOutcome, IngestReport

__all__ = ["IngestOutcome", "IngestReport", "Ingestor", "collect_image_paths"]

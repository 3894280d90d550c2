"""`ingest --engine ray`: explain shards of files in a Ray Data actor pool, merge them in order.

The driver (the process that runs the command) holds the database: it reads the model, the settings,
the definitions and the hierarchy once, lists the files, cuts them into shards (fixed runs of
`shard_size` files, named by a hash of their paths), and builds a Ray Data pipeline over the file
list, one row per shard. `map_batches` runs `_ShardActor` in a fixed-size actor pool
(`ActorPoolStrategy`), one shard per call (`batch_size=1`: a shard is already a batch of images), with
one GPU per actor when the cluster has GPUs. Each actor loads the model once and writes its shards
to `shards_dir` (which every node must reach: local disk for one machine, shared storage on a
cluster). As shards finish the driver merges them into the database in shard order, one transaction
each, so image ids follow file order as in a plain ingest.

Resuming: finished shards on disk are not explained again, merged ones are not read again, and files
whose content the database holds already are skipped by the workers (content hash), so a killed job
re-run with the same command does only what is left.

This is the only module that imports Ray (optional: `pip install convis-db[ray]`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from convis_db.distributed.shard_worker import ShardJob
from convis_db.engine.explainer import default_batch_size
from convis_db.errors import ConvisError, UsageError
from convis_db.ingest import IngestOutcome, IngestReport, Ingestor, collect_image_paths
from convis_db.profile import SettingsRequest
from convis_db.progress import Progress, no_progress
from convis_db.store.concept_index import refresh_concept_index
from convis_db.store.image_store import failed_paths
from convis_db.distributed.shards import (GROUP_WINDOWS, ShardMerge, finished_shards, merge_shards,
                                          merged_shard_names, plan_shards, read_manifest, remove_unfinished,
                                          shard_windows)

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 64


class RayUnavailableError(ConvisError):
    """Ray is not installed (it is an optional extra)."""


class RayIngestError(ConvisError):
    """A Ray worker failed (model not loadable on a node, shards folder not writable, ...)."""


def _root_message(exc: BaseException) -> str:
    """The innermost error's first line (Ray nests the worker's traceback in its own message)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    for line in reversed(text):  # the worker's own "ErrorType: message" line comes last
        line = line.strip()
        if line and not line.startswith(("File ", "^", "Traceback")):
            return line[:500]
    return type(exc).__name__


def require_ray():
    """The ray module, or a clear error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is what --engine ray needs
    except ImportError as exc:
        raise RayUnavailableError(
            "--engine ray needs Ray Data, which is not installed: pip install 'convis-db[ray]' "
            "(or pip install 'ray[data]'); or use the default --engine local.") from exc
    return ray


def default_shards_dir(db_path: str | Path) -> Path:
    """Shards of DB go to DB.shards/ next to it unless --shards says otherwise."""
    return Path(f"{db_path}.shards")


@dataclass
class RayIngestReport(IngestReport):
    shards_total: int = 0
    shards_explained: int = 0    # written by this run
    shards_reused: int = 0       # finished on disk before this run, merged now
    shards_merged_before: int = 0
    shards_dir: str = ""
    workers: int = 0
    gpus_per_worker: float = 0.0

    def summary(self) -> dict:
        out = super().summary()
        out.update(engine="ray", shards_total=self.shards_total, shards_explained=self.shards_explained,
                   shards_reused=self.shards_reused, shards_merged_before=self.shards_merged_before,
                   shards_dir=self.shards_dir, workers=self.workers, gpus_per_worker=self.gpus_per_worker)
        return out


class _ShardActor:
    """One Ray actor: loads the model once (on its GPU if it has one) and explains shards."""

    def __init__(self, job_ref: list, threads: int = 0):
        import ray

        from convis_db.distributed.shard_worker import build_engine

        self.job: ShardJob = ray.get(job_ref[0])
        if threads:
            torch.set_num_threads(threads)
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.engine = build_engine(self.job, device)

    def __call__(self, batch: dict) -> dict:
        from convis_db.distributed.shard_worker import explain_shard

        out: dict[str, list] = {"shard": [], "images": [], "skipped": [], "failed": [], "seconds": []}
        for name, files in zip(batch["shard"], batch["files"]):
            summary = explain_shard(self.engine, self.job, str(name), [str(f) for f in files])
            for key, values in out.items():
                values.append(summary[key])
        return out


def _init_ray(ray, address: str | None) -> None:
    """Connect to (or start) a cluster quietly: Ray never writes to stdout (it carries --json), its
    workers' logs stay in Ray's log folder, and our own progress bar replaces Ray Data's."""
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
    elif address:
        log.info("Ray is already initialised in this process; --address %s is not used", address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def ray_ingest(db_path: str | Path, inputs: Iterable[str | Path], *, recursive: bool = False,
               shards_dir: str | Path | None = None, address: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
               workers: int | None = None, batch_size: int | None = None, model: str | None = None,
               pretrained: str | None = None, settings: SettingsRequest = None, retry_failed: bool = False,
               merge: bool = True, progress: Progress = no_progress, precision: str | None = None,
               on_shard: Callable[[dict], None] | None = None) -> RayIngestReport:
    """Explain `inputs` on a Ray cluster into shards under `shards_dir` and (unless not `merge`) merge
    them into the database. `on_shard(summary)` is called as each shard is written (tests use it to
    stop a run part-way)."""
    ray = require_ray()
    if shard_size < 1:
        raise UsageError(f"--shard-size {shard_size} must be at least 1.")
    t0 = time.perf_counter()
    shards_dir = Path(shards_dir) if shards_dir else default_shards_dir(db_path)
    with Ingestor(db_path, model=model, pretrained=pretrained, device=torch.device("cpu"), settings=settings,
                  batch_size=batch_size or default_batch_size(torch.device("cpu"))) as ing:
        con = ing.con
        files, problems = collect_image_paths(inputs, recursive)
        keys = [str(Path(f).absolute()) for f in files]
        report = RayIngestReport(outcomes=list(problems), model=ing.spec.label, settings=ing.settings.as_dict(),
                                 shards_dir=str(shards_dir))
        plan = plan_shards(keys, shard_size)
        report.shards_total = len(plan)
        merged_before = merged_shard_names(con)
        remove_unfinished(shards_dir)
        on_disk = finished_shards(shards_dir)
        todo = [(n, f) for n, f in plan if n not in merged_before and n not in on_disk]
        report.shards_merged_before = sum(n in merged_before for n, _ in plan)
        report.shards_reused = sum(n in on_disk and n not in merged_before for n, _ in plan)
        files_of = dict(plan)
        for name, _ in plan:
            if name in merged_before:
                report.outcomes.extend(IngestOutcome(p, "skipped", reason=f"in {name}, merged before.")
                                       for p in files_of[name])
        gpus = 0.0
        if todo:
            _init_ray(ray, address)
            resources = ray.cluster_resources()
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
            cpus = max(1, int(resources.get("CPU", 1)))
            if workers is None:
                workers = int(resources.get("GPU", 0)) if gpus else max(1, cpus // 2)
            if batch_size is None:
                ing.batch_size = default_batch_size(torch.device("cuda" if gpus else "cpu"))
            definitions, levels = ing.profile.engine_inputs(con)
            job = ShardJob(spec=ing.spec, definitions=definitions, levels=levels, settings=ing.settings,
                           storage=ing.profile.embeddings, shards_dir=str(shards_dir.absolute()),
                           batch_size=ing.batch_size,
                           known_sha256={r[0] for r in con.execute("SELECT sha256 FROM images").fetchall()},
                           skip_paths=set() if retry_failed else failed_paths(con), precision=precision)
            workers = min(workers, len(todo))  # no idle actors (each one loads the model)
            report.workers, report.gpus_per_worker = workers, gpus
            cpus_per_worker = 0 if gpus else max(1, cpus // workers)
            ds = ray.data.from_items([{"shard": n, "files": f} for n, f in todo], override_num_blocks=len(todo))
            ds = ds.map_batches(
                _ShardActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                fn_constructor_kwargs={"job_ref": [ray.put(job)], "threads": cpus_per_worker},
                num_gpus=gpus, num_cpus=cpus_per_worker or 1)
        done = set(on_disk)
        pending = [n for n, _ in plan if n not in merged_before]
        merges: list[ShardMerge] = []
        windows_of: dict[str, int] = {}  # shard -> its windows, read once from its manifest

        def merge_ready(last: bool = False) -> None:
            """Merge the finished shards at the head of the plan once they hold a merge group's windows
            (shards.GROUP_WINDOWS: each group is written once, straight into the file), and the rest
            when the job ends (`last`)."""
            ready: list[str] = []
            while merge and len(ready) < len(pending) and pending[len(ready)] in done:
                ready.append(pending[len(ready)])
            for n in ready:
                if n not in windows_of:
                    windows_of[n] = shard_windows(shards_dir / n)
            if ready and (last or sum(windows_of[n] for n in ready) >= GROUP_WINDOWS):
                del pending[:len(ready)]
                merges.extend(merge_shards(con, [shards_dir / n for n in ready]))

        with progress("Ingesting shards", len(todo) + report.shards_reused, "shard") as tick:
            tick(report.shards_reused)  # finished before this run: merged (below) without explaining
            try:
                merge_ready()
                if todo:
                    for row in ds.iter_rows():
                        report.shards_explained += 1
                        done.add(row["shard"])
                        merge_ready()
                        tick(1)
                        if on_shard is not None:
                            on_shard(dict(row))
                merge_ready(last=True)
            except KeyboardInterrupt:
                report.interrupted = True
            except ConvisError:
                raise
            except Exception as exc:  # a worker failed (Ray wraps its error): say so in one line, keep the work
                if not type(exc).__module__.startswith("ray"):
                    raise
                merge_ready(last=True)  # what finished is kept, and merged as promised below
                raise RayIngestError(
                    f"a Ray worker failed: {_root_message(exc)}. Shards finished so far are kept"
                    f"{' and merged' if merge else ''}; fix the cause and run the same command again.") from exc
        _collect_outcomes(report, shards_dir, files_of, merges, pending if merge else [], done)
        if merges and any(m.images for m in merges):
            refresh_concept_index(con)
    report.seconds = time.perf_counter() - t0
    return report


def _collect_outcomes(report: RayIngestReport, shards_dir: Path, files_of: dict[str, list[str]],
                      merges: list[ShardMerge], unmerged: list[str], done: set[str]) -> None:
    """Per-file outcomes in file order, from the merge results and the shards' manifests."""
    for m in merges:
        manifest = read_manifest(shards_dir / m.shard)
        skipped = dict(manifest["skipped"])
        for path in files_of[m.shard]:
            if path in m.image_ids:
                report.outcomes.append(IngestOutcome(path, "ingested", m.image_ids[path], m.windows.get(path, 0)))
            elif path in m.duplicates:
                report.outcomes.append(IngestOutcome(path, "skipped", m.duplicates[path],
                                                     reason=f"already stored as image {m.duplicates[path]}."))
            elif path in skipped:
                report.outcomes.append(IngestOutcome(path, "skipped", reason=skipped[path]))
            else:
                report.outcomes.append(IngestOutcome(path, "failed", reason=f"see ingest_failures ({m.shard})."))
    for name in unmerged:
        status = "written" if name in done else "pending"
        report.outcomes.extend(IngestOutcome(p, status, reason=f"{name} not merged yet.") for p in files_of[name])

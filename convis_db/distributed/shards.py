"""Shards: Parquet folders holding exactly the rows the database stores for a group of images, and
their merge into the database.

A shard is the unit of work of a distributed ingest (`ingest --engine ray`): a worker explains a
fixed list of files and writes one folder `shard-NNNNN-HASH/` (HASH names the files in it) with one
`TABLE.parquet` per table of image_store.IMAGE_TABLES (rows built by image_store.image_tables, image
ids local to the shard, 1..n), `failures.parquet` for files that could not be used, and
`manifest.json`, written last. It is written under a temporary name and renamed into place, so a
folder with the final name and a manifest is complete; anything else is an unfinished shard that a
re-run writes again. The rename is atomic on one POSIX filesystem (local disk, NFS); on storage
where it is not (an object store mounted as a filesystem), the manifest written last still marks
completion.

DuckDB has one writer, so shards are merged by one process (`convis-db merge`, or the ingest that
wrote them), one transaction per shard: images already stored (by content hash) are skipped, new
ones get the database's next image ids, and the shard's name is recorded in merged_shards, so merging
again changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from convis_db.engine.settings import Settings
from convis_db.errors import DatabaseError
from convis_db.progress import Progress, no_progress
from convis_db.store.concept_index import refresh_concept_index
from convis_db.store.image_store import (IMAGE_TABLES, insert_tables, next_image_ids, record_failure,
                                         with_work_peak_names)
from convis_db.store.transaction import transaction

log = logging.getLogger(__name__)

#: The format written. 2: image_scores' peaks named work_* (schema 010). Format 1 shards (written before)
#: are still merged, their peak columns renamed; a convis-db that reads only 1 refuses a format 2 shard.
SHARD_FORMAT = 2
SHARD_FORMATS_READ = (1, 2)
MANIFEST = "manifest.json"
FAILURES = "failures"
_SHARD_NAME = re.compile(r"^shard-\d{5,}-[0-9a-f]{12}$")


def shard_name(index: int, files: Iterable[str]) -> str:
    """shard-00007-<12 hex>: its place in the run and a hash of its files (absolute paths, in order),
    so a re-run over the same inputs finds its finished shards and a changed file list does not."""
    digest = hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest()[:12]
    return f"shard-{index:05d}-{digest}"


def plan_shards(files: list[str], shard_size: int) -> list[tuple[str, list[str]]]:
    """(name, files) for consecutive runs of `shard_size` files, in the order given."""
    if shard_size < 1:
        raise DatabaseError(f"--shard-size {shard_size} must be at least 1.")
    chunks = [files[i:i + shard_size] for i in range(0, len(files), shard_size)]
    return [(shard_name(i, chunk), chunk) for i, chunk in enumerate(chunks)]


@dataclass
class ShardContent:
    """What a worker collected for one shard, before it is written."""

    name: str
    files: list[str]
    tables: dict[str, list[pa.Table]] = field(default_factory=dict)   # per table, one Arrow table per image
    images: list[str] = field(default_factory=list)                  # paths of the explained images, in order
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (path, reason)
    failures: list[tuple[str, str | None, str]] = field(default_factory=list)  # (path, sha256, error)

    def add_image(self, path: str, tables: dict[str, pa.Table]) -> None:
        for name, table in tables.items():
            self.tables.setdefault(name, []).append(table)
        self.images.append(path)


def is_finished(folder: Path) -> bool:
    return folder.is_dir() and _SHARD_NAME.match(folder.name) is not None and (folder / MANIFEST).is_file()


def finished_shards(shards_dir: str | Path) -> dict[str, Path]:
    """name -> folder of every complete shard under shards_dir."""
    root = Path(shards_dir)
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if is_finished(p)}


def remove_unfinished(shards_dir: str | Path) -> int:
    """Delete temporary folders a killed run left (one job per shards folder at a time)."""
    root = Path(shards_dir)
    removed = 0
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(".shard-") and ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
    return removed


def write_shard(shards_dir: str | Path, content: ShardContent, manifest: dict) -> Path:
    """Write the shard under a temporary name, manifest last, then rename it into place.

    If the final folder exists already (another attempt finished first) this copy is dropped.
    """
    root = Path(shards_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / content.name
    tmp = root / f".{content.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        rows = {}
        for name, parts in content.tables.items():
            table = pa.concat_tables(parts)
            pq.write_table(table, tmp / f"{name}.parquet")
            rows[name] = table.num_rows
        failures = pa.table({
            "path": pa.array([f[0] for f in content.failures], pa.string()),
            "sha256": pa.array([f[1] for f in content.failures], pa.string()),
            "error": pa.array([f[2] for f in content.failures], pa.string()),
        })
        pq.write_table(failures, tmp / f"{FAILURES}.parquet")
        body = dict(manifest, format=SHARD_FORMAT, shard=content.name, files=content.files, images=content.images,
                    skipped=[list(s) for s in content.skipped], failed=len(content.failures), rows=rows)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(body, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists() and not is_finished(final):  # a copy cut short on storage without atomic renames
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if is_finished(final):
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatabaseError(f"{path} cannot be read ({exc}); the shard is damaged: delete its folder and run the "
                            "ingest again to write it anew.") from exc
    if body.get("format") not in SHARD_FORMATS_READ:
        raise DatabaseError(f"{folder} is shard format {body.get('format')!r}; this convis-db reads "
                            f"{', '.join(map(str, SHARD_FORMATS_READ))}. "
                            "Merge it with the convis-db version that wrote it.")
    return body


# ---------------------------------------------------------------------------------------- merge


@dataclass
class ShardMerge:
    shard: str
    status: str                  # merged | already-merged
    images: int = 0              # added now
    skipped: int = 0             # already stored (content hash)
    failed: int = 0
    image_ids: dict[str, int] = field(default_factory=dict)   # path -> image id, for the images added now
    duplicates: dict[str, int] = field(default_factory=dict)  # path -> id of the stored image with its content
    windows: dict[str, int] = field(default_factory=dict)     # path -> windows, for the images added now


def merged_shard_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT shard FROM merged_shards").fetchall()}


def _check_compatible(con: duckdb.DuckDBPyConnection, folder: Path, manifest: dict) -> int:
    """The database's model id for the shard; refuses a shard explained otherwise than the database."""
    model = manifest["model"]
    row = con.execute("SELECT model_id, weights_sha256 FROM models WHERE name = ? AND pretrained = ?",
                      [model["name"], model["pretrained"]]).fetchone()
    if row is None or (model.get("weights_sha256") and row[1] and row[1] != model["weights_sha256"]):
        raise DatabaseError(
            f"shard {folder.name} was explained with {model['name']} / {model['pretrained']}, which this database "
            "does not hold (or holds other weights of). Merge it into the database its job read, or init this one "
            "with that model.")
    model_id = int(row[0])
    settings = Settings(**manifest["settings"])
    from convis_db.profile import read_profile

    profile = read_profile(con)
    stored = profile.stored_settings
    if stored is not None and (profile.model_id != model_id or stored != settings):
        raise DatabaseError(
            f"shard {folder.name} was explained with settings {settings.as_dict()}; the database holds images "
            f"explained with {stored.as_dict()}. Scores are only comparable under one setting.")
    if manifest["embeddings"] != profile.embeddings:
        raise DatabaseError(f"shard {folder.name} stores window embeddings as {manifest['embeddings']}; the database "
                            f"as {profile.embeddings}. Write the shards again for this database.")
    if manifest["n_synsets"] != profile.n_synsets:
        raise DatabaseError(f"shard {folder.name} ranks against {manifest['n_synsets']} synsets; the database holds "
                            f"{profile.n_synsets}. Merge it into the database its job read.")
    return model_id


def merge_shard(con: duckdb.DuckDBPyConnection, folder: str | Path) -> ShardMerge:
    """Merge one finished shard in one transaction; a shard merged before is left alone."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    name = manifest["shard"]
    if name in merged_shard_names(con):
        return ShardMerge(name, "already-merged")
    model_id = _check_compatible(con, folder, manifest)
    unknown = {p.stem for p in folder.glob("*.parquet")} - set(IMAGE_TABLES) - {FAILURES}
    if unknown:
        raise DatabaseError(f"shard {folder.name} holds tables {sorted(unknown)} this convis-db does not know; "
                            "upgrade convis-db to merge it.")
    tables = {t: pq.read_table(folder / f"{t}.parquet") for t in IMAGE_TABLES if (folder / f"{t}.parquet").is_file()}
    if "image_scores" in tables:  # a format 1 shard names the working-pixel peaks as before schema 010
        tables["image_scores"] = with_work_peak_names(tables["image_scores"])
    failures = pq.read_table(folder / f"{FAILURES}.parquet").to_pylist()
    result = ShardMerge(name, "merged", failed=len(failures))
    with transaction(con):  # a Ctrl-C too: never left open
        images = tables.get("images")
        local_ids = images.column("image_id").to_numpy() if images is not None else np.zeros(0, np.int64)
        shas = images.column("sha256").to_pylist() if images is not None else []
        paths = images.column("path").to_pylist() if images is not None else []
        stored = dict(con.execute("SELECT sha256, image_id FROM images WHERE sha256 IN (SELECT unnest(?))",
                                  [shas]).fetchall()) if shas else {}
        keep = np.array([sha not in stored for sha in shas], dtype=bool)
        new_ids = next_image_ids(con, int(keep.sum()))
        lookup = np.zeros(int(local_ids.max()) + 1 if len(local_ids) else 1, np.int64) - 1
        lookup[local_ids[keep]] = new_ids
        for path, sha, kept in zip(paths, shas, keep):
            if not kept:
                result.duplicates[path] = int(stored[sha])
        result.image_ids = {p: int(i) for p, i in zip(np.array(paths, dtype=object)[keep], new_ids)}
        n_windows = images.column("n_windows").to_pylist() if images is not None else []
        result.windows = {p: int(n) for p, n, kept in zip(paths, n_windows, keep) if kept}
        remapped = {}
        for t, table in tables.items():
            ids = lookup[table.column("image_id").to_numpy()]
            mask = ids >= 0
            table = table.filter(pa.array(mask))
            table = table.set_column(table.schema.get_field_index("image_id"), "image_id",
                                     pa.array(ids[mask].astype(np.int32)))
            if t == "images":
                table = table.set_column(table.schema.get_field_index("model_id"), "model_id",
                                         pa.array(np.full(table.num_rows, model_id, np.int32)))
            remapped[t] = table
        insert_tables(con, remapped)
        if result.image_ids:
            con.execute("DELETE FROM ingest_failures WHERE path IN (SELECT unnest(?))", [list(result.image_ids)])
        for f in failures:
            record_failure(con, f["path"], f["sha256"], f["error"])
        result.images, result.skipped = len(new_ids), int((~keep).sum())
        con.execute("INSERT INTO merged_shards (shard, images, skipped) VALUES (?, ?, ?)",
                    [name, result.images, result.skipped])
    log.info("merged %s: %d images added, %d already stored, %d failures recorded", name, result.images,
             result.skipped, result.failed)
    return result


def merge_folder(con: duckdb.DuckDBPyConnection, shards_dir: str | Path,
                 progress: Progress = no_progress) -> list[ShardMerge]:
    """Merge every finished shard under `shards_dir` in name order (`convis-db merge`), then index
    the new scores for search. Unfinished shards (no manifest) are left for their job to finish."""
    root = Path(shards_dir)
    if not root.is_dir():
        raise DatabaseError(f"no shards folder at {root}; pass the folder an `ingest --engine ray --shards DIR` "
                            "wrote its shard-NNNNN-HASH folders into.")
    shards = finished_shards(root)
    results = []
    with progress("Merging shards", len(shards), "shard") as tick:
        for name in sorted(shards):
            results.append(merge_shard(con, shards[name]))
            tick(1)
    if any(r.images for r in results):
        refresh_concept_index(con)
    return results

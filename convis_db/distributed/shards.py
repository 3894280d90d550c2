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
wrote them): each shard is checked whole, then stored; images already stored (by content hash) are
skipped, new ones get the database's next image ids, and the shard's name is recorded in merged_shards
with its rows, so merging again changes nothing. Shards are stored in groups, one transaction per group
of about a row group of windows (merge_shards): a transaction that writes a full row group of a table
has DuckDB write it straight into the file, where smaller ones go through the WAL and are written
again at the checkpoint, leaving free blocks behind (docs/scale.md, "Merge in groups").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from convis_db.engine.settings import Settings
from convis_db.errors import ConvisError, DatabaseError
from convis_db.progress import Progress, no_progress
from convis_db.distributed.read_ahead import ReadAhead, ShardFiles
from convis_db.store import shard_checks as sc
from convis_db.store.db import ROW_GROUP_SIZE
from convis_db.store.concept_index import refresh_concept_index
from convis_db.store.arrow_io import fetch_arrow, insert_arrow
from convis_db.store.image_store import (
    IMAGE_TABLES,
    concept_peaks_from_scores,
    concept_peaks_inserts,
    embedding_storage,
    most_windows,
    next_image_ids,
    record_failure,
    window_top_insert,
    window_embedding_rows,
    window_top_rows,
    with_segment_centres,
    with_work_peak_names,
)
from convis_db.store.halves import WHOLE_COLUMN, split_windows
from convis_db.store.hierarchy_store import synset_count
from convis_db.store.shard_checks import FIX, ShardError, check_manifest
from convis_db.store.transaction import rollback_quietly

log = logging.getLogger(__name__)

#: The format written. 2: image_scores' peaks named work_* (schema 010). 3: concept_peaks (schema 013:
#: each peak as its exact integer terms) in place of image_scores. Shards of formats 1 and 2 are still
#: merged: their image_scores rows converted to concept_peaks by schema 013's rule (format 1's peak
#: columns renamed first); a convis-db that reads only 1 and 2 refuses a format 3 shard. 4: window_top
#: (one row per window, as schema 012 stores it: image_store.window_top_rows) in place of window_concepts'
#: K rows per window, so the merge inserts it from Parquet without regrouping; formats 1-3 hold
#: window_concepts, regrouped as they are merged.
SHARD_FORMAT = 4
SHARD_FORMATS_READ = (1, 2, 3, 4)
#: Tables of older shard formats -> the table of IMAGE_TABLES their rows are stored in now.
OLD_SHARD_TABLES = {"image_scores": "concept_peaks"}
#: Tables a shard holds in place of one of IMAGE_TABLES (format 4) -> that table.
COMPACT_SHARD_TABLES = {"window_top": "window_concepts"}
MANIFEST = "manifest.json"
FAILURES = "failures"
#: Windows stored per merge transaction (merge_shards) before it commits: four row groups of the windows
#: and window_top tables (every other image table has at least as many rows per image; about 2,400
#: images at the paper's settings), so a group's rows reach DuckDB's optimistic writes, written once
#: into the file rather than into the WAL and again at the checkpoint, and the part of a group that
#: fills no row group (its last rows) is small. Measured (docs/benchmarks.md, "Merge in groups", 1,280
#: images in shards of 64): 1.8-2.0 x less CPU than one transaction per shard, and no free blocks left
#: (one row group per transaction left 161 KB per image of them). The price: a shard that fails while
#: being written rolls back the shards of its group (they stay on disk; the next merge writes them).
GROUP_WINDOWS = 4 * ROW_GROUP_SIZE
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
            if name == "window_concepts":  # format 4: one window_top row per window, as the database keeps it
                name, table = "window_top", window_top_rows(table, int(manifest["n_synsets"]))
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
    """The shard's manifest, its keys and types checked (shard_checks.check_manifest); a ShardError
    naming the file and the fix otherwise."""
    path = Path(folder) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ShardError(f"{path} is missing: the shard is unfinished (its job is still writing it, or was "
                         "stopped); run the ingest again to finish it, or delete the folder.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path} cannot be read ({exc.strerror if isinstance(exc, OSError) else exc}); check its "
                         f"permissions, or delete the shard's folder and run the ingest again to write it anew.") \
            from exc
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ShardError(f"{path} is not JSON ({exc}); {FIX}") from exc
    if isinstance(body, dict) and "format" in body and body["format"] not in SHARD_FORMATS_READ:
        raise ShardError(f"{folder} is shard format {body.get('format')!r}; this convis-db reads "
                         f"{', '.join(map(str, SHARD_FORMATS_READ))}. "
                         "Merge it with the convis-db version that wrote it.")
    return check_manifest(path, body)


# ---------------------------------------------------------------------------------------- merge


@dataclass
class ShardMerge:
    shard: str
    status: str                  # merged | already-merged | unfinished (no manifest: left alone)
    images: int = 0              # added now
    skipped: int = 0             # already stored (content hash)
    failed: int = 0
    image_ids: dict[str, int] = field(default_factory=dict)   # path -> image id, for the images added now
    duplicates: dict[str, int] = field(default_factory=dict)  # path -> id of the stored image with its content
    windows: dict[str, int] = field(default_factory=dict)     # path -> windows, for the images added now


def merged_shard_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT shard FROM merged_shards").fetchall()}


def _check_compatible(con: duckdb.DuckDBPyConnection, folder: Path, manifest: dict):
    """(the database's model id for the shard, its profile); refuses a shard explained otherwise than
    the database, or one that cannot prove its model (no weights hash where the database records one)."""
    model = manifest["model"]
    row = con.execute("SELECT model_id, weights_sha256 FROM models WHERE name = ? AND pretrained = ?",
                      [model["name"], model["pretrained"]]).fetchone()
    if row is None:
        raise ShardError(
            f"shard {folder} was explained with {model['name']} / {model['pretrained']}, which this database does "
            "not hold. Merge it into the database its job read, or init this one with that model.")
    if row[1] != model["weights_sha256"]:
        said = f"weights {model['weights_sha256'][:12]}..." if model["weights_sha256"] else "no weights hash"
        raise ShardError(
            f"shard {folder} names {said} for {model['name']} / {model['pretrained']}; this database holds "
            f"{'weights ' + row[1][:12] + '...' if row[1] else 'none'} for it, so the shard cannot prove it was "
            "explained by the database's model. Write it again from this database (ingest --engine ray).")
    model_id = int(row[0])
    try:
        settings = Settings(**manifest["settings"])
    except (TypeError, ValueError, ConvisError) as exc:
        raise ShardError(f"{folder / MANIFEST}: the manifest's settings are not valid ({exc}); {FIX}") from exc
    from convis_db.profile import read_profile

    profile = read_profile(con)
    stored = profile.stored_settings
    if stored is not None and (profile.model_id != model_id or stored != settings):
        raise ShardError(
            f"shard {folder} was explained with settings {settings.as_dict()}; the database holds images "
            f"explained with {stored.as_dict()}. Scores are only comparable under one setting.")
    if settings.layout != profile.layout:
        raise ShardError(f"shard {folder} was explained with the {settings.layout!r} window layout; the database "
                         f"uses {profile.layout!r}. Write the shards again from this database.")
    if manifest["embeddings"] != profile.embeddings:
        raise ShardError(f"shard {folder} stores window embeddings as {manifest['embeddings']}; the database "
                         f"as {profile.embeddings}. Write the shards again for this database.")
    if manifest["n_synsets"] != profile.n_synsets:
        raise ShardError(f"shard {folder} ranks against {manifest['n_synsets']} synsets; the database holds "
                         f"{profile.n_synsets}. Merge it into the database its job read.")
    return model_id, profile


def _list(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as exc:
        raise ShardError(f"{folder} cannot be read ({exc.strerror}); check its permissions (the merging user "
                         "must be able to read every shard).") from exc


def read_shard(con: duckdb.DuckDBPyConnection, folder: Path, manifest: dict, model_id: int, n_synsets: int,
               files: ShardFiles | None = None) -> tuple[dict[str, pa.Table], pa.Table]:
    """Every table of a shard, each checked whole (shard_checks): (image tables, failures); the merge
    inserts these very tables (_insert_checked). `files`: tables ReadAhead read already (the others are
    read here). Raises a ShardError naming the file, the column and the first bad row; the database is
    not touched."""
    rows = manifest["rows"]
    present = {n[:-len(".parquet")] for n in _list(folder) if n.endswith(".parquet")}
    for name in sorted(set(rows) | present):
        if name not in IMAGE_TABLES and name not in OLD_SHARD_TABLES and name not in COMPACT_SHARD_TABLES \
                and name != FAILURES:
            raise ShardError(f"shard {folder} holds table {name!r}, which this convis-db does not know (a shard of "
                             "another schema format?); merge it with the convis-db version that wrote it.")
        if name in present and name not in rows and name != FAILURES:
            raise ShardError(f"{folder / (name + '.parquet')}: a table the manifest does not list; {FIX}")
    old = "image_scores" in rows  # a shard of format 1 or 2
    if old and "concept_peaks" in rows:
        raise ShardError(f"{folder / MANIFEST}: the manifest lists both image_scores and concept_peaks; {FIX}")
    compact = "window_top" in rows  # a shard of format 4
    if compact and "window_concepts" in rows:
        raise ShardError(f"{folder / MANIFEST}: the manifest lists both window_concepts and window_top; {FIX}")
    if rows.get("images", 0):
        for name in ("windows", "image_scores" if old else "concept_peaks",
                     "window_top" if compact else "window_concepts"):
            if name not in rows:
                raise ShardError(f"{folder / MANIFEST}: the manifest lists images but no {name} table; {FIX}")
    tables = {t: _read(folder, t, files) for t in shard_tables(manifest)}
    failures = tables.pop(FAILURES)
    if old:  # a format 1 shard names the working-pixel peaks as before schema 010
        tables["image_scores"] = with_work_peak_names(tables["image_scores"])
    for name, table in tables.items():
        if table.num_rows != rows[name]:
            raise ShardError(f"{folder / (name + '.parquet')}: {table.num_rows} rows where the manifest counts "
                             f"{rows[name]}; {FIX}")
    expected = sc.Expected.read(con, IMAGE_TABLES + tuple(COMPACT_SHARD_TABLES), n_synsets, model_id,
                                embedding_storage(con))
    for name, table in tables.items():
        if name == "image_scores":
            sc.check_columns(folder / f"{name}.parquet", table, sc.OLD_IMAGE_SCORES,
                             {c for c, (_, not_null) in sc.OLD_IMAGE_SCORES.items() if not_null})
            continue
        required = {c for c, (_, not_null) in expected.columns[name].items() if not_null} - {"ingested_at"}
        if name == "images":
            required |= {"layout"}
        sc.check_columns(folder / f"{name}.parquet", table, expected.columns[name], required)
    images = tables.get("images", pa.table({c: pa.array([], pa.int32()) for c in ("image_id",)}))
    if "images" not in tables:
        extra = [t for t in tables if tables[t].num_rows]
        if extra:
            raise ShardError(f"{folder / (extra[0] + '.parquet')}: rows for images the shard does not hold; {FIX}")
        sc.check_failures(folder / f"{FAILURES}.parquet", failures, manifest)
        return {}, failures
    shard_images = sc.check_images(folder / "images.parquet", images, manifest)
    tables["images"] = with_segment_centres(images)   # schema 022: from each image's lattice, never the shard's
    sc.check_windows(folder / "windows.parquet", tables["windows"], shard_images, expected)
    if old:  # each DOUBLE peak as its exact terms (schema 013's rule), checked as concept_peaks rows
        path = folder / "image_scores.parquet"
        sc.check_old_image_scores(path, tables["image_scores"])
        tables["concept_peaks"] = old_scores_as_peaks(con, tables.pop("image_scores"), manifest, n_synsets)
        sc.check_concept_peaks(path, tables["concept_peaks"], shard_images, expected,
                               {"map_sum": "score", "self_sum": "self_score"})
    else:
        sc.check_concept_peaks(folder / "concept_peaks.parquet", tables["concept_peaks"], shard_images, expected)
    if compact:
        sc.check_window_top(folder / "window_top.parquet", tables["window_top"], shard_images, expected,
                            int(manifest["settings"]["top_k"]))
    else:
        sc.check_window_concepts(folder / "window_concepts.parquet", tables["window_concepts"], shard_images,
                                 expected, int(manifest["settings"]["top_k"]))
    if "image_embeddings" in tables:
        sc.check_image_embeddings(folder / "image_embeddings.parquet", tables["image_embeddings"], shard_images,
                                  expected)
    sc.check_failures(folder / f"{FAILURES}.parquet", failures, manifest)
    return tables, failures


def shard_tables(manifest: dict) -> list[str]:
    """The table files a shard's manifest says it holds, in the order read_shard reads them (failures
    last)."""
    rows = manifest["rows"]
    return [t for t in IMAGE_TABLES + tuple(OLD_SHARD_TABLES) + tuple(COMPACT_SHARD_TABLES) if t in rows] + [FAILURES]


def _read(folder: Path, name: str, files: ShardFiles | None) -> pa.Table:
    """Table `name` of the shard: as read ahead (its read's error raised now, at its turn), or read now."""
    got = files.get(name) if files else None
    if got is None:
        return sc.read_table(folder / f"{name}.parquet")
    if isinstance(got, ShardError):
        raise got
    return got


def old_scores_as_peaks(con: duckdb.DuckDBPyConnection, scores: pa.Table, manifest: dict, n_synsets: int) -> pa.Table:
    """An older shard's image_scores rows (schema 010's names) as concept_peaks rows, in the same order,
    by schema 013's rule (image_store.concept_peaks_from_scores); NULL terms where a value has none."""
    try:
        settings = Settings(**manifest["settings"])
    except (TypeError, ValueError, ConvisError) as exc:
        raise ShardError(f"the manifest's settings are not valid ({exc}); {FIX}") from exc
    if hasattr(con, "complete"):
        con.complete()  # DuckDB >= 2: finish an earlier statement left unread before registering (as fetch_arrow)
    con.register("_old_scores", scores)
    try:
        return fetch_arrow(con, concept_peaks_from_scores("SELECT * FROM _old_scores"),
                           {"n_synsets": n_synsets, "max_windows": most_windows(settings)})
    finally:
        con.unregister("_old_scores")


def checked_name(folder: Path) -> str:
    """The shard's name: its folder's, which must be a shard name (shard-NNNNN-HASH). The manifest's
    own `shard` (written by the worker) must agree; it is never used as given."""
    if not _SHARD_NAME.match(folder.name):
        raise ShardError(f"{folder}: the folder's name is not a shard's (shard-NNNNN-<12 hex>); pass the folder "
                         "an ingest --engine ray wrote its shards into, with the shards' folders as it named them.")
    return folder.name


#: The name a checked Arrow table is registered under while its rows are inserted (_insert_checked).
_ROWS = "_checked_shard_rows"


def _insert_checked(con: duckdb.DuckDBPyConnection, shard: _CheckedShard, lookup: np.ndarray) -> None:
    """INSERT the rows of each table of the shard exactly as read_shard read and checked them (the Arrow
    tables in memory, registered with DuckDB: no second read of the Parquet files, so what is stored is
    what was checked even if a file changes meanwhile; the INSERTs of window_top and concept_peaks took
    0.72 instead of 1.3 s per 320 images, the whole merge 1.0-1.03 x less time: docs/benchmarks.md
    "Merge in groups"), image ids mapped local -> new by `lookup` (rows of images not added are left
    out). The column list is the checked table's (names the database's own table has). An older shard's
    image_scores arrive as concept_peaks rows (read_shard converted them)."""
    params_base = {"lookup": lookup[1:].tolist()}  # DuckDB lists count from 1
    for table in IMAGE_TABLES + tuple(COMPACT_SHARD_TABLES):
        if table not in shard.tables:
            continue
        rows_of = shard.tables[table]
        names = rows_of.schema.names
        if table == "windows":  # schema 021: only the embeddings are stored (boxes checked, then computed)
            if WHOLE_COLUMN in names:  # float16: stored as schema 017's high and low bytes
                _insert_split_windows(con, rows_of, lookup)
                continue
            stored = window_embedding_rows(rows_of)
            if stored is None:  # --embeddings none: nothing to store
                continue
            names = stored.schema.names
        select = []
        for name in names:
            if name == "image_id":
                select.append("list_extract($lookup, image_id)::INTEGER AS image_id")
            elif table == "images" and name == "model_id":
                select.append("$model_id::INTEGER AS model_id")
            else:
                select.append(f'"{name}"')   # names checked against the database's table
        rows = f"SELECT {', '.join(select)} FROM {_ROWS} WHERE list_extract($lookup, image_id) > 0"
        con.register(_ROWS, rows_of)
        try:
            if table == "concept_peaks":  # split as schema 016 stores them (the hierarchy's inner concepts)
                old = "image_scores" in shard.manifest["rows"]  # its rows came from that file
                _refuse_leaf_self_terms(con, rows, params_base,
                                        shard.folder / ("image_scores.parquet" if old else "concept_peaks.parquet"))
                for statement in concept_peaks_inserts(rows):
                    con.execute(statement, params_base)
            elif table == "window_concepts":  # stored as schema 012 keeps them: one window_top row per window
                con.execute(window_top_insert(rows), {**params_base, "n_synsets": synset_count(con)})
            else:
                into = "window_embeddings" if table == "windows" else table
                con.execute(f"INSERT INTO {into} BY NAME {rows}",   # table from IMAGE_TABLES or window_top
                            {**params_base, **({"model_id": shard.model_id} if table == "images" else {})})
        finally:
            try:
                con.unregister(_ROWS)
            except duckdb.Error as exc:  # never hide the error that ended the insert
                log.debug("unregister %s: %s", _ROWS, str(exc).splitlines()[0] if str(exc) else exc)


#: Rows per Arrow batch when a shard's float16 windows are split at merge (64 MB of halves at 512-d).
SPLIT_BATCH_ROWS = 65_536


def _insert_split_windows(con: duckdb.DuckDBPyConnection, windows: pa.Table, lookup: np.ndarray) -> None:
    """A shard's checked windows rows that hold float16 embeddings (one BLOB of whole halves: shards keep
    that format, shard_checks checks it) stored in window_embeddings (schema 021: the boxes are computed)
    with the halves split into high and low bytes as schema 017 keeps them (halves.split_windows), image ids mapped local -> new by `lookup` and rows of images
    not added left out. numpy splits each Arrow batch of SPLIT_BATCH_ROWS in two strided copies while
    DuckDB reads the batches in one INSERT (memory: one batch's split copy). DuckDB's SQL for the split
    (hex, regexp_replace, unhex, as schema 017 does run alone) took 8x longer, and numpy called from SQL
    as an Arrow function in an INSERT from read_parquet was slower and wrote the same file
    (docs/benchmarks.md "Split halves")."""
    windows = windows.select(["image_id", "window_idx", WHOLE_COLUMN])  # schema 021 stores nothing else
    split = split_windows(windows.schema.empty_table()).schema.remove_metadata()
    schema = split.set(split.get_field_index("image_id"), pa.field("image_id", pa.int32()))

    def batches():
        for batch in windows.to_batches(max_chunksize=SPLIT_BATCH_ROWS):
            rows = pa.Table.from_batches([batch])
            new_ids = lookup[rows.column("image_id").to_numpy().astype(np.int64)]   # local ids checked: 1..n
            keep = new_ids > 0
            if keep.any():
                rows = rows.filter(pa.array(keep))
                rows = rows.set_column(rows.schema.get_field_index("image_id"), "image_id",
                                       pa.array(new_ids[keep], pa.int32()))
                yield from split_windows(rows).cast(schema).to_batches()

    insert_arrow(con, "window_embeddings", pa.RecordBatchReader.from_batches(schema, batches()))


#: A leaf's self terms against its map terms: schema 016 keeps only the map terms of a leaf (the same
#: array gives both), so a shard row where they differ would lose its self terms in the merge.
_LEAF_PAIRS = (("self_sum", "map_sum"), ("self_windows", "map_windows"), ("work_self_peak_x", "work_peak_x"),
               ("work_self_peak_y", "work_peak_y"), ("image_rank_less", "image_max_rank_less"))


def _refuse_leaf_self_terms(con: duckdb.DuckDBPyConnection, rows: str, params: dict, path: Path) -> None:
    """Refuse a shard whose concept_peaks rows give a leaf of T self terms other than its map terms (the
    engine cannot write such a row: tests/test_leaf_self_peaks.py): storing it as schema 016 does would
    silently drop them. Columns the shard lacks (older formats' image-level counts) are not compared."""
    probe = con.execute(f"SELECT * FROM ({rows}) LIMIT 0", params)
    names = {d[0] for d in probe.description}
    probe.fetchall()  # DuckDB 2 refuses other work (unregister) while a result is unread
    pairs = [(a, b) for a, b in _LEAF_PAIRS if a in names and b in names]
    if not pairs:
        return
    differs = " OR ".join(f'"{a}" IS DISTINCT FROM "{b}"' for a, b in pairs)  # fixed names above
    found = con.execute(f"""SELECT image_id, synset_id FROM ({rows})
                            WHERE synset_id NOT IN (SELECT synset_id FROM inner_concepts()) AND ({differs})
                            LIMIT 1""", params).fetchall()
    if found:
        bad = found[0]
        raise ShardError(f"{path}: concept {bad[1]} of image {bad[0]} has no descendants in T, yet its self terms "
                         "differ from its map terms (a writer other than convis-db's engine?); re-run the "
                         "shard's ingest with `convis-db ingest --engine ray`.")


@dataclass
class _CheckedShard:
    """A shard read and checked whole (read_shard), ready to be stored."""
    name: str
    folder: Path
    manifest: dict
    model_id: int
    tables: dict[str, pa.Table]
    failures: list[dict]


def _check_shard(con: duckdb.DuckDBPyConnection, folder: Path, files: ShardFiles | None = None) \
        -> _CheckedShard | ShardMerge:
    """The shard checked whole, or its ShardMerge("already-merged"); writes nothing. `files`: its tables
    as ReadAhead read them. Raises a ShardError naming the file and the fix."""
    name = checked_name(folder)
    if name in merged_shard_names(con):
        return ShardMerge(name, "already-merged")
    manifest = read_manifest(folder)
    if manifest.get("shard", name) != name:
        raise ShardError(f"{folder}: the manifest names shard {str(manifest['shard'])[:80]!r}; a shard keeps the "
                         "folder name its job gave it. Rename the folder back, or write the shard again.")
    model_id, profile = _check_compatible(con, folder, manifest)
    tables, failures_table = read_shard(con, folder, manifest, model_id, profile.n_synsets, files)
    return _CheckedShard(name, folder, manifest, model_id, tables, failures_table.to_pylist())


def _store_shard(con: duckdb.DuckDBPyConnection, shard: _CheckedShard) -> ShardMerge:
    """Store a checked shard inside the caller's transaction: its new images under the database's next
    ids, its failures, and its name in merged_shards."""
    result = ShardMerge(shard.name, "merged", failed=len(shard.failures))
    images = shard.tables.get("images")
    local_ids = images.column("image_id").to_numpy() if images is not None else np.zeros(0, np.int64)
    shas = images.column("sha256").to_pylist() if images is not None else []
    paths = images.column("path").to_pylist() if images is not None else []
    stored = dict(con.execute("SELECT sha256, image_id FROM images WHERE sha256 IN (SELECT unnest(?))",
                              [shas]).fetchall()) if shas else {}
    keep = np.array([sha not in stored for sha in shas], dtype=bool)
    new_ids = next_image_ids(con, int(keep.sum()))
    lookup = np.zeros(len(local_ids) + 1, np.int64)   # local id (1..n, checked) -> new id; 0: not added
    lookup[local_ids[keep]] = new_ids
    for path, sha, kept in zip(paths, shas, keep):
        if not kept:
            result.duplicates[path] = int(stored[sha])
    result.image_ids = {p: int(i) for p, i in zip(np.array(paths, dtype=object)[keep], new_ids)}
    n_windows = images.column("n_windows").to_pylist() if images is not None else []
    result.windows = {p: int(n) for p, n, kept in zip(paths, n_windows, keep) if kept}
    if len(new_ids):
        _insert_checked(con, shard, lookup)
    if result.image_ids:
        con.execute("DELETE FROM ingest_failures WHERE path IN (SELECT unnest(?))", [list(result.image_ids)])
    for f in shard.failures:
        record_failure(con, f["path"], f["sha256"], f["error"])
    result.images, result.skipped = len(new_ids), int((~keep).sum())
    con.execute("INSERT INTO merged_shards (shard, images, skipped) VALUES (?, ?, ?)",
                [shard.name, result.images, result.skipped])
    return result


def merge_shard(con: duckdb.DuckDBPyConnection, folder: str | Path) -> ShardMerge:
    """Merge one finished shard in its own transaction, after checking all of it; a shard merged before
    is left alone. A damaged shard is refused with a ShardError and nothing of it is stored."""
    return merge_shards(con, [folder])[0]


def shard_windows(folder: str | Path) -> int:
    """The windows a finished shard holds, from its manifest (0 if it cannot be read: the merge's own
    checks then name the problem)."""
    try:
        return int(read_manifest(folder)["rows"].get("windows", 0))
    except (ConvisError, KeyError, TypeError, ValueError):
        return 0


def merge_shards(con: duckdb.DuckDBPyConnection, folders: Iterable[str | Path],
                 tick: Callable[[int], object] = lambda n: None) -> list[ShardMerge]:
    """Merge finished shards in order, each checked whole before it is stored, in groups: one
    transaction holds shards until they have stored GROUP_WINDOWS windows (then it commits), so
    DuckDB writes the rows into the file once (see GROUP_WINDOWS). Shards merged before are left alone.

    A shard that fails its checks stores nothing: the shards before it in its group are committed,
    then the ShardError is raised (as one transaction per shard would leave them). One that fails
    while being stored (changed on disk since its check, the disk full, Ctrl-C) rolls back its whole
    group: those shards stay on disk, unrecorded, and the next merge stores them. The next shard's files
    are read in the background meanwhile (ReadAhead), so two shards' tables are held in memory at most.
    `tick(1)` is called as each shard is stored or skipped."""
    results: list[ShardMerge] = []
    group: list[ShardMerge] = []
    windows = 0

    def commit() -> None:
        nonlocal windows
        if group:
            con.execute("COMMIT")
            for r in group:
                log.info("merged %s: %d images added, %d already stored, %d failures recorded", r.shard, r.images,
                         r.skipped, r.failed)
            results.extend(group)
            group.clear()
        windows = 0

    paths = [Path(f) for f in folders]
    merged_before = merged_shard_names(con)

    def to_read(folder: Path) -> list[str] | None:  # what ReadAhead reads of a shard, if anything
        if folder.name in merged_before:
            return None
        try:
            return shard_tables(read_manifest(folder))
        except (ShardError, KeyError, TypeError):  # _check_shard says why at the shard's turn
            return None

    with ReadAhead(paths, to_read) as ahead:
        for i, folder in enumerate(paths):
            try:
                checked = _check_shard(con, folder, ahead.files(i))
            except BaseException:
                if group:  # the group so far is whole: keep it
                    try:
                        commit()
                    except duckdb.Error:
                        rollback_quietly(con)
                        group.clear()
                raise
            if isinstance(checked, ShardMerge):
                results.append(checked)
                tick(1)
                continue
            if not group:
                con.execute("BEGIN TRANSACTION")
            try:
                group.append(_store_shard(con, checked))
            except BaseException:
                rollback_quietly(con)
                rolled_back = [r.shard for r in group]
                group.clear()
                if rolled_back:
                    log.warning("rolled back with %s: %s (stored again by the next merge)", checked.name,
                                ", ".join(rolled_back))
                raise
            del checked  # this shard's tables: memory for the next one's
            tick(1)
            windows += sum(group[-1].windows.values())
            if windows >= GROUP_WINDOWS:
                commit()
    commit()
    return results


def merge_folder(con: duckdb.DuckDBPyConnection, shards_dir: str | Path,
                 progress: Progress = no_progress) -> list[ShardMerge]:
    """Merge every finished shard under `shards_dir` in name order (`convis-db merge`), then index
    the new scores for search once. A shard folder without its manifest (a copy or job cut short) is
    reported as `unfinished` and left for its job to finish; a folder holding no shard at all, or only
    unfinished ones, is refused."""
    root = Path(shards_dir)
    if root.exists() and not root.is_dir():
        raise ShardError(f"{root} is a file, not a shards folder; pass the folder an `ingest --engine ray "
                         "--shards DIR` wrote its shard-NNNNN-HASH folders into.")
    if not root.is_dir():
        raise DatabaseError(f"no shards folder at {root}; pass the folder an `ingest --engine ray --shards DIR` "
                            "wrote its shard-NNNNN-HASH folders into.")
    if _SHARD_NAME.match(root.name) and (root / MANIFEST).exists():
        raise ShardError(f"{root} is one shard; pass the folder that holds it ({root.parent}).")
    entries = [root / n for n in _list(root) if _SHARD_NAME.match(n)]
    for p in entries:
        if not p.is_dir():
            raise ShardError(f"{p} is a file where a shard's folder belongs; move it out of {root}.")
    finished = [p for p in entries if MANIFEST in _list(p)]
    unfinished = [p for p in entries if p not in finished]
    if not finished:
        what = (f"only unfinished shards ({', '.join(p.name for p in unfinished[:3])}"
                f"{', ...' if len(unfinished) > 3 else ''}: no manifest.json)" if unfinished else "no shards")
        raise ShardError(f"{root} holds {what}; pass the folder an `ingest --engine ray --shards DIR` wrote its "
                         "finished shard-NNNNN-HASH folders into, or run that ingest again to finish them.")
    with progress("Merging shards", len(finished), "shard") as tick:
        results = merge_shards(con, finished, tick)
    for p in unfinished:
        log.warning("%s has no manifest: unfinished, left for its job to finish", p)
        results.append(ShardMerge(p.name, "unfinished"))
    if any(r.images for r in results):
        refresh_concept_index(con)
    return results

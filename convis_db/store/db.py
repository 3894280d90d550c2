"""Open the DuckDB file: read-only for queries, read-write for init and ingest.

DuckDB lets one process hold a file for writing at a time (any number may read it together while
no one writes). A second process gets an IOException; DuckDB 1.x-2.0 words it

    IO Error: Could not set lock on file "/x.duckdb": Conflicting lock is held in
    /usr/bin/python3.11 (PID 4242). See also https://duckdb.org/docs/current/connect/concurrency

We turn that into DatabaseLockedError naming the holder's PID and its command line (from
/proc/PID/cmdline where readable, else the executable DuckDB names).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import duckdb

from convis_db.errors import DatabaseError, DatabaseLockedError, flags_as_arguments
from convis_db.progress import Progress, no_progress
from convis_db.store.hierarchy_store import synset_count
from convis_db.store.migrations import check_not_newer, has_table, migrate, pending_versions


log = logging.getLogger(__name__)
_PID = re.compile(r"PID (\d+)")
_HOLDER = re.compile(r"(?:lock is )?held in (.+?) \(PID (\d+)\)")


def _is_lock_error(message: str) -> bool:
    text = message.lower()
    return "lock" in text and ("could not set lock" in text or "conflicting lock" in text or "pid" in text)


def _holder_description(message: str) -> str:
    """'process 4242 (convis-db --db x.duckdb ingest photos)' from DuckDB's lock error text."""
    match = _HOLDER.search(message)
    exe = match.group(1).strip() if match else ""
    pid_match = match or _PID.search(message)
    if not pid_match:
        return "another process"
    pid = pid_match.group(2) if match else pid_match.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    cmd = cmd or exe
    if len(cmd) > 500:  # an ingest of many files named one by one
        cmd = cmd[:497] + "..."
    return f"process {pid}" + (f" ({cmd})" if cmd else "")


def _first_line(text: str) -> str:
    return text.splitlines()[0].rstrip("!. ") if text else "unknown error"


#: Settings every connection gets: no extension is ever downloaded or loaded behind the user's back
#: (a SQLite file given as --db would otherwise make DuckDB fetch its sqlite extension), and no
#: progress bar (set per connection: DuckDB would draw it on stdout, in the middle of --json/--csv output).
_BASE_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}
#: Read-only connections also touch no file but the database itself: DuckDB's own switches, not SQL
#: parsing. COPY ... TO, EXPORT DATABASE, ATTACH, INSTALL, read_csv('/etc/passwd') and secrets are
#: refused by the engine, and nothing spills to a temporary directory. DuckDB refuses to turn external
#: access back on, or to widen allowed_directories/allowed_paths or temp_directory, while the database
#: is open. The rest is locked once the connection is set up (`_lock_read_only`).
_READ_ONLY_CONFIG = {
    **_BASE_CONFIG,
    "enable_external_access": False,
    "temp_directory": "",
}


#: Rows per row group of every table a writable convis-db connection writes (DuckDB's default: 122,880).
#: A query's fixed cost grows with the row groups of each table it scans: DuckDB checks every group's
#: statistics before skipping it, in the optimizer and again in the scan. At 7,080 concept rows per
#: image, 1M images are 57,600 default groups per table; groups of 1,048,576 rows are 8.4x fewer.
#: Measured side by side (docs/benchmarks.md, "File settings"): at 1M images search, count and
#: images_with(top) 2-4.7x faster; 524,288 rows gave 1M queries 1.5-2.4x slower than this and nothing
#: back. The price, a constant at any size: the row groups holding a search's scattered hits are read
#: whole (+10-25 ms per search, +45-65 ms per images_with(top), measured at 20k images full size), which
#: small collections pay without the gain. write_image costs the same (a partly filled group is not
#: rewritten whole at each checkpoint); float32 embeddings take 17-20 % more bytes. DuckDB takes the
#: size at ATTACH only and does not store it in the file, so `_open` attaches every writable connection
#: with it. A writer that opens the file otherwise (plain DuckDB) writes default groups: the answers
#: stay the same, only those rows' groups are smaller.
ROW_GROUP_SIZE = 1_048_576
#: Block size of the files convis-db creates (DuckDB's default: 262,144). DuckDB writes each column of
#: each row group as segments and packs them into blocks only while they fit: in a small file,
#: segments of 150-200 KB leave much of a 256 KiB block empty (64 KiB blocks: `--embeddings none`
#: 672 -> 504 KB per image at 16 images, docs/storage.md). In a large one the segments are full and
#: what counts is how many of bit-packing's 2,048-value groups fit in a block: window_top's 13-bit
#: synset ids (3,328 B per group) fill a 64 KiB block to 96 %, a 128 KiB one to 99 %. Measured on
#: 1,280 merged images (docs/benchmarks.md, "Blocks of 128 KiB"): `none` 422 -> 414 KB per image,
#: float16 1,940 -> 1,932 KB, queries and merge unchanged within the noise; a 16-image file grows
#: 0.50 -> 0.55 MB per image (a fixed cost of about 1 MB). The size is chosen when a file is created
#: and kept in it: files created before keep their blocks (256 or 64 KiB) and open, upgrade and answer
#: as before. Files with other than 256 KiB blocks need DuckDB >= 1.2.
BLOCK_SIZE = 131_072
#: Catalog names DuckDB gives its own databases: a file named so is attached under another name.
_RESERVED_CATALOGS = frozenset({"memory", "system", "temp", "main"})


def _lock_read_only(con: duckdb.DuckDBPyConnection) -> None:
    """Close what external access leaves open, then lock the configuration.

    With external access off DuckDB still lets a statement open the database's own files (its
    allowed_paths: the file and its .wal): `SET log_query_path = 'x.duckdb'` replaced the database with
    a query log, and `CALL enable_logging(storage='file')` aborted the process. So the local file system
    is switched off (the database file is open already and is read through its open handle), and then
    `lock_configuration` makes every SET, RESET, PRAGMA and CALL that changes a setting fail (log and
    profiling output, logging, secret, extension and temporary directories, allowed paths, the file
    systems, the lock itself). The lock belongs to the database instance, which DuckDB shares between
    the read-only connections of one process to one file: a later connection finds it locked already.
    """
    if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
        return
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")
    con.execute("SET lock_configuration = true")


def _check_path(path: Path, create: bool) -> None:
    """Refuse what DuckDB would hang on or misread, before it opens anything."""
    try:
        _check_path_cli_words(path, create)
    except DatabaseError as exc:
        if exc.python_message is None:  # for Python callers: path='x.duckdb' where the CLI says --db x.duckdb
            exc.python_message = flags_as_arguments(exc.args[0])
        raise


def _check_path_cli_words(path: Path, create: bool) -> None:
    if path.exists():
        if path.is_dir():
            raise DatabaseError(f"--db {path} is a folder; name a database file inside it (e.g. {path / 'convis.duckdb'}).")
        if not path.is_file():  # a FIFO would block the open forever; a device or socket is no database
            raise DatabaseError(f"--db {path} is not a regular file (a pipe, socket or device); "
                                "point --db at a convis-db DuckDB file.")
        try:
            with path.open("rb") as fh:
                header = fh.read(16)
        except OSError:
            return  # DuckDB reports what it cannot read
        if header.startswith(b"SQLite format 3\0"):
            raise DatabaseError(f"--db {path} is a SQLite database, not a DuckDB file; point --db at a convis-db "
                                "DuckDB file (or create one with init).")
        return
    if not create:
        raise DatabaseError(
            f"no database at {path}. Create one with: convis-db --db {path} init "
            "(or point --db / CONVIS_DB at an existing file).",
            python=f"no database at {path}. Create one with convis_db.create({str(path)!r}, model=..., pretrained=...), "
                   "or pass the path of an existing database file."
        )
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise DatabaseError(f"cannot create --db {path}: {blocker} is a file, not a folder. "
                            "Choose a path in a folder you can write.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DatabaseError(f"cannot create the folder for --db {path}: {reason}. "
                            "Choose a path in a folder you can write.") from exc


def connect(path: str | Path, *, write: bool = False, create: bool = False,
            progress: Progress = no_progress) -> duckdb.DuckDBPyConnection:
    """A connection to the database file at the current schema (`progress` shows the migrations' long
    steps): a file an earlier convis-db wrote is upgraded when opened, in either mode, so every reader
    reads one schema (schema/current.sql).

    Read-only connections are sandboxed by DuckDB's configuration (_READ_ONLY_CONFIG, then
    _lock_read_only): no statement can make them write a file. (Before that, the one-time upgrade of
    an older file goes through its own writable connection: _upgrade_in_place.) Raises DatabaseError when the file
    does not exist (unless `create`), is not a regular file, is held by another process, is not a
    DuckDB file, or comes from a newer schema.
    """
    path = Path(path).expanduser()
    _check_path(path, create)
    con = _open(path, write)
    try:
        _no_progress_bar(con)
        if write:
            migrate(con, str(path), progress)
            if _stores_float16(con):
                compress_float16(con)
        else:
            check_not_newer(con, str(path))
            if pending_versions(con):  # written by an earlier convis-db: upgraded once, then read as current
                con.close()
                _upgrade_in_place(path, progress)
                con = _open(path, write=False)
                _no_progress_bar(con)
            _lock_read_only(con)
        if hasattr(con, "complete"):  # DuckDB >= 2: leave no unread result behind for the caller
            con.complete()
    except duckdb.Error as exc:
        con.close()
        raise DatabaseError(damaged_message(path, exc)) from exc
    except Exception:
        con.close()
        raise
    return con


def _open(path: Path, write: bool) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in the mode asked, DuckDB's open errors turned into one-line DatabaseErrors."""
    read_only = not write
    try:
        if read_only:
            return duckdb.connect(str(path), read_only=True, config=dict(_READ_ONLY_CONFIG))
        return _attach_for_writing(path)
    except duckdb.ResourceInUseException as exc:  # attached (so open) already in this process
        raise DatabaseLockedError(
            f"{path} is already open in this process; close that connection first (one process opens "
            "a file for writing once, and not at the same time read-only)."
        ) from exc
    except duckdb.IOException as exc:
        text = str(exc)
        if _is_lock_error(text):
            raise DatabaseLockedError(lock_message(path, text, want_write=write)) from exc
        raise DatabaseError(f"cannot open {path}: {_first_line(text)}. Is it a convis-db DuckDB file?") from exc
    except duckdb.Error as exc:
        text = str(exc)
        if "different configuration" in text:  # this process already has it open in the other mode
            raise DatabaseLockedError(
                f"{path} is already open in this process {'for writing' if read_only else 'read-only'}; "
                "close that connection first (one process opens a file in one mode at a time)."
            ) from exc
        raise DatabaseError(f"cannot open {path}: {_first_line(text)}. Is it a convis-db DuckDB file?") from exc


#: The compression settings of a writable connection to a database storing float16 embeddings (DuckDB
#: settings; compress_float16). `disabled_compression_methods`: DuckDB >= 1.3 tries DICT_FSST on every
#: string and BLOB column it writes, when a big insert writes its row groups and again at each checkpoint;
#: on float16 embeddings (schema 009's one BLOB of 1 KB per window) that analysis took 6-8 s per 64 images
#: for a file 0 % smaller (docs/benchmarks.md "Merge": 111,296 windows, insert 8.4 -> 1.1 s, checkpoint
#: 6.9 -> 0.5 s, 122 MB either way). Still needed with schema 017's high- and low-byte columns: allowed
#: DICT_FSST, DuckDB picks it for both (1,651 KB per image of embeddings, 78 ms per image to insert and
#: checkpoint); without it, zstd (1,536 KB, 16 ms; 16 images of 1,739 unit-norm 512-d vectors, measured
#: with DuckDB 2.0.1, docs/benchmarks.md "Split halves"). `zstd_min_string_length`: DuckDB considers
#: zstd for a string column only where its values average this many bytes (4,096 by default), so the
#: 512-byte columns of a 512-d model would stay uncompressed (1,815 KB); at 128 every model's halves
#: qualify. Only for float16 databases: with `none` or `float32` the all-NULL columns keep DICT_FSST,
#: which writes them in no bytes (forced uncompressed or zstd, each costs 4-8 KB per image).
FLOAT16_COMPRESSION = {"disabled_compression_methods": "dict_fsst", "zstd_min_string_length": "128"}


def _stores_float16(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the database stores float16 window embeddings: False for a file held at a schema before
    storage_settings (migration 009), as a test of an older schema's upgrade builds one."""
    return (has_table(con, "storage_settings")
            and con.execute("SELECT embeddings FROM storage_settings").fetchone() == ("float16",))


def compress_float16(con: duckdb.DuckDBPyConnection) -> None:
    """Apply FLOAT16_COMPRESSION to a writable connection to a database storing float16 embeddings
    (connect, image_store.set_embedding_storage); a setting this DuckDB lacks is left as it is (the
    file is then larger or slower to write, never different in what it holds)."""
    for name, value in FLOAT16_COMPRESSION.items():
        try:
            con.execute(f"SET {name} = '{value}'")  # constants of this module
        except duckdb.Error as exc:
            log.debug("compression setting %s not applied: %s", name, _first_line(str(exc)))


def _attach_for_writing(path: Path) -> duckdb.DuckDBPyConnection:
    """A writable connection to `path` that writes row groups of ROW_GROUP_SIZE rows and, when it
    creates the file, blocks of BLOCK_SIZE bytes.

    DuckDB takes the row group size as an ATTACH option only, so the file is attached to an in-memory
    DuckDB and made its default catalog (named after the file, as duckdb.connect would name it);
    unqualified SQL reads and writes the file as before. Closing the connection checkpoints and
    releases the file. The block size is DuckDB's `default_block_size`, which applies to a file being
    created only: an existing file keeps its own. DuckDB would spill to `.tmp` in the working
    directory for an in-memory database; the spill goes beside the file, where duckdb.connect(path)
    puts it (`<file>.tmp`)."""
    con = duckdb.connect(config={**_BASE_CONFIG, "default_block_size": BLOCK_SIZE,
                                 "temp_directory": f"{path}.tmp"})
    try:
        name = path.name.split(".")[0] or "convis"
        if name.lower() in _RESERVED_CATALOGS:
            name = f"convis_{name}"
        literal = str(path).replace("'", "''")  # ATTACH takes no bound parameter; the path is ours
        identifier = '"' + name.replace('"', '""') + '"'
        con.execute(f"ATTACH '{literal}' AS {identifier} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        con.execute(f"USE {identifier}")
    except BaseException:
        con.close()
        raise
    return con


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A second connection to `con`'s database (for another thread), reading and writing the same file.

    A DuckDB cursor starts in its instance's default catalog, which for a writable connection is the
    in-memory one the file is attached to (`_attach_for_writing`), so it is pointed at `con`'s."""
    name = con.execute("SELECT current_database()").fetchone()[0]
    cur = con.cursor()
    try:
        cur.execute("USE " + '"' + name.replace('"', '""') + '"')
    except BaseException:
        cur.close()
        raise
    return cur


def _upgrade_in_place(path: Path, progress: Progress) -> None:
    """Migrate a file an earlier convis-db wrote, before a read-only open reads it.

    Every reader reads the current schema only (schema/current.sql), so an older file is brought up to
    it once, by the same migrations a writable open runs; later opens find it current and write
    nothing. This is the one write a read-only open ever makes, and it is logged. Where the file cannot
    be written now (another process has it open, a read-only file system or file), the open fails
    naming what to do, and the file is left as it was."""
    log.warning("%s was written by an earlier convis-db: upgrading it to the current schema (once; "
                "later opens read it as it is)", path)
    try:
        con = _open(path, write=True)
    except DatabaseLockedError as exc:
        raise DatabaseLockedError(
            f"{path} was written by an earlier convis-db and must be upgraded once before it is read, "
            f"which needs the file to itself: {exc.args[0]}") from exc
    except DatabaseError as exc:
        raise DatabaseError(
            f"{path} was written by an earlier convis-db and must be upgraded once before it is read, "
            f"but it cannot be written here ({exc.args[0]}). Copy it to a folder you can write and open "
            "the copy.") from exc
    try:
        _no_progress_bar(con)
        migrate(con, str(path), progress)
    finally:
        con.close()


def _no_progress_bar(con: duckdb.DuckDBPyConnection) -> None:
    """No progress bar on this connection (DuckDB would draw it on stdout, in --json/--csv output).

    A second read-only connection to a file this process has open shares its locked configuration;
    it cannot set its own bar then, and needs not: DuckDB draws none on a connection that never
    turned it on outside a terminal (DuckDB's default is off unless Python runs interactively)."""
    try:
        con.execute("SET enable_progress_bar = false")
    except duckdb.InvalidInputException:
        if not con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
            raise


def damaged_message(path: str | Path, exc: BaseException) -> str:
    """The one line for a DuckDB error on a file that opened: most often a truncated or damaged file."""
    return (f"cannot read {path}: {_first_line(str(exc))}. The file may be truncated or damaged: restore it "
            "from a copy, or rebuild it with init and ingest.")


def lock_message(path: Path, duckdb_text: str, want_write: bool) -> str:
    """Why the file is busy, naming the holder and what to do about that kind of holder."""
    holder = _holder_description(duckdb_text)
    if " serve" in f" {holder}":
        advice = ("The explorer (convis-db serve) keeps the file open while it runs; stop it (Ctrl-C in its "
                  "terminal) to write, then start it again.")
    elif any(w in f" {holder}" for w in (" ingest", " init", " --write", " merge")):
        advice = "Wait for it to finish (it holds the file until it ends), or stop it, then try again."
    elif want_write:
        advice = "A writer needs the file to itself: wait for that process to end or stop it, then try again."
    else:
        advice = "Wait for it to finish, or stop it, then try again."
    return (f"{path} is in use by {holder}. {advice} "
            "Query commands can share the file with each other, not with a writer.")


def require_initialised(con: duckdb.DuckDBPyConnection, path: str | Path) -> int:
    """The number of synsets in T; fails clearly on a file that has no hierarchy yet."""
    try:
        n = synset_count(con)
    except duckdb.CatalogException:
        n = 0
    if not n:
        raise DatabaseError(f"{path} has no WordNet hierarchy yet. Run: convis-db --db {path} init --model ... --pretrained ...",
                            python=f"{path} has no WordNet hierarchy yet. Build it with convis_db.create({str(path)!r}, "
                                   "model=..., pretrained=...).")
    return int(n)

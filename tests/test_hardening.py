"""Hardening: read-only SQL that writes nothing, bounded inputs, true error messages, a safe explorer.

Each defect of the adversarial pass has a case in HARDENING_CASES (docs/reliability.md counts them)
and a test here that failed before its fix. Every error is one line on stderr with exit code 2.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import signal
import threading
from pathlib import Path

import duckdb
import pytest
import torch

from convis_db.engine.capacity import check_fits, explanation_bytes
from convis_db.engine.settings import Settings
from convis_db.errors import UsageError
from convis_db.ingest import Ingestor
from faults import images as fi
from faults.checks import assert_whole, query, table_counts
from faults.checks import cli_ok as _ok
from faults.checks import cli_user_error as _user_error
from faults.proc import INGESTED_LINE, INTERRUPT_LINE, Watched, module_command

pytestmark = pytest.mark.fault
posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals and FIFOs")

FAST = ("--max-pixels", "20000", "--stride", "32", "--top-k", "5", "--device", "cpu")
FAST_SETTINGS = Settings(max_pixels=20_000, stride=32, top_k=5)

#: The defects, by the issue's numbering (docs/reliability.md counts this table).
HARDENING_CASES = (
    "sql without --write: COPY ... TO the database file",
    "sql without --write: COPY ... TO another file",
    "sql without --write: ATTACH ... (READ_WRITE) and CREATE TABLE",
    "sql without --write: ATTACH of a hard link to the database",
    "sql without --write: EXPORT DATABASE",
    "sql without --write: INSTALL an extension",
    "sql without --write: SET enable_external_access or allowed_directories back",
    "--max-pixels far above what the machine holds",
    "a full disk reported as a rollback error",
    "the explorer answering any Host header",
    "sql cutting rows at 1,000 silently",
    "a truncated database (search, regions, map, explain, ingest)",
    "init --db under a file (/etc/passwd/x.duckdb)",
    "init into a missing folder on a read-only file system",
    "search --limit 99999999999999999999",
    "sql --limit 99999999999999999999",
    "map -o x.txt",
    "ingest on a database whose schema_migrations was dropped",
    "a FIFO as --db",
    "a SQLite file as --db (extension download)",
    "ingest --top-k above the number of concepts",
    "search/regions --min-score nan, map --threshold nan",
    "control characters and newlines in file names in tables",
    "SIGTERM during ingest",
    "a writer meeting a running serve",
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def stored_db(tmp_path_factory, tiny_db) -> Path:
    """The tiny database with two ingested images (FAST settings). Read-only: copy it to change it."""
    folder = tmp_path_factory.mktemp("hardened")
    db = folder / "stored.duckdb"
    shutil.copyfile(tiny_db, db)
    a = fi.write_rgb(folder / "one.png", 80, 60, seed=31)
    b = fi.write_rgb(folder / "two.png", 60, 80, seed=32)
    with Ingestor(db, device=torch.device("cpu"), settings=FAST_SETTINGS) as ing:
        assert ing.run([a, b]).count("ingested") == 2
    return db


@pytest.fixture
def stored_copy(stored_db, tmp_path) -> Path:
    folder = tmp_path / "db"
    folder.mkdir()
    target = folder / "stored.duckdb"
    shutil.copyfile(stored_db, target)
    return target


# ------------------------------------------------------------------------------------------------
# 1. Read-only SQL writes no file.

WRITES_ELSEWHERE = {
    "copy-to-db": "COPY (SELECT 'x' AS a) TO '{db}' (FORMAT csv)",
    "copy-to-file": "COPY (SELECT 'x' AS a) TO '{folder}/out.csv' (FORMAT csv)",
    "attach-rw": "ATTACH '{folder}/other.duckdb' AS o (READ_WRITE); CREATE TABLE o.t AS SELECT 1 AS a",
    "attach-hard-link": "ATTACH '{folder}/link.duckdb' AS l (READ_WRITE); DELETE FROM l.images",
    "export": "EXPORT DATABASE '{folder}/exported'",
    "install": "INSTALL sqlite",
    "allow-dirs": "SET allowed_directories = ['/']",
    "external-access": "SET enable_external_access = true",
    "read-any-file": "SELECT * FROM read_csv('/etc/passwd', sep = ':')",
}


@pytest.mark.parametrize("case", sorted(WRITES_ELSEWHERE))
def test_sql_without_write_touches_no_file(stored_copy, run_cli, monkeypatch, case):
    folder = stored_copy.parent
    os.link(stored_copy, folder / "link.duckdb")
    monkeypatch.chdir(folder)
    before_tree, before_db = _tree(folder), _digest(stored_copy)
    home = Path.home() / ".duckdb"
    home_before = _tree(home) if home.is_dir() else {}
    statement = WRITES_ELSEWHERE[case].format(db=stored_copy, folder=folder)
    _user_error(run_cli("--db", stored_copy, "sql", statement))
    assert _tree(folder) == before_tree and _digest(stored_copy) == before_db
    assert (_tree(home) if home.is_dir() else {}) == home_before
    assert_whole(stored_copy)


def test_sql_reads_files_through_table_option(stored_copy, run_cli, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,label\n1,first\n2,second\n", encoding="utf-8")
    before = _digest(stored_copy)
    out = _ok(run_cli("--db", stored_copy, "sql",
                      "SELECT l.label, i.width FROM labels l JOIN images i USING (image_id) ORDER BY 1",
                      "--table", f"labels={labels}", "--json"))
    assert [r["label"] for r in __import__("json").loads(out)] == ["first", "second"]
    assert _digest(stored_copy) == before
    _user_error(run_cli("--db", stored_copy, "sql", "SELECT 1", "--table", "labels"), "name=file")
    _user_error(run_cli("--db", stored_copy, "sql", "SELECT 1", "--table", f"x={tmp_path / 'none.csv'}"),
                "no such file")


def test_sql_help_says_what_write_allows(run_cli):
    text = _ok(run_cli("sql", "--help"))
    assert "--write" in text and "COPY" in text and "ATTACH" in text and "--table" in text


# ------------------------------------------------------------------------------------------------
# 2. Size options are bounded before anything is allocated.


def test_max_pixels_above_the_ceiling_is_refused_before_allocating(stored_copy, tmp_path, run_cli):
    img = fi.write_rgb(tmp_path / "small.png", 80, 60, seed=3)
    before = table_counts(stored_copy)
    fresh = stored_copy.with_name("fresh.duckdb")
    shutil.copyfile(stored_copy, fresh)
    con = duckdb.connect(str(fresh))
    con.execute("DELETE FROM window_top; DELETE FROM concept_map_terms; DELETE FROM concept_self_terms; "
                "DELETE FROM window_embeddings; DELETE FROM images")
    con.close()
    _user_error(run_cli("--db", fresh, "ingest", img, "--max-pixels", "2000000000", "--device", "cpu"),
                "--max-pixels 2000000000", "ceiling")
    _user_error(run_cli("--db", fresh, "ingest", img, "--large", "100000", "--device", "cpu"), "--large", "ceiling")
    assert table_counts(stored_copy) == before


def test_memory_check_names_a_max_pixels_that_fits():
    settings = Settings(max_pixels=16_000_000, stride=16)
    memory = 8 << 30
    with pytest.raises(UsageError, match="Use --max-pixels") as info:
        check_fits(settings, 7343, memory_bytes=memory)
    suggested = int(str(info.value).split("Use --max-pixels ")[1].split(" ")[0].replace(",", ""))
    fitting = Settings(max_pixels=suggested, stride=16)
    assert explanation_bytes(fitting, 7343) <= memory / 2
    check_fits(fitting, 7343, memory_bytes=memory)
    check_fits(Settings(), 7343, memory_bytes=memory)  # the paper's settings fit in 8 GiB


# ------------------------------------------------------------------------------------------------
# 3. A full disk says so.


class _DiskFullCursor:
    """A cursor on which the windows insert fails as on a full disk: DuckDB has already aborted the
    transaction when it raises, so a second ROLLBACK would say 'no transaction is active'."""

    def __init__(self, cursor):
        self._cursor = cursor

    def execute(self, sql, *args, **kwargs):
        if sql.lstrip().startswith("INSERT INTO window_embeddings"):
            self._cursor.execute("ROLLBACK")
            raise duckdb.IOException('IO Error: Could not write file "stored.duckdb.wal": No space left on device')
        return self._cursor.execute(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cursor, name)


def test_full_disk_is_reported_as_a_full_disk(stored_copy, tmp_path, run_cli, monkeypatch):
    from convis_db.ingest import storing as ingest

    real_enter = ingest.PipelinedWriter.__enter__

    def enter(self):
        real_enter(self)
        self._cursor = _DiskFullCursor(self._cursor)
        return self

    monkeypatch.setattr(ingest.PipelinedWriter, "__enter__", enter)
    img = fi.write_rgb(tmp_path / "new.png", 70, 50, seed=41)
    before = table_counts(stored_copy)
    err = _user_error(run_cli("-q", "--db", stored_copy, "ingest", img, *FAST), "No space left on device", "disk is full")
    assert "no transaction is active" not in err.lower()
    assert table_counts(stored_copy) == before
    assert assert_whole(stored_copy) == 2


# ------------------------------------------------------------------------------------------------
# 4. The explorer answers only the hosts it serves.


def test_explorer_refuses_foreign_host_headers(stored_db):
    from convis_db.web.server import build_server

    server = build_server(stored_db, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        def status(host: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.request("GET", "/api/stats", headers={"Host": host})
                return conn.getresponse().status
            finally:
                conn.close()

        assert status("evil.example.com") == 400
        assert status(f"evil.example.com:{server.port}") == 400
        assert status(f"127.0.0.1:{server.port}") == 200
        assert status(f"localhost:{server.port}") == 200
    finally:
        server.shutdown()
        server.server_close()
        server.app.extensions["convis_explorer"].close()


def test_explorer_trusts_the_host_it_listens_on_and_named_ones():
    from convis_db.web.server import trusted_hosts_for

    assert "192.168.1.7" in trusted_hosts_for("192.168.1.7")
    wildcard = trusted_hosts_for("0.0.0.0", ("photos.lan",))
    assert "0.0.0.0" not in wildcard and "photos.lan" in wildcard and "localhost" in wildcard


# ------------------------------------------------------------------------------------------------
# 5. sql says when it cuts, and exports carry every row.


def test_sql_exports_every_row_and_says_when_a_table_is_cut(physical_db, run_cli):
    import json

    n = query(physical_db, "SELECT count(*) FROM synsets")[0][0]
    assert n > 1000
    sql = "SELECT * FROM descendants('entity.n.01')"
    assert len(json.loads(_ok(run_cli("--db", physical_db, "sql", sql, "--json")))) == n
    assert len(_ok(run_cli("--db", physical_db, "sql", sql, "--csv")).splitlines()) == n + 1
    table = run_cli("--db", physical_db, "sql", sql)
    assert table.exit_code == 0 and "showing the first 1,000 rows" in table.stderr
    assert len(table.stdout.splitlines()) == 1000 + 2
    cut = run_cli("--db", physical_db, "sql", sql, "--json", "--limit", "5")
    assert len(json.loads(cut.stdout)) == 5 and "--limit 0" in cut.stderr
    assert "showing" not in run_cli("--db", physical_db, "sql", "SELECT 1 AS a").stderr


# ------------------------------------------------------------------------------------------------
# 6. One-line errors instead of tracebacks.


def test_truncated_database_gives_one_line_errors(stored_copy, tmp_path, run_cli):
    size = stored_copy.stat().st_size
    with open(stored_copy, "r+b") as fh:
        fh.truncate(size // 2)
    img = fi.write_rgb(tmp_path / "new.png", 40, 30, seed=5)
    for args in (["search", "dog.n.01"], ["regions", "dog.n.01"], ["map", "1", "dog.n.01", "--json"],
                 ["explain", "1"], ["ingest", str(img), *FAST]):
        result = run_cli("-q", "--db", stored_copy, *args)
        _user_error(result, str(stored_copy.name))


def test_init_where_no_folder_can_be_made(tmp_path, run_cli, tiny_config, small_vocab_file, monkeypatch):
    init = ["init", "--model", str(tiny_config), "--pretrained", "none", "--vocab", str(small_vocab_file)]
    _user_error(run_cli("--db", "/etc/passwd/x.duckdb", *init), "/etc/passwd is a file")

    def read_only_mkdir(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    _user_error(run_cli("--db", tmp_path / "missing" / "x.duckdb", *init), "read-only file system", "folder")
    assert not (tmp_path / "missing").exists()


def test_huge_numbers_and_wrong_suffixes_are_one_line_errors(stored_db, run_cli, tmp_path):
    huge = "99999999999999999999"
    _user_error(run_cli("--db", stored_db, "search", "dog.n.01", "--limit", huge), "--limit", huge)
    _user_error(run_cli("--db", stored_db, "sql", "SELECT 1", "--limit", huge), "--limit", huge)
    _user_error(run_cli("--db", stored_db, "map", "1", "dog.n.01", "-o", tmp_path / "x.txt"), "x.txt", ".png")
    assert not (tmp_path / "x.txt").exists()


def test_ingest_without_schema_record_is_refused(stored_copy, tmp_path, run_cli):
    con = duckdb.connect(str(stored_copy))
    con.execute("DROP TABLE schema_migrations")
    con.close()
    before = table_counts(stored_copy)
    img = fi.write_rgb(tmp_path / "new.png", 40, 30, seed=6)
    _user_error(run_cli("--db", stored_copy, "ingest", img, *FAST), "schema_migrations", "restore")
    assert table_counts(stored_copy) == before
    _ok(run_cli("--db", stored_copy, "search", "dog.n.01"))  # still readable


# ------------------------------------------------------------------------------------------------
# 7. Files that are not databases.


@posix_only
def test_fifo_as_db_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.duckdb"
    os.mkfifo(fifo)
    with Watched([*module_command(), "--db", str(fifo), "stats"]) as child:
        assert child.finish(timeout=120) == 2, child.stderr
    assert "not a regular file" in child.stderr and "Traceback" not in child.stderr


def test_sqlite_file_as_db_loads_no_extension(tmp_path, run_cli):
    import sqlite3

    path = tmp_path / "photos.duckdb"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    _user_error(run_cli("--db", path, "stats"), "sqlite database, not a duckdb file")
    con = duckdb.connect(":memory:")
    try:  # and every connection convis-db makes has automatic extension loading off
        from convis_db.store.db import _BASE_CONFIG

        assert _BASE_CONFIG["autoinstall_known_extensions"] is False
        assert _BASE_CONFIG["autoload_known_extensions"] is False
    finally:
        con.close()


# ------------------------------------------------------------------------------------------------
# 8-10. Values that are accepted today but wrong.


def test_top_k_above_the_number_of_concepts_is_refused(tiny_db_copy, tmp_path, run_cli):
    n = query(tiny_db_copy, "SELECT count(*) FROM synsets")[0][0]
    img = fi.write_rgb(tmp_path / "a.png", 40, 30, seed=7)
    _user_error(run_cli("--db", tiny_db_copy, "ingest", img, "--top-k", str(n + 1), "--max-pixels", "20000",
                        "--stride", "32", "--device", "cpu"), f"--top-k {n + 1}", f"{n} concepts")
    assert query(tiny_db_copy, "SELECT count(*) FROM images") == [(0,)]


@pytest.mark.parametrize("args", [["search", "dog.n.01", "--min-score", "nan"],
                                  ["regions", "dog.n.01", "--min-score", "nan"],
                                  ["search", "dog.n.01", "--min-score", "inf"],
                                  ["map", "1", "dog.n.01", "--json", "--threshold", "nan"]])
def test_nan_scores_are_refused(stored_db, run_cli, args):
    _user_error(run_cli("--db", stored_db, *args), "not a finite number")


def test_control_characters_in_file_names_are_escaped_in_tables(tiny_db_copy, tmp_path, run_cli):
    name = "evil\x1b]0;owned\x07\x1b[2J\nsecond line.png"
    img = fi.write_rgb(tmp_path / name, 60, 40, seed=8)
    _ok(run_cli("--db", tiny_db_copy, "ingest", img, *FAST))
    out = _ok(run_cli("--db", tiny_db_copy, "search", "entity.n.01", env={"COLUMNS": "400"}))
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2J\\nsecond line.png" in out
    assert not any(line.startswith("second line") for line in out.splitlines())  # the row was not split
    listed = _ok(run_cli("--db", tiny_db_copy, "sql", "SELECT path FROM images"))
    assert "\x1b" not in listed and "\\n" in listed
    import json

    assert json.loads(_ok(run_cli("--db", tiny_db_copy, "search", "entity.n.01", "--json")))[0]["path"].endswith(name)


# ------------------------------------------------------------------------------------------------
# 11. SIGTERM finishes the image in hand.


@posix_only
def test_sigterm_stops_after_the_current_image(tiny_db_copy, tmp_path):
    db = tiny_db_copy
    n = 10
    fi.write_many(tmp_path / "many", n, start_seed=7000)
    with Watched([*module_command(), "-v", "--db", str(db), "ingest", str(tmp_path / "many"), *FAST,
                  "--batch-size", "64"]) as child:
        child.wait_for(INGESTED_LINE, 1, timeout=150)
        child.send(signal.SIGTERM)
        rc = child.finish(timeout=150)
        err = child.stderr
    assert rc == 143, err[-3000:]
    assert "terminated (SIGTERM): stopped after the current image" in err and "Traceback" not in err
    at = INTERRUPT_LINE.search(err)
    assert at is not None, err[-3000:]
    assert len(INGESTED_LINE.findall(err[at.end():])) <= 1
    reported = {int(m.group(2)) for m in INGESTED_LINE.finditer(err)}
    assert {i for (i,) in query(db, "SELECT image_id FROM images")} == reported
    assert 1 <= assert_whole(db) < n


# ------------------------------------------------------------------------------------------------
# 12. A writer meeting the explorer is told it is the explorer.


@posix_only
def test_writer_meeting_serve_names_the_explorer(stored_copy, tmp_path, run_cli):
    img = fi.write_rgb(tmp_path / "new.png", 40, 30, seed=9)
    with Watched([*module_command(), "--db", str(stored_copy), "serve", "--port", "0"]) as server:
        server.wait_for_text("explorer for", timeout=150)
        try:
            for args in (["ingest", str(img), *FAST], ["sql", "CREATE TABLE t AS SELECT 1", "--write"]):
                err = _user_error(run_cli("--db", stored_copy, *args), "is in use by", f"process {server.pid}",
                                  "serve", "explorer")
                assert "an ingest or init holds" not in err
        finally:
            server.send(signal.SIGTERM)
            server.finish(timeout=60)


def test_reliability_doc_counts_hardening_cases():
    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert f"**{len(HARDENING_CASES)}** hardening defects fixed" in text
    for case in HARDENING_CASES:
        assert f"| {case} |" in text, case

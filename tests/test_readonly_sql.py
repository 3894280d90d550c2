"""Read-only means no statement writes a file (issue 21, item 1).

DuckDB's own read-only switches left the database's own files open to settings that name a file:
`SET log_query_path = 'x.duckdb'` replaced the database with a query log, and `CALL
enable_logging(storage='file', ...)` aborted the process. Every read-only connection is now locked
(store/db.py `_lock_read_only`). The walk over duckdb_settings() makes a setting that a future DuckDB
adds fail here instead of writing files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from faults.checks import assert_whole
from faults.checks import cli_ok as _ok
from faults.checks import cli_user_error as _user_error
from faults.proc import child_env, module_command

pytestmark = pytest.mark.fault

#: A setting that may name a file, or turn on something that writes one, by its name or description.
FILE_WORDS = re.compile(r"file|path|director|log|profil|secret|extension|temp|output|storage|home|spill", re.I)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (recursively) with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture
def db_copy(tiny_db, tmp_path) -> Path:
    target = tmp_path / "s.duckdb"
    shutil.copyfile(tiny_db, target)
    return target


def _value(input_type: str, target: str) -> str:
    """A SQL literal of the setting's type that names `target` where the type can hold a path."""
    t = input_type.upper()
    if t == "BOOLEAN":
        return "true"
    if t.endswith("[]"):
        return f"['{target}']"
    if t.startswith("MAP"):
        return f"MAP {{'output': '{target}'}}"
    if any(k in t for k in ("INT", "DOUBLE", "FLOAT", "DECIMAL")):
        return "1"
    return f"'{target}'"


def _file_settings() -> list[tuple[str, str]]:
    con = duckdb.connect()
    try:
        rows = con.execute("SELECT name, description, input_type FROM duckdb_settings() ORDER BY name").fetchall()
    finally:
        con.close()
    return [(name, input_type) for name, description, input_type in rows if FILE_WORDS.search(f"{name} {description}")]


def test_the_settings_walk_finds_the_known_file_settings():
    """The walk below covers the settings the adversarial pass used (a guard on FILE_WORDS itself)."""
    names = {n for n, _ in _file_settings()}
    for known in ("log_query_path", "profiling_output", "enable_profiling", "enable_logging", "logging_sink",
                  "secret_directory", "temp_directory", "allowed_paths", "allowed_directories", "disabled_filesystems",
                  "extension_directory" if "extension_directory" in names else "extension_directories"):
        assert known in names, known
    assert len(names) >= 30


def test_every_setting_that_names_a_file_is_refused_read_only(db_copy, tmp_path, run_cli, monkeypatch):
    """Each file-like setting of this DuckDB, SET to a new path, to the database file and to its .wal
    through the read-only API, and to a new path through `sql` without --write: refused (one line,
    exit 2, from the CLI), and no file appears or changes."""
    import convis_db
    from convis_db.errors import UsageError

    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    settings = _file_settings()
    with convis_db.open(db_copy, device="cpu") as db:
        for name, input_type in settings:
            for target in (tmp_path / f"{name}.out", db_copy, Path(f"{db_copy}.wal")):
                statement = f"SET {name} = {_value(input_type, str(target))}"
                with pytest.raises(UsageError):
                    db.sql(statement)
                assert db.sql("SELECT 1 AS one").fetchall() == [(1,)]
            assert _files(tmp_path) == before, name
    for name, input_type in settings:
        statement = f"SET {name} = {_value(input_type, str(tmp_path / f'{name}.out'))}; SELECT 1 AS one"
        err = _user_error(run_cli("--db", db_copy, "sql", statement))
        assert any(w in err.lower() for w in ("--write", "outside the database", "sql error")), (statement, err)
    assert _files(tmp_path) == before
    assert_whole(db_copy)
    assert _ok(run_cli("--db", db_copy, "sql", "SELECT count(*) AS n FROM synsets", "--csv")).startswith("n\n")


@pytest.mark.parametrize("statement", [
    "PRAGMA enable_profiling",
    "PRAGMA profiling_output = '{dir}/profile.json'",
    "SET enable_profiling = 'json'",
    "SET GLOBAL log_query_path = '{dir}/q.log'",
    "RESET log_query_path",
    "SET lock_configuration = false",
    "RESET lock_configuration",
    "SET disabled_filesystems = ''",
    "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "SELECT * FROM read_text('{db}')",
    "SELECT * FROM glob('{dir}/*')",
    "COPY (SELECT 1) TO '{db}.wal'",
    "CALL enable_logging(storage='memory')",
    "CALL disable_logging()",
])
def test_pragmas_resets_and_file_functions_are_refused(db_copy, tmp_path, run_cli, statement):
    before = _files(tmp_path)
    _user_error(run_cli("--db", db_copy, "sql", statement.format(dir=tmp_path, db=db_copy)))
    assert _files(tmp_path) == before


@pytest.mark.parametrize("statement", [
    "SET log_query_path = '{db}'; SELECT 1",
    "CALL enable_logging(storage='file', storage_path='{dir}/logs')",
    "SET logging_sink = 'file'",
])
def test_the_reported_statements_in_a_real_process(db_copy, tmp_path, statement):
    """The issue's commands, in a child process (an abort would take pytest with it): exit 2 with one
    line, not a replaced database (log_query_path) or exit 134 (enable_logging)."""
    before = _files(tmp_path)
    proc = subprocess.run([*module_command(), "--db", str(db_copy), "sql", statement.format(db=db_copy, dir=tmp_path)],
                          capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--write" in proc.stderr
    assert _files(tmp_path) == before
    assert_whole(db_copy)


def test_write_flag_still_changes_settings(db_copy, tmp_path, run_cli):
    """--write is unchanged: settings (and their files) are the user's to choose."""
    log_file = tmp_path / "queries.log"
    _ok(run_cli("--db", db_copy, "sql", f"SET log_query_path = '{log_file}'; SELECT 42 AS answer", "--write"))
    assert "42" in log_file.read_text()


def test_every_read_only_connection_is_locked(db_copy, tmp_path):
    """The API, a second connection of the same process to the same file, and the explorer: all locked."""
    import convis_db
    from convis_db.store.db import connect
    from convis_db.web.explorer import Explorer

    before = _files(tmp_path)
    with convis_db.open(db_copy, device="cpu") as db:
        second = connect(db_copy)  # shares the database instance, its configuration already locked
        explorer = Explorer(convis_db.open(db_copy, device="cpu"))
        try:
            for con in (db.con, second, explorer.db.con):
                assert con.execute("SELECT current_setting('lock_configuration')").fetchone()[0] is True
                assert con.execute("SELECT current_setting('enable_external_access')").fetchone()[0] is False
                assert con.execute("SELECT current_setting('allowed_directories')").fetchone()[0] == []
                with pytest.raises(duckdb.Error, match="locked"):
                    con.execute(f"SET log_query_path = '{db_copy}'")
                with pytest.raises(duckdb.Error):
                    con.execute(f"SELECT * FROM read_text('{db_copy}')")
            with pytest.raises(convis_db.ConvisError, match="write=True"):
                db.sql(f"SET profiling_output = '{tmp_path}/p.json'")
            assert db.sql("SELECT count(*) FROM synsets").fetchall()[0][0] > 0
        finally:
            explorer.close()
            second.close()
    assert _files(tmp_path) == before

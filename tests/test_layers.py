"""Rooms on floors: no import in convis_db runs up the layers (function-level imports included), and
only the store opens DuckDB files (everything else goes through a Database or a store function)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "convis_db"

#: Bottom to top. A module may import its own room and anything below it, never above.
LAYERS: list[set[str]] = [
    {"errors", "paths", "progress", "cache", "results", "arguments"},
    {"wordnet", "models"},
    {"engine"},                                   # the method's mathematics
    {"store"},                                    # DuckDB: schema, connections, rows
    {"profile"},                                  # which model and settings a database uses
    {"query", "ingest", "explainers", "mutual", "init_db"},
    {"distributed"},                              # shards: written by workers, merged into a store
    {"api"},                                      # the one door: convis_db.Database
    {"evaluation", "demo", "web"},                # users of the API
    {"cli", "__main__", "__init__"},
]


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _floor(room: str) -> int:
    for i, rooms in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"convis_db/{room} is on no floor of tests/test_layers.py: add it to LAYERS")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "convis_db":
            if node.module == "convis_db":
                yield from ((f"convis_db.{a.name}", node.lineno) for a in node.names if a.name != "__version__")
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "convis_db")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield path, rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_no_import_runs_up_the_layers():
    upward = []
    for path, room in _modules():
        for target, line in _imports(path):
            if target in ("convis_db.errors",) or _room(target) == room:
                continue
            if _floor(_room(target)) > _floor(room):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == []


def test_only_the_store_opens_duckdb():
    # Whoever needs a connection gets it from a Database (api.py, through store/handles.py) or a store
    # function; init_db creates the file and the ingest writer of a distributed run opens it by path,
    # both through store.db.connect.
    openers = {"init_db.py", "ingest/ingestor.py",
               "mutual/service.py"}  # its explain_image(db=PATH) for callers without a Database (issue 22, item 1)
    found = []
    for path, room in _modules():
        rel = str(path.relative_to(PACKAGE))
        if room == "store":
            continue
        text = path.read_text(encoding="utf-8")
        if "duckdb.connect(" in text:
            found.append(f"{rel}: duckdb.connect")
        for target, line in _imports(path):
            if target == "convis_db.store.db" and rel not in openers:
                names = [a.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom)
                         and n.module == target and n.lineno == line for a in n.names]
                if "connect" in names:
                    found.append(f"{rel}:{line} imports store.db.connect")
    assert found == []


def test_the_explorer_and_the_cli_read_through_database_methods():
    # The explorer (web/), the CLI (cli/) and eval (evaluation/) are users of the API: no `.con` of a Database (nor a
    # connection of their own), only its methods (issue 22, item 7). Found by attribute access in the
    # syntax tree, so a comment or a string naming `db.con` does not count.
    found = []
    for path, room in _modules():
        if room not in ("web", "cli", "evaluation"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "con":
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses .con")
    assert found == []

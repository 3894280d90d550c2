"""The foundation commands through the CLI: init, concepts, sql, stats, help texts, --db / CONVIS_DB."""

from __future__ import annotations

import csv
import io
import json
import re

import click
import duckdb
import pytest
import torch

from convis_db.cli import cli
from convis_db.store.migrations import available_migrations


def _json(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture
def init_args(tiny_config, tiny_checkpoint, small_vocab_file):
    # The extended T: these tests rely on normalised spellings ('hot dog', 't-shirt').
    return ["init", "--model", tiny_config, "--pretrained", tiny_checkpoint, "--vocab", small_vocab_file,
            "--hierarchy", "extended", "--device", "cpu", "--json"]


# --------------------------------------------------------------------------- init


def test_init_then_concepts_dog(run_cli, tmp_path, init_args, wn):
    db = tmp_path / "cli.duckdb"
    report = _json(run_cli("-q", "--db", db, *init_args))
    assert report["built_hierarchy"] is True
    assert report["n_synsets"] == report["embedded_definitions"] > 100
    assert report["missing_words"] == []
    assert report["vocabulary"] == "small_words"
    assert report["is_random"] is False

    rows = _json(run_cli("--db", db, "concepts", "dog", "--json"))
    by_name = {r["synset"]: r for r in rows}
    assert "dog.n.01" in by_name
    dog = by_name["dog.n.01"]
    assert rows[0]["synset"] == "dog.n.01"  # the sense named after the word comes first
    assert dog["definition"] == wn.synset("dog.n.01").definition()
    assert dog["path"][0] == "dog.n.01"
    assert dog["path"][-1] == "entity.n.01"
    assert len(dog["path"]) == wn.synset("dog.n.01").min_depth() + 1
    # Each step of the path is an is-a edge of WordNet.
    for child, parent in zip(dog["path"], dog["path"][1:]):
        assert wn.synset(parent) in wn.synset(child).hypernyms() + wn.synset(child).instance_hypernyms()
    assert dog["n_children"] == 0 and dog["n_descendants"] == 0  # no dog breeds in this small T
    # Every noun sense of 'dog' in WordNet shows up (frank.n.02 is a 'dog' too).
    assert {s.name() for s in wn.synsets("dog", "n")} <= set(by_name)


def test_init_text_output_and_random_note(run_cli, tmp_path, tiny_config, small_vocab_file):
    db = tmp_path / "r.duckdb"
    result = run_cli("-q", "--db", db, "init", "--model", tiny_config, "--pretrained", "none",
                     "--vocab", small_vocab_file, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "synsets" in result.stdout and "definitions embedded now" in result.stdout
    assert "meaningless" in result.stderr  # the random-weights warning goes to stderr, not stdout


def test_init_twice_changes_nothing(run_cli, tmp_path, init_args):
    db = tmp_path / "twice.duckdb"
    first = _json(run_cli("-q", "--db", db, *init_args))

    def snapshot():
        con = duckdb.connect(str(db), read_only=True)
        try:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("vocabulary", "synsets", "isa_edges", "closure", "models", "definition_embeddings",
                              "schema_migrations")}
        finally:
            con.close()

    before = snapshot()
    second = _json(run_cli("-q", "--db", db, *init_args))
    assert second["embedded_definitions"] == 0
    assert second["built_hierarchy"] is False
    assert first["embedded_definitions"] == first["n_synsets"] > 0
    for key in ("n_synsets", "n_edges", "n_closure_pairs", "model_id", "vocabulary"):
        assert second[key] == first[key], key
    assert snapshot() == before
    assert before["models"] == 1 and before["vocabulary"] == 1


def test_init_with_other_vocabulary_is_refused(run_cli, tiny_db_copy, tiny_config, tiny_checkpoint):
    result = run_cli("--db", tiny_db_copy, "init", "--model", tiny_config, "--pretrained", tiny_checkpoint,
                     "--vocab", "physical-objects", "--device", "cpu")
    assert result.exit_code == 2
    assert "one vocabulary" in result.stderr and "small_words" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "ViT-B-3", "--pretrained", "openai"], "ViT-B-32"),
        (["--model", "ViT-B-32", "--pretrained", "/no/such/file.pt"], "no such checkpoint"),
        (["--vocab", "no-such-vocab"], "physical-objects"),
    ],
)
def test_init_errors_are_one_line_exit_2(run_cli, tmp_path, tiny_config, args, needle):
    base = {"--model": str(tiny_config), "--pretrained": "none", "--vocab": "physical-objects"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    flat = [x for kv in base.items() for x in kv]
    result = run_cli("--db", tmp_path / "e.duckdb", "init", *flat, "--device", "cpu")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_init_cuda_without_gpu_exits_2(run_cli, tmp_path, tiny_config, small_vocab_file, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    db = tmp_path / "gpu.duckdb"
    result = run_cli("--db", db, "init", "--model", tiny_config, "--pretrained", "none", "--vocab",
                     small_vocab_file, "--device", "cuda")
    assert result.exit_code == 2
    assert "--device cpu" in result.stderr


# --------------------------------------------------------------------------- concepts


def test_concepts_unknown_word_suggests_nearest(run_cli, tiny_db):
    result = run_cli("--db", tiny_db, "concepts", "tigre")
    assert result.exit_code == 2
    assert "nearest" in result.stderr
    assert "tiger" in result.stderr
    assert result.stdout == ""


def test_concepts_by_synset_name_and_definition_words(run_cli, tiny_db, wn):
    rows = _json(run_cli("--db", tiny_db, "concepts", "tiger.n.02", "--json"))
    assert [r["synset"] for r in rows] == ["tiger.n.02"]
    assert rows[0]["lexname"] == "noun.animal"
    # Not a lemma: matched by whole definition words, all of them.
    rows = _json(run_cli("--db", tiny_db, "concepts", "vehicle wheels", "--json", "--limit", "50"))
    names = [r["synset"] for r in rows]
    assert "wheeled_vehicle.n.01" in names
    assert all(re.search(r"\bvehicle\b", r["definition"]) and re.search(r"\bwheels\b", r["definition"]) for r in rows)


def test_concepts_limit(run_cli, tiny_db):
    rows = _json(run_cli("--db", tiny_db, "concepts", "dog", "--json", "--limit", "2"))
    assert len(rows) == 2


def test_concepts_table_and_csv(run_cli, tiny_db):
    table = run_cli("--db", tiny_db, "concepts", "bicycle")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].split()[:2] == ["synset", "definition"]
    assert "bicycle.n.01" in table.stdout
    result = run_cli("--db", tiny_db, "concepts", "bicycle", "--csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["synset"] == "bicycle.n.01"
    assert list(rows[0]) == ["synset", "definition", "n_children", "n_descendants", "path"]
    path = json.loads(rows[0]["path"])
    assert path[0] == "bicycle.n.01" and path[-1] == "entity.n.01"


def test_json_and_csv_are_exclusive(run_cli, tiny_db):
    result = run_cli("--db", tiny_db, "concepts", "dog", "--json", "--csv")
    assert result.exit_code == 2
    assert "exclusive" in result.stderr


# --------------------------------------------------------------------------- sql


def test_sql_descendants_count(run_cli, tiny_db):
    rows = _json(run_cli("--db", tiny_db, "sql", "SELECT count(*) AS n FROM descendants('animal.n.01')", "--json"))
    con = duckdb.connect(str(tiny_db), read_only=True)
    expected = con.execute("SELECT count(*) FROM closure c JOIN synsets s ON s.synset_id = c.ancestor_id "
                           "WHERE s.name = 'animal.n.01'").fetchone()[0]
    con.close()
    assert rows == [{"n": expected}]
    assert expected > 5
    # The plain table output prints the number too.
    plain = run_cli("--db", tiny_db, "sql", "SELECT count(*) FROM descendants('animal.n.01')")
    assert plain.exit_code == 0
    assert plain.stdout.split()[-1] == str(expected)


def test_sql_write_needs_write_flag(run_cli, tiny_db_copy):
    result = run_cli("--db", tiny_db_copy, "sql", "CREATE TABLE notes (x INTEGER)")
    assert result.exit_code == 2
    assert "--write" in result.stderr
    result = run_cli("--db", tiny_db_copy, "sql", "DELETE FROM synsets")
    assert result.exit_code == 2 and "--write" in result.stderr
    assert _json(run_cli("--db", tiny_db_copy, "sql", "SELECT count(*) AS n FROM synsets", "--json"))[0]["n"] > 0

    ok = run_cli("--db", tiny_db_copy, "sql", "CREATE TABLE notes (x INTEGER)", "--write")
    assert ok.exit_code == 0, ok.stderr
    ok = run_cli("--db", tiny_db_copy, "sql", "INSERT INTO notes VALUES (41), (1)", "--write")
    assert ok.exit_code == 0, ok.stderr
    assert _json(run_cli("--db", tiny_db_copy, "sql", "SELECT sum(x) AS s FROM notes", "--json")) == [{"s": 42}]


def test_sql_error_is_exit_2(run_cli, tiny_db):
    result = run_cli("--db", tiny_db, "sql", "SELECT * FROM no_such_table")
    assert result.exit_code == 2
    assert "SQL error" in result.stderr and "no_such_table" in result.stderr


def test_sql_csv_parses(run_cli, tiny_db, wn):
    result = run_cli("--db", tiny_db, "sql",
                     "SELECT name, distance, definition FROM ancestors('dog.n.01') ORDER BY distance, name", "--csv")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["name", "distance", "definition"]
    assert rows[0] == {"name": "dog.n.01", "distance": "0", "definition": wn.synset("dog.n.01").definition()}
    assert rows[-1]["name"] == "entity.n.01"
    assert [int(r["distance"]) for r in rows] == sorted(int(r["distance"]) for r in rows)
    # Definitions with commas and quotes survive the CSV quoting.
    result = run_cli("--db", tiny_db, "sql", "SELECT name, definition FROM synsets WHERE definition LIKE '%,%' "
                     "ORDER BY name", "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    con = duckdb.connect(str(tiny_db), read_only=True)
    n_with_commas = con.execute("SELECT count(*) FROM synsets WHERE definition LIKE '%,%'").fetchone()[0]
    con.close()
    assert len(rows) == n_with_commas >= 1
    assert all(r["definition"] == wn.synset(r["name"]).definition() for r in rows)


def test_sql_limit(run_cli, tiny_db):
    rows = _json(run_cli("--db", tiny_db, "sql", "SELECT name FROM synsets", "--json", "--limit", "3"))
    assert len(rows) == 3


# --------------------------------------------------------------------------- stats


def test_stats_json(run_cli, tiny_db):
    stats = _json(run_cli("--db", tiny_db, "stats", "--json"))
    con = duckdb.connect(str(tiny_db), read_only=True)
    try:
        n_synsets, n_closure = con.execute(
            "SELECT (SELECT count(*) FROM synsets), (SELECT count(*) FROM closure)").fetchone()
    finally:
        con.close()
    assert stats["synsets"] == n_synsets > 0
    assert stats["closure"] == n_closure
    assert stats["definition_embeddings"] == n_synsets
    assert stats["images"] == 0
    assert stats["vocabulary"] == "small_words"
    assert stats["wordnet_version"] == "3.0"
    assert stats["hierarchy"] == "extended"   # tiny_db is built with --hierarchy extended
    assert stats["schema_version"] == max(m.version for m in available_migrations())
    assert stats["file_bytes"] > 0
    assert len(stats["models_list"]) == 1 and stats["models_list"][0].startswith("tiny-clip / ")


# --------------------------------------------------------------------------- --db, CONVIS_DB, missing files


def test_db_from_environment(run_cli, tiny_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no convis.duckdb here: the env var must be what is used
    stats = _json(run_cli("stats", "--json", env={"CONVIS_DB": str(tiny_db)}))
    assert stats["db"] == str(tiny_db)
    assert stats["synsets"] > 0
    # --db wins over the environment.
    other = tmp_path / "absent.duckdb"
    result = run_cli("--db", other, "stats", env={"CONVIS_DB": str(tiny_db)})
    assert result.exit_code == 2 and str(other) in result.stderr


def test_missing_db_says_init(run_cli, tmp_path):
    db = tmp_path / "missing.duckdb"
    for args in (["stats"], ["concepts", "dog"], ["sql", "SELECT 1"]):
        result = run_cli("--db", db, *args)
        assert result.exit_code == 2, args
        assert "init" in result.stderr, args
        assert not db.exists()


def test_empty_db_says_init(run_cli, tmp_path):
    db = tmp_path / "empty.duckdb"
    duckdb.connect(str(db)).close()
    result = run_cli("--db", db, "concepts", "dog")
    assert result.exit_code == 2 and "init" in result.stderr


# --------------------------------------------------------------------------- help


def _leaf_commands(group, prefix=()) -> list[tuple[str, ...]]:
    """Every runnable command path: top-level commands and the subcommands of groups (eval wsol, ...)."""
    out = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            out.extend(_leaf_commands(cmd, prefix + (name,)))
        else:
            out.append(prefix + (name,))
    return out


@pytest.mark.parametrize("command", _leaf_commands(cli), ids=" ".join)
def test_every_command_help_has_example(run_cli, command):
    result = run_cli(*command, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Example" in result.stdout
    assert "convis-db" in result.stdout


def test_foundation_commands_registered():
    assert {"init", "concepts", "sql", "stats"} <= set(cli.commands)


def test_group_help_and_version(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0 and "CONVIS_DB" in result.stdout
    result = run_cli("--version")
    assert result.exit_code == 0 and "convis-db" in result.stdout


def test_init_with_a_missing_vocab_file_leaves_no_database(run_cli, tiny_config, tmp_path):
    db = tmp_path / "never.duckdb"
    res = run_cli("--db", db, "init", "--model", tiny_config, "--pretrained", "none", "--vocab", tmp_path / "nosuch.txt")
    assert res.exit_code == 2 and "--vocab" in res.stderr
    assert not db.exists()


def test_init_refuses_another_word_list_under_the_same_name(run_cli, tiny_config, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "words.txt").write_text("dog\ncat\n")
    (tmp_path / "b" / "words.txt").write_text("car\nboat\n")
    db = tmp_path / "v.duckdb"
    args = ["--db", db, "init", "--model", tiny_config, "--pretrained", "none", "--vocab"]
    assert run_cli(*args, tmp_path / "a" / "words.txt").exit_code == 0
    res = run_cli(*args, tmp_path / "b" / "words.txt")
    assert res.exit_code == 2 and "one vocabulary" in res.stderr
    # The same words from another path are the same vocabulary.
    (tmp_path / "c.txt").write_text("dog\ncat\n")
    assert run_cli(*args, tmp_path / "c.txt").exit_code == 0


def test_init_with_weights_that_cannot_be_had_leaves_no_file(run_cli, tmp_path, monkeypatch):
    """Offline, a tag fails before any file is made, with the recipe for --pretrained PATH or none."""
    import open_clip

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': no network. Last error: again no network")

    monkeypatch.setattr(open_clip, "create_model", offline)
    db = tmp_path / "offline.duckdb"
    res = run_cli("--db", db, "init", "--model", "ViT-B-32", "--pretrained", "openai")
    assert res.exit_code == 2
    assert "--pretrained PATH" in res.stderr and "--pretrained none" in res.stderr
    assert "Last error" not in res.stderr  # the hub's repetition is trimmed
    assert not db.exists()

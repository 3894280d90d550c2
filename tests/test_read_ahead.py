"""The merge reads the next shard's files in a background thread while it checks and stores the one
before it (distributed/read_ahead.py): the rows stored are a plain ingest's, a shard whose file cannot
be read fails at its own turn after the shards before it were stored, shards merged before are not
read again, and no more than the next shard is read ahead."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from convis_db.distributed import read_ahead, shards as shards_module
from convis_db.distributed.read_ahead import ReadAhead, read_files
from convis_db.distributed.shards import finished_shards, merge_shards
from convis_db.store.concept_index import refresh_concept_index
from convis_db.store.db import connect
from convis_db.store.shard_checks import ShardError
from faults.checks import query
from test_distributed_ingest import assert_same, collection, plain_db  # noqa: F401 (fixtures)
from test_merge_groups import _copy, four_shards  # noqa: F401 (fixture)


def _reads(monkeypatch) -> list[tuple[str, str]]:
    """(shard name, thread name) of every read ahead, in the order they ran."""
    seen: list[tuple[str, str]] = []
    read = read_ahead.read_files

    def spy(folder, names):
        seen.append((Path(folder).name, threading.current_thread().name))
        return read(folder, names)

    monkeypatch.setattr(read_ahead, "read_files", spy)
    return seen


def _merge(db, shards):
    con = connect(db, write=True)
    try:
        results = merge_shards(con, finished_shards(shards).values())
        refresh_concept_index(con)
    finally:
        con.close()
    return results


def test_each_shard_is_read_in_the_background_and_stored_as_a_plain_ingest(tiny_db, four_shards, plain_db,  # noqa: F811
                                                                            tmp_path, monkeypatch):
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    names = list(finished_shards(shards))
    seen = _reads(monkeypatch)
    assert [r.status for r in _merge(db, shards)] == ["merged"] * 4
    assert [name for name, _ in seen] == names
    assert all(thread.startswith("convis-shard-read") for _, thread in seen), seen
    assert_same(plain_db, db)


def test_the_next_shard_is_read_while_the_one_before_is_stored(tiny_db, four_shards, tmp_path, monkeypatch):  # noqa: F811
    """While shard i is being stored, shard i + 1's read has started, and shard i + 2's has not."""
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    names = list(finished_shards(shards))
    seen = _reads(monkeypatch)
    started: dict[str, list[str]] = {}
    store = shards_module._store_shard

    def spy(con, shard):
        for _ in range(500):  # the read ahead runs on its own thread: let it start
            if len(seen) > names.index(shard.name) + 1 or shard.name == names[-1]:
                break
            threading.Event().wait(0.01)
        started[shard.name] = [name for name, _ in seen]
        return store(con, shard)

    monkeypatch.setattr(shards_module, "_store_shard", spy)
    _merge(db, shards)
    for i, name in enumerate(names):
        assert started[name] == names[:min(i + 2, len(names))], (name, started[name])


def test_an_unreadable_file_fails_at_its_shards_turn(tiny_db, four_shards, tmp_path, run_cli, monkeypatch):  # noqa: F811
    """The third shard's file is read (and found cut short) while the second is stored; the error is
    raised when the merge reaches the third, so the first two are stored, as without reading ahead."""
    monkeypatch.setattr(shards_module, "GROUP_WINDOWS", 1)  # a transaction per shard
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    names = list(finished_shards(shards))
    (shards / names[2] / "concept_peaks.parquet").write_bytes(b"PAR1 cut short")
    res = run_cli("--db", db, "-q", "merge", shards)
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert f"{names[2]}/concept_peaks.parquet" in res.stderr and "not a readable Parquet file" in res.stderr
    assert query(db, "SELECT shard FROM merged_shards ORDER BY shard") == [(n,) for n in names[:2]]


def test_rows_failing_their_checks_fail_at_their_shards_turn(tiny_db, four_shards, tmp_path, run_cli,  # noqa: F811
                                                            monkeypatch):
    """A shard read ahead is still checked at its own turn: a bad value in the third shard is reported
    in the same words, after the first two were stored."""
    monkeypatch.setattr(shards_module, "GROUP_WINDOWS", 10**9)  # one group: the first two committed all the same
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    names = list(finished_shards(shards))
    path = shards / names[2] / "concept_peaks.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("map_sum"), "map_sum",
                                    pa.array(np.full(table.num_rows, -1, np.int32))), path)
    res = run_cli("--db", db, "-q", "merge", shards)
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert f"{names[2]}/concept_peaks.parquet" in res.stderr and "map_sum" in res.stderr
    assert query(db, "SELECT shard FROM merged_shards ORDER BY shard") == [(n,) for n in names[:2]]


def test_read_files_keeps_each_files_error(four_shards, tmp_path):  # noqa: F811
    folder = next(iter(finished_shards(four_shards).values()))
    files = read_files(folder, ["images", "no_such_table"])
    assert files["images"].num_rows >= 1
    assert isinstance(files["no_such_table"], ShardError)
    assert "no_such_table.parquet" in str(files["no_such_table"]) and "missing" in str(files["no_such_table"])


def test_shards_merged_before_are_not_read_again(tiny_db, four_shards, tmp_path, monkeypatch):  # noqa: F811
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    _merge(db, shards)
    seen = _reads(monkeypatch)
    assert [r.status for r in _merge(db, shards)] == ["already-merged"] * 4
    assert seen == []


def test_leaving_early_does_not_wait_for_the_read_ahead(four_shards, monkeypatch):  # noqa: F811
    """An error at shard 0 (the caller stops) while shard 1's read runs: leaving the block does not wait
    for that read, and keeps nothing of it."""
    folders = list(finished_shards(four_shards).values())
    reading, release = threading.Event(), threading.Event()
    read = read_ahead.read_files

    def blocked(folder, tables):
        if folder == folders[1]:
            reading.set()
            release.wait(30)
        return read(folder, tables)

    monkeypatch.setattr(read_ahead, "read_files", blocked)
    try:
        with pytest.raises(RuntimeError):
            with ReadAhead(folders, lambda folder: ["images"]) as ahead:
                assert ahead.files(0)["images"].num_rows >= 1
                assert reading.wait(10)
                raise RuntimeError("stop")
        assert ahead._pending == {}
    finally:
        release.set()

"""The merge stores shards in groups, one transaction per group of about a row group of windows
(shards.GROUP_WINDOWS), so DuckDB writes their rows into the file once: the stored rows are those of a
plain ingest whatever the grouping, a damaged shard keeps the shards before it, and a shard that fails
while being stored rolls back only its own group, which the next merge stores.

Seven files (five images, a duplicate, an empty file) in four shards of two, written once by the
shard worker in this process (no Ray).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from convis_db.distributed import shards as shards_module
from convis_db.distributed.shards import finished_shards, merge_shards
from convis_db.ingest import collect_image_paths
from convis_db.store.concept_index import refresh_concept_index
from convis_db.store.db import connect
from faults.checks import query
from shard_writer import write_shards
from test_distributed_ingest import SETTINGS, assert_same, collection, plain_db  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def four_shards(tiny_db, collection, tmp_path_factory) -> Path:  # noqa: F811 (fixture)
    files, _ = collect_image_paths([collection], recursive=False)
    shards = write_shards(tiny_db, [str(f.absolute()) for f in files], tmp_path_factory.mktemp("grouped") / "shards",
                          SETTINGS, 2)
    assert len(finished_shards(shards)) == 4
    return shards


def _copy(tiny_db, four_shards, tmp_path) -> tuple[Path, Path]:
    db, shards = tmp_path / "db.duckdb", tmp_path / "shards"
    shutil.copyfile(tiny_db, db)
    shutil.copytree(four_shards, shards)
    return db, shards


def _transactions_of_each_shard(db, shards, monkeypatch) -> list[int]:
    """Merge and return, per stored shard, the id of the transaction that stored it."""
    seen: list[int] = []
    store = shards_module._store_shard

    def spy(con, shard):
        seen.append(con.execute("SELECT txid_current()").fetchone()[0])
        return store(con, shard)

    monkeypatch.setattr(shards_module, "_store_shard", spy)
    con = connect(db, write=True)
    try:
        results = merge_shards(con, finished_shards(shards).values())
        refresh_concept_index(con)  # as merge_folder does once after its shards
    finally:
        con.close()
    assert [r.status for r in results] == ["merged"] * 4
    return seen


@pytest.mark.parametrize("group_windows, transactions", [(1, 4), (10**9, 1), (100, 2)])
def test_grouping_changes_transactions_not_rows(tiny_db, four_shards, plain_db, tmp_path, monkeypatch,  # noqa: F811
                                                group_windows, transactions):
    """A group commits once the images it added hold GROUP_WINDOWS windows, and the rows are a plain
    ingest's. 90 windows per image; in file order the shards add 1 (+ the empty file), 2, 1 (+ the
    duplicate, stored by the shard but not added) and 1 images: at 100, [90, 180] then [90, 90]; a
    grouping that counted the duplicate's windows would make three groups."""
    monkeypatch.setattr(shards_module, "GROUP_WINDOWS", group_windows)
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    seen = _transactions_of_each_shard(db, shards, monkeypatch)
    assert len(set(seen)) == transactions, seen
    assert_same(plain_db, db)
    assert query(db, "SELECT count(*) FROM merged_shards")[0][0] == 4


def test_a_damaged_shard_keeps_the_shards_before_it_in_its_group(tiny_db, four_shards, tmp_path, run_cli,
                                                                 monkeypatch):
    monkeypatch.setattr(shards_module, "GROUP_WINDOWS", 10**9)  # all four in one group
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    names = list(finished_shards(shards))
    (shards / names[2] / "window_top.parquet").write_bytes(b"PAR1 cut short")
    res = run_cli("--db", db, "-q", "merge", shards)
    assert res.exit_code == 2 and names[2] in res.stderr and "Traceback" not in res.stderr
    assert query(db, "SELECT shard FROM merged_shards ORDER BY shard") == [(n,) for n in names[:2]]
    assert query(db, "SELECT count(*) FROM images")[0][0] == 3


def test_a_shard_failing_while_stored_rolls_back_its_group_and_the_next_merge_stores_it(
        tiny_db, four_shards, plain_db, tmp_path, run_cli, monkeypatch):  # noqa: F811
    """A failure inside the group's transaction (here the third shard's insert) rolls back the whole
    group, leaves the database as before, and a second merge stores every shard as a plain ingest."""
    monkeypatch.setattr(shards_module, "GROUP_WINDOWS", 10**9)
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    third = list(finished_shards(shards))[2]
    insert = shards_module._insert_checked

    def fail_on_third(con, shard, lookup):
        insert(con, shard, lookup)
        if shard.name == third:
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of a group

    monkeypatch.setattr(shards_module, "_insert_checked", fail_on_third)
    con = connect(db, write=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            merge_shards(con, finished_shards(shards).values())
        assert con.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM merged_shards), "
                           "(SELECT count(*) FROM window_top)").fetchone() == (0, 0, 0)
    finally:
        con.close()
    monkeypatch.setattr(shards_module, "_insert_checked", insert)
    res = run_cli("--db", db, "merge", shards, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["images_added"] == 5
    assert_same(plain_db, db)


def test_what_is_stored_is_what_was_checked(tiny_db, four_shards, plain_db, tmp_path, run_cli,  # noqa: F811
                                            monkeypatch):
    """The merge inserts the Arrow tables it checked, never the files read again: a shard's file damaged
    after its check (a second writer, a bad disk) changes nothing that is stored."""
    db, shards = _copy(tiny_db, four_shards, tmp_path)
    check = shards_module._check_shard

    def check_then_damage(con, folder, files=None):
        checked = check(con, folder, files)
        path = folder / "concept_peaks.parquet"
        table = pq.read_table(path)
        sums = pa.array(np.full(table.num_rows, -1, np.int32))  # would fail every check
        pq.write_table(table.set_column(table.schema.get_field_index("map_sum"), "map_sum", sums), path)
        return checked

    monkeypatch.setattr(shards_module, "_check_shard", check_then_damage)
    res = run_cli("--db", db, "merge", shards, "--json")
    assert res.exit_code == 0, res.stderr
    assert query(db, "SELECT min(map_sum) FROM concept_peaks")[0][0] >= 0
    assert_same(plain_db, db)

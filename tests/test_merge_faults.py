"""`merge` trusts nothing (issue 21, items 4-6): a damaged, unreadable or foreign shard is refused in
one line (exit 2) naming the file, the column and the first bad row, and nothing of it is stored.

One shard of three images (and a failed file) is written once by the shard worker from the tiny
database; each test damages a copy of it the way a bad disk, a bad writer or a hostile user would.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import convis_db
from convis_db.engine.settings import Settings
from convis_db.errors import ConvisError
from convis_db.distributed.shards import MANIFEST, finished_shards
from faults.checks import query
from noise_images import write_noise_pngs
from shard_writer import write_shards
from test_distributed_ingest import write_as_old_format

pytestmark = pytest.mark.fault

SETTINGS = Settings(max_pixels=9_000, stride=16, small=32, large=64, top_k=5)   # 42 windows per image


@pytest.fixture(scope="module")
def written(tiny_db, tmp_path_factory) -> Path:
    """A shards folder holding one finished shard: three images and one failed (empty) file."""
    folder = tmp_path_factory.mktemp("faulty-collection")
    files = [str(p.absolute()) for p in write_noise_pngs(folder, [(70, 90), (90, 70), (80, 80)], seed=21)]
    (folder / "empty.png").write_bytes(b"")
    files.append(str((folder / "empty.png").absolute()))
    return write_shards(tiny_db, files, tmp_path_factory.mktemp("faulty-shards") / "shards", SETTINGS, 8)


@pytest.fixture
def case(written, tiny_db, tmp_path):
    """(database copy, shards copy, the one shard's folder) for a test to damage."""
    shards = tmp_path / "shards"
    shutil.copytree(written, shards)
    db = tmp_path / "db.duckdb"
    shutil.copyfile(tiny_db, db)
    (folder,) = finished_shards(shards).values()
    return db, shards, folder


def nothing_stored(db) -> None:
    counts = query(db, "SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM windows), "
                       "(SELECT count(*) FROM image_scores), (SELECT count(*) FROM window_concepts), "
                       "(SELECT count(*) FROM image_embeddings), (SELECT count(*) FROM merged_shards), "
                       "(SELECT count(*) FROM ingest_failures), (SELECT count(*) FROM window_embeddings)")[0]
    assert counts == (0,) * 8


def refused(run_cli, db, shards, *needles: str) -> str:
    """Merge must fail in one line, exit 2, naming each of `needles`, and store nothing."""
    res = run_cli("--db", db, "-q", "merge", shards)
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, res.stderr
    for needle in needles:
        assert needle in err, (needle, err)
    nothing_stored(db)
    return err


def rewrite(folder: Path, table: str, change) -> None:
    """Apply `change(columns: dict name -> numpy/py list) -> None` to one table and write it back."""
    t = pq.read_table(folder / f"{table}.parquet")
    cols = {n: t.column(n).to_pylist() if not pa.types.is_primitive(t.column(n).type)
            else t.column(n).to_numpy().copy() for n in t.column_names}
    change(cols)
    out = {n: pa.array(values, type=t.schema.field(n).type) for n, values in cols.items()}
    pq.write_table(pa.table(out), folder / f"{table}.parquet")


def edit_manifest(folder: Path, change) -> None:
    body = json.loads((folder / MANIFEST).read_text())
    change(body)
    (folder / MANIFEST).write_text(json.dumps(body))


def set_at(column: str, row: int, value):
    def change(cols):
        cols[column] = list(cols[column])  # a list holds a None too
        cols[column][row] = value
    return change


def test_an_undamaged_copy_merges(case, run_cli):
    """The fixture itself is sound: every refusal below is caused by its own damage."""
    db, shards, folder = case
    res = run_cli("--db", db, "-q", "merge", shards, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["images_added"] == 3
    assert query(db, "SELECT count(*) FROM ingest_failures")[0][0] == 1
    assert query(db, "SELECT shard FROM merged_shards") == [(folder.name,)]


# Item 4: one case per kind of damage: (table, change, column named, row named).
DAMAGE = {
    "a peak sum above its windows times the synsets": ("concept_peaks", set_at("map_sum", 5, 10**8), "map_sum", 5),
    "a peak covered by no window": ("concept_peaks", set_at("self_windows", 9, 0), "self_windows", 9),
    "a negative peak sum": ("concept_peaks", set_at("self_sum", 3, -1), "self_sum", 3),
    "synset the database does not hold": ("concept_peaks", set_at("synset_id", 7, 10_000), "synset_id", 7),
    "negative synset in a window's top-K": ("window_concepts", set_at("synset_id", 11, -1), "synset_id", 11),
    "rank_less past the number of synsets": ("window_concepts", set_at("rank_less", 4, 10_000), "rank_less", 4),
    "k outside top_k": ("window_concepts", set_at("k", 2, 0), "k", 2),
    "top-K of a window outside the grid": ("window_concepts", set_at("window_idx", 6, 10_000), "window_idx", 6),
    "negative image id": ("windows", set_at("image_id", 4, -3), "image_id", 4),
    "foreign image id": ("window_concepts", set_at("image_id", 0, 42), "image_id", 0),
    "foreign image id in window_top": ("window_top", set_at("image_id", 0, 42), "image_id", 0),
    "negative synset in a window's top-K list": ("window_top", lambda c: c["synset_ids"][11].__setitem__(2, -1),
                                                 "synset_ids", 11),
    "synset past the database's in a top-K list": ("window_top", lambda c: c["synset_ids"][7].__setitem__(0, 10_000),
                                                   "synset_ids", 7),
    "a top-K list one id short": ("window_top", lambda c: c["synset_ids"][2].pop(), "synset_ids", 2),
    "a top-K list one id long": ("window_top", lambda c: c["synset_ids"][9].append(0), "synset_ids", 9),
    "a NULL top-K list": ("window_top", set_at("synset_ids", 5, None), "synset_ids", 5),
    "a NULL inside a top-K list": ("window_top", lambda c: c["synset_ids"][3].__setitem__(1, None), "synset_ids", 3),
    "rank_less past the number of synsets in window_top": ("window_top", set_at("rank_less", 4, [10_000] * 5),
                                                           "rank_less", 4),
    "a negative rank_less in window_top": ("window_top", set_at("rank_less", 8, [3, 2, 1, 0, -1]), "rank_less", 8),
    "a rank_less list of the wrong length": ("window_top", set_at("rank_less", 6, [9, 8]), "rank_less", 6),
    "a window_top row outside the grid": ("window_top", set_at("window_idx", 6, 10_000), "window_idx", 6),
    "image id 0 in the scores": ("concept_peaks", set_at("image_id", 8, 0), "image_id", 8),
    "two images rows for one image": ("images", set_at("image_id", 1, 1), "image_id", 1),
    "two images rows with one content": ("images", lambda c: c["sha256"].__setitem__(2, c["sha256"][0]),
                                         "sha256", 2),
    "a sha256 that is not one": ("images", set_at("sha256", 0, "../../x"), "sha256", 0),
    "a path the manifest does not list": ("images", set_at("path", 1, "/etc/passwd"), "path", 1),
    "n_windows not rows x cols": ("images", set_at("n_windows", 0, 41), "n_windows", 0),
    "settings other than the manifest's": ("images", set_at("stride", 2, 32), "stride", 2),
    "a negative width": ("images", set_at("width", 1, -5), "width", 1),
    "a NaN scale": ("images", set_at("scale", 0, float("nan")), "scale", 0),
    "a NULL where a value is required": ("images", set_at("height", 2, None), "height", 2),
    # window_concepts is a view since schema 012 (over window_top): its rows still need every value
    "a NULL in a window's top-K": ("window_concepts", set_at("synset_id", 3, None), "synset_id", 3),
    "a box that ends before it starts": ("windows", set_at("x1", 10, -100), "x1", 10),
    "grid_row that disagrees with window_idx": ("windows", set_at("grid_row", 13, 99), "grid_row", 13),
    # schema 021 stores no box: the database computes it from the image's lattice, so it must be that one
    "a box off its image's lattice": ("windows", set_at("y0", 12, 5), "y0", 12),
    "a layout that is not one": ("images", set_at("layout", 1, "spiral"), "layout", 1),
    "NaN in a window embedding": ("windows", lambda c: c["embedding"][3].__setitem__(0, float("nan")),
                                  "embedding", 3),
    "a window embedding of another width": ("windows", lambda c: c["embedding"].__setitem__(5, [0.5] * 3),
                                            "embedding", 5),
    "a peak outside the working image": ("concept_peaks", set_at("work_peak_x", 12, 10_000), "work_peak_x", 12),
    # schema 022 stores a peak as its map segment: pixel 0 is inside the first segment, never its centre
    "a peak off its segment's centre": ("concept_peaks", set_at("work_self_peak_y", 14, 0), "work_self_peak_y", 14),
    "image-level count below the concept's own": ("concept_peaks", set_at("image_max_rank_less", 1, 0),
                                                  "image_max_rank_less", 1),
    "NaN in the image embedding": ("image_embeddings", lambda c: c["embedding"][2].__setitem__(1, float("nan")),
                                   "embedding", 2),
    "precision that is not one": ("images", set_at("precision", 0, "int4"), "precision", 0),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_row_is_refused_naming_file_column_and_row(case, run_cli, kind):
    db, shards, folder = case
    table, change, column, row = DAMAGE[kind]
    if kind == "image-level count below the concept's own":
        t = pq.read_table(folder / "concept_peaks.parquet")
        assert t.column("image_rank_less")[row].as_py() > 0  # the damage is real at that row
    if table == "window_concepts":  # format 3's long top-K rows: still checked row by row
        write_as_old_format(shards, 3)
    rewrite(folder, table, change)
    refused(run_cli, db, shards, f"{table}.parquet", f"column {column}", f"row {row}")


def _drop_rows(folder: Path, table: str, keep) -> None:
    t = pq.read_table(folder / f"{table}.parquet")
    t = t.filter(pa.array(keep(t)))
    pq.write_table(t, folder / f"{table}.parquet")
    edit_manifest(folder, lambda b: b["rows"].__setitem__(table, t.num_rows))  # the manifest agrees: rows checked


def test_windows_missing_for_stored_concepts_are_refused(case, run_cli):
    """window_concepts holds image 2's window 0 but windows lacks its row (manifest counts made to agree)."""
    db, shards, folder = case
    _drop_rows(folder, "windows", lambda t: ~((t.column("image_id").to_numpy() == 2)
                                              & (t.column("window_idx").to_numpy() == 0)))
    refused(run_cli, db, shards, "windows.parquet", "image 2's window 0")


def test_a_second_row_for_one_window_concept_is_refused(case, run_cli):
    db, shards, folder = case
    write_as_old_format(shards, 3)
    rewrite(folder, "window_concepts", set_at("k", 1, 1))  # rows 0 and 1 both (image 1, window 0, k 1)
    refused(run_cli, db, shards, "window_concepts.parquet", "column k", "row 1", "second row")


def test_a_second_window_top_row_for_one_window_is_refused(case, run_cli):
    """Format 4: rows 0 and 1 both image 1's window 0 (each window's top-K exactly once)."""
    db, shards, folder = case
    rewrite(folder, "window_top", set_at("window_idx", 1, 0))
    refused(run_cli, db, shards, "window_top.parquet", "column window_idx", "row 1", "second row")


def test_a_missing_window_top_row_is_refused(case, run_cli):
    db, shards, folder = case
    _drop_rows(folder, "window_top", lambda t: ~((t.column("image_id").to_numpy() == 2)
                                                 & (t.column("window_idx").to_numpy() == 5)))
    refused(run_cli, db, shards, "window_top.parquet", "no row for image 2's window 5")


def test_a_format_4_shard_listing_window_concepts_too_is_refused(case, run_cli):
    db, shards, folder = case
    edit_manifest(folder, lambda b: b["rows"].__setitem__("window_concepts", 0))
    refused(run_cli, db, shards, "manifest.json", "both window_concepts and window_top")


def test_scores_missing_for_a_synset_are_refused(case, run_cli):
    db, shards, folder = case
    _drop_rows(folder, "concept_peaks", lambda t: np.arange(t.num_rows) != 20)
    refused(run_cli, db, shards, "concept_peaks.parquet", "image 1's synset 20")


@pytest.mark.parametrize("damage,value,what", [("a NaN", float("nan"), "NaN or infinity"),
                                                ("no ratio of integers", 0.1234567, "not a ratio of integers")])
def test_an_older_shards_peak_that_has_no_exact_terms_is_refused(case, run_cli, damage, value, what):
    """A format 2 shard (DOUBLE peaks in image_scores, before schema 013) is converted to exact terms
    before its merge; a value that has none is refused naming the old file, column and row."""
    db, shards, folder = case
    write_as_old_format(shards, 2)
    rewrite(folder, "image_scores", set_at("self_score", 6, value))
    refused(run_cli, db, shards, "image_scores.parquet", "column self_score", "row 6", what)


def test_row_counts_that_disagree_with_the_manifest_are_refused(case, run_cli):
    db, shards, folder = case
    edit_manifest(folder, lambda b: b["rows"].__setitem__("windows", b["rows"]["windows"] + 1))
    refused(run_cli, db, shards, "windows.parquet", "rows where the manifest counts")


def test_a_column_of_another_type_is_refused(case, run_cli):
    db, shards, folder = case
    write_as_old_format(shards, 3)
    t = pq.read_table(folder / "window_concepts.parquet")
    i = t.schema.get_field_index("rank_less")
    pq.write_table(t.set_column(i, "rank_less", t.column("rank_less").cast(pa.string())),
                   folder / "window_concepts.parquet")
    refused(run_cli, db, shards, "window_concepts.parquet", "column rank_less", "another schema format")


def test_a_column_the_table_does_not_have_is_refused(case, run_cli):
    db, shards, folder = case
    t = pq.read_table(folder / "windows.parquet")
    pq.write_table(t.append_column("owner", pa.array(["x"] * t.num_rows)), folder / "windows.parquet")
    refused(run_cli, db, shards, "windows.parquet", "column owner")


def test_a_damaged_shard_stops_the_merge_and_keeps_earlier_shards(written, tiny_db, tmp_path, run_cli):
    """Shards before the damaged one stay merged (their group is committed first); the damaged one adds
    nothing."""
    shards = tmp_path / "shards"
    (src,) = finished_shards(written).values()
    shutil.copytree(src, shards / src.name)
    second = shards / "shard-00001-aaaaaaaaaaaa"
    shutil.copytree(src, second)
    edit_manifest(second, lambda b: b.__setitem__("shard", second.name))
    rewrite(second, "concept_peaks", set_at("map_sum", 0, -1))
    db = tmp_path / "db.duckdb"
    shutil.copyfile(tiny_db, db)
    res = run_cli("--db", db, "-q", "merge", shards)
    assert res.exit_code == 2 and second.name in res.stderr and "column map_sum, row 0" in res.stderr
    assert query(db, "SELECT shard FROM merged_shards") == [(src.name,)]
    assert query(db, "SELECT count(*) FROM images")[0][0] == 3


# Item 5: unreadable or malformed input, each one line.

def test_a_truncated_parquet_file(case, run_cli):
    db, shards, folder = case
    data = (folder / "window_top.parquet").read_bytes()
    (folder / "window_top.parquet").write_bytes(data[:len(data) // 2])
    refused(run_cli, db, shards, "window_top.parquet", "not a readable Parquet file")


def test_a_manifest_that_is_not_json(case, run_cli):
    db, shards, folder = case
    (folder / MANIFEST).write_text('{"format": 2, "rows": ')
    refused(run_cli, db, shards, MANIFEST, "not JSON")


@pytest.mark.parametrize("key", ["rows", "model", "settings", "images"])
def test_a_manifest_missing_a_key(case, run_cli, key):
    db, shards, folder = case
    edit_manifest(folder, lambda b: b.pop(key))
    refused(run_cli, db, shards, MANIFEST, f"no {key!r}")


@pytest.mark.parametrize("key,value", [("n_synsets", "many"), ("rows", [1, 2]), ("failed", True),
                                       ("images", "all"), ("settings", {"stride": "32"})])
def test_a_manifest_with_wrong_types(case, run_cli, key, value):
    db, shards, folder = case
    edit_manifest(folder, lambda b: b.__setitem__(key, value))
    refused(run_cli, db, shards, MANIFEST)


def test_a_manifest_that_is_a_list(case, run_cli):
    db, shards, folder = case
    (folder / MANIFEST).write_text("[1, 2]")
    refused(run_cli, db, shards, MANIFEST, "not an object")


def test_a_missing_table_file(case, run_cli):
    db, shards, folder = case
    (folder / "concept_peaks.parquet").unlink()
    refused(run_cli, db, shards, "concept_peaks.parquet", "missing")


def test_an_empty_shard_folder(tiny_db_copy, tmp_path, run_cli):
    shards = tmp_path / "shards"
    (shards / "shard-00000-0123456789ab").mkdir(parents=True)
    refused(run_cli, tiny_db_copy, shards, str(shards), "unfinished", "shard-00000-0123456789ab")


def test_an_empty_shards_folder(tiny_db_copy, tmp_path, run_cli):
    (tmp_path / "shards").mkdir()
    refused(run_cli, tiny_db_copy, tmp_path / "shards", "no shards")


def test_an_unreadable_shard_folder(case, run_cli, monkeypatch):
    """Permission denied on a shard's folder (faked: these tests may run as root, whom chmod does not stop)."""
    db, shards, folder = case
    real = os.listdir

    def listdir(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    refused(run_cli, db, shards, str(folder), "cannot be read", "permissions")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any folder whatever its mode")
def test_an_unreadable_shards_folder(case, run_cli):
    db, shards, _ = case
    shards.chmod(0)
    try:
        refused(run_cli, db, shards, "cannot be read")
    finally:
        shards.chmod(0o755)


def test_a_shard_of_another_format(case, run_cli):
    db, shards, folder = case
    edit_manifest(folder, lambda b: b.__setitem__("format", 5))
    refused(run_cli, db, shards, "shard format 5", "convis-db version that wrote it")


def test_a_shards_folder_that_is_a_file(tiny_db_copy, tmp_path, run_cli):
    not_a_folder = tmp_path / "shards.txt"
    not_a_folder.write_text("x")
    res = run_cli("--db", tiny_db_copy, "merge", not_a_folder)
    assert res.exit_code == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "shards.txt" in res.stderr
    with convis_db.open(tiny_db_copy, write=True) as db, pytest.raises(ConvisError, match="is a file"):
        db.merge(not_a_folder)
    nothing_stored(tiny_db_copy)


def test_one_shard_passed_instead_of_its_folder(case, run_cli):
    db, _, folder = case
    refused(run_cli, db, folder, "is one shard", str(folder.parent))


# Item 6: the name comes from the folder; a shard must prove its model.

def test_the_manifests_shard_name_is_never_stored(case, run_cli):
    db, shards, folder = case
    edit_manifest(folder, lambda b: b.__setitem__("shard", "../../etc/passwd"))
    refused(run_cli, db, shards, "../../etc/passwd", "folder name")


def test_a_folder_not_named_as_a_shard_is_refused_by_merge_shard(case):
    from convis_db.store.db import connect
    from convis_db.store.shard_checks import ShardError
    from convis_db.distributed.shards import merge_shard

    db, shards, folder = case
    renamed = shards / "evil"
    folder.rename(renamed)
    con = connect(db, write=True)
    try:
        with pytest.raises(ShardError, match="not a shard's"):
            merge_shard(con, renamed)
    finally:
        con.close()
    nothing_stored(db)


@pytest.mark.parametrize("change", ["drop", "null", "other"])
def test_a_shard_that_cannot_prove_its_model_is_refused(case, run_cli, change):
    db, shards, folder = case
    assert query(db, "SELECT weights_sha256 FROM models")[0][0]  # the database knows its weights

    def edit(body):
        if change == "drop":
            body["model"].pop("weights_sha256")
        else:
            body["model"]["weights_sha256"] = None if change == "null" else "0" * 64
    edit_manifest(folder, edit)
    refused(run_cli, db, shards, MANIFEST if change == "drop" else folder.name, "prove")


def test_reliability_doc_lists_every_kind_of_damage():
    text = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    for kind in DAMAGE:
        assert f"| {kind} |" in text, kind
    assert f"**{len(DAMAGE) + 9}** kinds of shard damage" in text


def test_images_already_stored_are_skipped_and_the_rest_merged_whole(written, tiny_db, tmp_path, run_cli):
    """A shard whose first image the database holds already (merged from another shard): the other two are
    added with their rows mapped to new ids, equal to a merge of the shard alone."""
    (src,) = finished_shards(written).values()
    alone, both = tmp_path / "alone.duckdb", tmp_path / "both.duckdb"
    for db in (alone, both):
        shutil.copyfile(tiny_db, db)
    assert run_cli("--db", alone, "-q", "merge", written).exit_code == 0

    first = tmp_path / "first" / "shard-00000-111111111111"   # image 1 of the shard only
    shutil.copytree(src, first)
    rows = {}
    for table in ("images", "windows", "concept_peaks", "window_top", "image_embeddings"):
        t = pq.read_table(first / f"{table}.parquet")
        t = t.filter(pa.array(t.column("image_id").to_numpy() == 1))
        pq.write_table(t, first / f"{table}.parquet")
        rows[table] = t.num_rows
    pq.write_table(pq.read_table(first / "failures.parquet").slice(0, 0), first / "failures.parquet")
    edit_manifest(first, lambda b: b.update(shard=first.name, rows=rows, failed=0,
                                            images=b["images"][:1]))
    assert run_cli("--db", both, "-q", "merge", first.parent).exit_code == 0
    res = run_cli("--db", both, "-q", "merge", written, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["images_added"] == 2 and out["shards"][0]["skipped"] == 1

    def by_path(db):
        return {t: query(db, f"SELECT i.path, t.* EXCLUDE (image_id) FROM {t} t JOIN images i USING (image_id) "
                             "ORDER BY ALL") for t in ("windows", "image_scores", "window_concepts", "image_embeddings")}
    assert by_path(alone) == by_path(both)
    assert query(both, "SELECT count(*) FROM concept_index")[0][0] == query(alone, "SELECT count(*) FROM concept_index")[0][0]


def test_a_leaf_whose_self_terms_differ_from_its_map_terms_is_refused(case, run_cli):
    """Schema 016 stores a leaf's map terms only (the engine gives it equal self terms); a shard row that
    says otherwise would lose its self terms, so the merge refuses it, naming the file, and stores nothing."""
    db, shards, folder = case
    leaves = {r[0] for r in query(db, "SELECT synset_id FROM synsets WHERE synset_id NOT IN "
                                      "(SELECT synset_id FROM inner_concepts())")}
    t = pq.read_table(folder / "concept_peaks.parquet")
    synsets, sums = t.column("synset_id").to_numpy(), t.column("self_sum").to_numpy()
    row = next(i for i in range(t.num_rows) if synsets[i] in leaves and sums[i] > 0)
    rewrite(folder, "concept_peaks", set_at("self_sum", row, int(sums[row]) - 1))
    refused(run_cli, db, shards, "concept_peaks.parquet", "no descendants", "self terms")

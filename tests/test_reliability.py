"""Reliability: bad input, crash safety and concurrent access, proven by fault tests.

Every test here is marked `fault`. The numbers in docs/reliability.md are checked against the case
tables below by test_reliability_doc_counts_match_the_tests. Settings are small (20,000-pixel working
images, stride 32, top 5 concepts per window) so the file runs in well under two minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from convis_db.engine.images import read_image
from convis_db.engine.settings import Settings
from convis_db.ingest import Ingestor
from faults import images as fi
from faults.checks import assert_whole, query, scalar, table_counts
from faults.checks import cli_ok as _ok
from faults.checks import cli_user_error as _user_error
from faults.proc import INGESTED_LINE, INTERRUPT_LINE, OPENED_LINE, Watched, entry_point_command, module_command

pytestmark = pytest.mark.fault
#: Signals (SIGKILL, SIGSTOP) and symlinks as used here need a POSIX system.
posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals and symlinks")

FAST = ("--max-pixels", "20000", "--stride", "32", "--top-k", "5", "--device", "cpu")
FAST_SETTINGS = Settings(max_pixels=20_000, stride=32, top_k=5)
DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"

# ------------------------------------------------------------------------------------------------
# The case tables (docs/reliability.md counts these).

#: One batch of files: name -> (expected status, words the reason must hold). Made by make_batch().
BATCH_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "a-original.png": ("ingested", ()),
    "b-duplicate.png": ("skipped", ("already stored as image",)),
    "zero-bytes.jpg": ("failed", ("empty file", "0 bytes")),
    "truncated.jpg": ("failed", ("truncated",)),
    "text-file.jpg": ("failed", ("not an image file",)),
    "bomb-50000x50000.png": ("failed", ("2500 mpx", "decompression bomb")),
    "bomb-12000x12000.png": ("failed", ("12000x12000", "decompression bomb")),
    "unreadable.png": ("failed", ("permission denied",)),
    "dangling-link.png": ("failed", ("broken symbolic link",)),
    "tiny-10x10.png": ("ingested", ()),
    "grayscale-L.png": ("ingested", ()),
    "cmyk.jpg": ("ingested", ()),
    "rgba.png": ("ingested", ()),
    "sixteen-bit-I16.png": ("ingested", ()),
    "palette-P.png": ("ingested", ()),
    "exif-orientation-6.jpg": ("ingested", ()),
    "exif-orientation-8.jpg": ("ingested", ()),
    "exif-6-upright-reference.png": ("ingested", ()),
    "animated.gif": ("ingested", ()),
    "gif-first-frame-reference.png": ("ingested", ()),
    "x'; DROP TABLE images; --.png": ("ingested", ()),
    "sub dir/ünïcødé 图像 with spaces.png": ("ingested", ()),
}
#: Entries of the batch folder that are not files of their own: a symlink loop (sub dir/back -> ..).
BATCH_LOOPS = ("sub dir/back",)
#: Files given by name that must be refused before they are read (a pipe would block a read forever).
SPECIAL_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "named-pipe.jpg": ("failed", ("not a regular file",)),
    "oversized.png": ("failed", ("larger than the", "limit for one image file")),
}

#: Process-level faults: (test, what is done to a running `convis-db ingest`).
PROCESS_FAULTS = (
    ("test_sigkill_mid_ingest_keeps_whole_images_and_rerun_completes", "SIGKILL after the 2nd stored image"),
    ("test_ctrl_c_stops_after_current_image_and_lock_names_the_holder", "SIGINT (Ctrl-C) during the run"),
    ("test_second_ctrl_c_mid_write_rolls_back_the_half_written_image",
     "KeyboardInterrupt inside an image's write transaction"),
)
#: Concurrent access: (who tries, while who holds the file, expected).
CONCURRENCY_CASES = (
    ("convis-db stats (entry point)", "a running ingest", "exit 2, names PID and command"),
    ("convis-db sql (in-process)", "a running ingest", "exit 2, names PID and command"),
    ("convis-db ingest (in-process)", "a running ingest", "exit 2, names PID and command"),
    ("stats, sql, concepts, map", "another reader", "exit 0 (query commands open read-only)"),
    ("convis-db ingest", "another reader", "exit 2, names PID"),
)
#: Bad queries and mismatched databases: each must give exit 2 and a clear message, no traceback.
BAD_QUERY_CASES = (
    "unknown concept (typo) -> nearest matches",
    "real WordNet synset outside the stored vocabulary",
    "ingest with another --stride than stored",
    "ingest with another --model than init embedded",
    "ingest with a second model while images of the first are stored",
    "newer schema version: stats",
    "newer schema version: sql",
    "newer schema version: concepts",
    "newer schema version: map",
    "newer schema version: ingest",
    "newer schema version: init",
    "sql DELETE without --write",
    "sql DROP TABLE without --write",
    "sql INSERT without --write",
    "sql UPDATE without --write",
    "sql CREATE TABLE without --write",
    "sql SELECT then DROP (two statements) without --write",
    "SQL text as a concept (map)",
    "SQL text as an image reference (map)",
    "SQL tautology as an image reference (map)",
    "SQL text as a concepts query",
    "--db is not a DuckDB file",
    "--db does not exist",
)
SQL_WRITES = (
    "DELETE FROM images",
    "DROP TABLE synsets",
    "INSERT INTO ingest_failures (path, error) VALUES ('x', 'y')",
    "UPDATE synsets SET name = 'x'",
    "CREATE TABLE scratch (a INTEGER)",
    "SELECT 1; DROP TABLE synsets",
)
INJECTION = "dog.n.01'; DROP TABLE synsets; --"


# ------------------------------------------------------------------------------------------------
# Helpers and fixtures.


def assert_fully_indexed(db: Path) -> None:
    """After a completed ingest, the concept index (where the schema has one) covers every image."""
    tables = {t for (t,) in query(db, "SELECT table_name FROM information_schema.tables")}
    if "concept_index_state" in tables:
        assert query(db, "SELECT indexed_through FROM concept_index_state") == \
            query(db, "SELECT coalesce(max(image_id), 0) FROM images")


@pytest.fixture(scope="module")
def stored_db(tmp_path_factory, tiny_db) -> Path:
    """A copy of the tiny database holding two ingested images (FAST settings). Read-only: copy it."""
    folder = tmp_path_factory.mktemp("stored")
    db = folder / "stored.duckdb"
    shutil.copyfile(tiny_db, db)
    a = fi.write_rgb(folder / "one.png", 80, 60, seed=21)
    b = fi.write_rgb(folder / "two.png", 60, 80, seed=22)
    with Ingestor(db, device=torch.device("cpu"), settings=FAST_SETTINGS) as ing:
        report = ing.run([a, b])
    assert report.count("ingested") == 2
    return db


@pytest.fixture
def stored_copy(stored_db, tmp_path) -> Path:
    target = tmp_path / "stored-copy.duckdb"
    shutil.copyfile(stored_db, target)
    return target


def make_batch(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write every BATCH_CASES file (and the symlink loop) under root/batch; returns the folder."""
    batch = root / "batch"
    (batch / "sub dir").mkdir(parents=True)
    f = lambda name: batch / name  # noqa: E731
    fi.write_rgb(f("a-original.png"), 96, 72, seed=10)
    shutil.copyfile(f("a-original.png"), f("b-duplicate.png"))
    fi.write_zero_bytes(f("zero-bytes.jpg"))
    fi.write_truncated_jpeg(f("truncated.jpg"))
    fi.write_text_as_image(f("text-file.jpg"))
    fi.write_png_bomb(f("bomb-50000x50000.png"), 50_000, 50_000)
    fi.write_png_bomb(f("bomb-12000x12000.png"), 12_000, 12_000)
    fi.write_rgb(f("unreadable.png"), 40, 30, seed=11)
    os.symlink(batch / "no-such-target.png", f("dangling-link.png"))
    fi.write_tiny(f("tiny-10x10.png"), 10)
    fi.write_grayscale(f("grayscale-L.png"))
    fi.write_cmyk_jpeg(f("cmyk.jpg"))
    fi.write_rgba(f("rgba.png"))
    fi.write_16bit(f("sixteen-bit-I16.png"))
    fi.write_palette(f("palette-P.png"))
    fi.write_exif_rotated_jpeg(f("exif-orientation-6.jpg"), 6)
    fi.write_exif_rotated_jpeg(f("exif-orientation-8.jpg"), 8)
    ImageOps.exif_transpose(Image.open(f("exif-orientation-6.jpg"))).save(f("exif-6-upright-reference.png"))
    fi.write_animated_gif(f("animated.gif"))
    Image.new("RGB", (64, 48), (200, 30, 30)).save(f("gif-first-frame-reference.png"))
    fi.write_rgb(f("x'; DROP TABLE images; --.png"), 50, 40, seed=12)
    fi.write_rgb(f("sub dir/ünïcødé 图像 with spaces.png"), 70, 50, seed=13)
    os.symlink("..", f("sub dir/back"))  # a loop: sub dir/back/sub dir/back/...
    unreadable = f("unreadable.png")
    if not fi.make_unreadable(unreadable):
        # Running as root: chmod 000 does not stop root from reading. Simulate what a normal user
        # gets, an EACCES from the read (test_unreadable_file_real_permissions covers the real one).
        os.chmod(unreadable, 0o644)
        real_read_bytes = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if os.path.abspath(self) == str(unreadable):
                raise PermissionError(13, "Permission denied", str(self))
            return real_read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    entries = []
    for root, dirs, names in os.walk(batch):  # not following links
        rel = Path(root).relative_to(batch)
        entries += [str(rel / n) for n in names] + [str(rel / d) for d in dirs if (Path(root) / d).is_symlink()]
    assert sorted(entries) == sorted([*BATCH_CASES, *BATCH_LOOPS])
    return batch


# ------------------------------------------------------------------------------------------------
# Bad and unusual files.


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@posix_only
def test_bad_and_unusual_files_in_one_batch(tiny_db_copy, tmp_path, run_cli, monkeypatch):
    db = tiny_db_copy
    batch = make_batch(tmp_path, monkeypatch)
    n_synsets = scalar(db, "SELECT count(*) FROM synsets")

    # Text output: one line per file not ingested, with its reason; the batch goes on to the end.
    text = _ok(run_cli("-q", "--db", db, "ingest", batch, "--recursive", *FAST))
    expected = {str(batch / name): case for name, case in BATCH_CASES.items()}
    counts = {s: sum(1 for st, _ in BATCH_CASES.values() if st == s) for s in ("ingested", "skipped", "failed")}
    assert (f"ingested {counts['ingested']}, skipped {counts['skipped']}, failed {counts['failed']};"
            in text.splitlines()[-1]), text
    for path, (status, words) in expected.items():
        if status == "ingested":  # only files not ingested get a line
            assert not any(ln.split(" ", 1)[-1].strip().startswith(path) for ln in text.splitlines()), path
            continue
        line = next((ln for ln in text.splitlines() if ln.startswith(f"{status:8s} {path}  ")), None)
        assert line is not None, (path, text)
        for w in words:
            assert w in line.lower(), (w, line)
    # The loop was followed once: no file was reached through sub dir/back.
    assert "/back/" not in text

    # The database: stored images are exactly the ingested cases, failures exactly the failed ones.
    stored = dict(query(db, "SELECT path, image_id FROM images"))
    assert set(stored) == {p for p, (s, _) in expected.items() if s == "ingested"}
    failures = dict(query(db, "SELECT path, error FROM ingest_failures"))
    assert set(failures) == {p for p, (s, _) in expected.items() if s == "failed"}
    for path, error in failures.items():
        for w in expected[path][1]:
            assert w in error.lower(), (w, error)
    assert all(a == 1 for (a,) in query(db, "SELECT attempts FROM ingest_failures"))
    assert assert_whole(db) == counts["ingested"]

    def image(name: str) -> dict:
        cols = ("image_id", "width", "height", "work_width", "work_height", "n_windows")
        row = query(db, f"SELECT {', '.join(cols)} FROM images WHERE path = ?", [str(batch / name)])[0]
        return dict(zip(cols, row))

    def scores(name: str) -> np.ndarray:
        return np.array(query(db, "SELECT score, self_score FROM image_scores WHERE image_id = ? ORDER BY synset_id",
                              [image(name)["image_id"]]), dtype=np.float64)

    # 10x10 is smaller than a patch: it is scaled up to about max_pixels and fully explained.
    tiny = image("tiny-10x10.png")
    assert (tiny["width"], tiny["height"]) == (10, 10)
    assert abs(tiny["work_width"] * tiny["work_height"] - 20_000) < 400
    # Equal window coverage: corners from -(128 - 32) = -96 every 32 pixels while they cover the last pixel.
    assert tiny["n_windows"] == ((tiny["work_width"] + 95) // 32 + 1) * ((tiny["work_height"] + 95) // 32 + 1) > 1
    # EXIF orientation 6 and 8: stored 120x60, upright 60x120; the upright pixels were explained.
    for name in ("exif-orientation-6.jpg", "exif-orientation-8.jpg"):
        assert (image(name)["width"], image(name)["height"]) == (60, 120), name
    px6 = read_image(batch / "exif-orientation-6.jpg").pixels
    assert px6[:60].mean(axis=(0, 1)).argmax() == 0 and px6[60:].mean(axis=(0, 1)).argmax() == 2  # red over blue
    px8 = read_image(batch / "exif-orientation-8.jpg").pixels
    assert px8[:60].mean(axis=(0, 1)).argmax() == 2 and px8[60:].mean(axis=(0, 1)).argmax() == 0  # blue over red
    np.testing.assert_array_equal(scores("exif-orientation-6.jpg"), scores("exif-6-upright-reference.png"))
    # Animated GIF: its first frame is what was explained.
    np.testing.assert_array_equal(scores("animated.gif"), scores("gif-first-frame-reference.png"))
    assert scores("animated.gif").shape == (n_synsets, 2)
    # Every unusual mode decodes to an 8-bit upright RGB array.
    for name in ("grayscale-L.png", "cmyk.jpg", "rgba.png", "sixteen-bit-I16.png", "palette-P.png"):
        px = read_image(batch / name).pixels
        assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3 and px.flags.writeable, name
        assert (image(name)["width"], image(name)["height"]) == (px.shape[1], px.shape[0]), name
    # The duplicate points at the first name; the SQL-looking name is stored as plain text.
    dup = next(ln for ln in text.splitlines() if "b-duplicate.png" in ln)
    assert f"already stored as image {stored[str(batch / 'a-original.png')]}" in dup

    # A second run changes nothing: stored files are skipped by content, failed ones until --retry-failed.
    before = table_counts(db)
    report = json.loads(_ok(run_cli("-q", "--db", db, "ingest", batch, "--recursive", *FAST, "--json")))
    assert report["summary"]["ingested"] == report["summary"]["failed"] == 0
    assert report["summary"]["skipped"] == len(BATCH_CASES)
    for row in report["files"]:
        status = expected[row["path"]][0]
        assert ("failed before" if status == "failed" else "already stored") in row["reason"], row
    assert table_counts(db) == before
    assert all(a == 1 for (a,) in query(db, "SELECT attempts FROM ingest_failures"))

    # A stored image is found by its unicode, spaced path.
    uni = str(batch / "sub dir/ünïcødé 图像 with spaces.png")
    info = json.loads(_ok(run_cli("--db", db, "map", uni, "dog.n.01", "--json")))
    assert info["image"] == uni and info["image_id"] == stored[uni]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_pipe_and_oversized_file_are_refused_before_reading(tiny_db_copy, tmp_path, run_cli, monkeypatch):
    import convis_db.engine.images as images_module

    os.mkfifo(tmp_path / "named-pipe.jpg")
    big = fi.write_rgb(tmp_path / "oversized.png", 64, 64, seed=81)
    monkeypatch.setattr(images_module, "MAX_FILE_BYTES", big.stat().st_size - 1)  # stands in for 1 GiB
    report = json.loads(_ok(run_cli("-q", "--db", tiny_db_copy, "ingest", *(tmp_path / n for n in SPECIAL_CASES),
                                    *FAST, "--json")))
    by_name = {Path(r["path"]).name: r for r in report["files"]}
    assert set(by_name) == set(SPECIAL_CASES)
    for name, (status, words) in SPECIAL_CASES.items():
        assert by_name[name]["status"] == status and all(w in by_name[name]["reason"] for w in words), by_name[name]
    assert {Path(p).name for (p,) in query(tiny_db_copy, "SELECT path FROM ingest_failures")} == set(SPECIAL_CASES)
    assert query(tiny_db_copy, "SELECT count(*) FROM images") == [(0,)]


def test_unreadable_file_real_permissions(tiny_db_copy, tmp_path, run_cli):
    """chmod 000 for real. As root, permissions do not block reading, so this one case is skipped
    there (test_bad_and_unusual_files_in_one_batch simulates the EACCES instead)."""
    path = fi.write_rgb(tmp_path / "locked.png", 40, 30, seed=31)
    try:
        if not fi.make_unreadable(path):
            pytest.skip("running as root (uid 0): chmod 000 does not stop root from reading, so the real "
                        "permission case cannot happen here; the batch test simulates it")
        out = _ok(run_cli("-q", "--db", tiny_db_copy, "ingest", path, *FAST))
        assert "permission denied" in out
        assert query(tiny_db_copy, "SELECT count(*) FROM ingest_failures WHERE path = ?", [str(path)]) == [(1,)]
    finally:
        os.chmod(path, 0o644)


def test_retry_failed_only_with_flag(tiny_db_copy, tmp_path, run_cli):
    db = tiny_db_copy
    fixed = fi.write_truncated_jpeg(tmp_path / "later-fixed.jpg")
    still_bad = fi.write_text_as_image(tmp_path / "still-bad.jpg")
    good = fi.write_rgb(tmp_path / "good.png", 50, 40, seed=41)
    args = ("-q", "--db", db, "ingest", fixed, still_bad, good, *FAST, "--json")

    first = json.loads(_ok(run_cli(*args)))["summary"]
    assert (first["ingested"], first["failed"]) == (1, 2)
    failed = {str(fixed), str(still_bad)}
    assert {p for (p,) in query(db, "SELECT path FROM ingest_failures")} == failed

    fi.write_rgb(fixed, 60, 45, seed=42)  # the file is repaired in place
    again = json.loads(_ok(run_cli(*args)))
    assert again["summary"]["skipped"] == 3 and again["summary"]["ingested"] == 0
    assert all("--retry-failed" in r["reason"] for r in again["files"] if r["path"] in failed)
    assert query(db, "SELECT max(attempts) FROM ingest_failures") == [(1,)]

    retried = json.loads(_ok(run_cli(*args, "--retry-failed")))
    by_path = {r["path"]: r for r in retried["files"]}
    assert by_path[str(fixed)]["status"] == "ingested"
    assert by_path[str(still_bad)]["status"] == "failed"
    assert by_path[str(good)]["status"] == "skipped"
    # The repaired file left ingest_failures; the still-bad one counts a second attempt.
    assert query(db, "SELECT path, attempts FROM ingest_failures") == [(str(still_bad), 2)]
    assert assert_whole(db) == 2


# ------------------------------------------------------------------------------------------------
# Crash safety.


def _ingest_command(db: Path, folder: Path) -> list[str]:
    return [*module_command(), "-v", "--db", str(db), "ingest", str(folder), *FAST, "--batch-size", "64"]


@posix_only
def test_sigkill_mid_ingest_keeps_whole_images_and_rerun_completes(tiny_db_copy, tmp_path):
    db = tiny_db_copy
    n = 10
    fi.write_many(tmp_path / "many", n)
    with Watched(_ingest_command(db, tmp_path / "many")) as child:
        child.wait_for(INGESTED_LINE, 2, timeout=150)
        child.send(signal.SIGKILL)
        assert child.finish() == -signal.SIGKILL
        reported = {int(m.group(2)) for m in INGESTED_LINE.finditer(child.stderr)}
    # The file opens (DuckDB replays its WAL), holds whole images only, and lost nothing committed.
    stored = assert_whole(db)
    ids = {i for (i,) in query(db, "SELECT image_id FROM images")}
    lost = reported - ids
    assert not lost, f"{len(lost)} images reported stored before the kill are missing"
    assert 2 <= stored < n, stored  # killed in the middle
    # A re-run (same command, in this process) stores the rest; the total is all images.
    with Ingestor(db, device=torch.device("cpu"), settings=FAST_SETTINGS) as ing:
        report = ing.run([tmp_path / "many"])
    assert (report.count("skipped"), report.count("ingested"), report.count("failed")) == (stored, n - stored, 0)
    assert assert_whole(db) == n
    assert_fully_indexed(db)


@posix_only
def test_ctrl_c_stops_after_current_image_and_lock_names_the_holder(tiny_db_copy, tmp_path, run_cli):
    db = tiny_db_copy
    n = 10
    fi.write_many(tmp_path / "many", n, start_seed=5000)
    other = fi.write_rgb(tmp_path / "other.png", 40, 30, seed=51)
    with Watched(_ingest_command(db, tmp_path / "many")) as child:
        child.wait_for(OPENED_LINE, 1, timeout=150)
        # It holds the file from here to its end. Another convis-db process, through the installed
        # entry point, started now (it imports while the ingest loads its model) ...
        with Watched([*entry_point_command(), "--db", str(db), "stats"]) as stats:
            child.wait_for(INGESTED_LINE, 1, timeout=150)
            # ... and the writer frozen after its first image (it keeps its lock), so no check below
            # can race the ingest's end.
            child.send(signal.SIGSTOP)
            try:
                holder = [f"process {child.pid} (", "convis_db.cli", " ingest "]  # its PID and command line
                # Commands run in this process, read-only and read-write: exit 2 naming the holder.
                _user_error(run_cli("--db", db, "sql", "SELECT count(*) FROM images"), "is in use by", *holder)
                _user_error(run_cli("--db", db, "ingest", other, *FAST), "is in use by", *holder)
                # The other process: exit 2 and one clear line, no traceback.
                assert stats.finish(timeout=150) == 2, (stats.stdout, stats.stderr)
                assert "Traceback" not in stats.stderr
                errors = [ln for ln in stats.stderr.splitlines() if ln.startswith("error: ")]
                assert len(errors) == 1, stats.stderr
                assert "is in use by" in errors[0] and all(h in errors[0] for h in holder), errors[0]
            finally:
                child.send(signal.SIGCONT)
        child.send(signal.SIGINT)
        rc = child.finish(timeout=150)
        err = child.stderr
    assert rc == 130, err[-3000:]
    assert "INTERRUPTED" in child.stdout
    assert "interrupted: stopped after the current image" in err and "Traceback" not in err
    # At most the image in hand was finished after the interrupt; everything reported is stored, whole.
    at = INTERRUPT_LINE.search(err)
    assert at is not None, err[-3000:]
    assert len(INGESTED_LINE.findall(err[at.end():])) <= 1
    reported = {int(m.group(2)) for m in INGESTED_LINE.finditer(err)}
    stored = assert_whole(db)
    assert {i for (i,) in query(db, "SELECT image_id FROM images")} == reported
    assert 1 <= stored < n
    # Running the same command again does the rest.
    with Ingestor(db, device=torch.device("cpu"), settings=FAST_SETTINGS) as ing:
        report = ing.run([tmp_path / "many"])
    assert (report.count("skipped"), report.count("ingested")) == (stored, n - stored)
    assert assert_whole(db) == n
    assert_fully_indexed(db)


def test_second_ctrl_c_mid_write_rolls_back_the_half_written_image(tiny_db_copy, tmp_path, monkeypatch):
    """A KeyboardInterrupt (what a second Ctrl-C raises) inside an image's write transaction, after its
    images row is inserted: the run stops, the half-written image is rolled back, the file stays usable.

    Each image converts two matrices (its window embeddings and its whole-image embedding): the third
    conversion is the second image's first."""
    import convis_db.store.image_store as image_store

    db = tiny_db_copy
    files = fi.write_many(tmp_path / "few", 4, start_seed=7000)
    real = image_store.matrix_to_list_array
    calls = {"n": 0}

    def interrupted_on_second_image(matrix):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(matrix)

    monkeypatch.setattr(image_store, "matrix_to_list_array", interrupted_on_second_image)
    with Ingestor(db, device=torch.device("cpu"), settings=FAST_SETTINGS) as ing:
        report = ing.run(files)
        assert report.interrupted and report.count("ingested") == 1
        # The same connection goes on working: the transaction was rolled back, not left open.
        assert ing.con.execute("SELECT count(*) FROM images").fetchone()[0] == 1
    assert assert_whole(db) == 1
    monkeypatch.setattr(image_store, "matrix_to_list_array", real)
    with Ingestor(db, device=torch.device("cpu"), settings=FAST_SETTINGS) as ing:
        report = ing.run(files)
    assert (report.count("skipped"), report.count("ingested")) == (1, 3)
    assert assert_whole(db) == 4


# ------------------------------------------------------------------------------------------------
# Concurrent access.


def test_readers_share_the_file_and_a_writer_is_refused(stored_db, run_cli):
    holder_code = ("import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
                   "print('open', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", holder_code, str(stored_db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        # Query commands open read-only, so they run while another process reads.
        _ok(run_cli("--db", stored_db, "stats"))
        _ok(run_cli("--db", stored_db, "sql", "SELECT count(*) FROM images"))
        _ok(run_cli("--db", stored_db, "concepts", "dog"))
        _ok(run_cli("--db", stored_db, "map", "1", "dog.n.01", "--json"))
        # A writer is refused with the reader's PID.
        other = fi.write_rgb(Path(str(stored_db) + ".png"), 40, 30, seed=61)
        _user_error(run_cli("--db", stored_db, "ingest", other, *FAST), "is in use by", f"process {proc.pid}")
    finally:
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


# ------------------------------------------------------------------------------------------------
# Bad queries and mismatched databases.


def test_unknown_concept_gets_nearest_matches(stored_db, run_cli):
    err = _user_error(run_cli("--db", stored_db, "map", "1", "dgo.n.01", "--json"), "unknown concept", "dgo.n.01")
    assert "did you mean" in err and "dog.n.01" in err.split("did you mean")[1]
    assert "vocabulary" not in err  # a typo is not mistaken for a synset outside T


def test_concept_outside_the_stored_vocabulary(stored_db, run_cli, wn):
    assert wn.synset("zebra.n.01").name() == "zebra.n.01"  # a real WordNet synset ...
    assert query(stored_db, "SELECT count(*) FROM synsets WHERE name = 'zebra.n.01'") == [(0,)]  # ... not in T
    _user_error(run_cli("--db", stored_db, "map", "1", "zebra.n.01", "--json"), "zebra.n.01",
                "is a WordNet synset but not in this database's vocabulary")


def test_ingest_with_other_settings_is_refused(stored_copy, tmp_path, run_cli):
    img = fi.write_rgb(tmp_path / "new.png", 40, 30, seed=71)
    before = table_counts(stored_copy)
    _user_error(run_cli("--db", stored_copy, "ingest", img, "--stride", "16"), "stride 16 (stored: 32)",
                "another --db")
    assert table_counts(stored_copy) == before
    # Repeating a stored setting is not a change: the others come from the database.
    out = json.loads(_ok(run_cli("-q", "--db", stored_copy, "ingest", img, "--stride", "32", "--json")))
    assert out["summary"]["ingested"] == 1 and out["summary"]["settings"] == FAST_SETTINGS.as_dict()


def test_ingest_with_other_model_is_refused(stored_copy, tmp_path, run_cli, tiny_config, small_vocab_file):
    img = fi.write_rgb(tmp_path / "new.png", 40, 30, seed=72)
    before = table_counts(stored_copy)
    # A model the database has no definition embeddings for.
    _user_error(run_cli("--db", stored_copy, "ingest", img, "--model", tiny_config, "--pretrained", "none"),
                "is not in", "init --model")
    # A second model is embedded, but the stored images were explained with the first.
    _ok(run_cli("-q", "--db", stored_copy, "init", "--model", tiny_config, "--pretrained", "none",
                "--vocab", small_vocab_file, "--device", "cpu"))
    after_init = table_counts(stored_copy)
    _user_error(run_cli("--db", stored_copy, "ingest", img, "--model", tiny_config, "--pretrained", "none"),
                "holds images explained with", "another --db")
    assert table_counts(stored_copy) == after_init
    assert after_init["images"] == before["images"]


def test_newer_schema_version_is_refused_by_every_command(stored_copy, tmp_path, run_cli, tiny_config,
                                                          small_vocab_file):
    from convis_db.store.migrations import available_migrations

    newer = max(m.version for m in available_migrations()) + 1
    con = duckdb.connect(str(stored_copy))
    con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, 'from_the_future', 'x')", [newer])
    con.close()
    before = table_counts(stored_copy)
    img = fi.write_rgb(tmp_path / "new.png", 40, 30, seed=73)
    commands = {
        "stats": ["stats"],
        "sql": ["sql", "SELECT 1"],
        "concepts": ["concepts", "dog"],
        "map": ["map", "1", "dog.n.01", "--json"],
        "ingest": ["ingest", str(img), *FAST],
        "init": ["init", "--model", str(tiny_config), "--pretrained", "none", "--vocab", str(small_vocab_file)],
    }
    assert len(commands) == sum(c.startswith("newer schema version") for c in BAD_QUERY_CASES)
    for args in commands.values():
        _user_error(run_cli("--db", stored_copy, *args), f"schema version {newer}", "upgrade convis-db")
    assert table_counts(stored_copy) == before  # nothing was migrated or written


@pytest.mark.parametrize("statement", SQL_WRITES)
def test_sql_writes_need_the_write_flag(stored_db, run_cli, statement):
    before = table_counts(stored_db)
    _user_error(run_cli("--db", stored_db, "sql", statement), "open read-only: add --write")
    assert table_counts(stored_db) == before


def test_sql_write_flag_allows_writes(stored_copy, run_cli):
    _ok(run_cli("--db", stored_copy, "sql", "CREATE TABLE scratch AS SELECT 1 AS a", "--write"))
    assert query(stored_copy, "SELECT a FROM scratch") == [(1,)]


def test_sql_text_in_arguments_is_only_data(stored_copy, run_cli):
    db = stored_copy
    before = table_counts(db)
    _user_error(run_cli("--db", db, "map", "1", INJECTION, "--json"), "unknown concept")
    _user_error(run_cli("--db", db, "map", "1; DROP TABLE images; --", "dog.n.01", "--json"), "no stored image")
    _user_error(run_cli("--db", db, "map", "' OR '1'='1", "dog.n.01", "--json"), "no stored image")
    _user_error(run_cli("--db", db, "concepts", INJECTION), "no concept matches")
    assert table_counts(db) == before
    assert query(db, "SELECT count(*) FROM synsets WHERE name = 'dog.n.01'") == [(1,)]


def test_not_a_database_and_missing_database(tmp_path, run_cli):
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database\n" * 100)
    _user_error(run_cli("--db", text, "stats"), "cannot open", "not a valid duckdb")
    _user_error(run_cli("--db", tmp_path / "absent.duckdb", "stats"), "no database at", "init")
    assert not (tmp_path / "absent.duckdb").exists()


# ------------------------------------------------------------------------------------------------
# The documented counts.


def test_reliability_doc_counts_match_the_tests():
    text = DOC.read_text(encoding="utf-8")
    numbers = {k.strip(): int(v) for v, k in re.findall(r"\*\*(\d+)\*\* ([a-z -]+?)[:.(]", text)}
    statuses = [s for s, _ in (*BATCH_CASES.values(), *SPECIAL_CASES.values())]
    facts = {
        "image inputs tried": len(BATCH_CASES) + len(BATCH_LOOPS) + len(SPECIAL_CASES),
        "files processed correctly": statuses.count("ingested"),
        "duplicates skipped": statuses.count("skipped"),
        "files recorded as failures": statuses.count("failed"),
        "process faults survived": len(PROCESS_FAULTS),
        "concurrent access cases": len(CONCURRENCY_CASES),
        "bad queries refused": len(BAD_QUERY_CASES),
        "rows lost": 0,
    }
    for key, value in facts.items():
        assert numbers.get(key) == value, (key, numbers.get(key), value)
    for test_name, _ in PROCESS_FAULTS:
        assert test_name in globals(), test_name
    assert sum(c.startswith("sql ") for c in BAD_QUERY_CASES) == len(SQL_WRITES)

"""`convis-db ingest`, `map` and `demo` end to end through the CLI, with the tiny model and small images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CONFIG

#: Small settings so every image has a few dozen windows; passed as CLI options.
OPTS = ["--max-pixels", "6000", "--stride", "16", "--small", "32", "--large", "48", "--top-k", "5"]
STRIDE, TOP_K, MAX_PIXELS = 16, 5, 6000


def _random_png(path: Path, height: int, width: int, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _structured_jpg(path: Path, height: int, width: int) -> Path:
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, (y // 5 % 2) * 200, (x + y) * 255 // (height + width)], axis=2)
    Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
    return path


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = {
        "a": _random_png(folder / "a.png", 80, 96, seed=1),
        "b": _structured_jpg(folder / "b.jpg", 70, 130),
        "c": _random_png(folder / "c.png", 90, 60, seed=3),
    }
    files["a_copy"] = folder / "a_copy.png"
    shutil.copyfile(files["a"], files["a_copy"])
    files["bad"] = folder / "bad.jpg"
    files["bad"].write_text("this is not a JPEG, just text with the wrong name\n", encoding="utf-8")
    return files


def _ingest(run_cli, db: Path, *paths, extra=()):
    result = run_cli("-q", "--db", db, "ingest", *paths, *extra, "--json")
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def _by_path(report: dict) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in report["files"]}


def test_ingest_twice_is_idempotent_and_records_failures(run_cli, tiny_db_copy: Path, images):
    db = tiny_db_copy
    result, report = _ingest(run_cli, db, images["a"], images["b"], images["bad"], extra=OPTS)
    assert result.exit_code == 0, result.output
    summary = report["summary"]
    assert (summary["ingested"], summary["skipped"], summary["failed"]) == (2, 0, 1)
    files = _by_path(report)
    assert files["a.png"]["status"] == files["b.jpg"]["status"] == "ingested"
    assert files["bad.jpg"]["status"] == "failed" and "image" in files["bad.jpg"]["reason"]
    assert summary["settings"] == {"max_pixels": MAX_PIXELS, "stride": STRIDE, "small": 32, "large": 48, "top_k": TOP_K,
                                   "layout": "equal"}

    # Again, with a byte-identical copy under another name: nothing new is stored.
    result, report = _ingest(run_cli, db, images["a"], images["b"], images["a_copy"], images["bad"])
    assert result.exit_code == 0, result.output
    summary = report["summary"]
    assert (summary["ingested"], summary["skipped"], summary["failed"]) == (0, 4, 0)
    files = _by_path(report)
    first_id = files["a.png"]["image_id"]
    assert files["a_copy.png"]["image_id"] == first_id and "already stored" in files["a_copy.png"]["reason"]
    assert "failed before" in files["bad.jpg"]["reason"]

    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM images").fetchall()[0][0] == 2
        failures = con.execute("SELECT path, error FROM ingest_failures").fetchall()
        assert [Path(p).name for p, _ in failures] == ["bad.jpg"] and "image" in failures[0][1]
        n_synsets = con.execute("SELECT count(*) FROM synsets").fetchall()[0][0]
        rows = con.execute("SELECT image_id, path, width, height, work_width, work_height, grid_rows, grid_cols, "
                           "n_windows, stride, top_k FROM images ORDER BY image_id").fetchall()
        sizes = {"a.png": (96, 80), "b.jpg": (130, 70)}
        for image_id, path, w, h, ww, wh, gr, gc, nw, stride, top_k in rows:
            assert (w, h) == sizes[Path(path).name]
            assert Path(path).is_absolute()
            assert abs(ww * wh - MAX_PIXELS) <= ww + wh and abs(ww / wh - w / h) < 0.05
            # The equal layout: corners from -(large - stride) = -32 while they cover the last pixel.
            assert (gr, gc) == ((wh - 1 + 32) // STRIDE + 1, (ww - 1 + 32) // STRIDE + 1) and nw == gr * gc
            assert (stride, top_k) == (STRIDE, TOP_K)

            def count(table: str, image_id: int = image_id) -> int:
                return con.execute(f"SELECT count(*) FROM {table} WHERE image_id = ?", [image_id]).fetchall()[0][0]

            assert count("windows") == nw
            assert count("image_scores") == n_synsets
            assert count("window_concepts") == nw * TOP_K
            distinct = con.execute("SELECT count(DISTINCT synset_id), min(synset_id), max(synset_id) FROM image_scores "
                                   "WHERE image_id = ?", [image_id]).fetchall()[0]
            assert distinct == (n_synsets, 0, n_synsets - 1)
            idx = con.execute("SELECT list(window_idx ORDER BY window_idx) FROM windows WHERE image_id = ?",
                              [image_id]).fetchall()[0][0]
            assert idx == list(range(nw))
            ks = con.execute("SELECT window_idx, list(k ORDER BY k) FROM window_concepts WHERE image_id = ? "
                             "GROUP BY window_idx", [image_id]).fetchall()
            assert len(ks) == nw and all(k == list(range(1, TOP_K + 1)) for _, k in ks)
    finally:
        con.close()


def test_ingest_with_other_settings_is_refused_naming_the_stored_ones(run_cli, tiny_db_copy: Path, images):
    db = tiny_db_copy
    result, _ = _ingest(run_cli, db, images["a"], extra=OPTS)
    assert result.exit_code == 0, result.output
    other = [o if o != "16" else "24" for o in OPTS]  # --stride 24
    result, _ = _ingest(run_cli, db, images["c"], extra=other)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "'stride': 16" in result.stderr and "24" in result.stderr, result.stderr  # the stored and the asked
    # Nothing was stored by the refused run; the database's own settings are still usable without options,
    # and options repeating the stored values (even only some of them) are accepted.
    result, report = _ingest(run_cli, db, images["c"])
    assert result.exit_code == 0 and report["summary"]["ingested"] == 1, result.output
    assert report["summary"]["settings"]["stride"] == STRIDE
    result, report = _ingest(run_cli, db, images["b"], extra=["--stride", str(STRIDE)])
    assert result.exit_code == 0, result.output
    assert report["summary"]["ingested"] == 1 and report["summary"]["settings"]["max_pixels"] == MAX_PIXELS


def test_map_of_a_stored_image_equals_the_map_of_the_same_file_computed_on_the_fly(
        run_cli, tiny_db: Path, tmp_path: Path, images):
    stored_db, other_db = tmp_path / "stored.duckdb", tmp_path / "other.duckdb"
    shutil.copyfile(tiny_db, stored_db)
    shutil.copyfile(tiny_db, other_db)
    assert _ingest(run_cli, stored_db, images["a"], images["b"], extra=OPTS)[0].exit_code == 0
    # The other database holds only c (same settings), so a and b are computed from the files there.
    assert _ingest(run_cli, other_db, images["c"], extra=OPTS)[0].exit_code == 0

    for name, ref_id, concepts in (("a", "1", ("carnivore.n.01", "dog.n.01")), ("b", "2", ("dog.n.01", "person.n.01"))):
        for concept in concepts:
            stored_npy, fresh_npy = tmp_path / f"{name}_{concept}_s.npy", tmp_path / f"{name}_{concept}_f.npy"
            r1 = run_cli("-q", "--db", stored_db, "map", ref_id, concept, "--npy", stored_npy, "--json")
            r2 = run_cli("-q", "--db", other_db, "map", images[name], concept, "--npy", fresh_npy, "--json")
            assert r1.exit_code == 0, r1.output
            assert r2.exit_code == 0, r2.output
            info1, info2 = json.loads(r1.stdout), json.loads(r2.stdout)
            assert (info1["source"], info2["source"]) == ("database", "computed")
            assert info1["image_id"] == int(ref_id) and info2["image_id"] is None
            m1, m2 = np.load(stored_npy), np.load(fresh_npy)
            assert m1.dtype == np.float32 and m1.shape == (info1["work_height"], info1["work_width"]) == m2.shape
            assert np.abs(m1 - m2).max() < 1e-6, (name, concept)
            assert info1["peak"] == info2["peak"]
        # The peak of the stored image's map is the stored image score.
        con = duckdb.connect(str(stored_db), read_only=True)
        try:
            score = con.execute("SELECT score FROM image_scores JOIN synsets USING (synset_id) "
                                "WHERE image_id = ? AND name = 'dog.n.01'", [int(ref_id)]).fetchall()[0][0]
        finally:
            con.close()
        assert np.load(tmp_path / f"{name}_dog.n.01_s.npy").max() == pytest.approx(score, abs=1e-6)


def test_map_writes_png_of_the_original_size_and_npy_of_the_working_size(run_cli, tiny_db_copy: Path, images,
                                                                         tmp_path: Path):
    db = tiny_db_copy
    assert _ingest(run_cli, db, images["b"], extra=OPTS)[0].exit_code == 0
    png, npy = tmp_path / "out" / "x.png", tmp_path / "x.npy"
    result = run_cli("-q", "--db", db, "map", images["b"], "person.n.01", "-o", png, "--style", "heatmap",
                     "--npy", npy, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (130, 70) and im.mode == "RGB"
        pixels = np.asarray(im)
    assert pixels.std() > 0
    saliency = np.load(npy)
    assert saliency.dtype == np.float32
    con = duckdb.connect(str(db), read_only=True)
    try:
        ww, wh = con.execute("SELECT work_width, work_height FROM images").fetchall()[0]
    finally:
        con.close()
    assert saliency.shape == (wh, ww) == (info["work_height"], info["work_width"])
    assert (ww, wh) != (130, 70)
    assert ((saliency >= 0) & (saliency < 1)).all()
    # mask style differs from the heatmap; without -o, --npy or --json the command says what is missing.
    mask = tmp_path / "mask.png"
    assert run_cli("-q", "--db", db, "map", "1", "person.n.01", "-o", mask).exit_code == 0
    assert not np.array_equal(np.asarray(Image.open(mask)), pixels)
    bare = run_cli("-q", "--db", db, "map", "1", "person.n.01")
    assert bare.exit_code == 2 and "--npy" in bare.stderr


def test_map_only_self_of_a_stored_image_peaks_at_its_self_score(run_cli, tiny_db_copy: Path, images, tmp_path: Path):
    db = tiny_db_copy
    assert _ingest(run_cli, db, images["a"], extra=OPTS)[0].exit_code == 0
    own, best = tmp_path / "own.npy", tmp_path / "best.npy"
    r1 = run_cli("-q", "--db", db, "map", "1", "carnivore.n.01", "--only-self", "--npy", own, "--json")
    assert r1.exit_code == 0, r1.output
    assert json.loads(r1.stdout)["only_self"] is True
    r2 = run_cli("-q", "--db", db, "map", "1", "carnivore.n.01", "--npy", best)
    assert r2.exit_code == 0, r2.output
    m_own, m_best = np.load(own), np.load(best)
    assert (m_best >= m_own - 1e-7).all() and not np.allclose(m_own, m_best)
    con = duckdb.connect(str(db), read_only=True)
    try:
        score, self_score = con.execute("SELECT score, self_score FROM image_scores JOIN synsets USING (synset_id) "
                                        "WHERE image_id = 1 AND name = 'carnivore.n.01'").fetchall()[0]
    finally:
        con.close()
    assert m_own.max() == pytest.approx(self_score, abs=1e-6) and m_best.max() == pytest.approx(score, abs=1e-6)


@pytest.mark.slow
def test_demo_runs_offline_in_a_temporary_folder(run_cli, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db, out = tmp_path / "demo.duckdb", tmp_path / "maps"
    result = run_cli("-q", "--db", db, "demo", "--model", TINY_CONFIG, "--pretrained", "none", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["preset"] == "cpu-fast" and report["ingest"]["ingested"] == 4 and report["ingest"]["failed"] == 0
    assert report["hierarchy"] == "reference"   # a new demo database gets the authors' T
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(report["maps"]) >= 4
    assert {Path(p).name for p in report["maps"]} == {p.name for p in pngs}
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] >= 480
    for image in report["images"]:
        assert len(image["top_concepts"]) == 5
        assert all(0 <= t["self_score"] <= t["score"] < 1 for t in image["top_concepts"])
    assert sorted(q.name for q in tmp_path.iterdir()) == ["demo.duckdb", "maps"]


def test_ingest_preset_sets_the_cpu_fast_settings(tiny_db_copy, tmp_path, run_cli):
    from PIL import Image

    from convis_db.store.db import connect

    img = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(img)
    res = run_cli("--db", tiny_db_copy, "ingest", img, "--preset", "cpu-fast", "--top-k", "7", "--json")
    assert res.exit_code == 0, res.stderr
    con = connect(tiny_db_copy)
    try:
        assert con.execute("SELECT max_pixels, stride, small, large, top_k FROM images").fetchone() == \
            (50_000, 32, 64, 128, 7)
    finally:
        con.close()
    # Repeating the preset on the same database is no change of settings.
    res = run_cli("--db", tiny_db_copy, "ingest", img, "--preset", "cpu-fast", "--top-k", "7")
    assert res.exit_code == 0, res.stderr
    # The paper's settings are refused there, naming what differs.
    res = run_cli("--db", tiny_db_copy, "ingest", img, "--preset", "paper")
    assert res.exit_code == 2 and "stride 16 (stored: 32)" in res.stderr

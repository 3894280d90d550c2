"""`ingest --engine ray` on a real local Ray cluster, and `merge`: the same rows as a plain ingest.

Exactness: each test image has more windows than the encoder batch (16), so every image is explained
in its own batches by both engines (as at the paper's settings, where an image has ~1,200 windows and
a batch 128 or 512), and stored scores, top-K, embeddings and maps must be equal, not close.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from convis_db.engine.settings import Settings
from convis_db.ingest import Ingestor, collect_image_paths
from convis_db.store.db import connect
from convis_db.distributed.shards import finished_shards, plan_shards
from noise_images import write_noise_pngs
from shard_writer import write_shards

SETTINGS = Settings(max_pixels=9_000, stride=16, small=32, large=64, top_k=5)   # 42 windows per image
#: The same settings as CLI options (the window layout is the database's, not an option).
SETTING_OPTIONS = {k: v for k, v in SETTINGS.as_dict().items() if k != "layout"}
OPTIONS = ["--max-pixels", "9000", "--stride", "16", "--small", "32", "--large", "64", "--top-k", "5",
           "--batch-size", "16"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Five images, a duplicate of one of them under another name, and an empty (bad) file."""
    folder = tmp_path_factory.mktemp("collection")
    write_noise_pngs(folder, [(70, 90)] * 5, seed=7)
    shutil.copyfile(folder / "img_2.png", folder / "img_2_copy.png")
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def plain_db(tiny_db, collection, tmp_path_factory):
    db = tmp_path_factory.mktemp("plain") / "plain.duckdb"
    shutil.copyfile(tiny_db, db)
    with Ingestor(db, device=torch.device("cpu"), settings=SETTINGS, batch_size=16) as ing:
        report = ing.run([collection])
    assert (report.count("ingested"), report.count("skipped"), report.count("failed")) == (5, 1, 1)
    return db


def snapshot(db) -> dict:
    """Everything stored per image, keyed by path (image ids are compared separately)."""
    con = connect(db)
    try:
        q = {
            "images": "SELECT path, sha256, width, height, work_width, work_height, scale, grid_rows, grid_cols, "
                      "n_windows FROM images ORDER BY path",
            "scores": "SELECT i.path, s.synset_id, s.score, s.work_peak_x, s.work_peak_y, s.self_score, "
                      "s.work_self_peak_x, "
                      "s.work_self_peak_y FROM image_scores s JOIN images i USING (image_id) ORDER BY 1, 2",
            "top_k": "SELECT i.path, c.window_idx, c.k, c.synset_id, c.rank_less FROM window_concepts c "
                     "JOIN images i USING (image_id) ORDER BY 1, 2, 3",
            "windows": "SELECT i.path, w.window_idx, w.x0, w.y0, w.x1, w.y1, w.embedding FROM windows w "
                       "JOIN images i USING (image_id) ORDER BY 1, 2",
            "failures": "SELECT path FROM ingest_failures ORDER BY path",
            "index": "SELECT count(*) FROM concept_index",
            "ids": "SELECT path, image_id FROM images ORDER BY image_id",
        }
        return {k: con.execute(v).fetchall() for k, v in q.items()}
    finally:
        con.close()


def maps(db, concept="dog.n.01") -> dict:
    from convis_db.query.maps import MapService
    from convis_db.store.image_store import get_image

    con = connect(db)
    try:
        service = MapService(con)
        paths = [r[0] for r in con.execute("SELECT path FROM images ORDER BY path").fetchall()]
        return {p: service.for_stored(get_image(con, p), concept).saliency for p in paths}
    finally:
        con.close()


def assert_same(a, b) -> None:
    sa, sb = snapshot(a), snapshot(b)
    for key in sa:
        assert sa[key] == sb[key], key
    ma, mb = maps(a), maps(b)
    assert ma.keys() == mb.keys() and len(ma) == 5
    for p in ma:
        np.testing.assert_array_equal(ma[p], mb[p])


@pytest.mark.slow
def test_ray_ingest_and_merge_equal_a_plain_ingest(ray_cluster, tiny_db, collection, plain_db, tmp_path, run_cli):
    from convis_db.distributed.ray_ingest import ray_ingest

    db, shards = tmp_path / "ray.duckdb", tmp_path / "shards"
    shutil.copyfile(tiny_db, db)
    report = ray_ingest(db, [collection], shards_dir=shards, shard_size=3, batch_size=16,
                        settings=SETTING_OPTIONS)
    s = report.summary()
    assert (s["ingested"], s["skipped"], s["failed"]) == (5, 1, 1)
    assert (s["shards_total"], s["shards_explained"]) == (3, 3)
    assert sorted(p.name for p in shards.iterdir() if p.name.startswith(".")) == []  # no temporaries left
    assert_same(plain_db, db)  # same ids too: shards are merged in file order

    # Merging again, here or into another database (shards written elsewhere), is idempotent.
    res = run_cli("--db", db, "merge", shards, "--json")
    assert res.exit_code == 0, res.stderr
    assert [r["status"] for r in json.loads(res.stdout)["shards"]] == ["already-merged"] * 3
    other = tmp_path / "other.duckdb"
    shutil.copyfile(tiny_db, other)
    for added in (5, 0):
        res = run_cli("--db", other, "merge", shards, "--json")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["images_added"] == added
    assert_same(plain_db, other)


@pytest.mark.slow
def test_a_killed_ray_ingest_resumes(ray_cluster, tiny_db, collection, plain_db, tmp_path, run_cli):
    """The driver (a `convis-db ingest --engine ray` process on this cluster) is SIGKILLed once its
    first shard is finished; with a half-written temporary shard and a final-named shard without a
    manifest also left behind, the same command finishes the job, explaining only what was not
    finished, and the database equals a plain ingest."""
    db, shards = tmp_path / "ray.duckdb", tmp_path / "shards"
    shutil.copyfile(tiny_db, db)
    args = ["--db", str(db), "-q", "ingest", str(collection), "--engine", "ray", "--shards", str(shards),
            "--shard-size", "1", *OPTIONS, "--json"]
    address = ray_cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "convis_db", *args, "--address", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            if finished_shards(shards):
                break
            time.sleep(0.05)
    finally:
        driver.kill()
        driver.wait()

    def finished() -> set[str]:
        # shards under their final names only: a temporary folder holds its manifest a moment before its
        # rename, and a driver killed in that moment leaves it behind, unfinished (the re-run removes it)
        return set(finished_shards(shards))

    # The killed driver's actors are stopped by Ray a moment later and may finish a shard meanwhile:
    # wait until the finished set holds still, so no shard changes under the test's own edits below.
    done, settle = finished(), time.monotonic() + 30
    while time.monotonic() < settle:
        time.sleep(1.0)
        now = finished()
        if now == done:
            break
        done = now
    assert 1 <= len(done) < 7  # killed part-way (7 files, one per shard)
    stale = shards / ".shard-00006-0123456789ab.tmp-deadbeef"
    stale.mkdir(exist_ok=True)
    (stale / "windows.parquet").write_bytes(b"PAR1 cut short")
    files, _ = collect_image_paths([collection], recursive=False)
    names = [n for n, _ in plan_shards([str(f.absolute()) for f in files], 1)]
    unfinished = next(n for n in names if n not in done)
    (shards / unfinished).mkdir(exist_ok=True)  # a copy cut short where renames are not atomic: no manifest
    (shards / unfinished / "images.parquet").write_bytes(b"PAR1 cut short")
    con = connect(db)  # opens after the kill: whole shards only
    stored = con.execute("SELECT count(*) FROM images").fetchone()[0]
    con.close()
    assert stored < 5

    res = run_cli(*args)
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)["summary"]  # stdout holds the JSON only: Ray logs elsewhere
    assert summary["interrupted"] is False
    assert summary["shards_explained"] == 7 - len(done)
    assert summary["shards_reused"] + summary["shards_merged_before"] == len(done)
    assert not [p for p in shards.iterdir() if p.name.startswith(".")]
    assert (shards / unfinished / "manifest.json").is_file()
    assert_same(plain_db, db)


def test_stopping_the_driver_keeps_finished_shards(ray_cluster, tiny_db, collection, tmp_path):
    """A stop requested in the driver (Ctrl-C) ends the run as interrupted, with its shards kept."""
    from convis_db.distributed.ray_ingest import ray_ingest

    def stop(summary):
        raise KeyboardInterrupt

    db = tmp_path / "ray.duckdb"
    shutil.copyfile(tiny_db, db)
    report = ray_ingest(db, [collection], shards_dir=tmp_path / "shards", shard_size=4, batch_size=16,
                        settings=SETTING_OPTIONS, on_shard=stop)
    assert report.interrupted and report.shards_explained == 1 and report.shards_total == 2


def test_ray_missing_is_a_clear_error(tiny_db_copy, collection, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = run_cli("--db", tiny_db_copy, "ingest", collection, "--engine", "ray")
    assert res.exit_code == 2
    assert "convis-db[ray]" in res.stderr and "Traceback" not in res.stderr


def test_only_the_ray_engine_imports_ray():
    """Ray is optional: one module imports it, inside a function (require_ray), never at import time."""
    import ast
    from pathlib import Path

    import convis_db

    found = {}
    for path in Path(convis_db.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                found.setdefault(path.name, []).append(node.col_offset)
    assert set(found) == {"ray_ingest.py"}
    assert all(col > 0 for col in found["ray_ingest.py"])  # indented: inside functions only


def _write_shards(db, shards, collection) -> None:
    """Explain `collection` into shards of 4 files with the shard worker in this process (no Ray), from
    a job read as the Ray driver reads it (the database's profile)."""
    files, _ = collect_image_paths([collection], recursive=False)
    write_shards(db, [str(f.absolute()) for f in files], shards, SETTINGS, 4)


def test_shards_written_without_ray_merge_like_a_plain_ingest(tiny_db, collection, plain_db, tmp_path, run_cli):
    """The shard worker needs no Ray: shards it writes in this process merge into the plain
    ingest's rows; a shard explained under other settings is refused with the difference named."""
    shards = tmp_path / "shards"
    _write_shards(tiny_db, shards, collection)
    db = tmp_path / "merged.duckdb"
    shutil.copyfile(tiny_db, db)
    res = run_cli("--db", db, "merge", shards, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["images_added"] == 5
    assert_same(plain_db, db)

    other = tmp_path / "other.duckdb"
    shutil.copyfile(plain_db, other)
    con = connect(other, write=True)
    con.execute("DELETE FROM merged_shards")
    con.execute("UPDATE images SET stride = 32")  # as if its images were explained at another stride
    con.close()
    res = run_cli("--db", other, "merge", shards)
    assert res.exit_code == 2 and "settings" in res.stderr and "Traceback" not in res.stderr


def old_image_scores(peaks, n_synsets: int, peak_names: dict[str, str] | None = None):
    """concept_peaks rows as a shard of format 1 or 2 held them: image_scores with DOUBLE peaks (the
    engine's own division), the working-pixel peaks under `peak_names` (format 1: before schema 010)."""
    import numpy as np
    import pyarrow as pa

    def ratio(total: str, windows: str):
        return pa.array(np.float64(peaks.column(total).to_numpy()) /
                        (np.float64(peaks.column(windows).to_numpy()) * float(n_synsets)))

    names = peak_names or {}
    return pa.table({"image_id": peaks.column("image_id"), "synset_id": peaks.column("synset_id"),
                     "score": ratio("map_sum", "map_windows"),
                     names.get("work_peak_x", "work_peak_x"): peaks.column("work_peak_x"),
                     names.get("work_peak_y", "work_peak_y"): peaks.column("work_peak_y"),
                     "self_score": ratio("self_sum", "self_windows"),
                     names.get("work_self_peak_x", "work_self_peak_x"): peaks.column("work_self_peak_x"),
                     names.get("work_self_peak_y", "work_self_peak_y"): peaks.column("work_self_peak_y"),
                     "image_max_rank_less": peaks.column("image_max_rank_less"),
                     "image_rank_less": peaks.column("image_rank_less")})


def window_concepts_of(top, n_synsets: int):
    """window_top rows (format 4) as a shard of format 1-3 held them: K window_concepts rows per window,
    rank_less |T| - k where the list is NULL (no ties)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = top.num_rows
    ids = pc.list_flatten(top.column("synset_ids")).to_numpy().astype(np.int32)
    k = len(ids) // n if n else 1
    ks = np.tile(np.arange(1, k + 1, dtype=np.int16), n)
    plain = np.repeat(pc.is_null(top.column("rank_less")).to_numpy(zero_copy_only=False), k)
    ties = pc.fill_null(top.column("rank_less"), pa.scalar([0] * k, pa.list_(pa.int32())))
    rank_less = np.where(plain, n_synsets - ks.astype(np.int32), pc.list_flatten(ties).to_numpy())
    return pa.table({"image_id": pa.array(np.repeat(top.column("image_id").to_numpy(), k).astype(np.int32)),
                     "window_idx": pa.array(np.repeat(top.column("window_idx").to_numpy(), k).astype(np.int32)),
                     "k": pa.array(ks), "synset_id": pa.array(ids), "rank_less": pa.array(rank_less.astype(np.int32))})


def write_as_old_format(shards, fmt: int) -> None:
    """Rewrite every finished shard under `shards` as a convis-db before format 4 (format 3: window_concepts'
    K rows per window), before schema 013 (format 2) or before schema 010 (format 1) wrote it."""
    import pyarrow.parquet as pq

    from convis_db.distributed.shards import MANIFEST, finished_shards
    from convis_db.store.image_store import WORK_PEAK_COLUMNS

    for folder in finished_shards(shards).values():
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["format"] == 4
        rows = dict(manifest["rows"])
        concepts = window_concepts_of(pq.read_table(folder / "window_top.parquet"), manifest["n_synsets"])
        pq.write_table(concepts, folder / "window_concepts.parquet")
        (folder / "window_top.parquet").unlink()
        rows["window_concepts"] = concepts.num_rows
        del rows["window_top"]
        if fmt < 3:
            peaks = pq.read_table(folder / "concept_peaks.parquet")
            pq.write_table(old_image_scores(peaks, manifest["n_synsets"], WORK_PEAK_COLUMNS if fmt == 1 else None),
                           folder / "image_scores.parquet")
            (folder / "concept_peaks.parquet").unlink()
            rows = {("image_scores" if k == "concept_peaks" else k): v for k, v in rows.items()}
        (folder / MANIFEST).write_text(json.dumps(dict(manifest, format=fmt, rows=rows)))


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_a_shard_written_before_format_4_merges_into_the_same_rows(tiny_db, collection, plain_db, tmp_path,
                                                                     run_cli, fmt):
    """Shards can outlive the run that wrote them: a format 3 shard (window_concepts' K rows per window in
    place of window_top), a format 2 shard (image_scores with DOUBLE peaks, as
    before schema 013) and a format 1 shard (its working-pixel peaks named peak_x ... as before schema
    010) merge into the same rows as a plain ingest: each DOUBLE converted to exact terms that give it
    back bit for bit."""
    shards = tmp_path / "shards"
    _write_shards(tiny_db, shards, collection)
    write_as_old_format(shards, fmt)
    db = tmp_path / "merged.duckdb"
    shutil.copyfile(tiny_db, db)
    res = run_cli("--db", db, "merge", shards, "--json")
    assert res.exit_code == 0, res.stderr
    assert_same(plain_db, db)


def test_a_shard_worker_and_a_plain_ingest_share_one_engine_recipe_and_one_loop(tiny_db, tmp_path, run_cli,
                                                                                   monkeypatch):
    """Small images (fewer windows than the encoder batch, so groups span images, counted in the
    database's window layout) and a twin: the worker builds its engine through the profile's recipe,
    explains through the plain ingest's ExplainQueue with the same groups, and its merged rows equal a
    plain ingest's exactly."""
    from convis_db import profile as profile_module
    from convis_db.distributed import shard_worker
    from convis_db.ingest import explaining
    from convis_db.profile import read_profile

    folder = tmp_path / "small"
    folder.mkdir()
    write_noise_pngs(folder, [(40, 50), (50, 40), (45, 45), (60, 30), (30, 60)], seed=22)
    shutil.copyfile(folder / "img_1.png", folder / "img_1_twin.png")
    small = Settings(max_pixels=2_000, stride=16, small=16, large=32, top_k=4)
    groups = {"plain": [], "worker": []}
    real_explain, real_recipe = explaining.ExplainQueue.explain, profile_module.engine_from_inputs
    recipes = []

    def recording(kind):
        def explain(self):
            groups[kind].append([Path(q.outcome.path).name for q in self._items])
            return real_explain(self)
        return explain

    def recipe(*args, **kwargs):
        recipes.append(args[3].layout)
        return real_recipe(*args, **kwargs)

    plain = tmp_path / "plain.duckdb"
    shutil.copyfile(tiny_db, plain)
    monkeypatch.setattr(explaining.ExplainQueue, "explain", recording("plain"))
    monkeypatch.setattr(profile_module, "engine_from_inputs", recipe)
    with Ingestor(plain, device=torch.device("cpu"), settings=small, batch_size=64) as ing:
        report = ing.run([folder])
    assert (report.count("ingested"), report.count("skipped")) == (5, 1)

    monkeypatch.setattr(explaining.ExplainQueue, "explain", recording("worker"))
    monkeypatch.setattr(shard_worker, "engine_from_inputs", recipe)
    con = connect(tiny_db)
    try:
        prof = read_profile(con, str(tiny_db))
        definitions, levels = prof.engine_inputs(con)
        settings = prof.settings_for(small)
    finally:
        con.close()
    shards = tmp_path / "shards"
    job = shard_worker.ShardJob(spec=prof.spec, definitions=definitions, levels=levels, settings=settings,
                                storage=prof.embeddings, shards_dir=str(shards), batch_size=64)
    engine = shard_worker.build_engine(job, torch.device("cpu"))
    files, _ = collect_image_paths([folder], recursive=False)
    for name, chunk in plan_shards([str(f.absolute()) for f in files], 8):
        shard_worker.explain_shard(engine, job, name, chunk)

    assert len(recipes) == 2 and recipes[0] == recipes[1] == prof.layout  # one recipe, the database's layout
    assert groups["worker"] == groups["plain"] and any(len(g) > 1 for g in groups["plain"])
    merged = tmp_path / "merged.duckdb"
    shutil.copyfile(tiny_db, merged)
    res = run_cli("--db", merged, "-q", "merge", shards)
    assert res.exit_code == 0, res.stderr
    sa, sb = snapshot(plain), snapshot(merged)
    for key in sa:
        assert sa[key] == sb[key], key

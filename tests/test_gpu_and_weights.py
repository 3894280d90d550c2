"""Checks that need hardware or files this machine does not have; each skips with the reason.

- `gpu`: the CUDA path (FAISS GPU similarities, device sort, device aggregation, bf16 encoding) agrees
  with the CPU path. Run on a GPU machine: `pytest -m gpu`.
- `weights`: real CLIP weights explain the sample images sensibly. Point CONVIS_TEST_CHECKPOINT at an
  open_clip ViT-B-32 checkpoint (OpenAI weights) and run `pytest -m weights`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none is visible to torch)")
CHECKPOINT = os.environ.get("CONVIS_TEST_CHECKPOINT")
SAMPLES = Path(__file__).resolve().parents[1] / "convis_db" / "resources" / "images"


@pytest.mark.gpu
@CUDA
def test_gpu_ranking_and_maps_match_the_cpu_on_the_same_embeddings():
    from convis_db.engine.ranking import SynsetRanker
    from convis_db.engine.saliency import full_map, peaks
    from convis_db.engine.windows import WindowGrid

    rng = np.random.default_rng(0)
    defs = rng.standard_normal((3000, 64)).astype(np.float32)
    defs /= np.linalg.norm(defs, axis=1, keepdims=True)
    emb = rng.standard_normal((35 * 40, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cpu = SynsetRanker(defs, torch.device("cpu")).rank(torch.from_numpy(emb), 50)
    gpu = SynsetRanker(defs, torch.device("cuda")).rank(torch.from_numpy(emb).cuda(), 50)
    # Different kernels may round a cosine differently: allow a rank step on a few near-ties.
    diff = np.abs(cpu.rank_less.numpy().astype(int) - gpu.rank_less.cpu().numpy().astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    grid = WindowGrid(35 * 16, 40 * 16, 16, 64, 128)
    p_cpu = peaks(cpu.rank_less.T.contiguous(), grid, 3000)
    p_gpu = peaks(gpu.rank_less.T.contiguous(), grid, 3000)
    np.testing.assert_allclose(p_cpu.score, p_gpu.score, atol=1.0 / 3000)
    m_cpu = full_map(cpu.rank_less[:, 7], grid, 3000)
    m_gpu = full_map(gpu.rank_less[:, 7], grid, 3000)
    np.testing.assert_allclose(m_cpu, m_gpu, atol=1.0 / 3000)


@pytest.mark.gpu
@CUDA
def test_ingest_on_gpu_stores_whole_images(tiny_db_copy):
    from convis_db.engine.settings import Settings
    from convis_db.ingest import Ingestor
    from convis_db.store.db import connect

    with Ingestor(tiny_db_copy, device=torch.device("cuda"), batch_size=512,
                  settings=Settings(max_pixels=60_000, stride=16)) as ing:
        report = ing.run(sorted(SAMPLES.glob("*.jpg")) + sorted(SAMPLES.glob("*.png")))
    assert report.count("ingested") == 4
    con = connect(tiny_db_copy)
    try:
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        for image_id, n_windows, top_k in con.execute("SELECT image_id, n_windows, top_k FROM images").fetchall():
            assert con.execute("SELECT count(*) FROM windows WHERE image_id = ?", [image_id]).fetchone()[0] == n_windows
            assert con.execute("SELECT count(*) FROM image_scores WHERE image_id = ?", [image_id]).fetchone()[0] == n
            assert con.execute("SELECT count(*) FROM window_concepts WHERE image_id = ?",
                               [image_id]).fetchone()[0] == n_windows * top_k
    finally:
        con.close()


@pytest.mark.weights
@pytest.mark.skipif(not CHECKPOINT, reason="needs real ViT-B-32 weights: set CONVIS_TEST_CHECKPOINT to an open_clip "
                                           "checkpoint file (none can be downloaded here)")
def test_real_weights_find_the_animals_of_the_paper_figure(tmp_path):
    """With OpenAI's ViT-B-32, the paper's Figure 1 image (a dog, a tiger, two cats) scores higher for
    dog, cat and big cat than for vehicles, and its most specific concepts are animals."""
    from convis_db.engine.settings import CPU_FAST, PAPER
    from convis_db.ingest import Ingestor
    from convis_db.init_db import initialise
    from convis_db.models.registry import resolve_model
    from convis_db.store.db import connect

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    db = tmp_path / "real.duckdb"
    initialise(db, "physical-objects", resolve_model("ViT-B-32", CHECKPOINT), device)
    settings = PAPER if device.type == "cuda" else CPU_FAST
    with Ingestor(db, device=device, settings=settings) as ing:
        assert ing.run([SAMPLES / "dogtigercat.png"]).count("ingested") == 1
    con = connect(db)
    try:
        score = dict(con.execute("SELECT synset, score FROM image_concepts").fetchall())
        for animal in ("dog.n.01", "cat.n.01", "big_cat.n.01"):
            assert score[animal] > score["vehicle.n.01"], animal
        top = [r[0] for r in con.execute("SELECT synset FROM concept_scores(1) ORDER BY self_score DESC LIMIT 5")]
        animals = {r[0] for r in con.execute("SELECT name FROM descendants('animal.n.01')").fetchall()}
        assert any(t in animals for t in top), top
    finally:
        con.close()

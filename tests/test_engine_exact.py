"""The batched engine agrees with a naive implementation of the paper's equations (tests/naive_convis.py).

Both window lattices are checked: 'equal' (new databases: corners from -(large - stride), every pixel
covered by as many windows) and 'origin' (databases made before schema 005).

Maps, stored image scores, peaks and per-window top concepts are compared with the naive computation on
small generated images with the tiny random CLIP and the small vocabulary (135 synsets). The building
blocks are checked against brute force too: FAISS ranks (ties included), DAG propagation, the window
grid and its axis segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import naive_convis as naive
from convis_db.engine.explainer import ConceptEngine, ConceptMapper
from convis_db.engine.propagate import Propagator
from convis_db.engine.ranking import SynsetRanker, rank_from_similarities
from convis_db.engine.saliency import axis_segments, full_map, grid_segments, peaks
from convis_db.engine.settings import Settings
from convis_db.engine.windows import WindowGrid
from convis_db.errors import UsageError
from convis_db.store.hierarchy_store import StoredHierarchy

CPU = torch.device("cpu")
MAP_TOL = 1e-5

#: (settings, image size (H, W)): one case keeps small == model input (no resize), one upsamples it.
SETTINGS_A = Settings(max_pixels=9000, stride=16, small=32, large=48, top_k=5)
SETTINGS_B = Settings(max_pixels=9000, stride=24, small=24, large=40, top_k=7)  # stride does not divide large
SETTINGS_A_ORIGIN = Settings(max_pixels=9000, stride=16, small=32, large=48, top_k=5, layout="origin")

CONCEPTS = {
    "leaf": "tiger.n.02",
    "leaf with two parents": "dog.n.01",
    "inner (two paths to dog)": "carnivore.n.01",
    "inner": "person.n.01",
    "root": "entity.n.01",
}


# --------------------------------------------------------------------------- images and fixtures


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def structured_image(height: int, width: int) -> np.ndarray:
    """Stripes, a diagonal gradient and two flat blocks: content that differs strongly between windows."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    img[..., 1] = np.where((y // 6) % 2 == 0, 220, 30).astype(np.uint8)
    img[..., 2] = ((x + y) * 255 // (width + height)).astype(np.uint8)
    img[height // 4: height // 2, width // 5: width // 2] = (250, 20, 20)
    img[height // 2:, 3 * width // 4:] = (10, 10, 240)
    return img


@dataclass
class Tiny:
    model: object
    definitions: np.ndarray
    hierarchy: StoredHierarchy
    descendants: dict[int, np.ndarray]
    closure: list[tuple[int, int]]

    def engine(self, settings: Settings, batch_size: int = 128) -> ConceptEngine:
        return ConceptEngine(self.model, self.definitions, self.hierarchy.propagation_levels, settings,
                             batch_size=batch_size)

    def ids(self, name: str) -> np.ndarray:
        return self.descendants[self.hierarchy.id_of[name]]


@pytest.fixture(scope="module")
def tiny(tiny_db: Path, tiny_spec) -> Tiny:
    from convis_db.models.clip import load_model
    from convis_db.store.db import connect
    from convis_db.store.hierarchy_store import load_hierarchy
    from convis_db.store.model_store import load_definition_embeddings, pick_model

    con = connect(tiny_db)
    try:
        defs = load_definition_embeddings(con, pick_model(con, None))
        hierarchy = load_hierarchy(con)
        descendants = naive.descendants_from_closure(con)
        closure = [tuple(map(int, r)) for r in con.execute("SELECT ancestor_id, descendant_id FROM closure").fetchall()]
    finally:
        con.close()
    assert 20 <= len(defs) <= 500
    return Tiny(load_model(tiny_spec, CPU), defs, hierarchy, descendants, closure)


@dataclass
class Case:
    name: str
    pixels: np.ndarray
    settings: Settings
    batch_size: int


CASES = [
    Case("random-96x80", random_image(80, 96, seed=1), SETTINGS_A, 128),
    Case("structured-130x70", structured_image(70, 130), SETTINGS_B, 7),  # several batches, the last partial
    Case("structured-130x70-A", structured_image(70, 130), SETTINGS_A, 16),
    Case("random-96x80-origin", random_image(80, 96, seed=1), SETTINGS_A_ORIGIN, 16),
]
#: The cases stored in a database by `ingested` (one database holds one setting).
STORED = {"random.png": CASES[0], "structured.png": CASES[2]}


@pytest.fixture(scope="module")
def computed(tiny: Tiny):
    """Per case: the engine's working image, grid and window embeddings, and the naive explanation."""
    out = {}
    for case in CASES:
        engine = tiny.engine(case.settings, case.batch_size)
        img, grid = engine.working_image(case.pixels)
        emb = engine.encode_windows(img, grid)
        s = case.settings
        out[case.name] = (engine, img, grid, emb,
                          naive.explain(tiny.model, img, tiny.definitions, s.stride, s.small, s.large, s.layout))
    return out


def _diagnose(nexp: naive.NaiveExplanation) -> str:
    return f"(smallest cosine gap in any window: {naive.min_rank_margin(nexp.z):.2e})"


# --------------------------------------------------------------------------- engine vs naive, in memory


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_working_image_and_grid_match_the_formulae(case: Case, computed):
    engine, img, grid, emb, nexp = computed[case.name]
    s = case.settings
    h, w = img.shape[1:]
    assert abs(h * w - s.max_pixels) <= h + w, "working image should hold about max_pixels pixels"
    assert abs(w / h - case.pixels.shape[1] / case.pixels.shape[0]) < 0.05
    assert (grid.height, grid.width) == (h, w) and grid.layout == s.layout
    if s.layout == "origin":
        assert (grid.rows, grid.cols) == (math.ceil(h / s.stride), math.ceil(w / s.stride))
    else:
        assert grid.boxes()[0, :2].tolist() == [-(s.large - s.stride)] * 2
        assert (grid.rows, grid.cols) == (len(naive.axis_corners(h, s.stride, s.large, "equal")),
                                          len(naive.axis_corners(w, s.stride, s.large, "equal")))
    assert emb.shape == (grid.n_windows, engine.model.embed_dim) == nexp.embeddings.shape
    assert grid.boxes().tolist() == [[x0, y0, x0 + s.large, y0 + s.large] for x0, y0 in nexp.corners]
    assert grid.small_boxes().tolist() == [[x0, y0, x0 + s.small, y0 + s.small] for x0, y0 in nexp.corners]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_window_embeddings_match_naive(case: Case, computed):
    _, _, _, emb, nexp = computed[case.name]
    diff = np.abs(emb.numpy().astype(np.float64) - nexp.embeddings).max()
    assert diff < 1e-5, diff
    # e is the mean of two unit vectors, so its norm is in (0, 1]; not normalised again.
    norms = np.linalg.norm(nexp.embeddings, axis=1)
    assert (norms <= 1 + 1e-6).all() and (norms > 0.1).all()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("kind", list(CONCEPTS))
def test_concept_maps_match_naive(case: Case, kind: str, tiny: Tiny, computed):
    engine, _, grid, emb, nexp = computed[case.name]
    ids = tiny.ids(CONCEPTS[kind])
    expected = nexp.concept_map(ids)
    got = engine.mapper.concept_map(emb, grid, ids)
    assert got.shape == expected.shape == (grid.height, grid.width)
    assert np.issubdtype(got.dtype, np.floating)
    err = np.abs(got - expected).max()
    assert err < MAP_TOL, f"{CONCEPTS[kind]}: max error {err} {_diagnose(nexp)}"
    if kind == "root":
        # entity holds all of T, so its best descendant is every window's top synset.
        assert np.allclose(expected, (tiny.definitions.shape[0] - 1) / tiny.definitions.shape[0])
    else:
        assert expected.max() > expected.min(), "a constant map compares nothing"


@pytest.mark.parametrize("case", CASES[:2], ids=[c.name for c in CASES[:2]])
def test_self_maps_match_naive(case: Case, tiny: Tiny, computed):
    """--only-self: rank_sim of the synset alone, for an inner node (differs from its max_rank_sim map)."""
    engine, _, grid, emb, nexp = computed[case.name]
    sid = tiny.hierarchy.id_of["carnivore.n.01"]
    expected = nexp.concept_map([sid])
    got = engine.mapper.concept_map(emb, grid, np.array([sid]))
    assert np.abs(got - expected).max() < MAP_TOL, _diagnose(nexp)
    assert not np.allclose(expected, nexp.concept_map(tiny.ids("carnivore.n.01")))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_explain_scores_and_top_concepts_match_naive(case: Case, tiny: Tiny, computed):
    engine, _, grid, emb, nexp = computed[case.name]
    exp = engine.explain_embeddings(emb, grid)
    best_maps, own_maps = nexp.all_maps(tiny.descendants)
    np.testing.assert_allclose(exp.scores.score, best_maps.max(axis=(0, 1)), atol=MAP_TOL, rtol=0)
    np.testing.assert_allclose(exp.self_scores.score, own_maps.max(axis=(0, 1)), atol=MAP_TOL, rtol=0)
    n = nexp.n
    for peak, maps in ((exp.scores, best_maps), (exp.self_scores, own_maps)):
        assert (0 <= peak.x).all() and (peak.x < grid.width).all() and (0 <= peak.y).all() and (peak.y < grid.height).all()
        at_peak = maps[peak.y, peak.x, np.arange(n)]
        np.testing.assert_allclose(at_peak, maps.max(axis=(0, 1)), atol=1e-9, rtol=0)
    # Per-window top-k: valid order, the naive rank_sim of each listed synset, nothing better left out.
    k = case.settings.top_k
    assert exp.top_ids.shape == exp.top_rank_sim.shape == (grid.n_windows, k)
    for w in range(grid.n_windows):
        ids = exp.top_ids[w]
        assert len(set(ids.tolist())) == k
        z = nexp.z[w]
        assert (np.diff(z[ids]) <= 1e-7).all(), "top ids are not in decreasing cosine order"
        left_out = np.setdiff1d(np.arange(n), ids)
        assert z[left_out].max() <= z[ids].min() + 1e-7
        np.testing.assert_allclose(exp.top_rank_sim[w], [nexp.rank_sim(w, int(s)) for s in ids], atol=1e-6)
        assert exp.top_rank_sim[w, 0] == pytest.approx((n - 1) / n, abs=1e-6)


# --------------------------------------------------------------------------- engine vs naive, through a database


@pytest.fixture(scope="module")
def ingested(tiny_db: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two generated PNGs ingested into a copy of tiny_db with SETTINGS_A (batch of 16 windows)."""
    import shutil

    from convis_db.ingest import Ingestor

    folder = tmp_path_factory.mktemp("exact_ingest")
    db = folder / "exact.duckdb"
    shutil.copyfile(tiny_db, db)
    for name, case in STORED.items():
        assert case.settings == SETTINGS_A
        Image.fromarray(case.pixels).save(folder / name)
    with Ingestor(db, device=CPU, settings=SETTINGS_A, batch_size=16) as ingestor:
        report = ingestor.run([folder / name for name in STORED])
    assert report.count("ingested") == 2, [o.__dict__ for o in report.outcomes]
    return db, folder


def test_stored_scores_embeddings_and_maps_match_naive(ingested, tiny: Tiny, computed):
    from convis_db.query.maps import MapService
    from convis_db.store.db import connect
    from convis_db.store.image_store import get_image, load_window_embeddings

    db, folder = ingested
    con = connect(db)
    try:
        service = MapService(con, CPU)
        for name, case in STORED.items():
            stored = get_image(con, str(folder / name))
            # The naive explanation of the same pixels, computed one window at a time from the working image.
            _, _, grid, _, nexp = computed[case.name]
            assert stored.grid == grid and stored.n_windows == grid.n_windows
            assert (stored.width, stored.height) == (case.pixels.shape[1], case.pixels.shape[0])
            s = SETTINGS_A
            emb = load_window_embeddings(con, stored.image_id)
            assert np.abs(emb - nexp.embeddings).max() < 1e-5

            rows = con.execute(
                "SELECT synset_id, score, work_peak_x, work_peak_y, self_score, work_self_peak_x, work_self_peak_y "
                "FROM image_scores "
                "WHERE image_id = ? ORDER BY synset_id", [stored.image_id]).fetchnumpy()
            n = nexp.n
            assert rows["synset_id"].tolist() == list(range(n))
            best_maps, own_maps = nexp.all_maps(tiny.descendants)
            best_max, own_max = best_maps.max(axis=(0, 1)), own_maps.max(axis=(0, 1))
            assert np.abs(rows["score"] - best_max).max() < MAP_TOL, _diagnose(nexp)
            assert np.abs(rows["self_score"] - own_max).max() < MAP_TOL, _diagnose(nexp)
            # Every peak is where the naive map attains its maximum.
            idx = np.arange(n)
            np.testing.assert_allclose(best_maps[rows["work_peak_y"], rows["work_peak_x"], idx], best_max, atol=1e-9, rtol=0)
            np.testing.assert_allclose(own_maps[rows["work_self_peak_y"], rows["work_self_peak_x"], idx], own_max,
                                       atol=1e-9, rtol=0)
            # score >= self_score (X is one of its descendants), equal for leaves.
            assert (rows["score"] >= rows["self_score"] - 1e-7).all()

            # Maps from the stored windows (no model run) equal the naive ones.
            for concept in CONCEPTS.values():
                cmap = service.for_stored(stored, concept)
                expected = nexp.concept_map(tiny.ids(concept))
                assert np.abs(cmap.saliency - expected).max() < MAP_TOL, (name, concept, _diagnose(nexp))
                assert cmap.peak["score"] == pytest.approx(expected.max(), abs=MAP_TOL)
                assert rows["score"][tiny.hierarchy.id_of[concept]] == pytest.approx(expected.max(), abs=MAP_TOL)

            # window_concepts (rank_sim through the window_top_concepts view): top_k rows per window, k = 1 the
            # best, with the naive rank_sim values.
            wc = con.execute("SELECT window_idx, k, synset_id, rank_sim FROM window_top_concepts WHERE image_id = ? "
                             "ORDER BY window_idx, k", [stored.image_id]).fetchnumpy()
            assert len(wc["k"]) == grid.n_windows * s.top_k
            assert wc["k"].reshape(grid.n_windows, s.top_k).tolist() == [list(range(1, s.top_k + 1))] * grid.n_windows
            expected_rs = [nexp.rank_sim(int(w), int(sid)) for w, sid in zip(wc["window_idx"], wc["synset_id"])]
            np.testing.assert_allclose(wc["rank_sim"], expected_rs, atol=1e-6)
            top1 = wc["synset_id"][wc["k"] == 1]
            assert (top1 == nexp.z.argmax(axis=1)).all()
    finally:
        con.close()


# --------------------------------------------------------------------------- FAISS ranks and ties


def _bruteforce_rank_less(z: np.ndarray) -> np.ndarray:
    """count[w, s] = |{s' : z[w, s'] < z[w, s]}|, by direct comparison."""
    return (z[:, None, :] < z[:, :, None]).sum(axis=2)


def _check_top(z: np.ndarray, rank_less: np.ndarray, top_ids: np.ndarray, top_rank_less: np.ndarray, k: int):
    n = z.shape[1]
    assert top_ids.shape == top_rank_less.shape == (z.shape[0], min(k, n))
    for w in range(z.shape[0]):
        ids = top_ids[w]
        assert len(set(ids.tolist())) == len(ids)
        assert (np.diff(z[w, ids]) <= 0).all()
        rest = np.setdiff1d(np.arange(n), ids)
        if rest.size:
            assert z[w, rest].max() <= z[w, ids].min()
        assert (top_rank_less[w] == rank_less[w, ids]).all()


@pytest.mark.parametrize("top_k", [1, 5, 40, 100])
def test_rank_from_similarities_matches_bruteforce_with_many_ties(top_k: int):
    rng = np.random.default_rng(7)
    z = np.round(rng.uniform(-1, 1, (9, 40)), 1).astype(np.float32)  # 21 distinct values: many ties
    z[3] = 0.25  # a row with every entry tied
    ranking = rank_from_similarities(torch.from_numpy(z), top_k)
    expected = _bruteforce_rank_less(z)
    assert ranking.rank_less.dtype == torch.int32
    assert (ranking.rank_less.numpy() == expected).all()
    assert (ranking.rank_less[3] == 0).all()
    _check_top(z, expected, ranking.top_ids.numpy(), ranking.top_rank_less.numpy(), top_k)


def test_rank_from_similarities_small_constructed_case():
    z = torch.tensor([[0.5, 0.1, 0.5, 0.3, 0.1, 0.9]])
    ranking = rank_from_similarities(z, 3)
    assert ranking.rank_less[0].tolist() == [3, 0, 3, 2, 0, 5]
    assert ranking.top_ids[0, 0].item() == 5 and set(ranking.top_ids[0, 1:].tolist()) == {0, 2}
    assert ranking.top_rank_less[0].tolist() == [5, 3, 3]


@pytest.fixture(scope="module")
def tied_definitions() -> np.ndarray:
    """30 random unit rows plus exact duplicates of row 4 (twice) and row 9: 33 synsets with tied definitions."""
    rng = np.random.default_rng(11)
    d = rng.normal(size=(30, 16))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.vstack([d, d[4], d[4], d[9]]).astype(np.float32)


def test_synset_ranker_matches_numpy_with_tied_definitions(tied_definitions: np.ndarray):
    defs = tied_definitions
    n = len(defs)
    rng = np.random.default_rng(12)
    emb = rng.normal(size=(8, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[0] = defs[4]               # the tied triple is this window's best match
    emb[1] = -defs[9]              # the tied pair is this window's worst match
    emb[2] = defs[9]               # the tied pair is this window's best match
    emb = torch.from_numpy(emb.astype(np.float32))
    ranker = SynsetRanker(defs, CPU)
    z32 = ranker.similarities(emb).numpy()
    z64 = emb.numpy().astype(np.float64) @ defs.astype(np.float64).T
    assert np.abs(z32 - z64).max() < 1e-6
    assert naive.min_rank_margin(z64) > 1e-5, "the random rows should not be nearly tied"
    ranking = ranker.rank(emb, top_k=6)
    rank_less = ranking.rank_less.numpy()
    assert (rank_less == _bruteforce_rank_less(z64)).all()
    # Duplicated definitions share their rank in every window.
    assert (rank_less[:, 4] == rank_less[:, 30]).all() and (rank_less[:, 30] == rank_less[:, 31]).all()
    assert (rank_less[:, 9] == rank_less[:, 32]).all()
    assert set(ranking.top_ids[0, :3].tolist()) == {4, 30, 31}
    assert ranking.top_rank_less[0, :3].tolist() == [n - 3] * 3
    assert rank_less[1, 9] == rank_less[1, 32] == 0
    assert set(ranking.top_ids[2, :2].tolist()) == {9, 32} and ranking.top_rank_less[2, :2].tolist() == [n - 2] * 2
    _check_top(z64, rank_less, ranking.top_ids.numpy(), ranking.top_rank_less.numpy(), 6)

    # The single-concept path (maps) counts the same way: max over ids of the rank counts.
    mapper = ConceptMapper(ranker)
    for ids in ([4], [30], [4, 30, 31], [9, 32, 0], list(range(n))):
        got = mapper.concept_counts(emb, np.array(ids)).numpy()
        assert (got == rank_less[:, ids].max(axis=1)).all(), ids


def test_rank_sim_of_a_window_equals_its_definition_is_top(tiny: Tiny):
    """A window embedding equal to a definition ranks that synset first (faiss on the real matrix)."""
    defs = tiny.definitions
    ranker = SynsetRanker(defs, CPU)
    pick = [0, 17, len(defs) - 1]
    ranking = ranker.rank(torch.from_numpy(defs[pick]), top_k=3)
    z64 = defs[pick].astype(np.float64) @ defs.astype(np.float64).T
    assert (ranking.rank_less.numpy() == _bruteforce_rank_less(z64)).all()
    dup = (np.abs(z64 - z64.max(axis=1, keepdims=True)) < 1e-6).sum(axis=1)
    for row, sid in enumerate(pick):
        if dup[row] == 1:  # a definition without an identical twin is its own best match
            assert ranking.top_ids[row, 0].item() == sid
            assert ranking.rank_less[row, sid].item() == len(defs) - 1


# --------------------------------------------------------------------------- propagation over the DAG


def _closure_max(values: np.ndarray, closure: list[tuple[int, int]]) -> np.ndarray:
    out = values.copy()
    for anc, desc in closure:
        out[:, anc] = np.maximum(out[:, anc], values[:, desc])
    return out


def _closure_of(n: int, edges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    children: dict[int, list[int]] = {}
    for p, c in edges:
        children.setdefault(p, []).append(c)
    pairs = []
    for a in range(n):
        seen, stack = {a}, [a]
        while stack:
            for c in children.get(stack.pop(), []):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        pairs.extend((a, d) for d in seen)
    return pairs


def test_propagation_on_a_dag_with_a_two_parent_node():
    #        0 root
    #      /  |   \
    #     1   2    \
    #      \ / \    \
    #       3   4    |      3 has two parents (1, 2); 5 is reached from 0 directly and via 3
    #       |        |
    #       5 -------'      6 is an isolated leaf (its own root)
    names = [f"s{i}.n.01" for i in range(7)]
    edges = [(0, 1), (0, 2), (1, 3), (2, 3), (2, 4), (3, 5), (0, 5)]
    h = StoredHierarchy.from_edges(names, np.array([p for p, _ in edges], np.int32),
                                   np.array([c for _, c in edges], np.int32))
    prop = Propagator(h.propagation_levels, CPU)
    closure = _closure_of(7, edges)
    rng = np.random.default_rng(3)
    values = rng.integers(0, 1000, (20, 7)).astype(np.int32)
    values[0] = [0, 0, 0, 0, 0, 999, 5]   # the deepest leaf's value must climb through the two-parent node
    values[1] = [0, 0, 0, 7, 0, 0, 0]     # the two-parent node's value reaches both parents and the root
    got = prop.max_over_descendants(torch.from_numpy(values)).numpy()
    assert (got == _closure_max(values, closure)).all()
    assert got[0].tolist() == [999, 999, 999, 999, 0, 999, 5]
    assert got[1].tolist() == [7, 7, 7, 7, 0, 0, 0]
    assert (values == np.asarray(values)).all()


def test_propagation_on_the_tiny_hierarchy_equals_the_closure(tiny: Tiny):
    n = tiny.definitions.shape[0]
    rng = np.random.default_rng(5)
    values = rng.permutation(np.tile(np.arange(n), (16, 1)).T).T.astype(np.int32)  # rank-like counts
    before = values.copy()
    got = Propagator(tiny.hierarchy.propagation_levels, CPU).max_over_descendants(torch.from_numpy(values)).numpy()
    assert (values == before).all(), "the input must not be modified"
    assert (got == _closure_max(values, tiny.closure)).all()
    two_parents = np.bincount(tiny.hierarchy.child, minlength=n) > 1
    assert two_parents.any(), "the tiny hierarchy should exercise a node with two parents"


# --------------------------------------------------------------------------- window grid and axis segments


GRIDS = [(87, 104, 16, 48), (70, 129, 24, 40), (33, 20, 1, 1), (50, 50, 7, 7), (10, 90, 16, 128), (129, 64, 32, 64),
         (1, 1, 5, 9), (45, 46, 5, 23)]


def _coverage(grid: WindowGrid) -> np.ndarray:
    """How many large patches hold each pixel, counted box by box."""
    counts = np.zeros((grid.height, grid.width), np.int64)
    for x0, y0, x1, y1 in grid.boxes().tolist():
        counts[max(y0, 0):min(y1, grid.height), max(x0, 0):min(x1, grid.width)] += 1
    return counts


@pytest.mark.parametrize("layout", ["equal", "origin"])
@pytest.mark.parametrize("h,w,stride,large", GRIDS)
def test_window_grid_covers_every_pixel(h: int, w: int, stride: int, large: int, layout: str):
    grid = WindowGrid(h, w, stride, min(large, 32), large, layout)
    boxes = grid.boxes()
    assert [tuple(b[:2]) for b in boxes.tolist()] == naive.window_corners(h, w, stride, large, layout)
    if layout == "origin":
        assert len(boxes) == grid.n_windows == math.ceil(h / stride) * math.ceil(w / stride)
    for x0, y0, x1, y1 in boxes.tolist():
        assert (x1 - x0, y1 - y0) == (large, large) and x0 < w and y0 < h and x1 > 0 and y1 > 0
    counts = _coverage(grid)
    assert counts.min() >= 1, "a pixel is covered by no window"
    if layout == "equal" and large % stride == 0:
        # Every pixel, border or not, is covered by (large / stride)^2 windows.
        assert counts.min() == counts.max() == (large // stride) ** 2


@pytest.mark.parametrize("h,w,stride,large", [g for g in GRIDS if g[3] % g[2]])
def test_equal_layout_covers_the_border_like_the_interior(h: int, w: int, stride: int, large: int):
    """When the stride does not divide the large side no lattice covers every pixel equally; the equal
    layout then covers each pixel as the infinite lattice does (periodic, so the border is no different)."""
    grid = WindowGrid(h, w, stride, min(large, 32), large, "equal")
    o = grid.origin

    def infinite(i: int) -> int:  # windows of the unbounded lattice o + k * stride holding pixel i
        return sum(1 for k in range(-100, 100) if o + k * stride <= i < o + k * stride + large)

    counts = _coverage(grid)
    expected = np.outer([infinite(i) for i in range(h)], [infinite(j) for j in range(w)])
    assert (counts == expected).all()


@pytest.mark.parametrize("layout", ["equal", "origin"])
@pytest.mark.parametrize("h,w,stride,large", GRIDS)
def test_axis_segments_match_direct_counting(h: int, w: int, stride: int, large: int, layout: str):
    grid = WindowGrid(h, w, stride, min(large, 32), large, layout)
    o = grid.origin
    for length, n_windows in ((h, grid.rows), (w, grid.cols)):
        seg = axis_segments(length, stride, large, n_windows, o)
        covering = [[r for r in range(n_windows) if o + r * stride <= i < o + r * stride + large]
                    for i in range(length)]
        # Segments partition [0, length) in order.
        assert seg.start[0] == 0 and seg.stop[-1] == length
        assert (seg.start[1:] == seg.stop[:-1]).all() and (seg.lengths > 0).all()
        for k in range(len(seg.start)):
            for i in range(seg.start[k], seg.stop[k]):
                rows = covering[i]
                assert rows == list(range(seg.lo[k], seg.hi[k] + 1)), (i, rows)
            assert seg.counts[k] == len(covering[seg.start[k]]) >= 1
            assert seg.start[k] <= seg.centres[k] < seg.stop[k]
        # Maximal: neighbouring segments have different covering windows.
        for k in range(1, len(seg.start)):
            assert covering[seg.start[k]] != covering[seg.start[k] - 1]


@pytest.mark.parametrize("layout", ["equal", "origin"])
@pytest.mark.parametrize("h,w,stride,large", [g for g in GRIDS if g[0] * g[1] <= 10_000])
def test_full_map_and_peaks_match_naive_accumulation(h: int, w: int, stride: int, large: int, layout: str):
    grid = WindowGrid(h, w, stride, min(large, 32), large, layout)
    rng = np.random.default_rng(h * 1000 + w)
    n = 50
    counts = rng.integers(0, n, (grid.n_windows, 3)).astype(np.int32)
    corners = naive.window_corners(h, w, stride, large, layout)
    for k in range(3):
        expected = naive.saliency_map(counts[:, k] / n, corners, large, h, w)
        got = full_map(counts[:, k], grid, n)
        assert np.abs(got - expected).max() < 1e-6
    pk = peaks(torch.from_numpy(counts.T.copy()), grid, n)  # synset-major: one row of window values per concept
    expected_all = naive.saliency_maps(counts / n, corners, large, h, w)
    np.testing.assert_allclose(pk.score, expected_all.max(axis=(0, 1)), atol=1e-12, rtol=0)
    np.testing.assert_allclose(expected_all[pk.y, pk.x, np.arange(3)], pk.score, atol=1e-12, rtol=0)
    windows_at_peak = [sum(1 for x0, y0 in corners if x0 <= x < x0 + large and y0 <= y < y0 + large)
                       for x, y in zip(pk.x, pk.y)]
    sums_at_peak = [sum(int(counts[i, k]) for i, (x0, y0) in enumerate(corners)
                        if x0 <= pk.x[k] < x0 + large and y0 <= pk.y[k] < y0 + large) for k in range(3)]
    assert pk.windows.tolist() == windows_at_peak and pk.sum.tolist() == sums_at_peak
    np.testing.assert_array_equal(np.float64(pk.sum) / (np.float64(pk.windows) * float(n)), pk.score)
    ys, xs = grid_segments(grid)
    assert set(pk.y.tolist()) <= set(ys.centres.tolist()) and set(pk.x.tolist()) <= set(xs.centres.tolist())


def test_settings_refuse_a_stride_that_leaves_pixels_uncovered():
    Settings(max_pixels=9000, stride=48, small=32, large=48)  # stride == large still covers every pixel
    with pytest.raises(UsageError, match="stride"):
        Settings(max_pixels=9000, stride=64, small=32, large=48)


def test_window_batches_pack_images_in_order_without_gaps():
    from convis_db.engine.explainer import window_batches

    counts = [5, 0, 3, 12, 1]
    batches = list(window_batches(counts, 4))
    assert all(sum(b - a for _, a, b in batch) <= 4 for batch in batches)
    assert all(sum(b - a for _, a, b in batch) == 4 for batch in batches[:-1])  # only the last is partial
    pieces = [p for batch in batches for p in batch]
    covered = {i: [] for i in range(len(counts))}
    for i, a, b in pieces:
        assert a < b
        covered[i].append((a, b))
    for i, n in enumerate(counts):  # each image's windows, once each, in order
        spans = covered[i]
        assert [a for a, _ in spans] == [0] + [b for _, b in spans[:-1]] if spans else n == 0
        assert (spans[-1][1] if spans else 0) == n
    assert list(window_batches([], 4)) == [] and list(window_batches([0, 0], 4)) == []

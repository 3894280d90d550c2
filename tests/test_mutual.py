"""Mutual-knowledge explanations (convis_db.mutual): each step against tests/naive_mutual.py on the tiny
random ViT, the toy colour encoder where the answer is known, the CLI end to end, and schema 008."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pytest
import torch
from PIL import Image

import naive_mutual as naive
from toy_encoder import ToyColourModel, scene, toy_hierarchy

from convis_db.errors import ModelError, UsageError
from convis_db.mutual import ConceptBank, MutualExplainer, MutualSettings
from convis_db.mutual import decompose as dec
from convis_db.mutual import information, textual
from convis_db.mutual.faithfulness import faithfulness_curves
from convis_db.mutual.patches import patch_tokens, to_model_batch
from convis_db.mutual.prompts import concept_embeddings, fit_ellipse, upscale_mask, visual_prompts
from convis_db.mutual.zeroshot import class_embeddings, language_concepts, parse_labels


@pytest.fixture(scope="module")
def tiny_loaded(tiny_spec):
    from convis_db.models.clip import load_model

    return load_model(tiny_spec, torch.device("cpu"))


def _images(n: int, seed: int = 0, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = scene(size, size, (8, 8, 24, 20), seed + i, object_rgb=tuple(int(v) for v in rng.integers(0, 255, 3)))
        out.append(img)
    return out


# --------------------------------------------------------------------------- tiny ViT, step by step
def test_patch_tokens_match_a_hand_written_vit(tiny_loaded):
    batch = to_model_batch(tiny_loaded, _images(3))
    tokens, emb = patch_tokens(tiny_loaded, batch)
    with torch.no_grad():
        ref_tokens, ref_emb = naive.vit_tokens(tiny_loaded.model.visual, batch)
    gh, gw = tiny_loaded.model.visual.grid_size
    assert tokens.shape == (3, gh, gw, ref_tokens.shape[-1])
    assert torch.allclose(tokens.reshape(3, gh * gw, -1), ref_tokens, atol=1e-5)
    assert torch.allclose(emb, ref_emb, atol=1e-5)
    assert torch.allclose(emb, tiny_loaded.encode_image_batch(batch), atol=1e-6)


#: Scores closer than this (min-max scaled PCA scores in [0, 1], or a component and its threshold) are a
#: float tie: which side wins depends on the LAPACK kernels (AVX2 vs AVX-512), so it is not compared.
FLOAT_TIE = 1e-6


@pytest.mark.parametrize("use_fg,fg_method", [(True, "graph"), (True, "pca"), (False, "graph")])
def test_pca_decomposition_matches_covariance_eigendecomposition(tiny_loaded, use_fg, fg_method):
    """PCA parts (and the foreground) equal the covariance eigendecomposition's, patch by patch, wherever
    the decision is not a float tie; at least 90% of the patches must be decided, so the test bites."""
    batch = to_model_batch(tiny_loaded, _images(4, seed=5))
    tokens, _ = patch_tokens(tiny_loaded, batch)
    decided = total = 0
    for t in tokens.numpy():
        gh, gw, d = t.shape
        for k, thr in ((3, 0.5), (5, 0.3), (4, None)):
            fg = np.ones((gh, gw), bool)
            if use_fg:
                fg = dec.foreground_mask(t, k, thr, fg_method)
                values, level = naive.foreground_values(t, k, thr, fg_method)
                if np.abs(values - level).min() > FLOAT_TIE * max(1.0, np.abs(values).max()):
                    assert np.array_equal(fg, naive.foreground(t, k, thr, fg_method))
            feats = t.reshape(-1, d).astype(np.float64)[fg.ravel()]
            if len(feats) < 2:
                continue
            scaled = naive.minmax(naive.pca_scores(feats, k))
            top2 = np.sort(scaled, axis=1)[:, -2:] if scaled.shape[1] > 1 else np.c_[scaled * 0, scaled + 1]
            margin = top2[:, 1] - top2[:, 0]
            # exact ties (a patch at the maximum of two min-max scaled columns is 1.0 in both) go to the
            # first component everywhere; near ties are float noise
            clear = (margin > FLOAT_TIE) | (margin == 0)
            got = dec.pca_parts(feats, k)
            assert np.array_equal(got[clear], np.argmax(scaled, axis=1)[clear])
            decided, total = decided + int(clear.sum()), total + len(clear)
            labels = dec.decompose(t, "pca", k, use_fg, thr, foreground_method=fg_method).labels
            if clear.all() and np.array_equal(fg, naive.foreground(t, k, thr, fg_method) if use_fg else fg):
                assert np.array_equal(labels, naive.pca_labels(t, k, thr, use_fg, fg_method))
    assert decided >= 0.9 * total


def test_pca_axes_follow_sign_and_order_conventions():
    """Principal axes in order of decreasing variance, each with its largest loading positive, whatever
    sign the SVD returned: flipping or permuting the input's columns cannot flip a part."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])
    scores = dec.pca_scores(x, 4)
    assert np.all(np.diff(scores.var(axis=0)) < 0)
    np.testing.assert_allclose(scores, naive.pca_scores(x, 4), atol=1e-10)
    flipped = dec.pca_scores(-x, 4)
    # negated data: the same axes up to the sign convention, so each column is the negated projection
    np.testing.assert_allclose(np.abs(flipped), np.abs(scores), atol=1e-10)
    assert np.array_equal(dec.pca_parts(x, 4), dec.pca_parts(x[:, ::-1].copy()[:, ::-1], 4))


def test_images_decomposed_together_match_one_pca_over_all(tiny_loaded):
    tokens, _ = patch_tokens(tiny_loaded, to_model_batch(tiny_loaded, _images(3, seed=11)))
    grids = list(tokens.numpy())
    for method in ("graph", "pca"):
        got = [d.labels for d in dec.decompose_together(grids, "pca", 4, True, 0.4, foreground_method=method)]
        want = naive.pca_labels_together(grids, 4, 0.4, method)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert np.array_equal(dec.decompose_together(grids[:1], "pca", 4, True, 0.4)[0].labels,
                          dec.decompose(grids[0], "pca", 4, True, 0.4).labels)


def test_kmeans_parts_are_a_lloyd_fixed_point(tiny_loaded):
    tokens, _ = patch_tokens(tiny_loaded, to_model_batch(tiny_loaded, _images(1, seed=9)))
    t = tokens[0].numpy().reshape(-1, tokens.shape[-1]).astype(np.float64)
    labels = dec.kmeans_parts(t, 4, seed=0)
    x = t / np.linalg.norm(t, axis=1, keepdims=True)
    centres = np.stack([x[labels == c].mean(axis=0) for c in np.unique(labels)])
    nearest = np.unique(labels)[np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)]
    assert np.array_equal(nearest, labels)
    assert np.array_equal(labels, dec.kmeans_parts(t, 4, seed=0))  # deterministic


def test_moment_ellipse_of_a_rectangle():
    mask = np.zeros((40, 60), bool)
    mask[10:18, 5:35] = True                          # 30 wide, 8 high
    e = fit_ellipse(mask)
    assert (e.cx, e.cy) == pytest.approx((19.5, 13.5))
    assert e.a == pytest.approx(30 / np.sqrt(3), rel=1e-3) and e.b == pytest.approx(8 / np.sqrt(3), rel=1e-2)
    assert abs(np.sin(e.angle)) < 1e-9


def test_visual_prompts_and_concept_embeddings(tiny_loaded):
    image = _images(1, seed=3)[0]
    labels = -np.ones((4, 4), int)
    labels[1:3, 1:3] = 0
    labels[3, :] = 1
    e = fit_ellipse(upscale_mask(labels == 0, 32, 32))
    red, gray, blur = visual_prompts(image, e)
    assert (red[(red != image).any(-1)] == (255, 0, 0)).all()        # only the red outline is added
    assert (gray[0, 0, 0] == gray[0, 0, 1] == gray[0, 0, 2])          # outside: grayscale
    assert np.array_equal(gray[16, 16], image[16, 16]) and np.array_equal(blur[16, 16], image[16, 16])
    assert not np.array_equal(blur[0:4, 0:4], image[0:4, 0:4])       # outside: blurred
    emb, ellipses = concept_embeddings(tiny_loaded, image, labels)
    assert emb.shape == (2, tiny_loaded.embed_dim) and len(ellipses) == 2
    for c in range(2):
        views = visual_prompts(image, ellipses[c])
        ref = np.mean([tiny_loaded.encode_image_batch(to_model_batch(tiny_loaded, [v]))[0].numpy() for v in views], 0)
        assert np.allclose(emb[c], ref, atol=1e-5)


def test_sinkhorn_and_assignment_match_loops():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 7))
    assert np.allclose(textual.sinkhorn_knopp(scores, 0.7, 30), naive.sinkhorn(scores, 0.7, 30), atol=1e-10)
    bank = rng.normal(size=(40, 8))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    concepts = rng.normal(size=(4, 8))
    for init, topk, ot in ((100, 3, True), (12, 2, True), (3, 3, True), (100, 3, False)):
        s = MutualSettings(initial_topk=init, topk=topk, optimal_transport=ot, sinkhorn_iters=50)
        got = textual.assign_textual_concepts(concepts, bank, s)
        want = (naive.assign(concepts, bank, init, topk, 2.5, 1.0, 50) if ot
                else [naive.top_indices(r, topk) for r in concepts @ bank.T])
        assert got == want
    # the relevance filter between the intersection and Sinkhorn, against the loops
    image = rng.normal(size=8)
    for init, offset in ((100, 0.02), (30, 0.0), (100, 0.5)):
        s = MutualSettings(initial_topk=init, topk=2, sinkhorn_iters=50, relevance_offset=offset)
        got = textual.assign_textual_concepts(concepts, bank, s, image)
        assert got == naive.assign(concepts, bank, init, 2, 2.5, 1.0, 50, image, offset)
    filtered = textual.relevant_entries(np.arange(40), image, bank, 0.0)
    assert 0 < len(filtered) < 40
    assert textual.relevant_entries(np.arange(40), image, bank, 10.0).tolist() == list(range(40))
    # one concept: no Sinkhorn (its columns would all be 1), plain top-k
    assert textual.assign_textual_concepts(concepts[:1], bank, MutualSettings()) == [naive.top_indices((concepts[:1] @ bank.T)[0], 3)]


def test_mutual_information_and_dynamics_match_the_contingency_table():
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = list(rng.choice(30, size=rng.integers(1, 12), replace=False))
        y = list(rng.choice(30, size=rng.integers(1, 12), replace=False))
        assert information.mutual_information(x, y) == pytest.approx(naive.mutual_information(x, y), abs=1e-9)
        assert information.mi_dynamics(x, y) == pytest.approx(naive.mi_curve(x, y), abs=1e-9)
    # log(N M c) for c shared texts; 0 when none
    assert information.mutual_information([1, 2, 3], [3, 2, 9, 8]) == pytest.approx(np.log(3 * 4 * 2), abs=1e-8)
    assert information.mutual_information([1], [2]) == 0.0
    assert information.area_under([3.0, 1.0, 0.0]) == pytest.approx(4 / 3)
    assert information.mean_curve([[2.0, 1.0, 0.0], [4.0, 0.0]]) == [3.0, 0.5, 0.0]


def test_class_embeddings_prediction_and_language_side(tiny_loaded):
    labels, templates = ["dog", "cat", "car"], ["a photo of a {}.", "a {} in the wild"]
    got = class_embeddings(tiny_loaded, labels, templates)
    for i, label in enumerate(labels):
        vs = [tiny_loaded.encode_text([t.format(label)])[0] for t in templates]
        m = np.mean(vs, axis=0)
        assert np.allclose(got[i], m / np.linalg.norm(m), atol=1e-5)
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(30, got.shape[1])).astype(np.float32)
    entries, scores = language_concepts(got[1], bank, 5)
    assert entries == naive.top_indices(bank @ got[1], 5)
    assert scores == pytest.approx([float(bank[e] @ got[1]) for e in entries], rel=1e-5)


def test_faithfulness_curves_match_one_image_at_a_time(tiny_loaded):
    image = _images(1, seed=4)[0]
    batch = to_model_batch(tiny_loaded, [image])
    labels = -np.ones((4, 4), int)
    labels[0, :2], labels[2:, 2:] = 0, 1
    classes = class_embeddings(tiny_loaded, ["dog", "cat", "car"], ["a photo of a {}."])
    curves = faithfulness_curves(tiny_loaded, batch, labels, [1, 0], classes, 2, 2.5)

    def score(removed):
        keep = torch.ones(32, 32)
        for c in removed:
            keep *= torch.from_numpy(~np.kron(labels == c, np.ones((8, 8), bool))).float()
        emb = tiny_loaded.encode_image_batch(batch * keep)[0].numpy().astype(np.float64)
        cos = emb @ classes.T
        return 2.5 * cos[2], int(np.argmax(cos)) == 2

    want_del = [score(r) for r in ([], [1], [1, 0])]
    want_ins = [score(r) for r in ([1, 0], [0], [])]
    assert curves.deletion == pytest.approx([w[0] for w in want_del], abs=1e-5)
    assert curves.insertion == pytest.approx([w[0] for w in want_ins], abs=1e-5)
    assert curves.deletion_kept == [w[1] for w in want_del] and curves.insertion_kept == [w[1] for w in want_ins]
    m = curves.metrics()
    assert m["deletion"] == pytest.approx(np.mean(curves.deletion)) and 0 <= m["acc_drop"] <= 1


def test_resnet_towers_are_refused_with_a_clear_error():
    from open_clip.modified_resnet import ModifiedResNet

    fake = SimpleNamespace(model=SimpleNamespace(visual=ModifiedResNet([1, 1, 1, 1], 16, 2, 32, 8)))
    bank = ConceptBank("descriptors", ["a"], np.ones((1, 16), np.float32), ["a"])
    with pytest.raises(ModelError, match="ModifiedResNet.*ViT"):
        MutualExplainer(fake, bank, ["a", "b"])


def test_labels_parsing(tmp_path):
    assert parse_labels("cat, dog ,car") == ["cat", "dog", "car"]
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"cat": ["whiskers"], "dog": ["a snout"]}))
    assert parse_labels(None, str(f)) == ["cat", "dog"]
    with pytest.raises(UsageError, match="at least two"):
        parse_labels("cat")
    with pytest.raises(UsageError, match="duplicate"):
        parse_labels("cat,cat,dog")


@pytest.mark.fault
@pytest.mark.parametrize("name, content, message", [
    ("labels.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file, not a labels file"),
    ("labels.txt", "chat\nc\u00e9l\u00e8bre\n".encode("latin-1"), "not UTF-8 text"),
    ("labels.json", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ("labels.json", json.dumps(["cat", ["dog"], "car"]).encode(), "entry 2 is a list, not a label string"),
    ("labels.json", b"42", "a JSON int"),
    ("labels.txt", "\n".join(f"class {i}" for i in range(200_000)).encode(), "200,000 labels; at most 25,000"),
    ("labels.json", json.dumps([f"class {i}" for i in range(200_000)]).encode(), "200,000 labels; at most 25,000"),
    ("labels.json", json.dumps({f"n{i}": f"class {i}" for i in range(200_000)}).encode(), "200,000 labels"),
])
def test_bad_labels_files_are_refused_in_one_line(run_cli, tiny_db, picture, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    for command in (["mutual", str(picture)], ["eval", "mutual", str(tmp_path)]):
        r = run_cli("-q", "--db", tiny_db, *command, "--labels-file", path)
        assert r.exit_code == 2, (command, r.stdout, r.stderr[-500:])
        assert message in r.stderr and str(path) in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.fault
def test_label_count_is_bounded(tmp_path):
    from convis_db.mutual.zeroshot import MAX_LABELS, MAX_LABELS_FILE_BYTES, check_labels, read_labels_file

    assert len(check_labels([f"c{i}" for i in range(MAX_LABELS)])) == MAX_LABELS == 25_000
    with pytest.raises(UsageError, match="25,001 labels; at most 25,000"):
        check_labels([f"c{i}" for i in range(MAX_LABELS + 1)])
    with pytest.raises(UsageError, match="--labels: 200,000 labels"):
        parse_labels(",".join(f"c{i}" for i in range(200_000)))
    with pytest.raises(UsageError, match=r"duplicate labels: c0, c1, .* and 90 more"):
        check_labels([f"c{i % 100}" for i in range(20_000)])
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(MAX_LABELS_FILE_BYTES + 1)
    with pytest.raises(UsageError, match="too large for a labels file"):
        read_labels_file(big)
    with pytest.raises(UsageError, match="no such labels file"):
        read_labels_file(tmp_path / "nothere.txt")
    with pytest.raises(UsageError, match="is a folder"):
        parse_labels(None, str(tmp_path))


# --------------------------------------------------------------------------- toy: the answer is known
class ToyPatchModel(ToyColourModel):
    """The toy colour encoder with patch tokens: each 4x4-pixel cell's (redness, greenness, blueness, neutral)."""

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean).view(1, 3, 1, 1)
        s = torch.tensor(self.std).view(1, 3, 1, 1)
        rgb = (pixels.float() * s + m).clamp(0, 1)
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        feats = torch.stack([(r - (g + b) / 2).clamp(min=0), (g - (r + b) / 2).clamp(min=0),
                             (b - (r + g) / 2).clamp(min=0), torch.full_like(r, self.neutral)], dim=1)
        cells = torch.nn.functional.avg_pool2d(feats, 4)                      # (N, 4, 8, 8)
        return cells.permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def toy():
    # a small neutral feature: the image's colour, not its greyness, should dominate each embedding
    model = ToyPatchModel(image_size=32, neutral=0.02)
    h = toy_hierarchy()
    bank = ConceptBank("definitions", list(h.definitions), model.encode_text(h.definitions), list(h.names),
                       list(range(len(h.names))))
    return model, bank


@pytest.mark.parametrize("settings", [
    MutualSettings(decomposition="pca", n_concepts=1, language_topk=3),
    MutualSettings(decomposition="kmeans", n_concepts=2, foreground=False, language_topk=3),
], ids=["pca-foreground", "kmeans-with-background"])
def test_toy_red_square_shares_the_red_concept(toy, settings):
    model, bank = toy
    explainer = MutualExplainer(model, bank, ["red", "green", "blue"], ["a {} thing"], settings)
    red = explainer.explain(scene(64, 64, (16, 16, 48, 48), 0), faithfulness=True)
    assert red.predicted == "red"
    assert "red.n.01" in [t.name for t in red.mutual_concepts]
    assert red.mi > 0 and red.mi_curve[-1] == 0.0
    control = explainer.explain(scene(64, 64, (16, 16, 48, 48), 1, object_rgb=(30, 200, 40)))
    assert control.predicted == "green"
    assert "red.n.01" not in [t.name for t in control.mutual_concepts]
    assert "green.n.01" in [t.name for t in control.mutual_concepts]
    # the red region is where the square is, and removing it costs the prediction most
    top = max(red.visual_concepts, key=lambda v: v.importance)
    x0, y0, x1, y1 = top.box
    assert 8 <= x0 <= 24 and 8 <= y0 <= 24 and 40 <= x1 <= 56 and 40 <= y1 <= 56
    assert red.faithfulness.deletion[1] < red.faithfulness.deletion[0]


def test_defaults_are_the_authors_notebook_settings():
    s = MutualSettings()
    assert (s.initial_topk, s.language_topk, s.foreground_threshold, s.relevance_offset) == (500, 50, None, 0.02)
    assert (s.topk, s.logit_scale, s.sinkhorn_lambda, s.sinkhorn_iters, s.auc) == (3, 2.5, 1.0, 1000, "single")
    for bad in (dict(foreground_threshold=1.0), dict(relevance_offset=-0.1), dict(auc="both"),
                dict(initial_topk=0), dict(language_topk="50"), dict(n_concepts=True)):
        with pytest.raises(UsageError):
            MutualSettings(**bad)


def test_pca_kmeans_auc_is_the_mean_of_both_curves(toy):
    model, bank = toy
    image = scene(64, 64, (16, 16, 48, 48), 0)
    runs = {}
    for decomposition in ("pca", "kmeans"):
        settings = MutualSettings(decomposition=decomposition, n_concepts=2, language_topk=3)
        runs[decomposition] = MutualExplainer(model, bank, ["red", "green", "blue"], ["a {} thing"], settings).explain(image)
    both = MutualExplainer(model, bank, ["red", "green", "blue"], ["a {} thing"],
                           MutualSettings(n_concepts=2, language_topk=3, auc="pca+kmeans")).explain(image)
    assert both.auc_curves == {"pca": runs["pca"].mi_curve, "kmeans": runs["kmeans"].mi_curve}
    assert both.mi_curve == runs["pca"].mi_curve          # the explanation itself is the PCA one
    assert both.auc == pytest.approx(information.area_under(information.mean_curve(list(both.auc_curves.values()))))
    assert both.as_dict()["auc_curves"] == both.auc_curves and both.as_dict()["auc"] == both.auc


def test_notes_on_fewer_concepts_and_a_large_language_share(toy):
    model, bank = toy
    explainer = MutualExplainer(model, bank, ["red", "green", "blue"], ["a {} thing"],
                                MutualSettings(n_concepts=32, language_topk=len(bank)))
    exp = explainer.explain(scene(64, 64, (16, 16, 48, 48), 0))
    found = len(exp.visual_concepts)
    assert found < 32
    fewer = [n for n in exp.notes if n.startswith("asked for 32 visual concepts")]
    assert fewer and f"found {found}:" in fewer[0] and "patches" in fewer[0]
    share = [n for n in explainer.notes if "language side takes" in n]
    assert share and f"of the bank's {len(bank)} texts (100%)" in share[0] and share[0] in exp.notes
    quiet = MutualExplainer(model, bank, ["red", "green", "blue"], ["a {} thing"],
                            MutualSettings(n_concepts=1, language_topk=1))
    assert len(bank) >= 4 and not quiet.notes and not quiet.explain(scene(64, 64, (16, 16, 48, 48), 0)).notes


# --------------------------------------------------------------------------- CLI end to end, storage, schema
@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "square.png"
    Image.fromarray(scene(48, 64, (16, 10, 44, 38), 0)).save(path)
    return path


def test_mutual_cli_json_png_and_sql(run_cli, tiny_db_copy, picture, tmp_path):
    out = tmp_path / "regions.png"
    r = run_cli("-q", "--db", tiny_db_copy, "mutual", picture, "--labels", "dog,cat,car", "--json", "-o", out,
                "--store", "--faithfulness", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["predicted"] in ("dog", "cat", "car") and data["bank"] == "definitions"
    assert data["visual_concepts"] and all(c["texts"] for c in data["visual_concepts"])
    assert {"mi", "auc", "mi_curve", "mutual_concepts", "language_concepts", "faithfulness"} <= set(data)
    assert len(data["language_concepts"]) == 50 and "wrote" in r.stderr
    assert data["settings"]["initial_topk"] == 500 and data["settings"]["foreground_threshold"] is None
    assert data["settings"]["relevance_offset"] == 0.02 and data["auc_mode"] == "single"
    assert Image.open(out).size[0] >= 480
    con = duckdb.connect(str(tiny_db_copy), read_only=True)
    try:
        n_mutual = con.execute("SELECT count(*) FROM mutual_concepts WHERE predicted = ?", [data["predicted"]]).fetchone()[0]
        synsets = con.execute("SELECT count(*) FROM mutual_concepts WHERE synset IS NOT NULL").fetchone()[0]
        n_visual = con.execute("SELECT count(*) FROM mutual_visual_concepts").fetchone()[0]
    finally:
        con.close()
    assert n_mutual == len(data["mutual_concepts"]) == synsets and n_visual == len(data["visual_concepts"])
    doc = (Path(__file__).resolve().parents[1] / "docs" / "mutual.md").read_text(encoding="utf-8")
    example = doc.split("```sql\n", 1)[1].split("```", 1)[0]           # the SQL example in docs/mutual.md
    sql = run_cli("-q", "--db", tiny_db_copy, "sql", "--json", "--",
                  example.replace("'cat'", f"'{data['predicted']}'"))
    assert sql.exit_code == 0, sql.stderr
    assert sum(row["images"] for row in json.loads(sql.stdout)) == n_mutual
    table = run_cli("-q", "--db", tiny_db_copy, "mutual", picture, "--labels", "dog,cat", "--decomposition", "kmeans")
    assert table.exit_code == 0, table.stderr
    assert "predicted" in table.stdout and "vision" in table.stdout


def test_descriptor_bank_is_embedded_once(run_cli, tiny_db_copy, picture, tmp_path):
    desc = tmp_path / "descriptors.json"
    desc.write_text(json.dumps({"dog": ["a long snout", "four legs"], "cat": ["whiskers", "four legs"]}))
    for _ in range(2):
        r = run_cli("-q", "--db", tiny_db_copy, "mutual", picture, "--labels-file", desc, "--descriptors", desc,
                    "--json", "--language-topk", "2")
        assert r.exit_code == 0, r.stderr
        data = json.loads(r.stdout)
        assert data["bank"] == "descriptors" and data["labels"] == ["dog", "cat"]
    con = duckdb.connect(str(tiny_db_copy), read_only=True)
    try:
        assert con.execute("SELECT count(*), sum(n_entries) FROM mutual_banks").fetchone() == (1, 3)
        assert con.execute("SELECT classes FROM mutual_bank_entries WHERE text = 'four legs'").fetchone()[0] == ["dog", "cat"]
    finally:
        con.close()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dog": "a snout"}))
    r = run_cli("-q", "--db", tiny_db_copy, "mutual", picture, "--labels", "dog,cat", "--descriptors", bad)
    assert r.exit_code == 2 and "list of descriptor strings" in r.stderr


def test_mutual_cli_method_flags_and_what_it_says(run_cli, tiny_db, picture, tmp_path):
    r = run_cli("-q", "--db", tiny_db, "mutual", picture, "--labels", "dog,cat", "--json", "--initial-topk", "40",
                "--foreground-threshold", "0.5", "--relevance-offset", "off", "--auc", "pca+kmeans", "--concepts", "32")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["settings"]["initial_topk"] == 40 and data["settings"]["foreground_threshold"] == 0.5
    assert data["settings"]["relevance_offset"] is None and data["auc_mode"] == "pca+kmeans"
    assert set(data["auc_curves"]) == {"pca", "kmeans"}
    assert f"asked for 32 visual concepts, found {len(data['visual_concepts'])}" in r.stderr
    desc = tmp_path / "few.json"
    desc.write_text(json.dumps({"dog": ["a long snout", "four legs"], "cat": ["whiskers"]}))
    few = run_cli("-q", "--db", tiny_db, "mutual", picture, "--labels", "dog,cat", "--descriptors", desc)
    assert few.exit_code == 0, few.stderr
    assert "language side takes 3 of the bank's 3 texts" in few.stderr
    missing = run_cli("-q", "--db", tiny_db, "mutual", "nothere.jpg", "--labels", "dog,cat")
    assert missing.exit_code == 2 and "nothere.jpg: the file does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    folder = run_cli("-q", "--db", tiny_db, "mutual", str(tmp_path), "--labels", "dog,cat")
    assert folder.exit_code == 2 and "is a folder" in folder.stderr
    for flag, value in (("--foreground-threshold", "1.5"), ("--foreground-threshold", "half"),
                        ("--relevance-offset", "-1"), ("--auc", "both")):
        bad = run_cli("-q", "--db", tiny_db, "mutual", picture, "--labels", "dog,cat", flag, value)
        assert bad.exit_code == 2 and flag in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_eval_mutual_cli(run_cli, tiny_db, tmp_path):
    root = tmp_path / "data"
    for i, (label, rgb) in enumerate((("red thing", (210, 35, 30)), ("green thing", (30, 200, 40)))):
        (root / label.replace(" ", "_")).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(scene(40, 40, (8, 8, 30, 30), 10 * i + j, object_rgb=rgb)).save(root / label.replace(" ", "_") / f"{j}.png")
    (root / "unrelated").mkdir()
    r = run_cli("-q", "--db", tiny_db, "eval", "mutual", root, "--labels", "red thing,green thing", "--json",
                "--concepts", "3")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["n_images"] == data["n_labelled"] == 4 and data["ignored_folders"] == ["unrelated"]
    for key in ("zero_shot_accuracy", "mi", "auc", "deletion", "insertion", "acc_drop", "acc_inc"):
        assert data[key] is not None
    assert data["auc"] == pytest.approx(np.mean(data["mi_curve"]))
    text = run_cli("-q", "--db", tiny_db, "eval", "mutual", root, "--labels", "red thing,green thing", "--no-faithfulness",
                   "--together", "--decomposition", "kmeans", "--auc", "pca+kmeans", "--relevance-offset", "off",
                   "--foreground-threshold", "0.5", "--initial-topk", "50")
    assert text.exit_code == 0, text.stderr
    assert "AUC (MI dynamics)" in text.stdout and "Deletion" not in text.stdout


def test_schema_008_upgrades_a_database_built_before_it(run_cli, tmp_path, small_vocab_file, tiny_spec, picture,
                                                        monkeypatch):
    from convis_db.init_db import initialise
    from convis_db.store import migrations

    shipped = migrations.available_migrations
    monkeypatch.setattr(migrations, "available_migrations", lambda folder=None: [m for m in shipped(folder) if m.version < 8])
    db = tmp_path / "old.duckdb"
    initialise(db, str(small_vocab_file), tiny_spec, torch.device("cpu"))
    monkeypatch.setattr(migrations, "available_migrations", shipped)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert 8 not in migrations.applied_versions(con)
        n_synsets = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
    finally:
        con.close()
    # read-only explanations work on the old file; storing one upgrades it
    assert run_cli("-q", "--db", db, "mutual", picture, "--labels", "dog,cat").exit_code == 0
    r = run_cli("-q", "--db", db, "mutual", picture, "--labels", "dog,cat", "--store", "--json")
    assert r.exit_code == 0, r.stderr
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert 8 in migrations.applied_versions(con)
        assert con.execute("SELECT count(*) FROM synsets").fetchone()[0] == n_synsets
        assert con.execute("SELECT count(*) FROM mutual_explanations").fetchone()[0] == 1
    finally:
        con.close()
    assert run_cli("-q", "--db", db, "concepts", "dog").exit_code == 0


def test_notebook_api_and_stored_images(run_cli, tiny_db_copy, picture):
    from convis_db.mutual import explain_image

    exp = explain_image(str(picture), ["dog", "cat"], db=tiny_db_copy, device="cpu")
    assert exp.predicted in ("dog", "cat") and exp.visual_concepts and exp.bank_kind == "definitions"
    assert exp.visual_concepts[0].texts[0].synset_id is not None
    again = explain_image(np.asarray(Image.open(picture).convert("RGB")), ["dog", "cat"], db=tiny_db_copy, device="cpu")
    assert [t.entry for t in again.vision_concepts] == [t.entry for t in exp.vision_concepts]
    # an ingested image is named by its id, and a stored explanation is linked to it
    ingest = run_cli("-q", "--db", tiny_db_copy, "ingest", picture, "--max-pixels", "6000", "--stride", "16",
                     "--small", "32", "--large", "48", "--top-k", "5", "--json")
    assert ingest.exit_code == 0, ingest.stderr
    r = run_cli("-q", "--db", tiny_db_copy, "mutual", "1", "--labels", "dog,cat", "--store", "--json")
    assert r.exit_code == 0, r.stderr
    con = duckdb.connect(str(tiny_db_copy), read_only=True)
    try:
        assert con.execute("SELECT image_id FROM mutual_explanations").fetchall() == [(1,)]
    finally:
        con.close()
    missing = run_cli("-q", "--db", tiny_db_copy, "mutual", "nope.png", "--labels", "dog,cat")
    assert missing.exit_code == 2 and "no stored image" in missing.stderr
    no_labels = run_cli("-q", "--db", tiny_db_copy, "mutual", picture)
    assert no_labels.exit_code == 2 and "--labels" in no_labels.stderr

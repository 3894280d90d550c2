"""Grad-ECLIP's textual explanations (explainers/grad_eclip_text.py) against the equations, on tiny random
CLIPs: relevance per token equal to a naive implementation, a constructed token on top, weights summing
to 1, words formed from BPE tokens, the all-zero guard, `Database.explain_text` and `explain-text`."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convis_db.errors import ModelError, UsageError
from convis_db.explainers import grad_eclip_text as gt
from convis_db.models.clip import LoadedModel, load_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_spec):
    """The tiny checkpoint: a one-layer text tower with two heads, embed_dim 16."""
    return load_model(tiny_spec, CPU)


@pytest.fixture(scope="module")
def deep(tiny_config, tmp_path_factory):
    """A three-layer, four-head text tower (width 32), so that several recomputed blocks and heads count."""
    import open_clip

    cfg = json.loads(tiny_config.read_text())
    cfg["text_cfg"].update(layers=3, heads=4)
    path = tmp_path_factory.mktemp("deep") / "tiny-clip-deep.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = open_clip.create_model("tiny-clip-deep", pretrained=None, device="cpu").eval()
    return LoadedModel(spec=None, model=model, tokenizer=open_clip.get_tokenizer("tiny-clip-deep"), device=CPU,
                       image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), embed_dim=16)


def _unit(seed: int, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def naive_relevance(model: torch.nn.Module, ids: torch.Tensor, image: np.ndarray, n_blocks: int):
    """Straight from the equations, in float64, over the whole 77-token context with an explicit causal
    mask and one softmax per head: r_j = sum over the last n blocks of lambda_j * sum_c w_c v_j^c."""
    m = copy.deepcopy(model).double()
    ids = ids.reshape(1, -1)
    length = ids.shape[1]
    eot = int(ids.argmax())
    mask = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)
    x = m.token_embedding(ids) + m.positional_embedding
    blocks = list(m.transformer.resblocks)
    kept = []
    for index, block in enumerate(blocks):
        assert isinstance(block.ls_1, torch.nn.Identity)
        d = x.shape[-1]
        heads = block.attn.num_heads
        hd = d // heads
        h = block.ln_1(x)[0]
        w_in, b_in = block.attn.in_proj_weight, block.attn.in_proj_bias
        q, k, v = (h @ w_in[i * d:(i + 1) * d].T + b_in[i * d:(i + 1) * d] for i in range(3))
        per_head = []
        for head in range(heads):
            cols = slice(head * hd, (head + 1) * hd)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(hd) + mask
            per_head.append(torch.softmax(scores, dim=-1) @ v[:, cols])
        o = torch.cat(per_head, dim=-1)
        x = x + (o @ block.attn.out_proj.weight.T + block.attn.out_proj.bias)[None]
        x = x + block.mlp(block.ln_2(x))
        if index >= len(blocks) - n_blocks:
            kept.append((o, q.detach(), k.detach(), v.detach()))
    text = m.ln_final(x)[0, eot] @ m.text_projection
    img = torch.tensor(image, dtype=torch.float64)
    similarity = (text @ img) / (text.norm() * img.norm())
    grads = torch.autograd.grad(similarity, [o for o, *_ in kept])
    relevance = np.zeros(eot + 1)
    for grad, (_, q, k, v) in zip(grads, kept):
        w = grad[eot]
        naive_relevance.last_w = w.detach().numpy()
        cos = [float(q[eot] @ k[j] / (q[eot].norm() * k[j].norm())) for j in range(eot + 1)]
        lo, hi = min(cos), max(cos)
        for j in range(eot + 1):
            relevance[j] += (cos[j] - lo) / (hi - lo) * float(v[j] @ w)
    return relevance, float(similarity.detach())


@pytest.mark.parametrize("which, blocks", [("tiny", 8), ("deep", 1), ("deep", 2), ("deep", 8)])
def test_relevance_equals_the_naive_equations(tiny, deep, which, blocks):
    loaded = tiny if which == "tiny" else deep
    for seed, text in enumerate(["a dog in a car", "single cowboy guiding a line of horses through the desert"]):
        image = _unit(seed)
        ids = loaded.tokenizer([text])[0]
        got = gt.token_relevance(loaded, image, ids, blocks)
        n = min(blocks, len(loaded.model.transformer.resblocks))
        expected, similarity = naive_relevance(loaded.model, ids, image, n)
        assert got.blocks == n and got.ids == ids[: int(ids.argmax()) + 1].tolist()
        assert got.similarity == pytest.approx(similarity, abs=1e-5)
        np.testing.assert_allclose(got.relevance, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
        weights = gt.normalised_weights(got.relevance)
        naive_w = np.maximum(expected[1:-1], 0) / np.maximum(expected[1:-1], 0).sum()
        np.testing.assert_allclose(weights, naive_w, rtol=1e-4, atol=1e-6)


def test_similarity_is_the_models_own_cosine(deep):
    image = _unit(3)
    exp = gt.explain_text(deep, image, "a red car on a road", blocks=2)
    with torch.no_grad():
        text = F.normalize(deep.model.encode_text(deep.tokenizer(["a red car on a road"])), dim=-1)[0]
    assert exp.similarity == pytest.approx(float(text @ torch.from_numpy(image)), abs=1e-5)
    assert all(p.grad is None for p in deep.model.parameters())
    assert not any(b._forward_pre_hooks for b in deep.model.transformer.resblocks)


def _linear_attention_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The tiny model with its text block made transparent: no MLP, plain LayerNorm, keys and values the
    identity, every query the bias vector (set per test), and an output projection of 0.001 I, so that the
    text embedding (and w) barely depends on what the attention mixes in."""
    m = copy.deepcopy(model)
    block = m.transformer.resblocks[-1]
    d = m.token_embedding.weight.shape[1]
    with torch.no_grad():
        for p in block.mlp.parameters():
            p.zero_()
        block.ln_1.weight.fill_(1.0)
        block.ln_1.bias.zero_()
        w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
        w.zero_(), b.zero_()
        w[d:2 * d] = torch.eye(d)
        w[2 * d:] = torch.eye(d)
        block.attn.out_proj.weight.copy_(torch.eye(d) * 1e-3)
        block.attn.out_proj.bias.zero_()
    return m


@pytest.mark.parametrize("target", [0, 1, 2, 3])
def test_a_token_built_to_match_the_image_gets_the_top_weight(tiny, target):
    """A token whose embedding is constructed to match the image: in a transparent block (keys and values
    are the LayerNorm'd token embeddings), the target token's normalised embedding d is the direction of
    w = dS/do for the image, and every query is d, so lambda and v.w both peak at the target. The method
    must put it first, by a clear margin; the image itself is random."""
    words = ["tiger", "bicycle", "pizza", "tree"]
    text = " ".join(words)
    ids = tiny.tokenizer([text])[0]
    assert len(tiny.tokenizer.encode(text)) == 4           # one BPE token per word
    position = 1 + target
    model = _linear_attention_copy(tiny.model)
    loaded = copy.copy(tiny)
    loaded.model = model
    block = model.transformer.resblocks[-1]
    d_model = model.token_embedding.weight.shape[1]
    image = _unit(11 + target)
    direction = torch.randn(d_model, generator=torch.Generator().manual_seed(target))
    for _ in range(3):      # w depends (very little) on d through the attention: settle it
        direction = direction - direction.mean()
        direction = direction / direction.norm()
        with torch.no_grad():
            model.token_embedding.weight[int(ids[position])] = direction * 4 - model.positional_embedding[position]
            block.attn.in_proj_bias[:d_model] = direction * 4
        naive_relevance(model, ids, image, 1)
        direction = torch.from_numpy(naive_relevance.last_w).float()
    exp = gt.explain_text(loaded, image, text, blocks=1)
    assert [w.word for w in exp.words] == words
    weights = [w.weight for w in exp.words]
    assert int(np.argmax(weights)) == target and weights[target] > 2 * sorted(weights)[-2]
    assert sum(weights) == pytest.approx(1.0, abs=1e-9)


def test_tokens_merge_into_words_and_weights_sum_to_one(tiny):
    exp = gt.explain_text(tiny, _unit(5), "A dog in a car, waiting for traffic-lights!")
    assert [w.word for w in exp.words] == ["a", "dog", "in", "a", "car", ",", "waiting", "for", "traffic", "-",
                                           "lights", "!"]
    assert sum(t.weight for t in exp.tokens) == pytest.approx(1.0, abs=1e-9)
    assert all(t.weight >= 0 for t in exp.tokens)
    for i, word in enumerate(exp.words):
        assert word.weight == pytest.approx(sum(t.weight for t in exp.tokens if t.word == i), abs=1e-12)
    rare = gt.explain_text(tiny, _unit(5), "an aardwolfish zebra")   # a word of several BPE tokens
    assert len(rare.tokens) > len(rare.words) and [w.word for w in rare.words] == ["an", "aardwolfish", "zebra"]
    assert "".join(t.token for t in rare.tokens if t.word == 1) == "aardwolfish"
    data = exp.as_dict()
    assert set(data) >= {"words", "tokens", "similarity"} and len(repr(exp)) < 300


def test_all_zero_relevance_is_guarded(tiny, monkeypatch):
    assert gt.normalised_weights(np.array([5.0, -1.0, -2.0, 7.0])).tolist() == [0.0, 0.0]
    ids = tiny.tokenizer(["a dog"])[0]
    monkeypatch.setattr(gt, "token_relevance", lambda *a, **k: gt.TokenRelevance(
        ids=ids[:4].tolist(), relevance=np.array([1.0, -0.5, -0.25, 1.0]), similarity=0.1, blocks=1))
    exp = gt.explain_text(tiny, _unit(1), "a dog")
    assert exp.all_zero and [w.weight for w in exp.words] == [0.0, 0.0]
    assert any("every weight is 0" in n for n in exp.notes)


def test_long_text_is_cut_and_said(tiny):
    exp = gt.explain_text(tiny, _unit(2), " ".join(["dog"] * 100))
    assert exp.truncated and len(exp.tokens) == 75 and "cut" in exp.notes[0]


def test_refusals(tiny, tiny_model_factory):
    with pytest.raises(UsageError, match="empty"):
        gt.explain_text(tiny, _unit(0), "   ")
    with pytest.raises(UsageError, match="16"):
        gt.explain_text(tiny, np.ones(5, np.float32), "a dog")
    with pytest.raises(UsageError, match="blocks"):
        gt.explain_text(tiny, _unit(0), "a dog", blocks=0)
    broken = copy.deepcopy(tiny)
    broken.model.text_pool_type = "first"
    with pytest.raises(ModelError, match="end-of-text"):
        gt.explain_text(broken, _unit(0), "a dog")


# --------------------------------------------------------------------------- the database and the CLI
@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def test_database_explain_text_file_pixels_and_stored_id(tiny_db_copy, photo, tiny):
    import convis_db
    from convis_db.engine.whole_image import image_embedding

    with convis_db.open(tiny_db_copy, device="cpu") as db:
        exp = db.explain_text(photo, "a dog in a car")
        pixels = np.asarray(Image.open(photo).convert("RGB"))
        direct = gt.explain_text(tiny, image_embedding(tiny, pixels), "a dog in a car")
        assert [w.weight for w in exp.words] == pytest.approx([w.weight for w in direct.words], abs=1e-6)
        assert exp.image_path.endswith("photo.png")
        assert db.explain_text(pixels, "a dog in a car").similarity == pytest.approx(exp.similarity, abs=1e-6)
        before = db.sql("SELECT count(*) FROM images").fetchall()[0][0]
    with convis_db.open(tiny_db_copy, device="cpu", write=True) as db:
        db.ingest(photo)
        stored = db.explain_text(1, "a dog in a car")
        assert stored.similarity == pytest.approx(exp.similarity, abs=1e-6)
    with convis_db.open(tiny_db_copy) as db:
        assert before == 0 and db.sql("SELECT count(*) FROM images").fetchall()[0][0] == 1   # the ingest only


def test_a_concepts_definition_explains_why_it_matched(tiny_db, photo, tiny):
    """--concept explains the words of the synset's definition: the text d_s is the embedding of, so the
    explained cosine is the image's cosine with the stored definition embedding."""
    import convis_db
    from convis_db.engine.whole_image import image_embedding
    from convis_db.store.model_store import load_definition_embeddings

    with convis_db.open(tiny_db, device="cpu") as db:
        exp = db.explain_text(photo, concept="dog.n.01")
        sid, definition = db.sql("SELECT synset_id, definition FROM synsets WHERE name = 'dog.n.01'").fetchall()[0]
        d_s = load_definition_embeddings(db.con, db.profile.model_id)[sid]
        for kwargs, message in ((dict(text="a dog", concept="dog.n.01"), "not both"), (dict(), "not both"),
                                (dict(text=3), "must be a string")):
            with pytest.raises(UsageError, match=message):
                db.explain_text(photo, **kwargs)
    assert exp.synset == "dog.n.01" and exp.text == definition and "domesticated" in exp.text
    x = image_embedding(tiny, np.asarray(Image.open(photo).convert("RGB")))
    assert exp.similarity == pytest.approx(float(x @ d_s / np.linalg.norm(d_s)), abs=1e-4)
    assert sum(w.weight for w in exp.words) == pytest.approx(1.0)


def test_cli_explain_text(run_cli, tiny_db, photo):
    table = run_cli("-q", "--db", tiny_db, "explain-text", photo, "a dog in a car")
    assert table.exit_code == 0, table.stderr
    assert "cosine" in table.stdout and "word" in table.stdout and "\ncar " in table.stdout
    result = run_cli("-q", "--db", tiny_db, "explain-text", photo, "a dog in a car", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [w["word"] for w in data["words"]] == ["a", "dog", "in", "a", "car"]
    assert set(data["words"][0]) == {"word", "weight"} and len(data["tokens"]) == 5
    assert sum(w["weight"] for w in data["words"]) == pytest.approx(1.0) and -1 <= data["similarity"] <= 1
    tokens = run_cli("-q", "--db", tiny_db, "explain-text", photo, "aardwolfish", "--tokens", "--csv")
    assert tokens.exit_code == 0 and tokens.stdout.startswith("position,token,word,weight")
    missing = run_cli("-q", "--db", tiny_db, "explain-text", "nothere.jpg", "a dog")
    assert missing.exit_code == 2 and "nothere.jpg" in missing.stderr and "Traceback" not in missing.stderr
    empty = run_cli("-q", "--db", tiny_db, "explain-text", photo, " ")
    assert empty.exit_code == 2 and "empty" in empty.stderr
    concept = run_cli("-q", "--db", tiny_db, "explain-text", photo, "--concept", "dog.n.01", "--json")
    assert concept.exit_code == 0, concept.stderr
    data = json.loads(concept.stdout)
    assert data["synset"] == "dog.n.01" and "domesticated" in data["text"] and data["words"]
    neither = run_cli("-q", "--db", tiny_db, "explain-text", photo)
    assert neither.exit_code == 2 and "not both" in neither.stderr
    unknown = run_cli("-q", "--db", tiny_db, "explain-text", photo, "--concept", "nosuch.n.01")
    assert unknown.exit_code == 2 and "nosuch.n.01" in unknown.stderr

"""Grad-ECLIP on the tiny random ViT: shapes, ranges, the recomputed last block, and `map --method grad-eclip`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convis_db.engine.windows import normalise
from convis_db.errors import ModelError, UsageError
from convis_db.explainers import grad_eclip as ge
from convis_db.models.clip import load_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_spec):
    """The tiny checkpoint: ViT with 32-pixel inputs, 8-pixel patches, one layer, embed_dim 16."""
    return load_model(tiny_spec, CPU)


def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _text(tiny, text: str = "a photo of a dog") -> np.ndarray:
    return ge.text_embedding(tiny, text)


@pytest.mark.parametrize("h, w", [(32, 32), (45, 70), (100, 37), (7, 9)])
def test_map_has_image_size_and_unit_range(tiny, h, w):
    result = ge.grad_eclip(tiny, _pixels(h, w), _text(tiny))
    assert result.saliency.shape == (h, w) and result.saliency.dtype == np.float32
    assert np.isfinite(result.saliency).all()
    assert result.saliency.min() >= 0.0 and result.saliency.max() <= 1.0
    assert (result.patch_map >= 0).all()
    assert result.patch_map.shape == (result.input_height // 8, result.input_width // 8)
    assert (result.width, result.height) == (w, h)
    assert -1.0 <= result.cosine <= 1.0


def test_input_size_rounds_to_patches_and_caps_the_short_side():
    assert ge.input_size(70, 45, 8, 640) == (72, 48)
    assert ge.input_size(7, 9, 8, 640) == (8, 8)
    assert ge.input_size(1280, 960, 16, 640) == (848, 640)
    assert ge.input_size(1280, 960, 16, None) == (1280, 960)


def test_cosine_is_the_models_own_at_native_size(tiny):
    """At the model's input size nothing is interpolated: the recomputed last block and head must give
    exactly open_clip's image embedding, so the gradient is that of the model's real cosine."""
    pixels = _pixels(32, 32, seed=3)
    text = _text(tiny)
    result = ge.grad_eclip(tiny, pixels, text)
    img = normalise(torch.from_numpy(pixels).permute(2, 0, 1), tiny.mean, tiny.std)[None]
    with torch.no_grad():
        expected = float(F.normalize(tiny.model.encode_image(img), dim=-1)[0] @ torch.from_numpy(text))
    assert result.cosine == pytest.approx(expected, abs=1e-5)
    # The token embedding (with the positional embedding at its native grid) is open_clip's own.
    visual = tiny.model.visual
    with torch.no_grad():
        torch.testing.assert_close(ge._tokens(visual, img), visual._embeds(img))


def test_gradient_path_and_hooks(tiny):
    block = tiny.model.visual.transformer.resblocks[-1]
    texts = ["a photo of a dog", "a cat", "a red car", "an apple on a table"]
    maps = [ge.grad_eclip(tiny, _pixels(48, 64, seed=i), _text(tiny, t)) for i, t in enumerate(texts)]
    assert any(m.patch_map.max() > 0 for m in maps)          # not all zero for a random model
    assert len({m.patch_map.tobytes() for m in maps}) == len(maps)
    assert not block._forward_hooks and not block._forward_pre_hooks
    rectified = ge.grad_eclip(tiny, _pixels(48, 64), _text(tiny), relu_weights=True)
    assert np.isfinite(rectified.saliency).all() and (rectified.patch_map >= 0).all()
    # The parameters get no .grad: only the attention output is differentiated.
    assert all(p.grad is None for p in tiny.model.parameters())


def test_refuses_a_last_block_it_cannot_reproduce(tiny):
    block = tiny.model.visual.transformer.resblocks[-1]
    handle = block.register_forward_hook(lambda module, args, output: output + 1.0)   # a block that is not standard
    try:
        with pytest.raises(ModelError, match="could not reproduce"):
            ge.grad_eclip(tiny, _pixels(32, 32), _text(tiny))
    finally:
        handle.remove()


def test_works_under_inference_mode(tiny):
    with torch.inference_mode():
        result = ge.grad_eclip(tiny, _pixels(40, 40), _text(tiny))
    assert np.isfinite(result.saliency).all()


def test_refuses_non_vit_and_bad_text(tiny):
    class NotAViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Identity()

    fake = type(tiny)(tiny.spec, NotAViT(), tiny.tokenizer, CPU, 32, tiny.mean, tiny.std, 16)
    with pytest.raises(ModelError, match="Vision Transformer"):
        ge.grad_eclip(fake, _pixels(32, 32), _text(tiny))
    assert ge.supports(tiny.model) and not ge.supports(fake.model)
    with pytest.raises(UsageError, match="embeds into 16"):
        ge.grad_eclip(tiny, _pixels(32, 32), np.ones(5, np.float32))
    with pytest.raises(UsageError, match="empty"):
        ge.text_embedding(tiny, "  ")


def test_service_uses_definitions_or_text(tiny_db):
    from convis_db.store.db import connect
    from convis_db.store.model_store import load_definition_embeddings, pick_model

    con = connect(tiny_db)
    try:
        service = ge.GradEclipService(con, CPU)
        text, synset, emb = service.target("dog.n.01", None)
        assert synset == "dog.n.01" and "domesticated" in text
        np.testing.assert_array_equal(emb, load_definition_embeddings(con, pick_model(con, None))[
            con.execute("SELECT synset_id FROM synsets WHERE name = 'dog.n.01'").fetchone()[0]])
        assert service.target(None, "a dog")[0] == "a dog"
        with pytest.raises(UsageError, match="not both"):
            service.target("dog.n.01", "a dog")
        with pytest.raises(UsageError, match="needs a text"):
            service.target(None, None)
    finally:
        con.close()


# --------------------------------------------------------------------------- map --method grad-eclip
@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(_pixels(50, 70, seed=9)).save(path)
    return path


def test_cli_map_grad_eclip_png_and_npy(run_cli, tiny_db, photo, tmp_path):
    out, npy = tmp_path / "out" / "ge.png", tmp_path / "ge.npy"
    result = run_cli("-q", "--db", tiny_db, "map", photo, "--method", "grad-eclip", "--text", "a photo of a dog",
                     "-o", out, "--npy", npy, "--style", "heatmap", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["method"] == "grad-eclip" and info["text"] == "a photo of a dog" and info["synset"] is None
    assert info["patch_grid"] == [info["input_height"] // 8, info["input_width"] // 8]
    with Image.open(out) as png:
        assert png.size == (70, 50) and png.mode == "RGB"
    saved = np.load(npy)
    assert saved.shape == (50, 70) and np.isfinite(saved).all() and saved.min() >= 0

    by_concept = run_cli("-q", "--db", tiny_db, "map", photo, "dog.n.01", "--method", "grad-eclip", "-o",
                         tmp_path / "dog.png")
    assert by_concept.exit_code == 0, by_concept.stderr
    assert by_concept.stdout.startswith("grad-eclip of 'a member of the genus Canis")


@pytest.mark.parametrize("args, message", [
    (["--method", "grad-eclip"], "needs a text"),
    (["dog.n.01", "--method", "grad-eclip", "--text", "a dog"], "not both"),
    (["dog.n.01", "--method", "grad-eclip", "--only-self"], "--only-self"),
    (["--text", "a dog"], "CONCEPT"),
    (["dog.n.01", "--text", "a dog"], "--method grad-eclip"),
])
def test_cli_map_method_errors(run_cli, tiny_db, photo, tmp_path, args, message):
    result = run_cli("-q", "--db", tiny_db, "map", photo, *args, "-o", tmp_path / "x.png")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr

"""CLIP models: resolving --model/--pretrained, loading weights, definition embeddings, devices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import open_clip
import pytest
import torch

from convis_db.errors import DatabaseError, ModelError, UsageError
from convis_db.init_db import initialise
from convis_db.models.clip import load_model
from convis_db.models.device import resolve_device
from convis_db.models.registry import RANDOM_SEED, file_sha256, resolve_model
from convis_db.store.model_store import list_models, load_definition_embeddings, model_row, pick_model

CPU = torch.device("cpu")
TINY_MODEL_NAME = "tiny-clip"  # open_clip names a config file's model after its stem


def _reference_text_embeddings(model: torch.nn.Module, texts: list[str]) -> np.ndarray:
    """open_clip's own encode_text on the texts, L2-normalised: what init must have stored."""
    tokenizer = open_clip.get_tokenizer(TINY_MODEL_NAME)
    with torch.no_grad():
        feats = model.encode_text(tokenizer(texts))
    return torch.nn.functional.normalize(feats.float(), dim=-1).numpy()


def _stored(db: Path) -> tuple[list[str], np.ndarray, dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        definitions = [r[0] for r in con.execute("SELECT definition FROM synsets ORDER BY synset_id").fetchall()]
        mid = pick_model(con, None)
        return definitions, load_definition_embeddings(con, mid), model_row(con, mid)
    finally:
        con.close()


# --------------------------------------------------------------------------- definition embeddings


def test_stored_embeddings_equal_open_clip_encode_text(tiny_db, tiny_config, tiny_checkpoint, tiny_model_factory):
    definitions, stored, row = _stored(tiny_db)
    assert stored.shape == (len(definitions), 16)
    assert stored.dtype == np.float32

    open_clip.add_model_config(tiny_config)
    model = open_clip.create_model(TINY_MODEL_NAME, pretrained=None, device="cpu")
    model.load_state_dict(torch.load(tiny_checkpoint, map_location="cpu"))
    model.eval()
    expected = _reference_text_embeddings(model, definitions)
    np.testing.assert_allclose(stored, expected, atol=1e-5, rtol=0)

    # Unit length, and not degenerate: different definitions get different vectors.
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in stored}) == len(definitions)

    # Other weights give other embeddings: the comparison above can tell checkpoints apart.
    other = _reference_text_embeddings(tiny_model_factory(99), definitions)
    assert np.abs(other - stored).max() > 1e-2


def test_model_row_describes_the_checkpoint(tiny_db, tiny_checkpoint, tiny_config):
    _, _, row = _stored(tiny_db)
    assert row["name"] == TINY_MODEL_NAME
    assert row["pretrained"] == str(tiny_checkpoint.resolve())
    assert row["is_random"] is False
    assert row["weights_sha256"] == file_sha256(tiny_checkpoint)
    assert row["embed_dim"] == 16 and row["image_size"] == 32
    assert json.loads(row["config_json"]) == json.loads(tiny_config.read_text())
    np.testing.assert_allclose(row["image_mean"], open_clip.OPENAI_DATASET_MEAN, atol=1e-6)
    np.testing.assert_allclose(row["image_std"], open_clip.OPENAI_DATASET_STD, atol=1e-6)


def test_encode_text_batching_does_not_change_results(tiny_spec):
    loaded = load_model(tiny_spec, CPU)
    texts = [f"a photo of thing number {i}" for i in range(23)]
    whole = loaded.encode_text(texts, batch_size=256)
    ticks: list[int] = []
    batched = loaded.encode_text(texts, batch_size=5, progress=ticks.append)
    np.testing.assert_allclose(whole, batched, atol=1e-5)
    assert ticks == [5, 5, 5, 5, 3]


def test_checkpoint_of_another_architecture_is_a_model_error(tmp_path, tiny_config):
    cfg = json.loads(tiny_config.read_text())
    cfg["embed_dim"] = 8
    other_cfg = tmp_path / "tiny-other.json"
    other_cfg.write_text(json.dumps(cfg))
    open_clip.add_model_config(other_cfg)
    ckpt = tmp_path / "other.pt"
    torch.save(open_clip.create_model("tiny-other", pretrained=None).state_dict(), ckpt)
    spec = resolve_model(str(tiny_config), str(ckpt))
    with pytest.raises(ModelError, match="could not load checkpoint"):
        load_model(spec, CPU)


def test_changed_checkpoint_is_refused(tmp_path, tiny_config, tiny_checkpoint, small_vocab_file, tiny_model_factory):
    ckpt = tmp_path / "ckpt.pt"
    shutil.copyfile(tiny_checkpoint, ckpt)
    db = tmp_path / "c.duckdb"
    initialise(db, str(small_vocab_file), resolve_model(str(tiny_config), str(ckpt)), CPU)
    torch.save(tiny_model_factory(7).state_dict(), ckpt)
    with pytest.raises(DatabaseError, match="sha256"):
        initialise(db, str(small_vocab_file), resolve_model(str(tiny_config), str(ckpt)), CPU)


# --------------------------------------------------------------------------- resolve_model errors


def test_resolve_known_model_and_tag():
    spec = resolve_model("ViT-B-32", "openai")
    assert (spec.name, spec.pretrained, spec.config_path, spec.weights_sha256) == ("ViT-B-32", "openai", None, None)
    assert json.loads(spec.config_json)["embed_dim"] == 512
    assert not spec.is_random and not spec.is_local_checkpoint


def test_unknown_model_lists_nearest():
    with pytest.raises(ModelError) as info:
        resolve_model("ViT-B-3", "openai")
    message = str(info.value)
    assert "did you mean" in message
    assert "ViT-B-32" in message


def test_close_tag_is_suggested():
    with pytest.raises(ModelError) as info:
        resolve_model("ViT-B-32", "opneai")
    assert "did you mean: openai" in str(info.value)


@pytest.mark.parametrize("model", ["ViT-B-32", "RN50"])
def test_unknown_tag_lists_valid_tags(model):
    tags = open_clip.list_pretrained_tags_by_model(model)
    with pytest.raises(ModelError) as info:
        resolve_model(model, "qqqq")
    message = str(info.value)
    assert "qqqq" in message
    for tag in tags:
        assert tag in message, f"valid tag {tag} missing from: {message}"


def test_missing_checkpoint_path():
    with pytest.raises(ModelError, match="no such checkpoint file"):
        resolve_model("ViT-B-32", "/nonexistent/dir/weights.pt")
    with pytest.raises(ModelError, match="no such checkpoint file"):
        resolve_model("ViT-B-32", "weights.safetensors")


def test_config_without_tags_needs_checkpoint_or_none(tiny_config):
    with pytest.raises(ModelError, match="none"):
        resolve_model(str(tiny_config), "openai")


def test_non_config_json_is_refused(tmp_path):
    path = tmp_path / "notaconfig.json"
    path.write_text(json.dumps({"hello": "world", "embed_dim": 3}))
    with pytest.raises(ModelError, match="not an open_clip model config"):
        resolve_model(str(path), "none")
    path.write_text(json.dumps([1, 2, 3]))
    with pytest.raises(ModelError, match="not an open_clip model config"):
        resolve_model(str(path), "none")


def test_unreadable_json_is_refused(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    with pytest.raises(ModelError, match="cannot read the config JSON"):
        resolve_model(str(path), "none")


def test_missing_config_file(tmp_path):
    with pytest.raises(ModelError, match="no such config file"):
        resolve_model(str(tmp_path / "absent.json"), "none")


@pytest.mark.parametrize("model, pretrained", [("", "openai"), ("ViT-B-32", ""), ("ViT-B-32", "   ")])
def test_empty_arguments(model, pretrained):
    with pytest.raises(ModelError, match="empty"):
        resolve_model(model, pretrained)


def test_checkpoint_spec_is_absolute_and_hashed(tiny_config, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tiny_checkpoint.parent)
    spec = resolve_model(str(tiny_config), tiny_checkpoint.name)  # relative path
    assert spec.pretrained == str(tiny_checkpoint.resolve())
    assert spec.weights_sha256 == file_sha256(tiny_checkpoint)
    assert spec.name == TINY_MODEL_NAME and spec.config_path == str(tiny_config.resolve())
    assert spec.is_local_checkpoint and not spec.is_random


# --------------------------------------------------------------------------- random weights


def test_random_weights_are_seeded_and_leave_global_rng_alone(tiny_config, tiny_model_factory):
    spec = resolve_model(str(tiny_config), "NONE")
    assert spec.pretrained == "none" and spec.is_random and "MEANINGLESS" in spec.label
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    a = load_model(spec, CPU).model.state_dict()
    b = load_model(spec, CPU).model.state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The documented seed: the same as building the model by hand with RANDOM_SEED.
    by_hand = tiny_model_factory(RANDOM_SEED).state_dict()
    assert all(torch.equal(a[k], by_hand[k]) for k in a)
    # And not the fixture checkpoint's seed.
    other = tiny_model_factory(RANDOM_SEED + 1).state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_random_model_flagged_and_added_beside_checkpoint_model(tiny_db_copy, tiny_config, small_vocab_file):
    db = tiny_db_copy
    spec = resolve_model(str(tiny_config), "none")
    report = initialise(db, str(small_vocab_file), spec, CPU)
    assert report.is_random and not report.built_hierarchy
    assert report.embedded_definitions == report.n_synsets
    con = duckdb.connect(str(db), read_only=True)
    try:
        models = {m["pretrained"]: m for m in list_models(con)}
        assert models["none"]["is_random"] is True
        assert sum(m["is_random"] for m in models.values()) == 1
        assert all(m["n_embeddings"] == report.n_synsets for m in models.values())
        assert con.execute("SELECT is_random FROM models WHERE pretrained = 'none'").fetchone()[0] is True
        assert con.execute("SELECT weights_sha256 FROM models WHERE pretrained = 'none'").fetchone()[0] is None
    finally:
        con.close()


def test_random_embeddings_identical_across_databases(tmp_path, tiny_config, small_vocab_file):
    spec = resolve_model(str(tiny_config), "none")
    embeddings = []
    for name in ("r1.duckdb", "r2.duckdb"):
        initialise(tmp_path / name, str(small_vocab_file), spec, CPU)
        embeddings.append(_stored(tmp_path / name)[1])
    np.testing.assert_array_equal(embeddings[0], embeddings[1])


# --------------------------------------------------------------------------- devices


def test_device_cpu_and_auto_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("") == torch.device("cpu")


@pytest.mark.parametrize("choice", ["cuda", "cuda:0"])
def test_cuda_without_gpu_is_a_usage_error(monkeypatch, choice):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device(choice)


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="auto, cpu, cuda"):
        resolve_device("tpu")


def test_auto_picks_cuda_when_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_encode_on_gpu_matches_cpu(tiny_spec):
    texts = ["a dog", "a domesticated carnivorous mammal", "a motor vehicle with four wheels"]
    cpu = load_model(tiny_spec, CPU).encode_text(texts)
    gpu = load_model(tiny_spec, resolve_device("cuda")).encode_text(texts)
    # bf16 autocast on the GPU: close, not equal.
    np.testing.assert_allclose(cpu, gpu, atol=5e-2)

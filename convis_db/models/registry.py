"""Resolve --model and --pretrained into a ModelSpec, validating names and tags against open_clip.

--model: an open_clip model name (ViT-B-32) or a path to an open_clip-format config JSON.
--pretrained: an open_clip tag (openai), a local checkpoint path, or 'none' (seeded random weights,
meaningless, for smoke runs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from convis_db.errors import ModelError, did_you_mean, nearest

RANDOM_WEIGHTS = "none"
RANDOM_SEED = 0
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model in the database: its name, its weights, and how to build it."""

    name: str                 # open_clip model name (for a JSON config: the file's stem)
    pretrained: str           # tag, absolute checkpoint path, or 'none'
    config_path: str | None   # JSON config file, when --model was a path
    config_json: str          # the config itself, stored for reproducibility
    weights_sha256: str | None  # content hash of a local checkpoint

    @property
    def is_random(self) -> bool:
        return self.pretrained == RANDOM_WEIGHTS

    @property
    def is_local_checkpoint(self) -> bool:
        return self.pretrained not in (RANDOM_WEIGHTS,) and Path(self.pretrained).is_file()

    @property
    def label(self) -> str:
        if self.is_random:
            return f"{self.name} (random weights, seed {RANDOM_SEED}: scores are MEANINGLESS)"
        return f"{self.name} / {self.pretrained}"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _register_config(path: Path) -> tuple[str, str]:
    import open_clip

    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"--model {path}: cannot read the config JSON ({exc}). Pass an open_clip model config file.") from exc
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelError(
            f"--model {path}: not an open_clip model config (needs embed_dim, vision_cfg and text_cfg)."
        )
    open_clip.add_model_config(path)
    return path.stem, json.dumps(cfg, sort_keys=True)


def resolve_model(model: str, pretrained: str) -> ModelSpec:
    """Validate a --model/--pretrained pair; errors list the valid choices or nearest matches."""
    import open_clip

    if not model:
        raise ModelError("--model is empty. Give an open_clip model name such as ViT-B-32, or a config JSON path.")
    model_path = Path(model).expanduser()
    config_path: str | None = None
    if model.endswith(".json") or model_path.is_file():
        if not model_path.is_file():
            raise ModelError(f"--model {model}: no such config file. Check the path.")
        name, config_json = _register_config(model_path)
        config_path = str(model_path.resolve())
    else:
        names = open_clip.list_models()
        if model not in names:
            raise ModelError(did_you_mean(model, names, "open_clip model", "(or pass a path to a model config JSON)."))
        name = model
        config_json = json.dumps(open_clip.get_model_config(model), sort_keys=True)
    pretrained = (pretrained or "").strip()
    if not pretrained:
        raise ModelError("--pretrained is empty. Give an open_clip tag, a checkpoint path, or 'none'.")
    weights_sha = None
    if pretrained.lower() == RANDOM_WEIGHTS:
        pretrained = RANDOM_WEIGHTS
    elif Path(pretrained).expanduser().is_file():
        ckpt = Path(pretrained).expanduser().resolve()
        pretrained = str(ckpt)
        weights_sha = file_sha256(ckpt)
    else:
        looks_like_path = "/" in pretrained or pretrained.endswith((".pt", ".bin", ".pth", ".safetensors"))
        if looks_like_path:
            raise ModelError(f"--pretrained {pretrained}: no such checkpoint file. Check the path, or use a tag or 'none'.")
        tags = open_clip.list_pretrained_tags_by_model(name) if config_path is None else []
        if pretrained not in tags:
            if not tags:
                raise ModelError(
                    f"--pretrained {pretrained!r}: model {name} has no published tags; pass a local checkpoint path or 'none'."
                )
            if nearest(pretrained, tags):
                raise ModelError(did_you_mean(pretrained, tags, f"pretrained tag for {name}", "(or a checkpoint path, or 'none')."))
            # Nothing close: list every tag (did_you_mean stops listing past 20 choices; ViT-B-32 has 22).
            raise ModelError(f"unknown pretrained tag for {name} {pretrained!r}; valid tags: {', '.join(tags)} "
                             "(or a checkpoint path, or 'none').")
    return ModelSpec(name=name, pretrained=pretrained, config_path=config_path, config_json=config_json,
                     weights_sha256=weights_sha)

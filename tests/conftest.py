"""Shared fixtures: a tiny CLIP checkpoint, a small vocabulary, initialised databases, and a CLI runner.

Everything runs offline. WordNet 3.0 comes from the system copy that convis_db assembles into the
default user cache (kept across runs: assembling it again would cost time). The tiny model is built
from tests/data/tiny-clip.json with a fixed seed and saved as a local checkpoint, so tests exercise
the local-checkpoint loading path, not the random-weights shortcut.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

DATA_DIR = Path(__file__).resolve().parent / "data"
TINY_CONFIG = DATA_DIR / "tiny-clip.json"
TINY_MODEL_NAME = "tiny-clip"
CHECKPOINT_SEED = 1234

SMALL_VOCAB_WORDS = ["dog", "cat", "tiger", "car", "bicycle", "apple", "pizza", "tree", "hot dog", "t-shirt"]


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    """The open_clip config of a very small CLIP (embed_dim 16, one layer per tower)."""
    assert TINY_CONFIG.is_file(), TINY_CONFIG
    return TINY_CONFIG


def build_tiny_model(config: Path, seed: int = CHECKPOINT_SEED) -> torch.nn.Module:
    """The tiny model with weights drawn from `seed`, leaving the caller's RNG state untouched."""
    import open_clip

    open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_MODEL_NAME, pretrained=None, device="cpu")
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_factory(tiny_config: Path) -> Callable[[int], torch.nn.Module]:
    """tiny_model_factory(seed) -> the tiny model (eval mode, CPU) with weights drawn from that seed."""
    return lambda seed=CHECKPOINT_SEED: build_tiny_model(tiny_config, seed)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dict of the seeded tiny model saved to a file: loaded through --pretrained PATH."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny-clip.pt"
    torch.save(build_tiny_model(tiny_config).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_vocab_words() -> list[str]:
    return list(SMALL_VOCAB_WORDS)


@pytest.fixture(scope="session")
def small_vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word file with ten everyday words, including a spaced and a hyphenated one, and a comment."""
    path = tmp_path_factory.mktemp("vocab") / "small_words.txt"
    path.write_text("# a small test vocabulary\n" + "\n".join(SMALL_VOCAB_WORDS) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_spec(tiny_config: Path, tiny_checkpoint: Path):
    from convis_db.models.registry import resolve_model

    return resolve_model(str(tiny_config), str(tiny_checkpoint))


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory: pytest.TempPathFactory, small_vocab_file: Path, tiny_spec) -> Path:
    """A database built from the small vocabulary and the tiny checkpoint (treat as read-only).

    Its T is the `extended` one (normalised words such as 'hot dog', instance hypernyms), which the
    tests written against it expect; tests/test_hierarchy.py checks the `reference` T, the default.
    """
    from convis_db.init_db import initialise

    path = tmp_path_factory.mktemp("tinydb") / "tiny.duckdb"
    report = initialise(path, str(small_vocab_file), tiny_spec, torch.device("cpu"), hierarchy="extended")
    assert report.built_hierarchy and report.embedded_definitions == report.n_synsets > 0
    return path


@pytest.fixture(scope="session")
def physical_db(tmp_path_factory: pytest.TempPathFactory, tiny_spec) -> Path:
    """A database of the default 'physical-objects' vocabulary with the tiny checkpoint (read-only),
    T built the `extended` way (7,343 synsets)."""
    from convis_db.init_db import initialise

    path = tmp_path_factory.mktemp("physdb") / "physical.duckdb"
    initialise(path, "physical-objects", tiny_spec, torch.device("cpu"), batch_size=1024, hierarchy="extended")
    return path


@pytest.fixture
def tiny_db_copy(tiny_db: Path, tmp_path: Path) -> Path:
    """A private copy of tiny_db that a test may change."""
    target = tmp_path / "copy.duckdb"
    shutil.copyfile(tiny_db, target)
    return target


@pytest.fixture(scope="session")
def wn():
    """nltk's WordNet 3.0 reader, as convis_db opens it."""
    from convis_db.wordnet.source import open_wordnet

    return open_wordnet()


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """run_cli("--db", path, "stats", "--json", env={...}) -> click Result (stdout and stderr apart)."""
    from convis_db.cli import cli

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        runner = CliRunner()
        result = runner.invoke(cli, [str(a) for a in args], env=env, input=input, catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            # A traceback is a bug, not a user error: show it in the failing test's output.
            import traceback

            traceback.print_exception(type(result.exception), result.exception, result.exception.__traceback__)
        return result

    return run


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (2 CPUs), started once per test session and shut down at its end.

    Ray is an optional extra (convis-db[ray]); scripts/setup.sh installs it, so CI runs these tests.
    Workers import convis_db as this process does (the editable install, or PYTHONPATH).
    """
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'convis-db[ray]'")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()

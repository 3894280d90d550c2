"""Options shared by commands, and the object passed between the group and its commands."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from convis_db.models.registry import DEFAULT_MODEL, DEFAULT_PRETRAINED
from convis_db.progress import Progress, tqdm_progress

if TYPE_CHECKING:
    from convis_db.api import Database


@dataclass
class App:
    db: str
    quiet: bool
    verbose: int

    @property
    def progress(self) -> Progress:
        return tqdm_progress(enabled=not self.quiet)

    @contextlib.contextmanager
    def database(self, device="cpu", precision: str | None = None, write: bool = False) -> Iterator[Database]:
        """The database through the public API (read-only unless `write`), closed after the command.
        `device` and `precision` only matter where the command runs the model (ingest, eval, map of
        a new file, regions of one); pass them resolved (--device, --precision)."""
        from convis_db.api import Database

        db = Database(self.db, device=device, precision=precision, write=write,
                      progress=self.progress)  # upgrading an older file (either mode) shows its long steps
        try:
            yield db
        finally:
            db.close()


pass_app = click.make_pass_decorator(App)


def model_options(default_model: str | None = DEFAULT_MODEL, default_pretrained: str | None = DEFAULT_PRETRAINED):
    """--model (also CONVIS_MODEL) and --pretrained (also CONVIS_PRETRAINED)."""

    def decorate(f):
        f = click.option("--pretrained", envvar="CONVIS_PRETRAINED", default=default_pretrained, show_default=True,
                         help="open_clip tag (openai), a local checkpoint path, or 'none' for seeded random "
                              "(meaningless) weights. Env: CONVIS_PRETRAINED.")(f)
        f = click.option("--model", envvar="CONVIS_MODEL", default=default_model, show_default=True,
                         help="open_clip model name (ViT-B-32) or a path to an open_clip model config JSON. "
                              "Env: CONVIS_MODEL.")(f)
        return f

    return decorate


def batch_size_option(f):
    """--batch-size: windows per encoder batch (None: the engine's device-based default)."""
    return click.option("--batch-size", default=None, type=click.IntRange(1, 65536),
                        help="Windows per encoder batch, two patches each [128 on CPU, 512 on CUDA].")(f)


def device_option(f):
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help="Where CLIP runs: auto picks cuda when a GPU is visible.")(f)


def precision_option(f):
    """--precision auto|fp32|bf16|fp16, resolved with convis_db.models.precision.resolve_precision."""
    from convis_db.models.precision import PRECISION_CHOICES

    return click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
                        help="Number format CLIP computes in: auto is fp32 on a CPU, bf16 on CUDA (fp16 on a GPU "
                             "without bf16). bf16/fp16 on a CPU need native support (AVX512-BF16, AMX). "
                             "Recorded with what it produces.")(f)


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("convis_db").setLevel(level)

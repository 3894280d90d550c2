"""--device auto|cpu|cuda, resolved once at the CLI boundary and passed down explicitly."""

from __future__ import annotations

import logging

import torch

from convis_db.errors import UsageError, flags_as_arguments

log = logging.getLogger(__name__)
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str) -> torch.device:
    """Turn a --device choice into a torch.device; 'cuda' without a GPU is an error, not a silent fallback."""
    choice = (choice or "auto").lower()
    if choice not in DEVICE_CHOICES and not choice.startswith("cuda:"):
        raise _usage(f"--device {choice!r} is not one of {', '.join(DEVICE_CHOICES)}.")
    if choice == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise _usage("--device cuda was asked for, but no CUDA GPU is visible to torch. Use --device cpu or auto.")
        device = torch.device(choice)
    else:
        device = torch.device("cpu")
    log.info("device: %s", device)
    return device


def _usage(message: str) -> UsageError:
    """The error in the CLI's words (--options) and, for Python callers, the arguments' (option=value)."""
    return UsageError(message, python=flags_as_arguments(message))

"""--precision auto|fp32|bf16|fp16: the number format the CLIP encoders compute in.

Resolved once at the CLI boundary beside --device (like it, never a silent fallback) and passed down
explicitly; what the encoders produced is recorded with the precision that produced it (each image,
each model's definition embeddings), because bf16 moves embeddings by about 1e-2 and can move a
window's ranks by a step or two.

A precision runs only where torch has native kernels for it on the device. On a CPU without them
(no AVX512-BF16 / AMX for bf16, no AVX512-FP16 / AMX-FP16 for fp16) torch falls back to generic
loops: measured on an AVX2-only CPU (docs/benchmarks.md), bf16 ran ViT-B-32 4 to 6 times slower than
fp32. That is refused with a one-line error rather than run.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from convis_db.errors import UsageError, flags_as_arguments

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto", *PRECISIONS)
UNRECORDED = "unrecorded"  # rows written before precision was recorded (schema 007)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device: torch.device) -> str:
    """fp32 on a CPU; bf16 on a GPU that has it, else fp16 (what convis-db always did on CUDA).

    fp32 on every CPU, those with native bf16 (AVX512-BF16, AMX) included: decided with figures in
    docs/benchmarks.md (issue 23). bf16 encodes ViT-B/32 2.65-2.82x faster there, but changes the stored
    ranks more than the rule set beforehand allows (at least 90% of windows with an identical top-10 set):
    measured 89% identical sets and 55-57% identical lists (random weights: the tiny model at the paper's
    settings, ViT-B/32's shape at cpu-fast, emulated bf16).
    Such a CPU runs bf16 when asked for (`--precision bf16`, recorded with each image); resolve_precision
    logs that choice."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def cpu_has_native(precision: str) -> bool:
    """Whether torch's oneDNN has native kernels for `precision` on this CPU (fp32 always does)."""
    if precision == "fp32":
        return True
    try:
        if precision == "bf16":
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if precision == "fp16":
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a torch without these checks: assume the slow path
        return False
    return False


def _cpu_features() -> str:
    names = ("avx512", "avx512_bf16", "amx_tile", "amx_fp16")
    found = [n for n in names if getattr(torch.cpu, f"_is_{n}_supported", lambda: False)()]
    return ", ".join(found) if found else f"no AVX-512 or AMX (torch uses {torch.backends.cpu.get_cpu_capability()})"


def resolve_precision(choice: str | None, device: torch.device) -> str:
    """Turn a --precision choice into fp32, bf16 or fp16 for `device`; a precision the device cannot
    run at speed is a UsageError, not a silent fallback. Resolving a resolved value returns it."""
    choice = (choice or "auto").lower()
    if choice not in PRECISION_CHOICES:
        raise _usage(f"--precision {choice!r} is not one of {', '.join(PRECISION_CHOICES)}.")
    if choice == "auto":
        precision = default_precision(device)
        if device.type == "cpu" and cpu_has_native("bf16"):
            log.info("precision: fp32 on %s (auto keeps fp32 on CPUs; this CPU has native bf16: --precision bf16 "
                     "encodes about 2.7x faster and changes some windows' top-10, see docs/benchmarks.md)", device)
            return precision
    elif device.type == "cuda":
        if choice == "bf16" and not torch.cuda.is_bf16_supported():
            raise _usage(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                             "use --precision fp16 or fp32.")
        precision = choice
    elif device.type == "cpu" and not cpu_has_native(choice):
        need = "AVX512-BF16 or AMX" if choice == "bf16" else "AVX512-FP16 or AMX-FP16"
        raise _usage(f"--precision {choice} on this CPU: torch has no native {choice} kernels here (they need "
                         f"{need}; found {_cpu_features()}), so it would run several times slower than fp32. "
                         "Use --precision fp32 (the CPU default), or a CUDA GPU.")
    else:
        precision = choice
    log.info("precision: %s on %s", precision, device)
    return precision


def precision_context(precision: str, device: torch.device):
    """The context the encoders run in: nothing for fp32, autocast to bf16/fp16 otherwise.

    Autocast rather than casting the model: matrix products run in the low precision while layer
    norms and softmax keep float32 statistics, and the weights stay float32 for exact fp32 runs.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def precision_label(stored: str | None) -> str:
    """A stored precision for display; NULL (written before schema 007) reads 'unrecorded'."""
    return stored or UNRECORDED


def check_fp32_method(choice: str | None, method: str) -> None:
    """A method that runs its own float32 passes (Grad-ECLIP's gradients) takes no other precision."""
    if (choice or "auto").lower() not in ("auto", "fp32"):
        raise _usage(f"--precision {choice}: {method} computes its gradients in fp32; drop --precision "
                         "(it applies to --method convis).")


def _usage(message: str) -> UsageError:
    """The error in the CLI's words (--options) and, for Python callers, the arguments' (option=value)."""
    return UsageError(message, python=flags_as_arguments(message))

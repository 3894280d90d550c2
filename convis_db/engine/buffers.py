"""Buffers kept for an engine's life and handed out again for every batch and image.

The CPU path writes about 2.5 GB per 640 x 480 image into a few large arrays (the patch batch, the width
passes of the patch resize, the ranking's counts). Fresh arrays of that size come from the kernel as new
pages each time (glibc maps anything above 32 MB directly): page faults, zeroing and unmapping were a
quarter of the CPU time around the encoder before these buffers were reused. A `ReusedBuffer` holds one
flat tensor, grown when a request does not fit, and gives views of it: whoever asks owns the view until
its next request, so one buffer serves one job (the engine keeps one per job).
"""

from __future__ import annotations

import math

import torch


class ReusedBuffer:
    """One flat tensor of `dtype` on `device`, viewed as the shape asked for (its first elements)."""

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.dtype = dtype
        self.device = torch.device(device)
        self._flat: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self._flat is None else self._flat.numel() * self._flat.element_size()

    def view(self, *shape: int) -> torch.Tensor:
        """A contiguous tensor of `shape` over the buffer (its former contents, or garbage): the previous
        view's memory. Grows (a new allocation) only when `shape` holds more elements than ever before."""
        need = math.prod(shape)
        if self._flat is None or self._flat.numel() < need:
            self._flat = None  # free the old one before making the larger
            self._flat = torch.empty(need, dtype=self.dtype, device=self.device)
        return self._flat[:need].view(*shape)

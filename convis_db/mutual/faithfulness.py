"""Faithfulness of the visual concepts: Deletion, Insertion, AccDrop and AccInc.

The visual concepts are removed from the image one at a time, most important first (Deletion), or
put back one at a time into the image with all of them removed (Insertion); after each step the
image is encoded again and two things are read: the predicted class's score, logit_scale * cos(image,
class text) (the paper's curves plot the similarity times 2.5), and whether the zero-shot prediction
over the labels is still the original one. With C concepts each curve has C + 1 points (the
unchanged, resp. fully removed, image included); every metric is the mean of its curve:

* Deletion: mean class score along the deletion curve (lower is better: removing what the
  explanation calls important should hurt the prediction);
* Insertion: mean class score along the insertion curve (higher is better);
* AccDrop: mean fraction of images still predicted as before along the deletion curve (lower is better);
* AccInc: the same along the insertion curve (higher is better).

A removed region is filled with the model's mean colour (zero after normalisation), the project's
content-free fill. A concept's importance is logit_scale * cos(concept embedding, predicted class).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from convis_db.mutual.prompts import upscale_mask


@dataclass
class FaithfulnessCurves:
    order: list[int]                                   # concept indices, most important first
    deletion: list[float] = field(default_factory=list)    # class score after removing 0..C concepts
    insertion: list[float] = field(default_factory=list)   # class score after inserting 0..C concepts
    deletion_kept: list[bool] = field(default_factory=list)   # prediction unchanged at each step
    insertion_kept: list[bool] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        mean = lambda v: float(np.mean(v)) if len(v) else float("nan")  # noqa: E731
        return {"deletion": mean(self.deletion), "insertion": mean(self.insertion),
                "acc_drop": mean(np.asarray(self.deletion_kept, float)),
                "acc_inc": mean(np.asarray(self.insertion_kept, float))}

    def as_dict(self) -> dict:
        return {"order": self.order, "deletion_curve": self.deletion, "insertion_curve": self.insertion,
                "deletion_kept": self.deletion_kept, "insertion_kept": self.insertion_kept, **self.metrics()}


def step_masks(labels: np.ndarray, order: list[int], size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pixel masks of what is removed at each deletion step and each insertion step (True = filled)."""
    regions = [upscale_mask(labels == c, size, size) for c in order]
    everything = np.zeros((size, size), bool)
    for r in regions:
        everything |= r
    deletion, insertion = [], []
    removed = np.zeros((size, size), bool)
    deletion.append(removed.copy())
    for r in regions:
        removed |= r
        deletion.append(removed.copy())
    still = everything.copy()
    insertion.append(still.copy())
    for r in regions:
        still &= ~r
        insertion.append(still.copy())
    return deletion, insertion


@torch.inference_mode()
def faithfulness_curves(model, batch: torch.Tensor, labels: np.ndarray, order: list[int], classes: np.ndarray,
                        predicted: int, logit_scale: float) -> FaithfulnessCurves:
    """Deletion and insertion curves of the (1, 3, S, S) normalised input `batch`."""
    size = int(batch.shape[-1])
    deletion, insertion = step_masks(labels, order, size)
    masks = torch.from_numpy(np.stack(deletion + insertion)).to(batch.device)      # (2(C+1), S, S)
    images = batch.expand(len(masks), -1, -1, -1) * (~masks)[:, None].to(batch.dtype)
    emb = model.encode_image_batch(images).float().cpu().numpy().astype(np.float64)
    cos = emb @ classes.astype(np.float64).T
    scores = (logit_scale * cos[:, predicted]).tolist()
    kept = (np.argmax(cos, axis=1) == predicted).tolist()
    n = len(deletion)
    return FaithfulnessCurves(order=list(order), deletion=scores[:n], insertion=scores[n:],
                              deletion_kept=kept[:n], insertion_kept=kept[n:])

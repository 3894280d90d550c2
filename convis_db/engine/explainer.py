"""One batched pass per image: every window encoded once, ranked against all of T, every concept scored.

This replaces the reference method's one CLIP pass per window *and per concept*: after this pass the
saliency map of any concept is a cheap function of the stored window embeddings.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from convis_db.engine.buffers import ReusedBuffer
from convis_db.engine.propagate import Propagator
from convis_db.engine.ranking import SynsetRanker
from convis_db.engine.saliency import Peaks, full_map, peaks
from convis_db.engine.settings import Settings
from convis_db.engine.whole_image import ImageLevel, image_embeddings
from convis_db.engine.windows import PatchCutter, WindowGrid, normalise, working_size
from convis_db.models.clip import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class ImageExplanation:
    grid: WindowGrid
    width: int           # original
    height: int
    embeddings: np.ndarray      # (W, D) float32, e = (E_I(S) + E_I(L)) / 2
    boxes: np.ndarray           # (W, 4) int32 large-patch boxes, working pixels
    scores: Peaks               # per synset, max_rank_sim maps
    self_scores: Peaks          # per synset, rank_sim maps (the synset alone)
    top_ids: np.ndarray         # (W, K) int32
    top_rank_less: np.ndarray   # (W, K) int32, |T| * rank_sim (exact)
    n_synsets: int
    timings: dict[str, float] = field(default_factory=dict)
    image_level: ImageLevel | None = None   # the whole image's scores (None when only windows were given)

    @property
    def scale(self) -> float:
        """Original pixels per working pixel."""
        return self.width / self.grid.width

    @property
    def top_rank_sim(self) -> np.ndarray:
        """(W, K) float64 rank_sim of each window's top concepts."""
        return self.top_rank_less / self.n_synsets


class Timer:
    """Accumulates wall time per stage, synchronising CUDA so GPU work is charged to its stage."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def window_batches(window_counts: list[int], batch_size: int) -> Iterator[list[tuple[int, int, int]]]:
    """Pack the windows of several images, in order, into batches of at most `batch_size` windows:
    each batch is a list of (image index, first window, stop) pieces, so small images share one
    forward and a large image is split across several."""
    batch: list[tuple[int, int, int]] = []
    room = batch_size
    for i, count in enumerate(window_counts):
        start = 0
        while start < count:
            stop = min(count, start + room)
            batch.append((i, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield batch
                batch, room = [], batch_size
    if batch:
        yield batch


def default_batch_size(device: torch.device) -> int:
    """Windows per encoder batch (two patches each) when none is asked for: the one place of this
    default. 512 fills a GPU; on a CPU, 128 keeps the working set in cache with no loss of speed."""
    return 512 if torch.device(device).type == "cuda" else 128


class ConceptEngine:
    """Everything needed to explain images with one model against one hierarchy."""

    def __init__(self, model: LoadedModel, definitions: np.ndarray, levels: list, settings: Settings,
                 batch_size: int | None = None):
        self.model = model
        self.settings = settings
        self.device = model.device
        self.batch_size = batch_size or default_batch_size(self.device)
        self.ranker = SynsetRanker(definitions, self.device)
        self.propagator = Propagator(levels, self.device)
        self.n = self.ranker.n
        # Reused for every batch and image (engine/buffers.py): the patch batch (also the ranking's memory,
        # _ranking_buffers) and the width passes of the patch resize (one per patch side).
        self._patches = ReusedBuffer(torch.float32, self.device)
        self._rows: dict[int, ReusedBuffer] = {}

    def _patch_buffer(self, count: int) -> torch.Tensor:
        """The first `count` patches of one (2 x batch_size, 3, S, S) buffer kept for the engine's life:
        every batch is written into the same memory (no fresh 150 MB per batch, no page faults)."""
        size = self.model.image_size
        return self._patches.view(max(count, 2 * self.batch_size), 3, size, size)[:count]

    def _rows_buffer(self, side: int) -> ReusedBuffer:
        """The buffer of the width pass of patches of `side` pixels (PatchCutter: one image at a time)."""
        return self._rows.setdefault(side, ReusedBuffer())

    def _ranking_buffers(self, windows: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """On the CPU, (the (|T|, windows) int32 counts, the (windows, distinct definitions) float32 cosines)
        as views of the patch buffer's memory: an image is ranked after all its patches were encoded, so the
        ranking reuses that memory instead of 100 MB of fresh arrays (and their page faults) per image.
        (None, None) on a GPU (its ranking makes its own)."""
        if self.device.type != "cpu":
            return None, None
        counts, cosines = self.n * windows, windows * self.ranker.n_distinct
        size = self.model.image_size
        patch = 3 * size * size
        flat = self._patches.view(max(-(-(counts + cosines) // patch), 2 * self.batch_size), 3, size, size).view(-1)
        return (flat[:counts].view(torch.int32).view(self.n, windows),
                flat[counts:counts + cosines].view(windows, self.ranker.n_distinct))

    # -- stages ---------------------------------------------------------------------------------
    def working_image(self, pixels: np.ndarray, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, WindowGrid]:
        """Resize (on the device) to about max_pixels and normalise; returns the image and its grid.

        `size`: the original's (width, height) when `pixels` were decoded reduced (DecodedImage.size):
        the working size is always that of the original."""
        h, w = pixels.shape[:2]
        ww, wh = working_size(*(size or (w, h)), self.settings.max_pixels)
        t = torch.from_numpy(pixels).to(self.device).permute(2, 0, 1)
        if (wh, ww) != (h, w):
            t = F.interpolate(t[None].float(), size=(wh, ww), mode="bicubic", align_corners=False,
                              antialias=True)[0].clamp_(0, 255)
        img = normalise(t, self.model.mean, self.model.std)
        s = self.settings
        return img, WindowGrid(wh, ww, s.stride, s.small, s.large, s.layout)

    @torch.inference_mode()
    def image_level_many(self, pixels_list: list[np.ndarray]) -> list[ImageLevel]:
        """The paper's image-level scores: one encoder pass per whole image (the model's own
        open_clip preprocessing), ranked against all of T; max_rank_sim by the same propagation."""
        x = image_embeddings(self.model, pixels_list, batch_size=max(1, self.batch_size))
        rank_less = self.ranker.rank(x, 1).rank_less                      # (N, n) int32
        best = self.propagator.max_over_descendants_t(rank_less.T.contiguous()).T
        x_np, own, best = x.cpu().numpy(), rank_less.cpu().numpy(), best.cpu().numpy()
        return [ImageLevel(x_np[i].astype(np.float32), own[i].astype(np.int32), best[i].astype(np.int32))
                for i in range(len(pixels_list))]

    def image_level(self, pixels: np.ndarray) -> ImageLevel:
        return self.image_level_many([pixels])[0]

    @torch.inference_mode()
    def encode_windows(self, img: torch.Tensor, grid: WindowGrid, timer: Timer | None = None,
                       on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
        """(W, D) float32 window embeddings e = (E_I(S) + E_I(L)) / 2, each E_I L2-normalised."""
        return self.encode_many([(img, grid)], timer, on_batch)[0]

    @torch.inference_mode()
    def encode_many(self, images: list[tuple[torch.Tensor, WindowGrid]], timer: Timer | None = None,
                    on_batch: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Window embeddings of several working images, their windows packed into shared batches of
        `batch_size` windows (2 x batch_size patches per forward), so small images fill the encoder too."""
        timer = timer or Timer(self.device)
        # The cutters run one after the other (an image's last window frees its width pass before the next
        # image's first), so they share the engine's width-pass buffers.
        cutters = [PatchCutter(img, grid, self.model.image_size, self._rows_buffer) for img, grid in images]
        outs = [torch.empty(grid.n_windows, self.model.embed_dim, dtype=torch.float32, device=self.device)
                for _, grid in images]
        for batch in window_batches([grid.n_windows for _, grid in images], self.batch_size):
            with timer.stage("cut_resize"):
                n = sum(b - a for _, a, b in batch)
                patches = self._patch_buffer(2 * n)  # small patches, then large: [S_1..S_n, L_1..L_n]
                offset = 0
                for i, a, b in batch:
                    grid = images[i][1]
                    cutters[i].patches_into(grid.small, a, b, patches[offset:offset + b - a])
                    cutters[i].patches_into(grid.large, a, b, patches[n + offset:n + offset + b - a])
                    offset += b - a
            with timer.stage("encode"):
                feats = self.model.encode_image_batch(patches)
                e = (feats[:n] + feats[n:]) / 2
                offset = 0
                for i, a, b in batch:
                    outs[i][a:b] = e[offset:offset + b - a]
                    offset += b - a
            if on_batch:
                on_batch(n)
        return outs

    @torch.inference_mode()
    def explain_many(self, pixels_list: list[np.ndarray],
                     sizes: list[tuple[int, int] | None] | None = None) -> list[ImageExplanation]:
        """explain_pixels for several images, encoding their windows in shared batches.

        Stage timings of the shared steps are split between the images by their window counts.
        `sizes`: the originals' (width, height) where pixels were decoded reduced (None: their own).
        """
        timer = Timer(self.device)
        sizes = sizes or [None] * len(pixels_list)
        with timer.stage("cut_resize"):
            prepared = [self.working_image(p, size) for p, size in zip(pixels_list, sizes)]
        embeddings = self.encode_many(prepared, timer)
        with timer.stage("whole_image"):
            levels = self.image_level_many(pixels_list)
        total = sum(grid.n_windows for _, grid in prepared)
        results = []
        for pixels, size, (_, grid), emb, level in zip(pixels_list, sizes, prepared, embeddings, levels):
            share = grid.n_windows / total
            result = self.explain_embeddings(emb, grid)
            result.image_level = level
            for stage, secs in timer.times.items():
                result.timings[stage] = result.timings.get(stage, 0.0) + secs * share
            result.width, result.height = size or (int(pixels.shape[1]), int(pixels.shape[0]))
            results.append(result)
        return results

    @torch.inference_mode()
    def explain_pixels(self, pixels: np.ndarray, on_batch: Callable[[int], None] | None = None,
                       size: tuple[int, int] | None = None) -> ImageExplanation:
        timer = Timer(self.device)
        with timer.stage("cut_resize"):
            img, grid = self.working_image(pixels, size)
        emb = self.encode_windows(img, grid, timer, on_batch)
        with timer.stage("whole_image"):
            level = self.image_level(pixels)
        result = self.explain_embeddings(emb, grid, timer)
        result.image_level = level
        result.width, result.height = size or (int(pixels.shape[1]), int(pixels.shape[0]))
        return result

    @torch.inference_mode()
    def explain_embeddings(self, emb: torch.Tensor, grid: WindowGrid, timer: Timer | None = None) -> ImageExplanation:
        timer = timer or Timer(self.device)
        with timer.stage("rank"):
            counts, cosines = self._ranking_buffers(emb.shape[0])
            ranking = self.ranker.rank(emb, self.settings.top_k, out_t=counts, z_out=cosines)
        with timer.stage("aggregate"):
            # Synset-major, one row of window values per synset (already so from the CPU kernels: no copy).
            ranks_t = ranking.rank_less.T.contiguous()
            self_scores = peaks(ranks_t, grid, self.n)
            best_t = self.propagator.max_over_descendants_t(ranks_t, in_place=True)  # the counts are not needed again
            scores = peaks(best_t, grid, self.n)
        return ImageExplanation(
            grid=grid, width=grid.width, height=grid.height,
            embeddings=emb.cpu().numpy(), boxes=grid.boxes(), scores=scores, self_scores=self_scores,
            top_ids=ranking.top_ids.to(torch.int32).cpu().numpy(),
            top_rank_less=ranking.top_rank_less.cpu().numpy(),
            n_synsets=self.n, timings=timer.times,
        )

    @property
    def mapper(self) -> ConceptMapper:
        return ConceptMapper(self.ranker)

    def window_similarities(self, pixels: np.ndarray,
                            size: tuple[int, int] | None = None) -> tuple[WindowSimilarities, WindowGrid]:
        """A new image's windows (encoded with this engine's model and settings) as similarities,
        ready for any number of concept maps; `size` as for working_image."""
        img, grid = self.working_image(pixels, size)
        return self.mapper.similarities(self.encode_windows(img, grid)), grid


#: After this many concepts asked of one image's windows, their similarity rows are sorted once, so
#: that each further map is a binary search per window instead of a pass over every synset.
SORT_AFTER = 2


class WindowSimilarities:
    """One image's (W, |T|) cosines z(e_w, s), from which any concept's map follows without another
    matrix product; after SORT_AFTER concepts the rows are sorted once (the fast path for browsing
    many concepts of one image: the explorer's tree, COCO's several categories, both OOD scores).

    Counting directly or by binary search in the sorted row gives the same integer, so maps are
    identical either way."""

    def __init__(self, z: torch.Tensor, sort_after: int = SORT_AFTER):
        self.z = z.contiguous()
        self.sorted: torch.Tensor | None = None
        self.sort_after = sort_after
        self.uses = 0

    @property
    def n(self) -> int:
        return int(self.z.shape[1])

    @property
    def nbytes(self) -> int:
        n = self.z.numel() * self.z.element_size()
        return n * 2 if self.sorted is not None else n

    @torch.inference_mode()
    def counts(self, synset_ids: np.ndarray) -> torch.Tensor:
        """Per window, |T| * max over `synset_ids` of rank_sim: the number of synsets whose cosine is
        below the best of them (int64).

        rank_sim is monotone in the cosine, so the max over a concept's descendants is the rank of the
        descendant with the highest cosine; no full sort is needed for one concept. Pass the
        descendants for max_rank_sim, or the synset alone for rank_sim.
        """
        ids = torch.as_tensor(np.asarray(synset_ids), device=self.z.device, dtype=torch.long)
        best = self.z[:, ids].max(dim=1).values
        self.uses += 1
        if self.sorted is None and self.uses > self.sort_after:
            self.sorted = torch.sort(self.z, dim=1).values
        if self.sorted is not None:
            return torch.searchsorted(self.sorted, best[:, None].contiguous(), side="left")[:, 0].to(torch.int64)
        return (self.z < best[:, None]).sum(dim=1).to(torch.int64)


class ConceptMapper:
    """Single-concept saliency maps from window embeddings (stored or fresh): no model needed."""

    def __init__(self, ranker: SynsetRanker):
        self.ranker = ranker
        self.n = ranker.n

    @torch.inference_mode()
    def similarities(self, emb: torch.Tensor | np.ndarray) -> WindowSimilarities:
        """The windows' cosines against every definition, for as many concepts' maps as wanted."""
        if isinstance(emb, np.ndarray):
            emb = torch.from_numpy(emb)
        return WindowSimilarities(self.ranker.similarities(emb.to(self.ranker.device)))

    def concept_counts(self, windows: torch.Tensor | np.ndarray | WindowSimilarities,
                       synset_ids: np.ndarray) -> torch.Tensor:
        """WindowSimilarities.counts of window embeddings (or of similarities computed already)."""
        sims = windows if isinstance(windows, WindowSimilarities) else self.similarities(windows)
        return sims.counts(synset_ids)

    def concept_map(self, windows: torch.Tensor | np.ndarray | WindowSimilarities, grid: WindowGrid,
                    synset_ids: np.ndarray) -> np.ndarray:
        """(H, W) float64 saliency map in working pixels (the formula's raw values, not normalised)."""
        return full_map(self.concept_counts(windows, synset_ids), grid, self.n)


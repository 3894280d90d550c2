"""The public Python API: `convis_db.open` and `convis_db.create` return a `Database`.

A `Database` is to convis-db what sqlite-utils' `Database` is to its CLI: every query returns data
(dataclasses, numpy arrays or DuckDB relations), never printed text, and the CLI, the explorer and
eval are its users. It holds the process's one DuckDB connection to its file (convis_db.store.handles:
a second `open` of the same file shares it, or fails itself when the modes differ), in the mode it
was opened in (read-only unless `write=True`), until `close()`; after that every call raises
DatabaseClosedError. It also holds, once used, the database's profile (convis_db.profile: which
model and settings), its hierarchy and its map service. Arguments are checked here, at the door
(convis_db.arguments), and collections of results are `Results` (convis_db.results: `.to_arrow()`,
`.df()`, short reprs).

    >>> import convis_db
    >>> db = convis_db.open("photos.duckdb")                    # doctest: +SKIP
    >>> [hit.path for hit in db.search("dog.n.01", limit=3)]     # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import torch

from convis_db import arguments as check
from convis_db.cache import LRUCache
from convis_db.engine.settings import Settings
from convis_db.profile import DatabaseProfile, SettingsRequest
from convis_db.errors import DatabaseClosedError, UsageError
from convis_db.progress import Progress, no_progress, tqdm_progress
from convis_db.query.maps import ConceptMap, MapService
from convis_db.results import Results
from convis_db.store import handles
from convis_db.store.hierarchy_store import StoredHierarchy, load_hierarchy

log = logging.getLogger(__name__)

ProgressArg = bool | Progress | None


def _progress(progress: ProgressArg) -> Progress:
    """True: tqdm bars on stderr; False/None: none; a callable: a Progress factory of the caller's."""
    if progress is True:
        return tqdm_progress(True)
    if not progress:
        return no_progress
    if callable(progress):
        return progress
    raise UsageError(f"progress={progress!r}: pass True, False or a Progress factory (see convis_db.progress).")


def _device(device: str | torch.device) -> torch.device:
    from convis_db.models.device import resolve_device

    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise UsageError(f"device={device!r}: pass 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device.")
    return resolve_device(device)


def _from_dict(cls, row: dict):
    """A dataclass from a row dict, ignoring keys the class does not name."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in names})


# ------------------------------------------------------------------------------------------------
# Result types (JSON field names of the CLI are these field names).


@dataclass(frozen=True)
class SearchHit:
    """An image ranked by its score for a concept. Peaks are in original-image pixels."""

    image_id: int
    path: str
    synset: str
    score: float                    # the `by` score
    peak_x: int                     # the map's peak
    peak_y: int
    width: int
    height: int
    map_score: float | None = None  # peak of the concept's saliency map
    image_score: float | None = None  # the paper's image-level max_rank_sim (None where not stored)
    by: str = "map"


class SearchHits(Results):
    """The hits of one search, best first (a list of SearchHit), with the score they are ranked by
    (`by`: "image" or "map") and notes for the user (e.g. how many images lack image-level scores).
    `.df()` / `.to_arrow()` make a table of them; repr() shows the first few.

        >>> db.search("dog.n.01").df()          # doctest: +SKIP
    """

    noun = "hit"

    def __init__(self, hits: Iterable[SearchHit], by: str, notes: list[str]):
        super().__init__(hits, SearchHit)
        self.by = by
        self.notes = notes

    def summary(self) -> str:
        return super().summary() + f", ranked by {self.by} score"


@dataclass(frozen=True)
class Region:
    """A connected part of an image where a concept's saliency reaches the threshold; the box
    [x0, x1) x [y0, y1) is in original-image pixels."""

    image_id: int | None
    path: str
    synset: str
    score: float
    x0: int
    y0: int
    x1: int
    y1: int
    area_fraction: float


class Regions(Results):
    """Boxes found by `Database.regions` (a list of Region; `.df()`, `.to_arrow()`)."""

    noun = "region"


@dataclass(frozen=True)
class Concept:
    """A synset of the database's hierarchy T."""

    synset: str
    definition: str
    lemmas: list[str] = field(default_factory=list)
    depth: int | None = None
    lexname: str | None = None
    is_word_sense: bool = False       # a noun sense of a vocabulary word (not only an ancestor of one)
    n_parents: int = 0
    n_children: int = 0
    n_descendants: int = 0            # itself included
    path: list[str] = field(default_factory=list)   # one path up to entity.n.01


class Concepts(Results):
    """Synsets found by `Database.concepts`, `children` or `ancestors` (`.df()`, `.to_arrow()`)."""

    noun = "concept"


@dataclass(frozen=True)
class TopConcept:
    """A concept of one stored image, ranked by `self_score`: the peak of the concept's own map
    (its descendants left out), so the most specific matches come first; `score` is the map's peak
    with its descendants (what search ranks by with by="map")."""

    synset: str
    self_score: float
    score: float
    definition: str


@dataclass
class ExplanationNode:
    """A concept in an image's explanation tree, with its best-scoring children."""

    synset: str
    score: float
    self_score: float
    peak_x: int
    peak_y: int
    children: list[ExplanationNode] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The node as the CLI's --json prints it: its fields, extra ones inline, children nested."""
        return {"synset": self.synset, "score": self.score, "self_score": self.self_score, "peak_x": self.peak_x,
                "peak_y": self.peak_y, **self.extra, "children": [c.as_dict() for c in self.children]}

    @classmethod
    def from_dict(cls, node: dict) -> ExplanationNode:
        known = {"synset", "score", "self_score", "peak_x", "peak_y", "children"}
        return cls(synset=node["synset"], score=node["score"], self_score=node["self_score"],
                   peak_x=node["peak_x"], peak_y=node["peak_y"],
                   children=[cls.from_dict(c) for c in node.get("children", [])],
                   extra={k: v for k, v in node.items() if k not in known})

    def walk(self) -> Iterator[ExplanationNode]:
        """This node and every node below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def __repr__(self) -> str:
        kids = f", {len(self.children)} children" if self.children else ""
        return f"ExplanationNode({self.synset}, score={self.score:.4f}, peak=({self.peak_x}, {self.peak_y}){kids})"

    def lines(self, indent: int = 0, limit: int | None = None) -> list[str]:
        """The tree as indented lines, `limit` lines at most."""
        out = ["  " * indent + f"{self.synset}  {self.score:.4f}"]
        for child in self.children:
            if limit is not None and len(out) >= limit:
                break
            out += child.lines(indent + 1, None if limit is None else limit - len(out))
        return out[:limit] if limit is not None else out


@dataclass
class Explanation:
    """An image's explanation tree (`tree`, from the root concept down)."""

    image_id: int
    path: str
    tree: ExplanationNode

    def as_dict(self) -> dict:
        return {"image_id": self.image_id, "path": self.path, "tree": self.tree.as_dict()}

    def __repr__(self) -> str:
        nodes = sum(1 for _ in self.tree.walk())
        shown = self.tree.lines(1, limit=8)
        more = [f"  ... {nodes - len(shown)} more nodes"] if nodes > len(shown) else []
        return "\n".join([f"<Explanation of image {self.image_id} ({self.path}): {nodes} nodes>", *shown, *more])


@dataclass(frozen=True)
class ChildConcept:
    """A direct is-a child of a synset, with its own child and descendant counts."""

    parent: str
    synset: str
    definition: str
    n_children: int
    n_descendants: int


@dataclass(frozen=True)
class AncestorConcept:
    """An ancestor of a synset (every DAG path), `distance` edges above it."""

    synset: str
    distance: int
    depth: int
    definition: str


@dataclass(frozen=True)
class ImageRecord:
    """A stored image: original size (width, height), working size (work_width, work_height: the
    image the windows were cut from) and its number of windows."""

    image_id: int
    path: str
    sha256: str
    width: int
    height: int
    work_width: int
    work_height: int
    n_windows: int


class ImageRecords(Results):
    """Stored images (`Database.images`; `.df()`, `.to_arrow()`); `total` is how many the database
    holds (more than these when `images()` was given a limit or an offset)."""

    noun = "image"
    total: int = 0


@dataclass(frozen=True)
class ModelRecord:
    """A CLIP model whose definition embeddings the database holds; `n_images` of its stored images."""

    model_id: int
    name: str
    pretrained: str
    is_random: bool
    n_images: int


class ModelRecords(Results):
    """The database's models (`Database.models`; `.df()`, `.to_arrow()`)."""

    noun = "model"


class TopConcepts(Results):
    """An image's best concepts (`Database.top_concepts`; `.df()`, `.to_arrow()`)."""

    noun = "concept"


@dataclass(frozen=True)
class MapPeak:
    """Where a map reaches its maximum (see Map.peak): `score`, and (`x`, `y`) in
    original-image pixels, as every coordinate the API shows; (`work_x`, `work_y`) is the same pixel
    of the working image that `Map.values` is indexed by. `peak["x"]` reads as `peak.x`."""

    score: float
    x: int
    y: int
    work_x: int
    work_y: int

    def __getitem__(self, key: str):
        if key not in ("score", "x", "y", "work_x", "work_y"):
            raise KeyError(key)
        return getattr(self, key)


class Map:
    """One concept's saliency map on one image.

    `values` is the map on the working image (the image the windows were cut from: `work_size`
    pixels; float64, the formula's exact values in [0, 1]); `peak` is in original-image pixels, as
    every coordinate the API shows; `to_png()` and `overlay()` draw the map over the original image;
    in a notebook the object displays itself as that picture.

        >>> m = db.map(1, "dog.n.01"); m.peak.x, m.peak.y       # doctest: +SKIP
    """

    def __init__(self, cmap: ConceptMap):
        self._cmap = cmap

    values = property(lambda self: self._cmap.saliency, doc="(work_h, work_w) float64 saliency on the working image.")
    size = property(lambda self: (self._cmap.width, self._cmap.height), doc="The original image's (width, height).")
    work_size = property(lambda self: (self._cmap.grid.width, self._cmap.grid.height),
                         doc="The working image's (width, height): the shape of `values`, transposed.")
    synset = property(lambda self: self._cmap.synset)
    image_id = property(lambda self: self._cmap.image_id)
    image_path = property(lambda self: self._cmap.image_path)
    source = property(lambda self: self._cmap.source, doc="'database' (stored windows) or 'computed' (a new file).")

    @property
    def peak(self) -> MapPeak:
        """The maximum: score, (x, y) in original pixels, (work_x, work_y) in working pixels. The
        point is the centre of the first (row-major) block of pixels covered by the same windows
        that holds the maximum: the point ingest stores, so it equals the SearchHit's peak."""
        from convis_db.engine.pixels import original_point
        from convis_db.engine.saliency import grid_segments

        cmap = self._cmap
        y, x = np.unravel_index(int(np.argmax(cmap.saliency)), cmap.saliency.shape)
        ys, xs = grid_segments(cmap.grid)
        iy, ix = int(np.searchsorted(ys.stop, y, side="right")), int(np.searchsorted(xs.stop, x, side="right"))
        wy = int(ys.centres[iy]) if iy < len(ys.stop) and ys.start[iy] <= y else int(y)
        wx = int(xs.centres[ix]) if ix < len(xs.stop) and xs.start[ix] <= x else int(x)
        return MapPeak(score=float(cmap.saliency[y, x]), x=original_point(wx, cmap.scale),
                       y=original_point(wy, cmap.scale), work_x=wx, work_y=wy)
    grid = property(lambda self: self._cmap.grid)

    @property
    def concept_map(self) -> ConceptMap:
        """The underlying ConceptMap (for the CLI and explorer)."""
        return self._cmap

    def overlay(self, style: str = "mask", threshold: float = 0.0) -> np.ndarray:
        """(H, W, 3) uint8: the map drawn over the original image ('mask' as the paper, or 'heatmap')."""
        from convis_db.engine.render import render

        return render(self._cmap.original_pixels(), self.values, style, threshold)

    def to_png(self, path: str | Path | None = None, style: str = "mask", threshold: float = 0.0) -> bytes:
        """PNG bytes of overlay(); also written to `path` when given."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.overlay(style, threshold)).save(buf, format="PNG")
        data = buf.getvalue()
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def _repr_png_(self) -> bytes:  # Jupyter's rich display
        return self.to_png()

    def __repr__(self) -> str:
        p = self.peak
        (w, h), (ww, wh) = self.size, self.work_size
        return (f"<Map {self.synset} on {self.image_path} ({self.source}): {w}x{h} px (values on the {ww}x{wh} "
                f"working image), peak {p.score:.4f} at ({p.x}, {p.y})>")


class TextMap(Map):
    """A Grad-ECLIP map (Zhao et al., ICML 2024) of a text, or of a concept's definition, on an image:
    `values` in original-image pixels (normalised to [0, 1]), `text`, the explained `cosine`; drawn by
    `to_png()` and `overlay()` as a concept map is."""

    text = property(lambda self: self._cmap.text, doc="The explained text (a concept's definition, or the text given).")
    cosine = property(lambda self: self._cmap.cosine, doc="The explained image-text cosine S.")

    work_size = property(lambda self: (self._cmap.width, self._cmap.height),
                         doc="A Grad-ECLIP map's values are on the original image: its (width, height).")

    @property
    def peak(self) -> MapPeak:
        """The maximum and its pixel; the values are at the original size, so working = original pixels."""
        y, x = np.unravel_index(int(np.argmax(self.values)), self.values.shape)
        return MapPeak(score=float(self.values[y, x]), x=int(x), y=int(y), work_x=int(x), work_y=int(y))

    def __repr__(self) -> str:
        p = self.peak
        return (f"<TextMap grad-eclip of {self.text[:60]!r} on {self.image_path}: {self.values.shape[1]}x"
                f"{self.values.shape[0]} original px, cosine {self.cosine:.4f}, peak at ({p.x}, {p.y})>")


def _pixels_or_ref(image, what: str):
    """(H, W, 3) uint8 pixels as given, or IMAGE as a string (stored id, path or sha256, or a file)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise UsageError(f"{what}: an image array must be (height, width, 3) uint8 RGB; got shape "
                             f"{image.shape}, dtype {image.dtype}.")
        return image
    if isinstance(image, bool) or not isinstance(image, (str, int, Path, np.integer)):
        raise UsageError(f"{what}: image must be a stored image id, a path or sha256, an image file, or (H, W, 3) "
                         f"uint8 pixels; got {type(image).__name__}.")
    return str(image)


# ------------------------------------------------------------------------------------------------
# The database.


class Database:
    """A convis-db database file. Use `convis_db.open` or `convis_db.create` to get one.

    Example:
        >>> db = convis_db.open("photos.duckdb")                  # doctest: +SKIP
        >>> db.stats()["images"]                                   # doctest: +SKIP
    """

    def __init__(self, path: str | Path, *, device: str | torch.device = "auto", precision: str | None = None,
                 write: bool = False, progress: ProgressArg = False):
        from convis_db.models.precision import resolve_precision

        if not isinstance(path, (str, Path)):
            raise UsageError(f"path={path!r}: pass the database file's path (a str or Path).")
        write = check.flag("write", write)
        self.path = Path(path).expanduser()
        self.device = _device(device)
        #: The encoder's precision for what runs a model here (ingest, maps of new files): fp32, bf16
        #: or fp16, resolved once (None/"auto": fp32 on CPU, bf16 on CUDA).
        self.precision = resolve_precision(precision, self.device)
        self._asked_precision = precision  # Ray workers resolve it again on their own devices
        self.writable = write
        self._upgrade_progress = _progress(progress)  # opening an older file upgrades it (its long steps)
        self._hierarchy: StoredHierarchy | None = None
        self._maps: MapService | None = None
        self._profile = None
        #: What create() did (an InitReport: synsets, edges, definitions embedded now); None from open().
        self.init_report: Any = None
        # Fails now, not at the first query, on a missing, foreign or uninitialised file, or on one this
        # process holds in the other mode (the other handle keeps working).
        self._shared: handles.SharedConnection | None = handles.acquire(self.path, write, self._upgrade_progress)

    # -- connections -------------------------------------------------------------------------
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The process's connection to the file, shared by every Database open on it: read-only
        unless opened with write=True (read-only, DuckDB writes no file through it). Prefer the
        methods (and `sql()`); this is for what they do not cover."""
        if self._shared is None:
            raise DatabaseClosedError(f"this Database ({self.path}) is closed: close() was called or its with-block "
                                      "ended. Open the file again with convis_db.open(path).")
        return self._shared.con

    @property
    def closed(self) -> bool:
        """Whether close() was called (every call but close() then raises DatabaseClosedError)."""
        return self._shared is None

    @property
    def hierarchy(self) -> StoredHierarchy:
        """The hierarchy T in memory, loaded once per connection (explain, concepts, children, ancestors)."""
        if self._hierarchy is None:
            self._hierarchy = load_hierarchy(self.con)
        return self._hierarchy

    def close(self) -> None:
        """Close this handle: the file's connection closes with the last Database open on it (then
        relations from sql() stop working, and other processes can write the file). Every later
        call raises DatabaseClosedError; closing twice is harmless."""
        self._maps = None
        self._profile = None
        self._hierarchy = None
        shared, self._shared = self._shared, None
        if shared is not None:
            handles.release(shared)

    def __del__(self) -> None:
        # A handle dropped without close() (`convis_db.open(p).search(...)`) gives its share back.
        if getattr(self, "_shared", None) is not None:
            self.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        shared = self._shared
        if shared is None:
            return f"<convis_db.Database {self.path} (closed)>"
        others = f", shared with {shared.users - 1} other handle{'s' if shared.users > 2 else ''}" if shared.users > 1 else ""
        return f"<convis_db.Database {self.path} ({shared.mode}{others}, {self.device}, {self.precision})>"

    @property
    def profile(self):
        """The database's DatabaseProfile: the model and settings its explanations use."""
        from convis_db.profile import read_profile

        if self._profile is None:
            self._profile = read_profile(self.con, str(self.path))
        return self._profile

    def map_service(self, batch_size: int | None = None, *, cache: LRUCache | None = None, lock=None) -> MapService:
        """The map service of this database (kept; `batch_size` sets the encoder batch of a new one:
        None is the device's default). `cache` (an LRUCache of the images' window similarities, with
        its byte budget) and `lock` (held around each use of the connection, for a caller sharing this
        Database between threads, as the explorer does) make a new service that keeps them."""
        maps = self._maps
        if (maps is None or (batch_size is not None and maps.batch_size != batch_size)
                or (cache is not None and maps.cache is not cache) or (lock is not None and maps.lock is not lock)):
            maps = self._maps = MapService(self.con, self.device, self.precision, profile=self._profile,
                                           batch_size=batch_size, hierarchy=self.hierarchy, cache=cache,
                                           lock=lock if lock is not None else (maps.lock if maps is not None else None))
        return maps

    # -- writing -----------------------------------------------------------------------------
    def ingest(self, paths: str | Path | Iterable[str | Path] = (), *, recursive: bool = False,
               settings: SettingsRequest = None, progress: ProgressArg = False, retry_failed: bool = False,
               batch_size: int | None = None, model: str | None = None, pretrained: str | None = None,
               backfill_image_level: bool = False):
        """Explain and store images (files already stored are skipped by content hash); returns the
        IngestReport. Needs a database opened with write=True (or made by create()).

        `settings`: a Settings, or a dict of the options to set (the rest: the database's stored
        settings, or the paper's); a database keeps one setting. `backfill_image_level` first adds
        the image-level scores to stored images that lack them (made before schema 005).

        Example:
            >>> report = db.ingest("photos/", recursive=True, progress=True)   # doctest: +SKIP
            >>> report.count("ingested")                                        # doctest: +SKIP
        """
        from convis_db.ingest import Ingestor

        self._require_writable("ingest")
        items = check.paths("paths", paths)
        recursive, retry_failed = check.flag("recursive", recursive), check.flag("retry_failed", retry_failed)
        batch_size = check.optional_integer("batch_size", batch_size, minimum=1)
        settings = _settings_request(settings)
        self._profile = None  # images arrive: the stored settings may be new
        self._maps = None
        with Ingestor(self.path, model=model, pretrained=pretrained, device=self.device, settings=settings,
                      batch_size=batch_size, progress=_progress(progress), retry_failed=retry_failed,
                      precision=self.precision, con=self.con) as ingestor:
            report = ingestor.backfill_image_level() if backfill_image_level else None
            if (items or report is None) and not (report and report.interrupted):
                ingested = ingestor.run(items, recursive=recursive)
                if report is not None:
                    ingested.outcomes = report.outcomes + ingested.outcomes
                    ingested.seconds += report.seconds
                report = ingested
            return report

    def ingest_distributed(self, paths: str | Path | Iterable[str | Path], *, recursive: bool = False,
                           settings: SettingsRequest = None, progress: ProgressArg = False, retry_failed: bool = False,
                           batch_size: int | None = None, model: str | None = None, pretrained: str | None = None,
                           shards_dir: str | Path | None = None, address: str | None = None, shard_size: int = 64,
                           workers: int | None = None, merge: bool = True, precision: str | None = None):
        """`ingest` on a Ray cluster (docs/scale.md): Ray Data workers explain shards of `shard_size`
        files into Parquet under `shards_dir`, merged here (unless `merge=False`); returns the
        RayIngestReport. Needs `pip install 'convis-db[ray]'`. `precision` (default: the one this
        database was opened with, as asked) is resolved by each worker on its own device.

        Example:
            >>> db.ingest_distributed("/shared/photos", recursive=True, address="auto")  # doctest: +SKIP
        """
        from convis_db.distributed.ray_ingest import ray_ingest

        self._require_writable("ingest")
        items = check.paths("paths", paths)
        shard_size = check.integer("shard_size", shard_size, minimum=1)
        workers = check.optional_integer("workers", workers, minimum=1)
        settings = _settings_request(settings)
        shared = self._shared
        assert shared is not None  # _require_writable checked it is open
        handles.suspend(shared, self.path, "ingest_distributed (its writer opens the file itself)")
        self._profile = None
        self._maps = None
        try:
            return ray_ingest(self.path, items, recursive=recursive, shards_dir=shards_dir, address=address,
                              shard_size=shard_size, workers=workers, batch_size=batch_size, model=model,
                              pretrained=pretrained, settings=settings, retry_failed=retry_failed, merge=merge,
                              progress=_progress(progress),
                              precision=precision if precision is not None else self._asked_precision)
        finally:
            handles.reopen(shared, self.path)

    def merge(self, shards_dir: str | Path, *, progress: ProgressArg = False) -> list:
        """Merge the Parquet shards an `ingest_distributed` (or `ingest --engine ray`) wrote into this
        database, each shard checked whole, in groups of shards written in one transaction each
        (shards.merge_shards); shards merged before are skipped. Returns one ShardMerge per shard.

        Example:
            >>> [m.status for m in db.merge("/shared/convis-shards")]   # doctest: +SKIP
        """
        from convis_db.distributed.shards import merge_folder

        self._require_writable("merge shards")
        self._profile = None  # images arrive: the stored settings may be new
        self._maps = None
        return merge_folder(self.con, shards_dir, progress=_progress(progress))

    def _require_writable(self, what: str) -> None:
        self.con  # noqa: B018 - raises DatabaseClosedError after close()
        if not self.writable:
            raise UsageError(f"{self.path} was opened read-only; open it with convis_db.open(path, write=True) to {what}.")

    # -- queries -----------------------------------------------------------------------------
    def search(self, concept: str, *, by: str | None = None, min_score: float = 0.0, limit: int = 20,
               only_self: bool = False, offset: int = 0) -> SearchHits:
        """Images ranked by their score for `concept` (a synset name such as 'dog.n.01'), best first.

        `by="image"` ranks by the paper's image-level max_rank_sim of the whole image (the default
        where the database stores it), `by="map"` by the peak of the concept's saliency map.

        Example:
            >>> [(h.image_id, round(h.score, 3)) for h in db.search("dog.n.01", limit=2)]   # doctest: +SKIP
        """
        from convis_db.query.search import choose_level, search_images

        concept = check.name("concept", concept, "dog.n.01")
        by = check.choice("by", by, (None, "image", "map"))
        min_score = check.score("min_score", min_score)
        limit, offset = check.integer("limit", limit), check.integer("offset", offset)
        only_self = check.flag("only_self", only_self)
        level, notes = choose_level(self.con, by)
        rows = search_images(self.con, concept, min_score=min_score, limit=offset + limit, only_self=only_self,
                             by=level)[offset:]
        return SearchHits((_from_dict(SearchHit, r) for r in rows), level, notes)

    def count(self, concept: str, *, by: str | None = None, min_score: float = 0.0, only_self: bool = False) -> int:
        """How many images `search` finds for `concept` at `min_score` (all pages).

        From 10,000 indexed images on, a count at min_score 0, or at a threshold that fewer images pass
        than `search` keeps per concept (100), reads the concept's kept rows (its counts, or its best 100)
        whatever the collection's size; any other threshold counts one key per image of the concept
        (schemas 019-020, docs/scale.md).

        Example:
            >>> db.count("dog.n.01", min_score=0.9)                         # doctest: +SKIP
        """
        from convis_db.query.search import choose_level, count_images

        concept = check.name("concept", concept, "dog.n.01")
        by = check.choice("by", by, (None, "image", "map"))
        min_score, only_self = check.score("min_score", min_score), check.flag("only_self", only_self)
        level, _ = choose_level(self.con, by)
        return int(count_images(self.con, concept, min_score, only_self, level))

    def regions(self, concept: str, *, min_score: float | None = None, image: str | int | None = None,
                limit: int = 100) -> Regions:
        """Boxes (original pixels) where `concept`'s saliency reaches `min_score` (default 0.95).

        Example:
            >>> boxes = db.regions("animal.n.01", min_score=0.98)        # doctest: +SKIP
        """
        from convis_db.query.regions import DEFAULT_MIN_SCORE, find_regions

        concept = check.name("concept", concept, "dog.n.01")
        min_score = check.optional_score("min_score", min_score)
        ref = None if image is None else check.image_ref("image", image)
        limit = check.integer("limit", limit)
        rows = find_regions(self.con, concept, DEFAULT_MIN_SCORE if min_score is None else min_score,
                            image=ref, limit=limit, service=self.map_service())
        return Regions((_from_dict(Region, r) for r in rows), Region)

    def explain(self, image: str | int, *, depth: int = 4, top: int = 3, root: str = "entity.n.01") -> Explanation:
        """What CLIP sees in a stored image, as a tree from entity.n.01: each node's `top` best
        children, `depth` levels down.

        Example:
            >>> [n.synset for n in db.explain(1, depth=2).tree.walk()]   # doctest: +SKIP
        """
        from convis_db.query.explain import explain_image

        ref = check.image_ref("image", image)
        depth, top = check.integer("depth", depth), check.integer("top", top, minimum=1)
        root = check.name("root", root, "entity.n.01")
        out = explain_image(self.con, ref, depth=depth, top=top, root=root, hierarchy=self.hierarchy)
        return Explanation(image_id=out["image_id"], path=out["path"], tree=ExplanationNode.from_dict(out["tree"]))

    def concepts(self, query: str, *, limit: int = 20) -> Concepts:
        """Synsets of T matching a name, lemma or definition words.

        Example:
            >>> db.concepts("dog")[0].synset                               # doctest: +SKIP
            'dog.n.01'
        """
        from convis_db.query.concepts import find_concepts

        query = check.name("query", query, "dog")
        limit = check.integer("limit", limit)
        return Concepts((_from_dict(Concept, r) for r in find_concepts(self.con, query, limit, self.hierarchy)), Concept)

    def children(self, concept: str) -> Concepts:
        """The direct is-a children of one synset (a name, or a query matching one synset), by name.

        Example:
            >>> [c.synset for c in db.children("animal.n.01")][:3]        # doctest: +SKIP
        """
        from convis_db.query.concepts import concept_children

        concept = check.name("concept", concept, "animal.n.01")
        rows = concept_children(self.con, concept, self.hierarchy)
        return Concepts((_from_dict(ChildConcept, r) for r in rows), ChildConcept)

    def ancestors(self, concept: str) -> Concepts:
        """Every ancestor of one synset up to entity.n.01 (all DAG paths), nearest first.

        Example:
            >>> [a.synset for a in db.ancestors("dog.n.01")][:2]           # doctest: +SKIP
        """
        from convis_db.query.concepts import concept_ancestors

        concept = check.name("concept", concept, "dog.n.01")
        rows = concept_ancestors(self.con, concept, self.hierarchy)
        return Concepts((_from_dict(AncestorConcept, r) for r in rows), AncestorConcept)

    def map(self, image: str | int | Path | np.ndarray, concept: str | None = None, *, only_self: bool = False,
            method: str = "convis", text: str | None = None) -> Map:
        """The saliency map of `concept` on a stored image (id, path or sha256; no model run) or on a
        new image file (encoded with the database's model and settings).

        `method="grad-eclip"`: a Grad-ECLIP map (a TextMap) of `text`, or of `concept`'s definition, on a
        stored image, a file or (H, W, 3) uint8 pixels (ViT models; docs/evaluation.md).

        Example:
            >>> m = db.map(1, "dog.n.01"); m.values.shape                  # doctest: +SKIP
            >>> db.map("dog.jpg", text="a photo of a dog", method="grad-eclip").to_png("dog.png")   # doctest: +SKIP
        """
        if method == "grad-eclip":
            if only_self:
                raise UsageError("only_self is a convis option; drop it with method='grad-eclip'.")
            ref = _pixels_or_ref(image, "map")
            service = self.grad_eclip_service()
            return TextMap(service.for_pixels(ref, concept, text) if isinstance(ref, np.ndarray)
                           else service.for_ref(ref, concept, text))
        if method != "convis":
            raise UsageError(f"method={method!r}: choose 'convis' (Concept Visualization) or 'grad-eclip'.")
        if text is not None:
            raise UsageError("text= is for method='grad-eclip'; a convis map is of a concept.")
        ref = check.image_ref("image", image)
        if concept is None:
            raise UsageError("a convis map needs the concept: db.map(image, 'dog.n.01') (a synset name).")
        concept = check.name("concept", concept, "dog.n.01")
        return Map(self.map_service().for_ref(ref, concept, check.flag("only_self", only_self)))

    def top_concepts(self, image: str | int | Path, *, limit: int = 5) -> TopConcepts:
        """A stored image's most specific concepts: synsets ranked by the peak of their own map
        (`self_score`, descendants left out), best first.

        Example:
            >>> [c.synset for c in db.top_concepts(1, limit=3)]          # doctest: +SKIP
        """
        from convis_db.query.image_concepts import top_concepts
        from convis_db.store.image_store import get_image

        ref = check.image_ref("image", image)
        limit = check.integer("limit", limit)
        return TopConcepts((TopConcept(**r) for r in top_concepts(self.con, get_image(self.con, ref).image_id, limit)),
                           TopConcept)

    def best_concepts(self, images: Iterable[int]) -> dict[int, TopConcept]:
        """Each stored image's first concept in `top_concepts`' order, by image id (one query for a
        page of images; an image without scores is left out).

        Example:
            >>> db.best_concepts([1, 2])[1].synset                          # doctest: +SKIP
        """
        from convis_db.query.image_concepts import best_concept_of_images

        ids = [check.integer("images", i) for i in images] if not isinstance(images, (str, bytes)) else None
        if ids is None:
            raise UsageError(f"images={images!r}: pass a list of stored image ids.")
        return {i: TopConcept(**r) for i, r in best_concept_of_images(self.con, ids).items()}

    def stored_image(self, image: str | int | Path):
        """The store's whole record of one stored image (a StoredImage: its settings, window grid,
        scale and model), what its maps and trees are computed from; `image()` is the short record.

        Example:
            >>> db.stored_image(1).settings.stride                          # doctest: +SKIP
        """
        from convis_db.store.image_store import get_image

        return get_image(self.con, check.image_ref("image", image))

    def image_scores(self, image):
        """One stored image's scores for every synset of T as arrays indexed by synset id (an
        ImageScores: map peaks with and without descendants, their peak pixels, and the image-level
        scores, NaN where the image has none), the view `explain` builds its tree from. `image` is
        a stored image reference or a StoredImage.

        Example:
            >>> s = db.image_scores(1); s.score[db.synset_id("dog.n.01")]   # doctest: +SKIP
        """
        from convis_db.query.explain import load_image_scores
        from convis_db.store.image_store import StoredImage

        stored = image if isinstance(image, StoredImage) else self.stored_image(image)
        return load_image_scores(self.con, stored, self.hierarchy)

    def synset_id(self, concept: str) -> int:
        """The id (in T) of a synset name (or of a word with one sense in T); a word with several
        senses is a UsageError listing them, an unknown name a NotFoundError naming the nearest.
        Ids index `hierarchy` and `image_scores`.

        Example:
            >>> db.hierarchy.names[db.synset_id("dog.n.01")]                 # doctest: +SKIP
            'dog.n.01'
        """
        from convis_db.store.hierarchy_store import find_synset_name

        concept = check.name("concept", concept, "dog.n.01").strip()
        sid = self.hierarchy.id_of.get(concept)
        return sid if sid is not None else find_synset_name(self.con, concept)

    def image(self, image: str | int | Path) -> ImageRecord:
        """One stored image by id, path or sha256 (NotFoundError, with suggestions, when none matches).

        Example:
            >>> db.image(1).path                                            # doctest: +SKIP
        """
        from convis_db.store.image_store import get_image

        found = get_image(self.con, check.image_ref("image", image))
        return self._image_records("WHERE image_id = ?", [found.image_id])[0]

    def explain_text(self, image: str | int | Path | np.ndarray, text: str | None = None, *,
                     concept: str | None = None, blocks: int | None = None):
        """Which words of `text` make it match `image`: Grad-ECLIP's textual explanation (Zhao et al.,
        ICML 2024; docs/fidelity.md). `image` is a stored image (id, path or sha256), a file, or
        (H, W, 3) uint8 pixels; `concept=` (a synset) explains the words of its definition instead, the
        text its embedding d_s is made from (why the concept matched); `blocks` how many last blocks of
        the text tower are explained (default 8, the authors'). Returns a TextExplanation (`.words`,
        `.tokens`, `.similarity`); stores nothing.

        Example:
            >>> exp = db.explain_text("dog.jpg", "a dog in a car")            # doctest: +SKIP
            >>> [(w.word, round(w.weight, 2)) for w in exp.words]              # doctest: +SKIP
            >>> db.explain_text(1, concept="dog.n.01").words[:3]               # doctest: +SKIP
        """
        if text is not None and not isinstance(text, str):
            raise UsageError(f"text must be a string; got {type(text).__name__}.")
        return self.grad_eclip_service().explain_text(_pixels_or_ref(image, "explain_text"), text, blocks, concept)

    def grad_eclip_service(self):
        """The Grad-ECLIP service of this database (a GradEclipService: its model, the stored definition
        embeddings, texts embedded once), kept with its loaded model while the connection lives; what
        `map(method="grad-eclip")`, `explain_text` and `eval --method grad-eclip` use."""
        from convis_db.explainers.grad_eclip import GradEclipService

        kept = getattr(self, "_grad_eclip_kept", None)
        if kept is None or kept[0] is not self.con:
            kept = (self.con, GradEclipService(self.con, self.device))
            self._grad_eclip_kept = kept
        return kept[1]

    def mutual(self, image: str | int | Path | np.ndarray, labels: str | Iterable[str], *,
               descriptors: str | Path | None = None, templates: Iterable[str] | None = None, settings=None,
               faithfulness: bool = False, store: bool = False, **setting_values):
        """Why CLIP predicts one of `labels` for `image`: the concepts its vision and language encoders
        share (Sammani & Deligiannis, NeurIPS 2024; docs/mutual.md), with the definitions of T as the
        concept bank unless `descriptors=` names a descriptor file. Returns a MutualExplanation.

        `image`: a stored image (id, path or sha256), an image file, or (H, W, 3) uint8 pixels.
        `labels`: a list of class names, or one comma-separated string ("cat,dog,car").
        `settings`: a MutualSettings, or its fields as keywords (`n_concepts=3, decomposition="kmeans"`).
        `store=True` writes the explanation to the mutual_* tables (a database opened with write=True);
        its row id is then `exp.explanation_id`.

        Example:
            >>> exp = db.mutual("cat.jpg", ["cat", "dog", "car"])            # doctest: +SKIP
            >>> exp.predicted, [c.text for c in exp.mutual_concepts][:3]      # doctest: +SKIP
        """
        from convis_db.engine.images import read_image

        if store:
            self._require_writable("store a mutual-knowledge explanation")
        ref = _pixels_or_ref(image, "mutual")
        explainer = self.mutual_explainer(labels, descriptors=descriptors, templates=templates, settings=settings,
                                          **setting_values)
        if isinstance(ref, np.ndarray):
            exp = explainer.explain(ref, faithfulness=faithfulness)
        else:
            from convis_db.store.image_store import image_file

            path = image_file(self.con, ref)
            decoded = read_image(path)
            exp = explainer.explain(decoded.pixels, str(Path(path).absolute()), faithfulness, decoded.sha256)
        if store:
            exp.explanation_id = self.store_mutual(exp, explainer)
        return exp

    def mutual_explainer(self, labels: str | Iterable[str], *, descriptors: str | Path | None = None,
                         templates: Iterable[str] | None = None, settings=None, progress: ProgressArg = False,
                         **setting_values):
        """The mutual-knowledge explainer of this database for `labels` (a MutualExplainer), to explain
        many images with one model and one concept bank: `explainer.explain(pixels)`. Arguments as
        `mutual()`; a `descriptors` bank not yet stored is embedded now (`progress`: its bar) and kept
        when the database is writable.

        Example:
            >>> explainer = db.mutual_explainer("cat,dog,car")               # doctest: +SKIP
            >>> db.store_mutual(explainer.explain(pixels), explainer)         # doctest: +SKIP
        """
        import dataclasses

        from convis_db.mutual.service import explainer_for_database
        from convis_db.mutual.settings import DEFAULT_TEMPLATE, MutualSettings
        from convis_db.mutual.zeroshot import check_labels

        if isinstance(labels, str):
            labels = labels.split(",")
        try:
            labels = list(labels)
        except TypeError:
            raise UsageError(f"labels must be a list of class names or a comma-separated string; got "
                             f"{type(labels).__name__}.") from None
        if not labels:
            raise UsageError("labels is empty: give at least two class names, e.g. ['cat', 'dog'] or 'cat,dog'.")
        bad = next((x for x in labels if not isinstance(x, str)), None)
        if bad is not None:
            raise UsageError(f"labels must be strings; got {bad!r} ({type(bad).__name__}).")
        labels = check_labels(labels, "labels")
        if setting_values:
            known = {f.name for f in dataclasses.fields(MutualSettings)}
            unknown = sorted(set(setting_values) - known)
            if unknown:
                raise UsageError(f"mutual() has no option {', '.join(unknown)}; MutualSettings fields are: "
                                 f"{', '.join(sorted(known))}.")
            settings = dataclasses.replace(settings or MutualSettings(), **setting_values)
        explainer, _ = explainer_for_database(
            self.con, self.device, labels, list(templates) if templates is not None else [DEFAULT_TEMPLATE], settings,
            descriptors, store_bank=descriptors is not None and self.writable,
            model=self.grad_eclip_service().database_model, progress=_progress(progress))
        return explainer

    def store_mutual(self, explanation, explainer) -> int:
        """Write a MutualExplanation that `explainer` (from `mutual_explainer`) made to the mutual_*
        tables (a database opened with write=True); returns its explanation_id.

        Example:
            >>> db.store_mutual(explainer.explain(pixels), explainer)         # doctest: +SKIP
        """
        from convis_db.mutual.store import write_explanation

        self._require_writable("store a mutual-knowledge explanation")
        return write_explanation(self.con, explanation, self.profile.model_id, explainer.bank.bank_id)

    def has_descriptor_bank(self, descriptors: str | Path) -> bool:
        """Whether the descriptor file's bank (its bytes, embedded with this database's model) is stored,
        so `mutual_explainer(descriptors=...)` embeds nothing."""
        from convis_db.mutual.bank import stored_bank_id

        return stored_bank_id(self.con, self.profile.model_id, descriptors) is not None

    def sql(self, query: str, params: list | dict | None = None, *,
            tables: dict[str, str | Path] | None = None) -> duckdb.DuckDBPyRelation | None:
        """A DuckDB relation for a query (`.df()`, `.arrow()`, `.pl()`, `.fetchall()`); None for a
        statement that returns no rows. `tables` names Parquet, CSV or JSON-lines files to join, as
        tables (read through pyarrow, so DuckDB itself opens no path).

        Read-only (unless the database was opened with write=True): DuckDB is opened read-only with
        external access off and its settings locked, so nothing can be written and no other file read.

        Example:
            >>> db.sql("SELECT count(*) AS n FROM descendants('animal.n.01')").fetchall()   # doctest: +SKIP
        """
        from convis_db.query.sql import register_tables, sql_errors

        query = check.name("query", query, "SELECT count(*) FROM images")
        if params is not None and not isinstance(params, (list, tuple, dict)):
            raise UsageError(f"params={params!r}: pass a list (for ? placeholders) or a dict (for $name ones).")
        if tables is not None and not isinstance(tables, dict):
            raise UsageError(f"tables={tables!r}: pass a dict of table name to file path, e.g. {{'labels': 'labels.csv'}}.")
        con = self.con
        if hasattr(con, "complete"):  # DuckDB >= 2: an unread earlier result would refuse a new relation
            con.complete()
        register_tables(con, tables or {})
        with sql_errors(self.writable):
            return con.sql(query, params=params)

    def image_file(self, image: str | int | Path) -> str:
        """The file of `image`: a stored image's (id, path or sha256 prefix), else an existing file
        on disk; NotFoundError when it names neither.

        Example:
            >>> db.image_file(1)                                             # doctest: +SKIP
        """
        from convis_db.store.image_store import image_file

        return image_file(self.con, check.image_ref("image", image))

    def images(self, *, limit: int | None = None, offset: int = 0) -> ImageRecords:
        """The stored images in id order: all of them, or a page (`limit` from `offset`); the result's
        `total` counts them all.

        Example:
            >>> page = db.images(limit=60, offset=60); page.total             # doctest: +SKIP
        """
        limit = check.optional_integer("limit", limit)
        offset = check.integer("offset", offset)
        out = self._image_records("", [], limit, offset)
        out.total = int(self.con.execute("SELECT count(*) FROM images").fetchall()[0][0])
        return out

    def _image_records(self, where: str, params: list, limit: int | None = None, offset: int = 0) -> ImageRecords:
        page = " LIMIT ? OFFSET ?" if limit is not None or offset else ""
        rows = self.con.execute(
            "SELECT image_id, path, sha256, width, height, work_width, work_height, n_windows FROM images "
            f"{where} ORDER BY image_id{page}",  # fixed clauses
            params + ([limit if limit is not None else 2**62, offset] if page else [])).fetchall()
        out = ImageRecords((ImageRecord(*r) for r in rows), ImageRecord)
        out.total = len(out)
        return out

    def models(self) -> ModelRecords:
        """The models whose definition embeddings the database holds, with how many stored images
        each explained (one, for a database with images).

        Example:
            >>> [(m.name, m.pretrained) for m in db.models() if m.n_images]   # doctest: +SKIP
        """
        rows = self.con.execute(
            "SELECT m.model_id, m.name, m.pretrained, m.is_random, count(i.image_id) FROM models m "
            "LEFT JOIN images i USING (model_id) GROUP BY ALL ORDER BY m.model_id").fetchall()
        return ModelRecords((ModelRecord(r[0], r[1], r[2], bool(r[3]), int(r[4])) for r in rows), ModelRecord)

    def stats(self) -> dict[str, Any]:
        """Counts of what the database holds (synsets, models, images, windows, ...)."""
        from convis_db.query.stats import database_stats

        return database_stats(self.con, str(self.path))


def _settings_request(settings: SettingsRequest) -> SettingsRequest:
    if settings is None or isinstance(settings, (Settings, dict)):
        return settings
    raise UsageError(f"settings={settings!r}: pass a Settings, or a dict of the options to set "
                     "(e.g. {'stride': 32}), or None for the database's.")


def open(path: str | Path, *, device: str | torch.device = "auto", precision: str | None = None,  # noqa: A001
         write: bool = False) -> Database:
    """Open an existing database: read-only unless `write=True` (needed by `ingest`). `device` and
    `precision` are resolved once, as the CLI's --device and --precision.

    One process holds one connection per file: opening a file this process already has open (in
    the same mode) returns a Database sharing that connection; in the other mode it fails, leaving
    the open one working.

    Example:
        >>> import convis_db
        >>> db = convis_db.open("photos.duckdb", device="cpu")     # doctest: +SKIP
    """
    return Database(path, device=device, precision=precision, write=write)


def create(path: str | Path, *, model: str | None = None, pretrained: str | None = None,
           vocab: str = "physical-objects", hierarchy: str | None = None, device: str | torch.device = "auto",
           precision: str | None = None, embeddings: str | None = None, batch_size: int = 256,
           progress: ProgressArg = False) -> Database:
    """Create (or extend) a database: the WordNet hierarchy of `vocab` and the definition embeddings
    of `model`; returns it opened for writing. Idempotent, like `convis-db init`.

    `hierarchy` is "reference" (the authors' T: hypernyms only, the default) or "extended"
    (instance hypernyms too); see docs/fidelity.md. `embeddings` is how window embeddings are stored:
    "float32" (default), "float16" or "none" (see the README's storage section).

    Example:
        >>> db = convis_db.create("photos.duckdb", model="ViT-B-32", pretrained="openai")   # doctest: +SKIP
    """
    from convis_db.init_db import initialise
    from convis_db.models.registry import DEFAULT_MODEL, DEFAULT_PRETRAINED, resolve_model

    if not isinstance(path, (str, Path)):
        raise UsageError(f"path={path!r}: pass the database file's path (a str or Path).")
    vocab = check.name("vocab", vocab, "physical-objects")
    for arg, value in (("model", model), ("pretrained", pretrained), ("hierarchy", hierarchy), ("embeddings", embeddings)):
        if value is not None:
            check.name(arg, value, {"model": "ViT-B-32", "pretrained": "openai", "hierarchy": "reference",
                                    "embeddings": "float32"}[arg])
    batch_size = check.integer("batch_size", batch_size, minimum=1)
    dev = _device(device)
    spec = resolve_model(model or DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED)
    from convis_db.models.precision import resolve_precision

    resolved = resolve_precision(precision, dev)
    report = initialise(path, vocab, spec, dev, batch_size=batch_size, progress=_progress(progress), hierarchy=hierarchy,
               precision=resolved, embeddings=embeddings)
    db = Database(path, device=dev, precision=resolved, write=True)
    db.init_report = report
    return db


__all__ = ["AncestorConcept", "ChildConcept", "Concept", "Concepts", "Database", "DatabaseProfile", "Explanation",
           "ExplanationNode", "ImageRecord", "ImageRecords", "Map", "MapPeak", "ModelRecord", "ModelRecords", "Region", "Regions", "Results", "SearchHit",
           "SearchHits", "Settings", "TextMap", "TopConcept", "TopConcepts", "create", "open"]

"""The public Python API: `convis_db.open` and `convis_db.create` return a `Database`.

A `Database` is to convis-db what sqlite-utils' `Database` is to its CLI: every query returns data
(dataclasses, numpy arrays or DuckDB relations), never printed text, and the CLI, the explorer and
eval are its users. It holds one DuckDB connection, in the mode it was opened in (read-only unless
`write=True`), opened on first use and kept so that relations from `sql()` stay valid; `ingest`
closes it while its own writer holds the file. It also holds, once used, the database's profile
(convis_db.profile: which model and settings), its hierarchy and its map service.

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

from convis_db.engine.settings import Settings
from convis_db.profile import DatabaseProfile, SettingsRequest
from convis_db.errors import UsageError
from convis_db.progress import Progress, no_progress, tqdm_progress
from convis_db.query.maps import ConceptMap, MapService
from convis_db.store.db import connect, require_initialised
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

    return device if isinstance(device, torch.device) else resolve_device(device)


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


class SearchHits(list):
    """The hits of one search, best first (a list of SearchHit), with the score they are ranked by
    (`by`: "image" or "map") and notes for the user (e.g. how many images lack image-level scores)."""

    def __init__(self, hits: Iterable[SearchHit], by: str, notes: list[str]):
        super().__init__(hits)
        self.by = by
        self.notes = notes


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


@dataclass
class Explanation:
    """An image's explanation tree (`tree`, from the root concept down)."""

    image_id: int
    path: str
    tree: ExplanationNode

    def as_dict(self) -> dict:
        return {"image_id": self.image_id, "path": self.path, "tree": self.tree.as_dict()}


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
    """A stored image: original size, working size and the settings it was explained with."""

    image_id: int
    path: str
    sha256: str
    width: int
    height: int
    work_width: int
    work_height: int
    n_windows: int


class Map:
    """One concept's saliency map on one image.

    `values` is the map in working-image pixels (float64, the formula's exact values in [0, 1]);
    `to_png()` and `overlay()` draw it over the original image; in a notebook the object displays
    itself as that picture."""

    def __init__(self, cmap: ConceptMap):
        self._cmap = cmap

    values = property(lambda self: self._cmap.saliency, doc="(work_h, work_w) float64 saliency in working pixels.")
    synset = property(lambda self: self._cmap.synset)
    image_id = property(lambda self: self._cmap.image_id)
    image_path = property(lambda self: self._cmap.image_path)
    source = property(lambda self: self._cmap.source, doc="'database' (stored windows) or 'computed' (a new file).")
    peak = property(lambda self: self._cmap.peak, doc="First maximum: score, working (x, y), original (x_orig, y_orig).")
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
        return (f"<Map {self.synset} on {self.image_path} ({self.source}): {self.values.shape[1]}x{self.values.shape[0]} "
                f"working px, peak {p['score']:.4f} at ({p['x_orig']}, {p['y_orig']})>")


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

        self.path = Path(path).expanduser()
        self.device = _device(device)
        #: The encoder's precision for what runs a model here (ingest, maps of new files): fp32, bf16
        #: or fp16, resolved once (None/"auto": fp32 on CPU, bf16 on CUDA).
        self.precision = resolve_precision(precision, self.device)
        self._asked_precision = precision  # Ray workers resolve it again on their own devices
        self.writable = write
        self._upgrade_progress = _progress(progress)  # a writable open upgrades an older file (its long steps)
        self._hierarchy: StoredHierarchy | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._maps: MapService | None = None
        self._profile = None
        #: What create() did (an InitReport: synsets, edges, definitions embedded now); None from open().
        self.init_report = None
        self.con  # fail now, not at the first query, on a missing, foreign or uninitialised file

    # -- connections -------------------------------------------------------------------------
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection (opened on first use): read-only unless the database was opened with
        write=True. Read-only, DuckDB writes no file through it."""
        if self._con is None:
            con = connect(self.path, write=self.writable, progress=self._upgrade_progress)
            try:
                require_initialised(con, self.path)
            except BaseException:
                con.close()
                raise
            self._con = con
        return self._con

    @property
    def hierarchy(self) -> StoredHierarchy:
        """The hierarchy T in memory, loaded once per connection (explain, concepts, children, ancestors)."""
        if self._hierarchy is None:
            self._hierarchy = load_hierarchy(self.con)
        return self._hierarchy

    def close(self) -> None:
        """Close the connection (relations from sql() stop working). The object can be used again."""
        self._maps = None
        self._profile = None
        if self._con is not None:
            self._con.close()
            self._con = None
        self._hierarchy = None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-write" if self.writable else "read-only"
        return f"<convis_db.Database {self.path} ({mode}, {self.device}, {self.precision})>"

    @property
    def profile(self):
        """The database's DatabaseProfile: the model and settings its explanations use."""
        from convis_db.profile import read_profile

        if self._profile is None:
            self._profile = read_profile(self.con, str(self.path))
        return self._profile

    def map_service(self, batch_size: int | None = None) -> MapService:
        """The map service of this database (kept; `batch_size` sets the encoder batch of a new one:
        None is the device's default)."""
        if self._maps is None or (batch_size is not None and self._maps.batch_size != batch_size):
            self._maps = MapService(self.con, self.device, self.precision, profile=self.profile,
                                    batch_size=batch_size, hierarchy=self.hierarchy)
        return self._maps

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
        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.close()  # the writer holds the file alone while it runs
        with Ingestor(self.path, model=model, pretrained=pretrained, device=self.device, settings=settings,
                      batch_size=batch_size, progress=_progress(progress), retry_failed=retry_failed,
                      precision=self.precision) as ingestor:
            report = ingestor.backfill_image_level() if backfill_image_level else None
            if items and not (report and report.interrupted):
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
        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.close()
        return ray_ingest(self.path, items, recursive=recursive, shards_dir=shards_dir, address=address,
                          shard_size=shard_size, workers=workers, batch_size=batch_size, model=model,
                          pretrained=pretrained, settings=settings, retry_failed=retry_failed, merge=merge,
                          progress=_progress(progress),
                          precision=precision if precision is not None else self._asked_precision)

    def merge(self, shards_dir: str | Path, *, progress: ProgressArg = False) -> list:
        """Merge the Parquet shards an `ingest_distributed` (or `ingest --engine ray`) wrote into this
        database, one transaction per shard; shards merged before are skipped. Returns one ShardMerge
        per shard.

        Example:
            >>> [m.status for m in db.merge("/shared/convis-shards")]   # doctest: +SKIP
        """
        from convis_db.store.shards import merge_folder

        self._require_writable("merge shards")
        self._profile = None  # images arrive: the stored settings may be new
        self._maps = None
        return merge_folder(self.con, shards_dir, progress=_progress(progress))

    def _require_writable(self, what: str) -> None:
        if not self.writable:
            raise UsageError(f"{self.path} was opened read-only; open it with convis_db.open(path, write=True) to {what}.")

    # -- queries -----------------------------------------------------------------------------
    def search(self, concept: str, *, by: str | None = None, min_score: float = 0.0, limit: int = 20,
               only_self: bool = False, offset: int = 0) -> list[SearchHit]:
        """Images ranked by their score for `concept` (a synset name such as 'dog.n.01'), best first.

        `by="image"` ranks by the paper's image-level max_rank_sim of the whole image (the default
        where the database stores it), `by="map"` by the peak of the concept's saliency map.

        Example:
            >>> [(h.image_id, round(h.score, 3)) for h in db.search("dog.n.01", limit=2)]   # doctest: +SKIP
        """
        from convis_db.query.search import choose_level, search_images

        level, notes = choose_level(self.con, by)
        rows = search_images(self.con, concept, min_score=min_score, limit=offset + limit, only_self=only_self,
                             by=level)[offset:]
        return SearchHits((_from_dict(SearchHit, r) for r in rows), level, notes)

    def count(self, concept: str, *, by: str | None = None, min_score: float = 0.0, only_self: bool = False) -> int:
        """How many images `search` finds for `concept` at `min_score` (all pages).

        Example:
            >>> db.count("dog.n.01", min_score=0.9)                         # doctest: +SKIP
        """
        from convis_db.query.search import choose_level, count_images

        level, _ = choose_level(self.con, by)
        return int(count_images(self.con, concept, min_score, only_self, level))

    def regions(self, concept: str, *, min_score: float | None = None, image: str | int | None = None,
                limit: int = 100) -> list[Region]:
        """Boxes (original pixels) where `concept`'s saliency reaches `min_score` (default 0.95).

        Example:
            >>> boxes = db.regions("animal.n.01", min_score=0.98)        # doctest: +SKIP
        """
        from convis_db.query.regions import DEFAULT_MIN_SCORE, find_regions

        rows = find_regions(self.con, concept, DEFAULT_MIN_SCORE if min_score is None else min_score,
                            image=None if image is None else str(image), limit=limit, service=self.map_service())
        return [_from_dict(Region, r) for r in rows]

    def explain(self, image: str | int, *, depth: int = 4, top: int = 3, root: str = "entity.n.01") -> Explanation:
        """What CLIP sees in a stored image, as a tree from entity.n.01: each node's `top` best
        children, `depth` levels down.

        Example:
            >>> [n.synset for n in db.explain(1, depth=2).tree.walk()]   # doctest: +SKIP
        """
        from convis_db.query.explain import explain_image

        out = explain_image(self.con, str(image), depth=depth, top=top, root=root, hierarchy=self.hierarchy)
        return Explanation(image_id=out["image_id"], path=out["path"], tree=ExplanationNode.from_dict(out["tree"]))

    def concepts(self, query: str, *, limit: int = 20) -> list[Concept]:
        """Synsets of T matching a name, lemma or definition words.

        Example:
            >>> db.concepts("dog")[0].synset                               # doctest: +SKIP
            'dog.n.01'
        """
        from convis_db.query.concepts import find_concepts

        return [_from_dict(Concept, r) for r in find_concepts(self.con, query, limit, self.hierarchy)]

    def children(self, concept: str) -> list[ChildConcept]:
        """The direct is-a children of one synset (a name, or a query matching one synset), by name.

        Example:
            >>> [c.synset for c in db.children("animal.n.01")][:3]        # doctest: +SKIP
        """
        from convis_db.query.concepts import concept_children

        return [_from_dict(ChildConcept, r) for r in concept_children(self.con, concept, self.hierarchy)]

    def ancestors(self, concept: str) -> list[AncestorConcept]:
        """Every ancestor of one synset up to entity.n.01 (all DAG paths), nearest first.

        Example:
            >>> [a.synset for a in db.ancestors("dog.n.01")][:2]           # doctest: +SKIP
        """
        from convis_db.query.concepts import concept_ancestors

        return [_from_dict(AncestorConcept, r) for r in concept_ancestors(self.con, concept, self.hierarchy)]

    def map(self, image: str | int | Path, concept: str, *, only_self: bool = False) -> Map:
        """The saliency map of `concept` on a stored image (id, path or sha256; no model run) or on a
        new image file (encoded with the database's model and settings).

        Example:
            >>> m = db.map(1, "dog.n.01"); m.values.shape                  # doctest: +SKIP
        """
        return Map(self.map_service().for_ref(str(image), concept, only_self))

    def mutual(self, image: str | Path | np.ndarray, labels: list[str], **options):
        """Why CLIP predicts one of `labels` for `image`: the concepts its vision and language encoders
        share (Sammani & Deligiannis, NeurIPS 2024; docs/mutual.md), with the definitions of T as the
        concept bank unless `descriptors=` names a descriptor file. Returns a MutualExplanation.

        Example:
            >>> exp = db.mutual("cat.jpg", ["cat", "dog", "car"])            # doctest: +SKIP
            >>> exp.predicted, [c.text for c in exp.mutual_concepts][:3]      # doctest: +SKIP
        """
        from convis_db.mutual import explain_image

        return explain_image(image, labels, db=self.path, device=self.device, **options)

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

        con = self.con
        if hasattr(con, "complete"):  # DuckDB >= 2: an unread earlier result would refuse a new relation
            con.complete()
        register_tables(con, tables or {})
        with sql_errors(self.writable):
            return con.sql(query, params=params)

    def images(self) -> list[ImageRecord]:
        """Every stored image, in id order."""
        rows = self.con.execute(
            "SELECT image_id, path, sha256, width, height, work_width, work_height, n_windows FROM images ORDER BY image_id"
        ).fetchall()
        return [ImageRecord(*r) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Counts of what the database holds (synsets, models, images, windows, ...)."""
        from convis_db.query.stats import database_stats

        return database_stats(self.con, str(self.path))


def open(path: str | Path, *, device: str | torch.device = "auto", precision: str | None = None,  # noqa: A001
         write: bool = False) -> Database:
    """Open an existing database: read-only unless `write=True` (needed by `ingest`). `device` and
    `precision` are resolved once, as the CLI's --device and --precision.

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

    dev = _device(device)
    spec = resolve_model(model or DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED)
    from convis_db.models.precision import resolve_precision

    resolved = resolve_precision(precision, dev)
    report = initialise(path, vocab, spec, dev, batch_size=batch_size, progress=_progress(progress), hierarchy=hierarchy,
               precision=resolved, embeddings=embeddings)
    db = Database(path, device=dev, precision=resolved, write=True)
    db.init_report = report
    return db


__all__ = ["AncestorConcept", "ChildConcept", "Concept", "Database", "DatabaseProfile", "Explanation", "ExplanationNode",
           "ImageRecord", "Map", "Region", "SearchHit", "SearchHits", "Settings", "create", "open"]

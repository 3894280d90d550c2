"""The read side of the visual explorer: what the web API returns, computed from stored data only.

One `Explorer` holds one read-only `convis_db.Database` and reads through its methods only (its
connection is not thread-safe, so every call into it takes `_db_lock`), the hierarchy T in memory (`StoredHierarchy`: names, lemmas, definitions,
is-a lists, loaded once), and caches:

* `saliency`: raw maps (the formula's values) at working resolution, keyed by (image, synset, only_self);
* `png`: rendered pictures, keyed by (image, synset, only_self, style, threshold, size);
* `similarities`: per image, the window x synset cosines kept by the map service (query/maps.py; once
  an image has been asked for a few concepts, each row sorted), so that the many maps of one tree
  level cost one matrix product;
* `pictures`: the original image resized to the sizes asked for; `scores`: an image's stored scores
  (`ImageScores`, the same object `explain` builds its tree from: map peaks, and the image-level scores
  where the image has them).

Maps come from the database's one map service (`Database.map_service`, given this object's
similarity cache and database lock), so they equal `convis-db map` exactly. No model is loaded, except to encode the
windows again of an image whose database keeps no window embeddings.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from convis_db.api import Database
from convis_db.cache import LRUCache
from convis_db.engine.images import PixelBudget, decode_cost, read_image
from convis_db.engine.render import STYLES, render
from convis_db.errors import ImageError, NotFoundError, UsageError
from convis_db.query.explain import ROOT, ImageScores
from convis_db.store.image_store import StoredImage

log = logging.getLogger(__name__)

MIN_SIZE, MAX_SIZE = 16, 2048
MB = 1 << 20
#: Thumbnails come in these sizes only: a requested size is rounded up to the next one (a browser
#: scales the picture down), so a page asking for 100..139 pixels costs two pictures, not forty.
THUMB_SIZES = (64, 128, 192, 256, 320, 480, 640, 960, 1280, 1600, MAX_SIZE)
#: Originals decoded at once, and the decoded pixels they may hold together (an original larger than
#: the whole budget is decoded alone). Each original is decoded once, reduced towards MAX_SIZE where
#: its format allows, and every picture of it is resized from that cached base.
DECODE_SLOTS = 2
DECODE_BUDGET_PIXELS = 64_000_000


def thumb_size(size: int) -> int:
    """The fixed thumbnail size that serves a request for `size` pixels (the next one up)."""
    return next(s for s in THUMB_SIZES if s >= size)


def fitted(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) of a width x height picture fitted into size x size, never enlarged."""
    scale = min(1.0, size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class CacheBudget:
    """Byte budgets of the explorer's caches."""

    saliency: int = 128 * MB
    png: int = 64 * MB
    similarities: int = 512 * MB
    pictures: int = 64 * MB
    scores: int = 64 * MB


def clean_threshold(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"threshold {value} is outside [0, 1].")
    return round(float(value), 2)


def clean_size(value: int) -> int:
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise UsageError(f"size {value} is outside [{MIN_SIZE}, {MAX_SIZE}] pixels.")
    return int(value)


def clean_style(value: str) -> str:
    if value not in STYLES:
        raise UsageError(f"style {value!r} is not one of: {', '.join(STYLES)}.")
    return value




class Explorer:
    """Everything the web app shows, from one database opened read-only through the Python API
    (`db`: a path, or a read-only `convis_db.Database`, which the explorer then owns)."""

    def __init__(self, db: str | Path | Database, budget: CacheBudget | None = None):
        self.db = db if isinstance(db, Database) else Database(db, device="cpu")
        if self.db.writable:
            raise UsageError("the explorer reads a database opened read-only; open it with convis_db.open(path).")
        self.db_path = str(self.db.path)
        try:
            self._load(budget or CacheBudget())
        except Exception:
            self.db.close()
            raise

    def _load(self, budget: CacheBudget) -> None:
        self._db_lock = threading.RLock()
        self._map_lock = threading.Lock()
        h = self.hierarchy = self.db.hierarchy.load_text()  # every column now, before threads share it
        self.names = h.names
        self.n_synsets = h.size
        self._keys = h.lemma_keys
        self._key_strings = [k for k, _ in self._keys]
        models = self.db.models()
        self.models = {m.model_id: {"model_id": m.model_id, "name": m.name, "pretrained": m.pretrained,
                                    "is_random": m.is_random} for m in models}
        self.image_models = [m.model_id for m in models if m.n_images]
        st = os.stat(self.db_path)
        self._identity = f"{os.path.abspath(self.db_path)}:{st.st_mtime_ns}:{st.st_size}"
        self._images: dict[int, StoredImage] = {}
        self._file_status: dict[int, str] = {}
        self.saliency_cache = LRUCache("saliency", budget.saliency)
        self.png_cache = LRUCache("png", budget.png)
        self.similarity_cache = LRUCache("similarities", budget.similarities)
        self.picture_cache = LRUCache("pictures", budget.pictures)
        self.score_cache = LRUCache("scores", budget.scores)
        self._maps = self.db.map_service(cache=self.similarity_cache, lock=self._db_lock)
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self.decode_pixels = PixelBudget(DECODE_BUDGET_PIXELS)
        self._image_locks: dict[int, threading.Lock] = {}
        self._image_locks_lock = threading.Lock()
        self.decodes = 0  # originals decoded so far (each image once while its base stays cached)

    def close(self) -> None:
        with self._db_lock:
            self.db.close()

    # -- lookups ----------------------------------------------------------------------------------
    def image(self, image_id: int) -> StoredImage:
        image = self._images.get(image_id)
        if image is None:
            with self._db_lock:
                image = self.db.stored_image(int(image_id))
            if image.image_id != image_id:  # an image reference also matches paths; an id in a URL is only an id
                raise NotFoundError(f"no stored image with id {image_id}.")
            self._images[image_id] = image
        return image

    def synset_id(self, name: str) -> int:
        """The id of an exact synset name; otherwise the store's error (nearest names, or the senses of a word)."""
        name = (name or "").strip()
        if not name:
            raise UsageError("name a concept (a synset such as dog.n.01).")
        sid = self.hierarchy.id_of.get(name)
        if sid is None:
            with self._db_lock:
                sid = self.db.synset_id(name)
        return sid

    def scores(self, image: StoredImage) -> ImageScores:
        cached = self.score_cache.get(image.image_id)
        if cached is not None:
            return cached
        with self._db_lock:
            out = self.db.image_scores(image)
        self.score_cache.put(image.image_id, out, out.nbytes)
        return out

    # -- JSON-ready answers -----------------------------------------------------------------------
    def concept(self, sid: int) -> dict:
        h = self.hierarchy
        return {"synset": h.names[sid], "lemmas": h.lemmas[sid], "definition": h.definitions[sid],
                "depth": h.depth[sid], "lexname": h.lexnames[sid],
                "is_word_sense": h.is_word_sense[sid], "n_children": len(h.children[sid])}

    def node(self, scores: ImageScores, sid: int) -> dict:
        h = self.hierarchy
        return scores.node(sid, image_level=True) | {"definition": h.definitions[sid], "lemmas": h.lemmas[sid],
                                                     "depth": h.depth[sid]}

    def path(self, sid: int) -> list[int]:
        """The shortest is-a path from entity.n.01 down to the synset."""
        return self.hierarchy.path_ids(sid)[::-1]

    def chain(self, trail: list[str], sid: int) -> list[int]:
        """`trail` as ids when it is an is-a chain from the root to `sid`; else the shortest path."""
        ids = [self.hierarchy.id_of.get(t) for t in trail]
        return ids if ids and ids[-1] == sid and self.hierarchy.is_chain(ids) else self.path(sid)

    def stats(self) -> dict:
        with self._db_lock:
            out = self.db.stats()
        used = [self.models[m] for m in self.image_models if m in self.models]
        out["model"] = ", ".join(f"{m['name']} / {m['pretrained']}" for m in used) or None
        out["random_weights"] = any(m["is_random"] for m in used)
        out["root"] = ROOT
        out["cache"] = {c.name: c.info() for c in (self.saliency_cache, self.png_cache, self.similarity_cache,
                                                   self.picture_cache, self.score_cache)}
        return out

    def list_images(self, offset: int, limit: int) -> dict:
        with self._db_lock:
            page = self.db.images(limit=limit, offset=offset)
            tops = self.db.best_concepts([r.image_id for r in page])
        images = []
        for r in page:
            top = tops.get(r.image_id)
            images.append({"image_id": r.image_id, "path": r.path, "name": os.path.basename(r.path), "width": r.width,
                           "height": r.height,
                           "top_concept": {"synset": top.synset, "self_score": top.self_score} if top else None})
        return {"total": page.total, "offset": offset, "limit": limit, "images": images}

    def image_detail(self, image_id: int) -> dict:
        image = self.image(image_id)
        scores = self.scores(image)
        with self._db_lock:
            tops = self.db.top_concepts(image.image_id, limit=5)
        model = self.models.get(image.model_id, {})
        return {"image_id": image.image_id, "path": image.path, "name": os.path.basename(image.path),
                "sha256": image.sha256, "width": image.width, "height": image.height,
                "work_width": image.work_width, "work_height": image.work_height, "scale": image.scale,
                "n_windows": image.n_windows, "settings": image.settings.as_dict(),
                "model": f"{model.get('name')} / {model.get('pretrained')}",
                "random_weights": bool(model.get("is_random")),
                "file_status": self.file_status(image),
                "has_image_level": scores.has_image_level,
                "top_concepts": [{"synset": t.synset, "self_score": t.self_score, "score": t.score,
                                  **scores.image_level(self.hierarchy.id_of[t.synset])}
                                 for t in tops]}

    def children(self, image_id: int, synset: str, trail: list[str] | None = None, limit: int = 500) -> dict:
        image = self.image(image_id)
        sid = self.synset_id(synset)
        scores = self.scores(image)
        kids = scores.ranked_children(sid)
        crumbs = self.chain(trail or [], sid)
        return {"image_id": image.image_id, "node": self.node(scores, sid),
                "breadcrumbs": [{"synset": self.names[c], "score": float(scores.score[c])} for c in crumbs],
                "n_children": len(kids),
                "children": [self.node(scores, c) | {"rank": i + 1} for i, c in enumerate(kids[:limit])]}

    def suggest(self, query: str, limit: int = 10) -> dict:
        """Synsets whose name or a lemma equals, starts with, or (3+ letters) contains the query."""
        q = re.sub(r"\s+", "_", (query or "").strip().lower())
        out: dict[int, tuple] = {}
        if q:
            keys = self._key_strings
            i = bisect.bisect_left(keys, q)
            n_seen = 0
            while i < len(keys) and keys[i].startswith(q) and n_seen < 5000:
                key, sid = self._keys[i]
                rank = (0 if key == q else 1, self._head(sid) != key, len(key), self.names[sid])
                if sid not in out or rank < out[sid]:
                    out[sid] = rank
                i += 1
                n_seen += 1
            if len(out) < limit and len(q) >= 3:
                for key, sid in self._keys:
                    if q in key and sid not in out:
                        out[sid] = (2, self._head(sid) != key, len(key), self.names[sid])
        match = {0: "exact", 1: "prefix", 2: "substring"}
        best = sorted(out, key=out.__getitem__)[:limit]
        return {"query": query, "concepts": [self.concept(s) | {"match": match[out[s][0]]} for s in best]}

    def _head(self, sid: int) -> str:
        return self.names[sid].rsplit(".", 2)[0].lower()

    def concept_detail(self, synset: str) -> dict:
        sid = self.synset_id(synset)
        h = self.hierarchy
        return self.concept(sid) | {
            "path": [h.names[i] for i in self.path(sid)],
            "parents": [h.names[p] for p in sorted(h.parents[sid], key=lambda p: h.names[p])],
            "children": [{"synset": h.names[c], "n_children": len(h.children[c]), "definition": h.definitions[c]}
                         for c in sorted(h.children[sid], key=lambda c: h.names[c])],
            "n_descendants": h.n_descendants(sid)}

    def search(self, synset: str, limit: int = 24, offset: int = 0, min_score: float = 0.0,
               only_self: bool = False, by: str | None = None) -> dict:
        """Images ranked by `by` ("image": image-level max_rank_sim, "map": map peak; unset: as `search`)."""
        sid = self.synset_id(synset)
        name = self.names[sid]
        with self._db_lock:
            hits = self.db.search(name, by=by, min_score=min_score, limit=limit, only_self=only_self, offset=offset)
            total = self.db.count(name, by=hits.by, min_score=min_score, only_self=only_self)
        results = [{"rank": offset + i + 1, "image_id": h.image_id, "path": h.path,
                    "name": os.path.basename(h.path), "score": float(h.score), "map_score": float(h.map_score),
                    "image_score": None if h.image_score is None else float(h.image_score),
                    "peak_x": h.peak_x, "peak_y": h.peak_y, "width": h.width, "height": h.height}
                   for i, h in enumerate(hits)]
        return {"synset": name, "concept": self.concept(sid), "total": total, "offset": offset, "limit": limit,
                "min_score": min_score, "only_self": only_self, "by": hits.by, "notes": hits.notes,
                "results": results}

    # -- maps and pictures ------------------------------------------------------------------------
    def saliency(self, image: StoredImage, sid: int, only_self: bool = False) -> np.ndarray:
        """The raw working-resolution map, equal to MapService.for_stored(image, name).saliency."""
        key = (image.image_id, sid, bool(only_self))
        hit = self.saliency_cache.get(key)
        if hit is not None:
            return hit
        with self._map_lock:  # one map computation at a time; a waiting request finds it cached
            hit = self.saliency_cache.get(key, count=False)
            if hit is not None:
                return hit
            # windows encoded again from the file where the database keeps none (--embeddings none)
            saliency = self._maps.for_stored(image, self.names[sid], only_self).saliency
            self.saliency_cache.put(key, saliency, saliency.nbytes)
            return saliency

    def file_status(self, image: StoredImage) -> str:
        """'ok', 'missing' (unreadable now) or 'changed' (its content differs from what was ingested),
        from the file's bytes (hashed in chunks; nothing is decoded)."""
        status = self._file_status.get(image.image_id)
        if status is None:
            digest = hashlib.sha256()
            try:
                with open(image.path, "rb") as fh:
                    while chunk := fh.read(4 * MB):
                        digest.update(chunk)
                status = "ok" if digest.hexdigest() == image.sha256 else "changed"
            except OSError as exc:
                log.info("image %s: %s", image.image_id, exc)
                status = "missing"
            self._file_status[image.image_id] = status
        return status

    def _image_lock(self, image_id: int) -> threading.Lock:
        with self._image_locks_lock:
            return self._image_locks.setdefault(image_id, threading.Lock())

    def _base(self, image: StoredImage) -> np.ndarray | None:
        """The original fitted into MAX_SIZE x MAX_SIZE (the original itself when it is no larger),
        decoded once (requests for the same image wait for that one decode), reduced in the decoder
        where the format allows, at most DECODE_SLOTS at a time within DECODE_BUDGET_PIXELS; None when
        the file is missing or changed."""
        key = ("base", image.image_id)
        hit = self.picture_cache.get(key)
        if hit is not None:
            return hit
        with self._image_lock(image.image_id):
            hit = self.picture_cache.get(key, count=False)
            if hit is not None:
                return hit
            if self.file_status(image) != "ok":
                return None
            box = fitted(image.width, image.height, MAX_SIZE)
            cost = decode_cost(image.path, box)
            with self._decode_slots:
                self.decode_pixels.take(cost)
                try:
                    self.decodes += 1
                    decoded = read_image(image.path, at_least=box)
                except ImageError as exc:
                    log.info("image %s: %s", image.image_id, exc)
                    self._file_status[image.image_id] = "missing"
                    return None
                finally:
                    self.decode_pixels.give(cost)
            if decoded.sha256 != image.sha256:
                self._file_status[image.image_id] = "changed"
                return None
            base = decoded.pixels
            del decoded
            if (base.shape[1], base.shape[0]) != box:
                base = np.asarray(Image.fromarray(base).resize(box, Image.Resampling.LANCZOS))
            self.picture_cache.put(key, base, base.nbytes)
            return base

    def picture(self, image: StoredImage, size: int) -> np.ndarray:
        """The original image fitted into size x size (never enlarged); a grey canvas if the file is gone."""
        key = ("picture", image.image_id, size)
        hit = self.picture_cache.get(key)
        if hit is not None:
            return hit
        tw, th = fitted(image.width, image.height, size)
        pixels = self._base(image)
        if pixels is None:
            out = np.full((th, tw, 3), 150, np.uint8)
        elif (tw, th) == (pixels.shape[1], pixels.shape[0]):
            out = pixels
        else:
            out = np.asarray(Image.fromarray(pixels).resize((tw, th), Image.Resampling.LANCZOS))
        self.picture_cache.put(key, out, out.nbytes)
        return out

    def map_png(self, image_id: int, synset: str, style: str = "mask", threshold: float = 0.0, size: int = 256,
                only_self: bool = False) -> tuple[bytes, str]:
        """(PNG bytes, ETag) of the concept's map over the image, fitted into size x size."""
        style, threshold, size = clean_style(style), clean_threshold(threshold), clean_size(size)
        image = self.image(image_id)
        sid = self.synset_id(synset)
        key = (image.image_id, sid, bool(only_self), style, threshold, size)
        etag = self._etag("map", image.sha256, *key)
        png = self.png_cache.get(key)
        if png is None:
            saliency = self.saliency(image, sid, only_self)
            picture = render(self.picture(image, size), saliency, style, threshold)
            png = _encode(picture, "PNG")
            self.png_cache.put(key, png, len(png))
        return png, etag

    def thumbnail_jpeg(self, image_id: int, size: int = 256) -> tuple[bytes, str]:
        """(JPEG bytes, ETag) of the image fitted into the THUMB_SIZES size that serves `size`."""
        size = thumb_size(clean_size(size))
        image = self.image(image_id)
        key = ("jpeg", image.image_id, size)
        data = self.png_cache.get(key)
        if data is None:
            data = _encode(self.picture(image, size), "JPEG")
            self.png_cache.put(key, data, len(data))
        return data, self._etag("thumb", image.sha256, image.image_id, size)

    def _etag(self, *parts) -> str:
        return hashlib.sha1(repr((self._identity, *parts)).encode()).hexdigest()[:24]


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    else:
        Image.fromarray(pixels).save(buf, "PNG", compress_level=1)  # fast; these are local
    return buf.getvalue()

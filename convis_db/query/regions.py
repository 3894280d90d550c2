"""`regions`: the parts of images where a concept's saliency reaches a threshold, as boxes.

A region is a connected component (4-connectivity) of the pixels whose saliency is at least
`min_score`; its box is given in original-image pixels with the component's peak value. The map of an
image can only reach `min_score` if the image's stored score (the map's maximum) does, so across a
collection only images with score >= min_score are mapped: the pruning is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import duckdb
import numpy as np
from scipy import ndimage

from convis_db.engine.pixels import original_box
from convis_db.query.maps import ConceptMap, MapService
from convis_db.query.search import keys_source
from convis_db.store.hierarchy_store import find_synset_name
from convis_db.store.image_store import StoredImage, get_image

DEFAULT_MIN_SCORE = 0.95


def regions_of_map(cmap: ConceptMap, min_score: float) -> list[dict]:
    mask = cmap.saliency >= min_score
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    out = []
    slices = ndimage.find_objects(labels)
    peaks = ndimage.maximum(cmap.saliency, labels, index=np.arange(1, n + 1))
    areas = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    s = cmap.scale
    for i, sl in enumerate(slices):
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        out.append({
            "image_id": cmap.image_id, "path": cmap.image_path, "synset": cmap.synset,
            "score": float(peaks[i]),
            **dict(zip(("x0", "y0", "x1", "y1"), original_box(x0, y0, x1, y1, s, cmap.width, cmap.height))),
            "area_fraction": float(areas[i]) / mask.size,
        })
    out.sort(key=lambda r: (-r["score"], -r["area_fraction"]))
    return out


def candidate_images(con: duckdb.DuckDBPyConnection, sid: int, min_score: float, batch: int) -> Iterator[int]:
    """The images whose stored score for synset `sid` reaches `min_score`, best first (ties: lower
    image id), read `batch` at a time as the caller asks for more: an image's map peaks at its stored
    score, so each gives a region and the caller rarely needs more than its limit of images.

    Read from the concept's search keys (concept_keys: the concept-ordered index and the images
    appended since), so a collection of any size reads this concept's row groups only, not every
    image's rows; concept_order alone when none was appended since (search.keys_source)."""
    source = keys_source(con)
    offset = 0
    while True:
        ids = [int(r[0]) for r in con.execute(
            f"SELECT image_id FROM {source} sc WHERE map_peak >= ? ORDER BY map_peak DESC, image_id LIMIT ? OFFSET ?",
            [sid, float(min_score), int(batch), offset]).fetchall()]
        yield from ids
        if len(ids) < batch:
            return
        offset += len(ids)


def find_regions(con: duckdb.DuckDBPyConnection, concept: str, min_score: float = DEFAULT_MIN_SCORE,
                 image: str | None = None, limit: int = 100, service: MapService | None = None) -> list[dict]:
    service = service or MapService(con)
    sid = find_synset_name(con, concept)
    if image is not None:
        images: Iterable[StoredImage] = [get_image(con, image)]
    else:
        images = (get_image(con, i) for i in candidate_images(con, sid, min_score, max(limit, 1)))
    found: list[dict] = []
    for img in images:
        found.extend(regions_of_map(service.for_stored(img, concept), min_score))
        if len(found) >= limit and image is None:
            break
    found.sort(key=lambda r: (-r["score"], r["image_id"] or 0))
    return found[:limit]

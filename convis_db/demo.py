"""`demo`: build a database from the shipped sample images, write a few maps, list each image's top concepts.

On a GPU it uses the paper's settings; on a CPU a lighter preset (smaller working image, stride 32)
so that it finishes in minutes on two cores. A new demo database gets the default T (`reference`,
the authors' 7,080 synsets); an existing one keeps its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convis_db.engine.settings import CPU_FAST, PAPER
from convis_db.api import create
from convis_db.models.precision import resolve_precision
from convis_db.models.registry import resolve_model
from convis_db.paths import sample_images_dir
from convis_db.progress import Progress, no_progress

log = logging.getLogger(__name__)

DEMO_CONCEPTS = ("animal.n.01", "dog.n.01", "cat.n.01", "vehicle.n.01", "food.n.02")


@dataclass
class DemoReport:
    db: str
    preset: str
    settings: dict
    model: str
    hierarchy: str = ""
    precision: str = ""
    images: list[dict] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)
    ingest: dict = field(default_factory=dict)


def run_demo(db: str, model: str, pretrained: str, device: torch.device, out_dir: str | Path,
             preset: str = "auto", progress: Progress = no_progress, hierarchy: str | None = None,
             precision: str | None = None) -> DemoReport:
    precision = resolve_precision(precision, device)
    if preset == "auto":
        preset = "paper" if device.type == "cuda" else "cpu-fast"
    settings = PAPER if preset == "paper" else CPU_FAST
    spec = resolve_model(model, pretrained)
    images = sorted(p for p in sample_images_dir().iterdir() if p.suffix.lower() in (".jpg", ".png"))
    with create(db, model=model, pretrained=pretrained, vocab="physical-objects", hierarchy=hierarchy,
                device=device, precision=precision, progress=progress) as database:
        ingest_report = database.ingest(images, settings=settings, progress=progress, model=model,
                                        pretrained=pretrained)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = DemoReport(db=str(db), preset=preset, settings=settings.as_dict(), model=spec.label,
                            hierarchy=database.stats().get("hierarchy", ""), precision=precision,
                            ingest=ingest_report.summary())
        for path in images:
            image = database.image(path.absolute())
            tops = [t.__dict__ for t in database.top_concepts(image.image_id)]
            report.images.append({"image_id": image.image_id, "path": image.path, "top_concepts": tops})
            for concept in (tops[0]["synset"], *DEMO_CONCEPTS[:2]):
                target = out / f"{path.stem}_{concept}.png"
                database.map(image.image_id, concept).to_png(target, style="mask")
                report.maps.append(str(target))
    return report

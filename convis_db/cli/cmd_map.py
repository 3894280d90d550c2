"""convis-db map"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import click
import numpy as np
from PIL import Image

from convis_db.cli.context import App, device_option, pass_app, precision_option
from convis_db.cli.output import Result, emit
from convis_db.cli.types import score_range
from convis_db.engine.render import STYLES, render
from convis_db.errors import UsageError
from convis_db.models.device import resolve_device
from convis_db.models.precision import check_fp32_method, precision_label, resolve_precision


@click.command("map")
@click.argument("image")
@click.argument("concept", required=False)
@click.option("--method", type=click.Choice(["convis", "grad-eclip"]), default="convis", show_default=True,
              help="convis: Concept Visualization; grad-eclip: Grad-ECLIP (ViT models) of CONCEPT's "
                   "definition or of --text.")
@click.option("--text", default=None, help="grad-eclip: explain this text instead of CONCEPT's definition.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the map as a PNG over the image.")
@click.option("--style", type=click.Choice(STYLES), default="mask", show_default=True,
              help="mask: the paper's white mask; heatmap: a colour-map overlay.")
@click.option("--npy", type=click.Path(dir_okay=False), help="Write the raw map (convis: working resolution; grad-eclip: normalised, image size).")
@click.option("--only-self", is_flag=True, help="Use rank_sim of the synset alone instead of its descendants too.")
@click.option("--threshold", type=score_range(), default=0.0, show_default=True,
              help="Hide normalised values below this in the PNG.")
@device_option
@precision_option
@click.option("--json", "as_json", is_flag=True, help="Print the map's summary as JSON.")
@pass_app
def command(app: App, image, concept, method, text, output, style, npy, only_self, threshold, device, precision,
            as_json) -> None:
    """Saliency map of CONCEPT on IMAGE: a stored image (id, path or sha256; no model run) or a new file.

    \b
    Example:
      convis-db map 1 dog.n.01 -o dog.png
      convis-db map photo.jpg animal.n.01 -o animal.png --style heatmap --npy animal.npy
      convis-db map photo.jpg --method grad-eclip --text "a photo of a dog" -o dog-ge.png
    """
    if not output and not npy and not as_json:
        raise UsageError("say where the map goes: -o out.png and/or --npy raw.npy (or --json for its summary).")
    if output and Path(output).suffix.lower() != ".png":
        raise UsageError(f"-o {output}: maps are written as PNG images; name the file .png (--npy writes raw values).")
    if npy and Path(npy).suffix.lower() != ".npy":
        raise UsageError(f"--npy {npy}: raw maps are written in numpy's .npy format; name the file .npy.")
    dev = resolve_device(device)
    if method == "grad-eclip":
        check_fp32_method(precision, "Grad-ECLIP")
        if only_self:
            raise UsageError("--only-self is a convis option; drop it with --method grad-eclip.")
        return _grad_eclip(app, image, concept, text, output, style, npy, threshold, dev, as_json)
    if concept is None:
        raise UsageError("give the CONCEPT to map, a synset name such as dog.n.01.")
    if text is not None:
        raise UsageError("--text is for --method grad-eclip; a convis map is of a CONCEPT.")
    with app.database(dev, resolve_precision(precision, dev)) as db:
        cmap = db.map(image, concept, only_self=only_self).concept_map
    _write_outputs(cmap.saliency, cmap.image_path, output, style, npy, threshold)
    info = {"image_id": cmap.image_id, "image": cmap.image_path, "synset": cmap.synset, "source": cmap.source,
            "only_self": cmap.only_self, "work_width": cmap.grid.width, "work_height": cmap.grid.height,
            "peak": cmap.peak, "precision": precision_label(cmap.precision), "output": output, "npy": npy}
    text = (f"{cmap.synset} on {cmap.image_path} ({cmap.source}): peak {cmap.peak['score']:.4f} at "
            f"({cmap.peak['x_orig']}, {cmap.peak['y_orig']}) original pixels"
            + (f"; wrote {output}" if output else "") + (f"; wrote {npy}" if npy else ""))
    emit(Result(rows=[info], data=info, text=text), "json" if as_json else "table")


def _write_outputs(saliency: np.ndarray, image_path: str, output: str | None, style: str, npy: str | None,
                   threshold: float) -> None:
    """The raw map as float32 .npy and/or the picture over the original image as PNG."""
    target = npy
    try:
        if npy:
            np.save(npy, saliency.astype(np.float32))
        if output:
            from convis_db.engine.images import read_image

            target = output
            picture = render(read_image(image_path).pixels, saliency, style, threshold)
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(output)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}. Choose a path in a folder you can write.") from exc


def _grad_eclip(app: App, image, concept, text, output, style, npy, threshold, device, as_json) -> None:
    from convis_db.explainers.grad_eclip import GradEclipMap

    with app.database(device) as db:
        gmap = cast(GradEclipMap, db.map(image, concept, method="grad-eclip", text=text).concept_map)
    _write_outputs(gmap.saliency, gmap.image_path, output, style, npy, threshold)
    info = {"image": gmap.image_path, "method": "grad-eclip", "synset": gmap.synset, "text": gmap.text,
            "cosine": gmap.cosine, "input_width": gmap.input_width, "input_height": gmap.input_height,
            "patch_grid": list(gmap.patch_map.shape), "peak": gmap.peak, "output": output, "npy": npy}
    text_out = (f"grad-eclip of {gmap.text!r} on {gmap.image_path}: cosine {gmap.cosine:.4f}, peak at "
                f"({gmap.peak['x_orig']}, {gmap.peak['y_orig']}) original pixels"
                + (f"; wrote {output}" if output else "") + (f"; wrote {npy}" if npy else ""))
    emit(Result(rows=[info], data=info, text=text_out), "json" if as_json else "table")

"""A picture of the visual concepts, like the paper's figures: each region in its colour over the
image, its ellipse, and underneath, per colour, the concept's texts; then the mutual concepts."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from convis_db.mutual.explain import MutualExplanation
from convis_db.mutual.prompts import upscale_mask

#: Distinct colours for up to 12 concepts (cycled beyond).
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0)]
MIN_WIDTH = 480


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _short(t) -> str:
    """A synset's name (definitions are long), or the descriptor itself."""
    return t.name if t.synset_id is not None else t.text


def render_concepts(pixels: np.ndarray, exp: MutualExplanation, alpha: float = 0.45) -> np.ndarray:
    """(H', W', 3) uint8: the image (scaled to at least MIN_WIDTH wide) with coloured regions and texts."""
    h0, w0 = pixels.shape[:2]
    scale = max(1.0, MIN_WIDTH / w0)
    w, h = int(round(w0 * scale)), int(round(h0 * scale))
    base = np.asarray(Image.fromarray(pixels).resize((w, h), Image.BICUBIC)).astype(np.float32)
    overlay = base.copy()
    for v in exp.visual_concepts:
        colour = np.array(PALETTE[v.index % len(PALETTE)], np.float32)
        region = upscale_mask(v.patch_mask, w, h)
        overlay[region] = (1 - alpha) * base[region] + alpha * colour
    picture = Image.fromarray(np.clip(overlay + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    s = exp.input_size
    for v in exp.visual_concepts:
        pts = v.ellipse.points(sx=w / s, sy=h / s)
        draw.line(pts + [pts[0]], fill=PALETTE[v.index % len(PALETTE)], width=2)
    font = _font(14)
    lines: list[tuple[tuple[int, int, int] | None, str]] = [
        (None, f"predicted: {exp.predicted}   MI {exp.mi:.3f}   AUC {exp.auc:.3f}   ({exp.settings.decomposition})")]
    chars = max(30, w // 8)
    for v in exp.visual_concepts:
        text = "; ".join(_short(t) for t in v.texts) or "(no text)"
        for i, part in enumerate(textwrap.wrap(f"concept {v.index + 1}: {text}", chars) or [""]):
            lines.append((PALETTE[v.index % len(PALETTE)] if i == 0 else (0, 0, 0), part))
    mutual = "; ".join(_short(t) for t in exp.mutual_concepts) or "(none)"
    lines += [(None, part) for part in textwrap.wrap(f"mutual: {mutual}", chars)]
    line_h = 18
    canvas = Image.new("RGB", (w, h + line_h * len(lines) + 8), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    d = ImageDraw.Draw(canvas)
    y = h + 4
    for colour, text in lines:
        x = 6
        if colour is not None:
            d.rectangle([x, y + 3, x + 10, y + 13], fill=colour)
            x += 16
        d.text((x, y), text, fill=(0, 0, 0), font=font)
        y += line_h
    return np.asarray(canvas)


def save_concepts_png(path: str, pixels: np.ndarray, exp: MutualExplanation) -> None:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_concepts(pixels, exp)).save(path)

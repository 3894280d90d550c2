"""Reading image files into upright RGB arrays, with a clear ImageError for anything unusable.

Handles EXIF orientation, palette, grayscale, CMYK, alpha (composited on white), 16-bit and float
images, and the first frame of animations. Decompression bombs (a declared size far beyond any
photo) are refused before decoding.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from convis_db.errors import ImageError

#: Refuse images with more pixels than this (PIL's own bomb limit is ~179 Mpx for an error).
MAX_IMAGE_PIXELS = 120_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}


@dataclass
class DecodedImage:
    path: str
    sha256: str
    pixels: np.ndarray  # (H, W, 3) uint8, upright

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        gray = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if mode in ("RGBA", "LA", "PA") or img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def decode_bytes(data: bytes, path: str) -> DecodedImage:
    """Decode image bytes (first frame, upright RGB). Raises ImageError naming the file and the fix."""
    import io

    if not data:
        raise ImageError(f"{path}: empty file (0 bytes). Replace it with a real image or remove it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"{path}: declared size {w}x{h} ({w * h / 1e6:.0f} Mpx) exceeds the "
                                 f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit (a decompression bomb?). Resize it first.")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            pixels = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: too many pixels ({exc}). Resize it first.") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image file PIL can read. Check the file (is it really an image?).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode ({exc}). The file may be truncated or corrupt; re-export it.") from exc
    if pixels.ndim != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ImageError(f"{path}: decoded to an empty image. Re-export it.")
    return DecodedImage(path=path, sha256=file_sha256(data), pixels=np.ascontiguousarray(pixels))


def read_image(path: str | Path) -> DecodedImage:
    path = Path(path)
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        raise ImageError(f"{path}: permission denied. Make it readable (chmod +r) or skip it.") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a directory; pass --recursive to ingest the images inside it.") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror}).") from exc
    return decode_bytes(data, str(path))

"""Reading image files into upright RGB arrays, with a clear ImageError for anything unusable.

Handles EXIF orientation, palette, grayscale, CMYK, alpha (composited on white), 16-bit and float
images, and the first frame of animations. Decompression bombs (a declared size far beyond any
photo) are refused before decoding.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from convis_db.errors import ImageError

#: Refuse images with more pixels than this (PIL's own bomb limit is ~179 Mpx for an error).
MAX_IMAGE_PIXELS = 120_000_000
#: Refuse files larger than this before reading them into memory.
MAX_FILE_BYTES = 1 << 30
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}


#: Originals above this many pixels may be decoded reduced (by a power of two, never below the size
#: asked for) when a caller asks for a smaller image; at or below it they are always decoded in full,
#: so the results of ordinary photos do not change (docs/fidelity.md).
REDUCE_ABOVE_PIXELS = 16_000_000
#: Modes that Image.reduce averages correctly (not palette indices, not 16-bit or float images).
_REDUCIBLE_MODES = {"RGB", "RGBA", "RGBX", "L", "LA", "CMYK"}


@dataclass
class DecodedImage:
    path: str
    sha256: str
    pixels: np.ndarray  # (H, W, 3) uint8, upright; reduced when full_size is set
    #: The original's upright (width, height) when `pixels` were decoded reduced; None: pixels are full size.
    full_size: tuple[int, int] | None = None

    @property
    def width(self) -> int:
        """The original's width in pixels (whatever size `pixels` were decoded at)."""
        return int(self.full_size[0] if self.full_size else self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.full_size[1] if self.full_size else self.pixels.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def reduction_factor(width: int, height: int, at_least: tuple[int, int], limit: int = 64) -> int:
    """The largest power of two f <= limit that keeps ceil(width / f) >= at_least[0] and
    ceil(height / f) >= at_least[1] (1: no reduction)."""
    f = 1
    while f * 2 <= limit and -(-width // (f * 2)) >= at_least[0] and -(-height // (f * 2)) >= at_least[1]:
        f *= 2
    return f


def _stored_target(img: Image.Image, at_least: tuple[int, int] | int) -> tuple[int, int]:
    """The smallest (width, height) to decode, in the file's stored orientation: `at_least` is an
    upright (width, height) (EXIF orientations 5-8 swap the sides), or an int: the working size of
    that many pixels (engine.windows.working_size, the same in either orientation)."""
    if isinstance(at_least, int):
        from convis_db.engine.windows import working_size

        return working_size(img.size[0], img.size[1], at_least)
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the decode below reports real errors
        orientation = 1
    return (at_least[1], at_least[0]) if orientation in (5, 6, 7, 8) else at_least


def decode_cost(path: str | Path, at_least: tuple[int, int] | int | None = None) -> int:
    """Pixels that decoding the file will hold at once (from its header only): the full size, or the
    reduced size where JPEG decodes reduced. 0 when the header cannot be read (decoding reports why).
    Only a regular file's header is read: a pipe or device would block the caller (read_image refuses
    those without reading them)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return 0
        with Image.open(path) as img:
            w, h = img.size
            if at_least is None or w * h <= REDUCE_ABOVE_PIXELS or img.format != "JPEG":
                return w * h
            f = reduction_factor(w, h, _stored_target(img, at_least), limit=8)
            return -(-w // f) * -(-h // f)
    except Exception:  # noqa: BLE001 - not an image, unreadable, ...: read_image says which
        return 0


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


def _bomb_message(path: str, pixels: int, size: str = "") -> str:
    return (f"{path}: declared size {size or f'{pixels} pixels'} ({pixels / 1e6:.0f} Mpx) exceeds the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit (a decompression bomb?). Resize it first.")


_PIL_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


def decode_bytes(data: bytes, path: str, at_least: tuple[int, int] | int | None = None) -> DecodedImage:
    """Decode image bytes (first frame, upright RGB). Raises ImageError naming the file and the fix.

    `at_least` (upright width, height, or an int: the working size of that many pixels, as ingest
    asks for its max_pixels): the caller needs no more than this, so an original above
    REDUCE_ABOVE_PIXELS is decoded reduced by a power of two that keeps at least that size: JPEG in
    the decoder itself (DCT scaling, never holding the full image), other formats by Image.reduce
    right after decoding (box averages), before any other copy is made. The result's `full_size`
    keeps the original's size.

    Whatever the bytes hold, the only exception that leaves is ImageError: a malformed file can make
    PIL raise nearly anything (struct.error, IndexError, ...), and one bad file must not stop a batch.
    The declared size is checked before any pixel is decoded. (Warning filters are not touched: they
    are process-wide, and decoding runs in several threads.)
    """
    import io

    if not data:
        raise ImageError(f"{path}: empty file (0 bytes). Replace it with a real image or remove it.")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise ImageError(_bomb_message(path, w * h, f"{w}x{h}"))
        if w < 1 or h < 1:
            raise ImageError(f"{path}: declared size {w}x{h} has no pixels. Re-export it.")
        img.seek(0)
        reduce = at_least is not None and w * h > REDUCE_ABOVE_PIXELS
        if reduce:
            target = _stored_target(img, at_least)
            if img.format == "JPEG":
                img.draft(img.mode, target)
        img.load()
        if reduce and img.size == (w, h) and img.mode in _REDUCIBLE_MODES:
            factor = reduction_factor(w, h, target)
            if factor > 1:
                img = img.reduce(factor)
        reduced = img.size != (w, h)
        transposed = ImageOps.exif_transpose(img) or img
        swapped = transposed.size != img.size
        img = transposed
        pixels = _to_rgb(img)
        del img, transposed
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        match = _PIL_BOMB_SIZE.search(str(exc))
        raise ImageError(_bomb_message(path, int(match.group(1))) if match
                         else f"{path}: too many pixels ({exc}). Resize it first.") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image file PIL can read. Check the file (is it really an image?).") from exc
    except MemoryError as exc:
        raise ImageError(f"{path}: out of memory while decoding. Resize it first.") from exc
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError and anything a fuzzed file triggers
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{path}: cannot decode ({detail}). "
                         "The file may be truncated or corrupt; re-export it.") from exc
    if pixels.ndim != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ImageError(f"{path}: decoded to an empty image. Re-export it.")
    # PIL's arrays are read-only views; torch wants writable memory.
    if not (pixels.flags.writeable and pixels.flags.c_contiguous and pixels.dtype == np.uint8):
        pixels = np.array(pixels, dtype=np.uint8, order="C")
    full = ((h, w) if swapped else (w, h)) if reduced else None
    return DecodedImage(path=path, sha256=file_sha256(data), pixels=pixels, full_size=full)


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def read_image(path: str | Path, at_least: tuple[int, int] | int | None = None) -> DecodedImage:
    """Read and decode one file (reduced towards `at_least`, see decode_bytes). Anything unusable
    (missing, unreadable, not a regular file, too large, not an image) raises ImageError with the
    reason and the fix."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            if stat.S_ISDIR(info.st_mode):
                raise ImageError(f"{path}: is a directory; pass --recursive to ingest the images inside it.")
            raise ImageError(f"{path}: not a regular file (a pipe, socket or device). Copy the image to a file.")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(f"{path}: {info.st_size / 2**20:.0f} MiB is larger than the {MAX_FILE_BYTES / 2**20:.0f} "
                             "MiB limit for one image file. Is it really an image? Resize it first.")
        data = path.read_bytes()
    except PermissionError as exc:
        raise ImageError(f"{path}: permission denied. Make it readable (chmod +r) or skip it.") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a directory; pass --recursive to ingest the images inside it.") from exc
    except FileNotFoundError as exc:
        if path.is_symlink():
            raise ImageError(f"{path}: broken symbolic link (its target {_link_target(path)!r} does not exist). "
                             "Fix or remove the link.") from exc
        raise ImageError(f"{path}: no such file (was it moved or deleted?).") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc}).") from exc
    return decode_bytes(data, str(path), at_least)


class PixelBudget:
    """A bound on the decoded pixels in flight, shared by threads: `take(n)` waits until n more fit
    under `max_pixels` (an image larger than the whole budget is let through alone, so it cannot wait
    forever), `give(n)` returns them. `peak` is the most ever held at once."""

    def __init__(self, max_pixels: int):
        self.max_pixels = int(max_pixels)
        self.held = 0
        self.peak = 0
        self._changed = threading.Condition()

    def fits(self, n: int) -> bool:
        with self._changed:
            return self.held == 0 or self.held + n <= self.max_pixels

    def take(self, n: int) -> None:
        with self._changed:
            while not (self.held == 0 or self.held + n <= self.max_pixels):
                self._changed.wait()
            self.held += n
            self.peak = max(self.peak, self.held)

    def give(self, n: int) -> None:
        with self._changed:
            self.held -= n
            self._changed.notify_all()

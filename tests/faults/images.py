"""Writers of the image files the reliability tests feed to `ingest`: good files in every unusual
format PIL produces, and broken ones. Every writer returns the path it wrote.

Images are small and deterministic (seeded), so each test file's content, and thus its sha256, is
unique unless a test copies it on purpose.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def random_rgb(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_rgb(path: Path, width: int = 96, height: int = 72, seed: int = 0, **save) -> Path:
    """A random RGB image (format from the suffix)."""
    Image.fromarray(random_rgb(width, height, seed)).save(path, **save)
    return path


def write_many(folder: Path, n: int, width: int = 48, height: int = 40, start_seed: int = 1000) -> list[Path]:
    """n distinct small PNGs named img_0000.png ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_rgb(folder / f"img_{i:04d}.png", width, height, start_seed + i) for i in range(n)]


# -- broken files ---------------------------------------------------------------------------------
def write_zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_truncated_jpeg(path: Path, keep: float = 0.5, seed: int = 1) -> Path:
    """A real JPEG cut to `keep` of its bytes: the header parses, the scan data ends early."""
    import io

    buf = io.BytesIO()
    Image.fromarray(random_rgb(160, 120, seed)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_text_as_image(path: Path) -> Path:
    path.write_text("this is not an image, only text in a file named like one\n" * 20, encoding="utf-8")
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def write_png_bomb(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A PNG of a few hundred bytes whose header declares width x height RGB pixels (7.5 GB decoded
    at 50000x50000): a decompression bomb. Its IDAT holds a few zero rows only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 1024)) * 4, 9)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


# -- unusual but valid files ----------------------------------------------------------------------
def write_grayscale(path: Path, seed: int = 2) -> Path:
    Image.fromarray(random_rgb(80, 64, seed)[..., 0].copy()).save(path)
    return path


def write_cmyk_jpeg(path: Path, seed: int = 3) -> Path:
    Image.fromarray(random_rgb(80, 64, seed)).convert("CMYK").save(path, format="JPEG", quality=92)
    return path


def write_rgba(path: Path, seed: int = 4) -> Path:
    rgb = random_rgb(80, 64, seed)
    alpha = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (64, 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    return path


def write_16bit(path: Path, seed: int = 5) -> Path:
    """A 16-bit grayscale PNG (PIL mode I;16)."""
    arr = np.random.default_rng(seed).integers(0, 65536, size=(64, 80), dtype=np.uint16)
    Image.fromarray(arr).save(path)  # uint16 -> mode I;16
    return path


def write_palette(path: Path, seed: int = 6) -> Path:
    Image.fromarray(random_rgb(80, 64, seed)).quantize(colors=16).save(path)
    return path


def write_exif_rotated_jpeg(path: Path, orientation: int, width: int = 120, height: int = 60) -> Path:
    """A width x height JPEG (stored pixels) whose EXIF says to rotate it for display: 6 means turn it
    90 degrees clockwise, 8 counter-clockwise. Upright it is height x width. The left half is red and
    the right half blue, so the upright orientation can be checked from the pixels."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (220, 20, 20)
    arr[:, width // 2:] = (20, 20, 220)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[EXIF_ORIENTATION] = orientation
    img.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def write_animated_gif(path: Path, colours=((200, 30, 30), (30, 200, 30), (30, 30, 200))) -> Path:
    """A 3-frame animated GIF of flat colours; the first frame is red."""
    frames = [Image.new("RGB", (64, 48), c) for c in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def write_tiny(path: Path, size: int = 10, seed: int = 7) -> Path:
    """An image smaller than the small patch (10x10 by default)."""
    return write_rgb(path, size, size, seed)


def make_unreadable(path: Path) -> bool:
    """chmod 000; True when that really blocks reading for this process (not when running as root)."""
    os.chmod(path, 0)
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True

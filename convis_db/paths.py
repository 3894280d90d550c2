"""Where convis-db keeps files: the user cache (assembled WordNet, downloaded weights) and shipped resources."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES_DIR = PACKAGE_DIR / "resources"
DEFAULT_DB = "convis.duckdb"


def cache_dir() -> Path:
    """The per-user cache, honouring CONVIS_CACHE and XDG_CACHE_HOME."""
    override = os.environ.get("CONVIS_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "convis-db"


def schema_dir() -> Path:
    """The SQL migrations: inside the installed wheel, or the repository's top-level schema/."""
    packaged = PACKAGE_DIR / "schema"
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent / "schema"


def sample_images_dir() -> Path:
    return RESOURCES_DIR / "images"

"""Locate a WordNet 3.0 database and open it with nltk's reader.

Order of attempts: CONVIS_WORDNET; nltk's own data directories; the copy an earlier run left in the
user cache; nltk's downloader (works only with a network; given 15 s); a system WordNet 3.0 database
such as Debian's /usr/share/wordnet. nltk's reader needs the
`lexnames` table, which Debian lacks, so a system database is assembled into an nltk-style copy in
the user cache (copies of the system files plus the shipped lexnames).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from functools import lru_cache
from pathlib import Path

from convis_db.errors import WordNetUnavailableError
from convis_db.paths import RESOURCES_DIR, cache_dir

log = logging.getLogger(__name__)

#: Files nltk's WordNetCorpusReader opens for nouns and the shared tables.
REQUIRED_FILES = (
    "data.noun", "index.noun", "noun.exc", "data.verb", "index.verb", "verb.exc",
    "data.adj", "index.adj", "adj.exc", "data.adv", "index.adv", "adv.exc", "index.sense",
)
SYSTEM_CANDIDATES = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/WordNet-3.0/dict",
                     "/usr/local/WordNet-3.0/dict", "/opt/homebrew/share/wordnet")

HOW_TO_GET_WORDNET = (
    "WordNet 3.0 was not found. Get it in one of these ways: "
    "(1) python -m nltk.downloader wordnet (needs a network); "
    "(2) Debian/Ubuntu: apt-get install wordnet-base wordnet-sense-index; "
    "(3) set CONVIS_WORDNET to a WordNet 3.0 'dict' directory (with data.noun, index.noun, index.sense)."
)


def _is_wordnet_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_FILES if name != "index.sense") and (
        path / "data.noun"
    ).is_file()


def _version_of(dict_dir: Path) -> str | None:
    """Read the version from data.noun's licence header (WordNet 3.0 says 'WordNet 3.0')."""
    try:
        with open(dict_dir / "data.noun", "rb") as fh:
            head = fh.read(3000).decode("latin-1")
    except OSError:
        return None
    if "WordNet 3.0" in head:
        return "3.0"
    for token in ("WordNet 3.1", "WordNet 2.1", "WordNet 2.0"):
        if token in head:
            return token.split()[-1]
    return None


def _nltk_data_wordnet() -> Path | None:
    """A wordnet corpus already in one of nltk's data directories, unzipped or zipped."""
    try:
        import nltk.data
    except ImportError:  # pragma: no cover - nltk is a hard dependency
        return None
    for base in nltk.data.path:
        base_path = Path(base)
        for candidate in (base_path / "corpora" / "wordnet",):
            if candidate.is_dir() and (candidate / "data.noun").is_file() and (candidate / "lexnames").is_file():
                return candidate
        zipped = base_path / "corpora" / "wordnet.zip"
        if zipped.is_file():
            target = _nltk_cache_root() / "corpora"
            if not (target / "wordnet" / "data.noun").is_file():
                import zipfile

                target.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(zipped) as zf:
                    zf.extractall(target)
            if (target / "wordnet" / "data.noun").is_file():
                return target / "wordnet"
    return None


def _try_nltk_download() -> Path | None:
    """nltk's downloader; quietly gives up without a network (the usual case offline)."""
    if os.environ.get("CONVIS_NO_DOWNLOAD"):
        return None
    import contextlib
    import io
    import socket

    previous_timeout = socket.getdefaulttimeout()
    chatter = io.StringIO()
    try:
        import nltk

        target = _nltk_cache_root()
        target.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(15)  # offline, fail in seconds rather than hang
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = nltk.download("wordnet", download_dir=str(target), quiet=True, raise_on_error=False,
                               print_error_to=chatter)
    except Exception as exc:  # noqa: BLE001 - any failure here just means "not this way"
        log.debug("nltk downloader failed: %s", exc)
        return None
    finally:
        socket.setdefaulttimeout(previous_timeout)
        if chatter.getvalue():
            log.debug("nltk downloader said: %s", chatter.getvalue().strip())
    if not ok:
        return None
    folder = target / "corpora" / "wordnet"
    if not folder.is_dir() and (target / "corpora" / "wordnet.zip").is_file():
        import zipfile

        with zipfile.ZipFile(target / "corpora" / "wordnet.zip") as zf:
            zf.extractall(target / "corpora")
    return folder if (folder / "data.noun").is_file() else None


def _nltk_cache_root() -> Path:
    return cache_dir() / "nltk_data"


def _authorise_for_nltk(path: Path) -> None:
    """nltk only reads under its data path; add the folder holding our copy, once, when opening it."""
    import nltk.data

    data_root = path.resolve().parent.parent  # .../nltk_data/corpora/wordnet -> .../nltk_data
    if str(data_root) not in [str(p) for p in nltk.data.path]:
        nltk.data.path.append(str(data_root))


def assemble_from_system(dict_dir: Path) -> Path:
    """Build an nltk-readable copy of a system WordNet dict directory in the user cache."""
    target = _nltk_cache_root() / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    # Copies, not symlinks: nltk resolves links and refuses files outside its data directories.
    for src in dict_dir.iterdir():
        if not src.is_file():
            continue
        dst = target / src.name
        if dst.is_file() and not dst.is_symlink() and dst.stat().st_size == src.stat().st_size:
            continue
        if dst.is_symlink():
            dst.unlink()
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    lexnames = target / "lexnames"
    if not lexnames.is_file():
        shutil.copyfile(RESOURCES_DIR / "wordnet" / "lexnames", lexnames)
    return target


def find_wordnet_dir(allow_download: bool = True) -> Path:
    """The directory of an nltk-readable WordNet 3.0, or WordNetUnavailableError saying how to get one."""
    explicit = os.environ.get("CONVIS_WORDNET")
    if explicit:
        path = Path(explicit).expanduser()
        if not _is_wordnet_dir(path):
            raise WordNetUnavailableError(
                f"CONVIS_WORDNET={explicit} is not a WordNet dict directory (needs data.noun, index.noun, ...). "
                + HOW_TO_GET_WORDNET
            )
        return assemble_from_system(path)
    found = _nltk_data_wordnet()
    if found is not None:
        return found
    cached = _nltk_cache_root() / "corpora" / "wordnet"
    if (cached / "data.noun").is_file() and (cached / "lexnames").is_file() and _version_of(cached) == "3.0":
        return cached  # downloaded or assembled by an earlier run
    if allow_download:
        found = _try_nltk_download()
        if found is not None:
            return found
    for candidate in SYSTEM_CANDIDATES:
        path = Path(candidate)
        if _is_wordnet_dir(path):
            version = _version_of(path)
            if version not in (None, "3.0"):
                log.warning("skipping %s: WordNet %s, convis-db needs 3.0", path, version)
                continue
            return assemble_from_system(path)
    raise WordNetUnavailableError(HOW_TO_GET_WORDNET)


@lru_cache(maxsize=2)
def open_wordnet(dict_dir: str | None = None):
    """An nltk WordNetCorpusReader over WordNet 3.0 (cached per directory)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    path = Path(dict_dir) if dict_dir else find_wordnet_dir()
    _authorise_for_nltk(path)
    try:
        with warnings.catch_warnings():  # "multilingual functions are not available": we use English only
            warnings.simplefilter("ignore", UserWarning)
            reader = WordNetCorpusReader(str(path), None)
    except Exception as exc:  # noqa: BLE001 - nltk raises assorted errors on a broken copy
        raise WordNetUnavailableError(f"could not read WordNet at {path}: {exc}. " + HOW_TO_GET_WORDNET) from exc
    version = reader.get_version()
    if version != "3.0":
        raise WordNetUnavailableError(f"WordNet at {path} is version {version}; convis-db needs 3.0. " + HOW_TO_GET_WORDNET)
    log.info("WordNet %s from %s", version, path)
    return reader

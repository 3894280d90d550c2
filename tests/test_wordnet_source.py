"""Finding WordNet 3.0: nltk's data, the cached copy, the downloader, a system database, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from convis_db.errors import WordNetUnavailableError
from convis_db.wordnet import source

SYSTEM = Path("/usr/share/wordnet")
needs_system_wordnet = pytest.mark.skipif(not (SYSTEM / "data.noun").is_file(),
                                          reason="needs Debian's wordnet-base (scripts/setup.sh installs it)")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No nltk data, an empty cache, no network download, no system candidates (each test adds back)."""
    import nltk.data

    monkeypatch.setenv("CONVIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVIS_WORDNET", raising=False)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no-nltk-data")])
    monkeypatch.setattr(source, "SYSTEM_CANDIDATES", ())
    monkeypatch.setattr(source, "_try_nltk_download", lambda: None)
    return tmp_path


def test_nothing_found_names_every_way_to_get_wordnet(isolated):
    with pytest.raises(WordNetUnavailableError) as err:
        source.find_wordnet_dir()
    text = str(err.value)
    assert "nltk.downloader wordnet" in text and "apt-get install wordnet-base" in text and "CONVIS_WORDNET" in text


@needs_system_wordnet
def test_system_wordnet_is_assembled_into_the_cache_with_lexnames(isolated, monkeypatch):
    monkeypatch.setattr(source, "SYSTEM_CANDIDATES", (str(SYSTEM),))
    found = source.find_wordnet_dir()
    assert found == isolated / "cache" / "nltk_data" / "corpora" / "wordnet"
    assert (found / "lexnames").is_file() and not (found / "data.noun").is_symlink()
    reader = source.open_wordnet.__wrapped__(str(found))
    assert reader.get_version() == "3.0" and reader.synset("dog.n.01").lexname() == "noun.animal"
    # The next run finds the cached copy without looking at the system again.
    monkeypatch.setattr(source, "SYSTEM_CANDIDATES", ())
    assert source.find_wordnet_dir() == found


@needs_system_wordnet
def test_downloader_is_tried_before_a_system_copy(isolated, monkeypatch, tmp_path):
    calls = []
    downloaded = tmp_path / "downloaded"

    def fake_download():
        calls.append(1)
        return downloaded

    monkeypatch.setattr(source, "_try_nltk_download", fake_download)
    monkeypatch.setattr(source, "SYSTEM_CANDIDATES", (str(SYSTEM),))
    assert source.find_wordnet_dir() == downloaded and calls == [1]
    assert source.find_wordnet_dir(allow_download=False) != downloaded  # the system copy, offline


def test_other_wordnet_versions_are_skipped(isolated, monkeypatch, tmp_path):
    fake = tmp_path / "wn31"
    fake.mkdir()
    for name in source.REQUIRED_FILES:
        (fake / name).write_text("  1 This software and database is being provided ... WordNet 3.1 Copyright\n")
    monkeypatch.setattr(source, "SYSTEM_CANDIDATES", (str(fake),))
    with pytest.raises(WordNetUnavailableError):
        source.find_wordnet_dir()


def test_convis_wordnet_must_point_at_a_dict_folder(isolated, monkeypatch, tmp_path):
    monkeypatch.setenv("CONVIS_WORDNET", str(tmp_path))
    with pytest.raises(WordNetUnavailableError, match="CONVIS_WORDNET"):
        source.find_wordnet_dir()

"""Vocabularies: the word lists from which the hierarchy T is built.

A vocabulary is the paper's physical-object list (shipped), every noun under entity.n.01, or a
user's word file (one word per line, '#' comments allowed).
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from convis_db.errors import UsageError
from convis_db.paths import RESOURCES_DIR

log = logging.getLogger(__name__)

PHYSICAL_OBJECTS = "physical-objects"
ALL_NOUNS = "all-nouns"
BUILTIN_VOCABULARIES = (PHYSICAL_OBJECTS, ALL_NOUNS)


@dataclass
class Vocabulary:
    """A named word list; `words` is empty for all-nouns, which needs no words."""

    name: str
    source: str
    words: list[str] = field(default_factory=list)

    @property
    def is_all_nouns(self) -> bool:
        return self.name == ALL_NOUNS

    @property
    def fingerprint(self) -> str:
        """A hash of the word list (and of the name for all-nouns): what identifies a vocabulary."""
        import hashlib

        return hashlib.sha256("\n".join([self.name if self.is_all_nouns else "", *self.words]).encode()).hexdigest()


def read_word_file(path: Path) -> list[str]:
    """Words of a vocabulary file: one per line, blank lines and '#' comments skipped, order kept, unique."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"vocabulary file {path} is not UTF-8 text: {exc}. Save it as UTF-8, one word per line.") from exc
    except OSError as exc:
        raise UsageError(f"cannot read vocabulary file {path}: {exc.strerror}. Pass an existing word file.") from exc
    seen: dict[str, None] = {}
    for line in text.splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            seen.setdefault(word, None)
    if not seen:
        raise UsageError(f"vocabulary file {path} holds no words. Put one word per line.")
    return list(seen)


def load_vocabulary(spec: str) -> Vocabulary:
    """Resolve --vocab: a built-in name or a path to a word file."""
    if spec == PHYSICAL_OBJECTS:
        path = RESOURCES_DIR / "vocab" / "physical_objects.txt"
        return Vocabulary(PHYSICAL_OBJECTS, "builtin:physical_objects.txt", read_word_file(path))
    if spec == ALL_NOUNS:
        return Vocabulary(ALL_NOUNS, "builtin:all-nouns")
    path = Path(spec).expanduser()
    if path.is_file():
        return Vocabulary(path.stem, str(path.resolve()), read_word_file(path))
    raise UsageError(
        f"--vocab {spec!r} is neither a built-in vocabulary ({', '.join(BUILTIN_VOCABULARIES)}) nor an existing word file."
    )


def word_variants(word: str) -> list[str]:
    """Spellings to try for a vocabulary word, most literal first.

    WordNet keys are lower case with underscores for spaces ('ice_cream'); hyphenated words are
    sometimes closed up ('t-shirt' -> 'tshirt') or spaced ('walkie-talkie' -> 'walkie_talkie').
    """
    base = word.strip()
    lower = base.lower()
    ascii_lower = unicodedata.normalize("NFKD", lower).encode("ascii", "ignore").decode()
    underscored = lower.replace(" ", "_").replace("-", "_")
    out = [base, lower, underscored, lower.replace("-", ""), lower.replace(" ", ""), underscored.replace("_", ""),
           ascii_lower.replace(" ", "_").replace("-", "_")]
    if underscored.endswith("s") and len(underscored) > 3:
        out.append(underscored[:-1])
    out.append(underscored + "s")  # pluralia tantum such as 'castanets'

    seen: dict[str, None] = {}
    for v in out:
        if v:
            seen.setdefault(v, None)
    return list(seen)


def raw_noun_synsets(wn, word: str) -> list:
    """The noun synsets of a word exactly as the authors look it up: nltk's `wn.synsets(word, pos="n")`
    on the line as read (nltk lower-cases it and applies morphy; 'hot dog' with a space finds nothing)."""
    return wn.synsets(word, pos="n")


def noun_synsets_for_word(wn, word: str) -> list:
    """The noun synsets of a vocabulary word after normalisation (nltk's synsets() applies morphy):
    what `--hierarchy extended` uses."""
    for variant in word_variants(word):
        found = wn.synsets(variant, pos="n")
        if found:
            return found
        lemma = wn.morphy(variant, "n")
        if lemma:
            found = wn.synsets(lemma, pos="n")
            if found:
                return found
    return _split_closed_compound(wn, word_variants(word)[-2])


def _split_closed_compound(wn, word: str) -> list:
    """'barstool' -> 'bar_stool': WordNet spells many compounds open; try each split into two nouns."""
    if "_" in word or len(word) < 6:
        return []
    for cut in range(3, len(word) - 2):
        found = wn.synsets(f"{word[:cut]}_{word[cut:]}", pos="n")
        if found:
            return found
    return []

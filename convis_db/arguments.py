"""Checks of the Python API's arguments, at the door (convis_db.api), worded for Python callers.

A wrong type or value becomes a UsageError naming the argument, what it got and what to pass,
before it can reach DuckDB, numpy or torch (whose errors name none of these).
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterable
from pathlib import Path

from convis_db.errors import UsageError


def _got(value: object) -> str:
    text = repr(value)
    return (text if len(text) <= 60 else text[:57] + "...") + f" ({type(value).__name__})"


def name(arg: str, value: object, example: str) -> str:
    """A non-empty string such as a synset name ('dog.n.01')."""
    if not isinstance(value, str):
        raise UsageError(f"{arg}={_got(value)}: pass a string, e.g. {arg}={example!r}.")
    if not value.strip():
        raise UsageError(f"{arg} is empty: pass a string, e.g. {arg}={example!r}.")
    return value


def integer(arg: str, value: object, *, minimum: int = 0) -> int:
    """A whole number (int or numpy integer, not bool or str) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{arg}={_got(value)}: pass a whole number (an int) of at least {minimum}.")
    number = operator.index(value)
    if number < minimum:
        raise UsageError(f"{arg}={number} is below {minimum}: pass a whole number of at least {minimum}.")
    return number


def optional_integer(arg: str, value: object, *, minimum: int = 0) -> int | None:
    return None if value is None else integer(arg, value, minimum=minimum)


def score(arg: str, value: object) -> float:
    """A score threshold: a real number in [0, 1] (scores are rank fractions)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{arg}={_got(value)}: pass a number between 0 and 1, e.g. {arg}=0.9.")
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise UsageError(f"{arg}={number} is outside [0, 1]: scores are rank fractions; pass e.g. {arg}=0.9.")
    return number


def optional_score(arg: str, value: object) -> float | None:
    return None if value is None else score(arg, value)


def choice(arg: str, value: object, choices: Iterable[str | None]) -> str | None:
    options = list(choices)
    if value not in options:
        shown = ", ".join(repr(c) for c in options)
        raise UsageError(f"{arg}={_got(value)}: pass one of {shown}.")
    return value  # type: ignore[return-value]


def image_ref(arg: str, value: object) -> str:
    """A stored image's id (int), path or sha256, or a new image file (str or Path), as the text the
    store resolves."""
    if isinstance(value, bool) or not isinstance(value, (str, Path, numbers.Integral)):
        raise UsageError(f"{arg}={_got(value)}: pass a stored image's id (an int), its path or sha256, "
                         "or an image file's path.")
    if isinstance(value, numbers.Integral):
        return str(integer(arg, value, minimum=1))
    text = str(value)
    if not text.strip():
        raise UsageError(f"{arg} is empty: pass an image id, a path or a sha256.")
    return text


def paths(arg: str, value: object) -> list[str | Path]:
    """One file or folder (str or Path), or an iterable of them."""
    if isinstance(value, (str, Path)):
        return [value]
    if isinstance(value, (bytes, numbers.Number)) or not isinstance(value, Iterable):
        raise UsageError(f"{arg}={_got(value)}: pass a file or folder path (str or Path), or a list of them.")
    items = list(value)
    for item in items:
        if not isinstance(item, (str, Path)):
            raise UsageError(f"{arg} holds {_got(item)}: every item must be a file or folder path (str or Path).")
    return items


def flag(arg: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{arg}={_got(value)}: pass True or False.")
    return value

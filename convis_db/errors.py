"""Exception types. Every error a user can cause is a ConvisError whose message says what to do.

The CLI turns these into a one-line message and exit code 2; anything else is a bug and shows a
traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

#: How many `cli_wording()` blocks are running: the CLI's command invocation sets it, so an error
#: with two wordings prints its command-line one there (and its Python one everywhere else).
_CLI_DEPTH = 0


@contextmanager
def cli_wording() -> Iterator[None]:
    """Errors raised and printed inside this block use their command-line wording (--flags)."""
    global _CLI_DEPTH
    _CLI_DEPTH += 1
    try:
        yield
    finally:
        _CLI_DEPTH -= 1


_FLAG = re.compile(r"--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?: (?!-)('[^']*'|[\w./:+-]*\w))?")
#: Options whose Python argument has another name.
_ARGUMENT_NAMES = {"db": "path"}


def flags_as_arguments(text: str) -> str:
    """A CLI message reworded for Python callers: `--precision bf16` reads `precision='bf16'`,
    `--stride 32` reads `stride=32`, a bare `--write` reads `write`."""

    def argument(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        name = _ARGUMENT_NAMES.get(name, name)
        value = match.group(2)
        if value is None:
            return name
        if value.startswith("'"):
            return f"{name}={value}"
        number = value.replace(",", "")
        return f"{name}={number}" if number.replace(".", "", 1).isdigit() else f"{name}={value!r}"

    return _FLAG.sub(argument, text)


class ConvisError(Exception):
    """Base class of every error that has an actionable message for the user.

    A message that names a command-line option (`--stride`, `--write`) can carry a second wording
    for Python callers, `python=`, naming the argument instead (`Settings(stride=...)`,
    `write=True`); `str(error)` is the Python one outside the CLI."""

    exit_code = 2

    def __init__(self, *args: object, python: str | None = None):
        super().__init__(*args)
        self.python_message = python

    def __str__(self) -> str:
        if self.python_message is not None and _CLI_DEPTH == 0:
            return self.python_message
        return super().__str__()


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the CLI's SIGTERM handler: stops what runs as Ctrl-C does (the
    same clean-up), so that `kill` gets a one-line message and exit code 143 rather than silence."""


class UsageError(ConvisError):
    """Bad arguments or options (a value out of range, an unknown choice)."""


class NotFoundError(ConvisError):
    """A named thing (synset, image, model) does not exist in the database."""


class WordNetUnavailableError(ConvisError):
    """No WordNet 3.0 database could be found or assembled."""


class ModelError(ConvisError):
    """A CLIP model, config or checkpoint could not be resolved or loaded."""


class DatabaseError(ConvisError):
    """The database file is missing, locked, from a newer schema, or built for something else."""


class DatabaseLockedError(DatabaseError):
    """Another process holds the database for writing."""


class DatabaseClosedError(DatabaseError):
    """A Database object was used after close() (or after its `with` block)."""


class ImageError(ConvisError):
    """An image file could not be read or is unusable for the method."""


def nearest(name: str, choices: Iterable[str], n: int = 5, cutoff: float = 0.6) -> list[str]:
    """The closest names to `name` among `choices`, best first (for 'did you mean' messages)."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)


def did_you_mean(name: str, choices: Iterable[str], what: str, fix: str = "") -> str:
    """A message for an unknown `name`, listing the nearest valid choices."""
    choices = list(choices)
    close = nearest(name, choices)
    msg = f"unknown {what} {name!r}"
    if close:
        msg += "; did you mean: " + ", ".join(close) + "?"
    elif len(choices) <= 20 and choices:
        msg += "; valid choices: " + ", ".join(sorted(choices))
    if fix:
        msg += " " + fix
    return msg

"""Exception types. Every error a user can cause is a ConvisError whose message says what to do.

The CLI turns these into a one-line message and exit code 2; anything else is a bug and shows a
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConvisError(Exception):
    """Base class of every error that has an actionable message for the user."""

    exit_code = 2


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

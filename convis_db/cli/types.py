"""Option types with bounds: every number a user types is checked before anything is allocated."""

from __future__ import annotations

import math

import click

#: The most rows or items a listing option accepts (a bound for DuckDB's BIGINT and for memory).
MAX_LISTING = 1_000_000


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (nan compares false with both bounds, so
    FloatRange alone lets it through)."""

    name = "float range"

    def convert(self, value, param, ctx):
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number; give a value in {self._describe_range()}.", param, ctx)
        return super().convert(rv, param, ctx)


def score_range() -> FiniteFloatRange:
    """A score or threshold: rank_sim values lie in [0, 1]."""
    return FiniteFloatRange(0, 1)


def listing_limit() -> click.IntRange:
    return click.IntRange(1, MAX_LISTING)

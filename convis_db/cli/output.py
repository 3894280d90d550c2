"""One output decorator for every query command: --json, --csv, or a readable table.

A command returns a `Result`; the decorator renders it. JSON field names are the row keys, which are
part of the public interface: change them only with a note in the README.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import shutil
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click


@dataclass
class Result:
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] | None = None          # table/CSV columns (default: keys of the first row)
    title: str = ""
    notes: list[str] = field(default_factory=list)   # shown under the table, and as "notes" nowhere in JSON rows
    data: Any = None                           # JSON payload when it is not a list of rows
    text: str | None = None                    # a custom readable rendering (trees)
    wide_columns: tuple[str, ...] = ("definition", "path", "lemmas")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: Characters that reorder text on a terminal (bidirectional overrides and isolates).
_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text: str) -> str:
    """`text` safe for a terminal line: control characters (which can set the title, clear the screen
    or split a table row, when a file name holds them) and bidirectional overrides shown as escapes."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        text = " > ".join(map(str, value)) if value and isinstance(value[0], str) else ", ".join(map(str, value))
        return printable(text)
    return printable(str(value))


def render_table(result: Result) -> str:
    rows = result.rows
    if not rows:
        return "(no rows)"
    columns = result.columns or list(rows[0].keys())
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    width_total = shutil.get_terminal_size((160, 24)).columns
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    # Shrink wide text columns to fit the terminal.
    overflow = sum(widths) + 2 * (len(widths) - 1) - width_total
    for i, c in enumerate(columns):
        if overflow > 0 and c in result.wide_columns and widths[i] > 30:
            cut = min(overflow, widths[i] - 30)
            widths[i] -= cut
            overflow -= cut

    def fit(text: str, w: int) -> str:
        return text if len(text) <= w else text[: max(0, w - 1)] + "…"

    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for row in cells:
        lines.append("  ".join(fit(v, w).ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def render_csv(result: Result) -> str:
    buf = io.StringIO()
    rows = result.rows
    columns = result.columns or (list(rows[0].keys()) if rows else [])
    writer = csv.writer(buf)
    writer.writerow(columns)
    for r in rows:
        writer.writerow([json.dumps(_jsonable(v)) if isinstance(v, (list, dict)) else ("" if v is None else v)
                         for v in (r.get(c) for c in columns)])
    return buf.getvalue().rstrip("\n")


def emit(result: Result, fmt: str) -> None:
    if fmt == "json":
        payload = result.data if result.data is not None else result.rows
        click.echo(json.dumps(_jsonable(payload), indent=2, ensure_ascii=False))
        for note in result.notes:
            click.echo(f"note: {printable(note)}", err=True)
        return
    if fmt == "csv":
        click.echo(render_csv(result))
        return
    if result.title:
        click.echo(click.style(printable(result.title), bold=True))
    click.echo(_printable_lines(result.text) if result.text is not None else render_table(result))
    for note in result.notes:
        click.echo(click.style(f"note: {printable(note)}", fg="yellow"), err=True)


def _printable_lines(text: str) -> str:
    """A custom rendering (trees, summaries): its own line breaks kept, every line made printable."""
    return "\n".join(printable(line) for line in text.split("\n"))


_FORMAT_KEY = "convis_db.output_format"


def output_format() -> str:
    """'json', 'csv' or 'table': what the running query command will print (set by query_output)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_FORMAT_KEY, "table") if ctx else "table"


def query_output(func: Callable[..., Result]) -> Callable[..., None]:
    """Give a command --json and --csv; the command returns a Result and this prints it."""

    @click.option("--csv", "as_csv", is_flag=True, help="Print comma-separated values (one header row).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON with stable field names.")
    @functools.wraps(func)
    def wrapper(*args, as_json: bool, as_csv: bool, **kwargs):
        if as_json and as_csv:
            raise click.UsageError("--json and --csv are exclusive; pick one.")
        click.get_current_context().meta[_FORMAT_KEY] = "json" if as_json else "csv" if as_csv else "table"
        result = func(*args, **kwargs)
        emit(result, "json" if as_json else "csv" if as_csv else "table")

    return wrapper

"""Result collections for notebooks: a list of dataclass rows that converts to Arrow and pandas and
prints briefly (a summary line and the first rows, as pandas and DuckDB relations print).

pandas is optional: `to_arrow()` needs only pyarrow (a dependency); `df()` says how to install
pandas when it is missing instead of failing inside an import.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from typing import Any

from convis_db.errors import ConvisError

#: Rows shown by repr() and by a notebook's HTML table.
REPR_ROWS = 5
REPR_COLUMNS = 8
HTML_ROWS = 10

#: Arrow types of the annotations the result dataclasses use (annotations are strings here).
_ARROW_TYPES = {"int": "int64", "float": "float64", "str": "string", "bool": "bool"}


def require_pandas():
    """The pandas module, or a ConvisError saying how to get it."""
    try:
        import pandas
    except ImportError as exc:
        raise ConvisError("pandas is not installed: pip install 'convis-db[pandas]' (or pip install pandas), "
                          "or use .to_arrow(), which needs no pandas.") from exc
    return pandas


def _arrow_type(annotation: str):
    import pyarrow as pa

    base = annotation.replace(" ", "").replace("|None", "")
    if base in _ARROW_TYPES:
        return pa.type_for_alias(_ARROW_TYPES[base])
    if base.startswith("list[") and base[5:-1] in _ARROW_TYPES:
        return pa.list_(pa.type_for_alias(_ARROW_TYPES[base[5:-1]]))
    return None  # inferred from the values


def rows_to_arrow(rows: list, row_type: type | None):
    """A pyarrow Table of dataclass rows: one column per field, typed from the field's annotation
    (so an empty result still has its columns)."""
    import pyarrow as pa

    if row_type is None or not is_dataclass(row_type):
        return pa.Table.from_pylist([_as_row(r) for r in rows])
    columns, types = [], []
    for f in fields(row_type):
        columns.append(f.name)
        types.append(_arrow_type(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")))
    data = {name: [getattr(r, name) for r in rows] for name in columns}
    arrays = [pa.array(data[name], type=t) if t is not None or rows else pa.array([], type=pa.null())
              for name, t in zip(columns, types)]
    return pa.Table.from_arrays(arrays, names=columns)


def _as_row(row: Any) -> dict:
    if is_dataclass(row):
        return {f.name: getattr(row, f.name) for f in fields(row)}
    return dict(row)


def _cell(value: Any, width: int = 40) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    if len(text) <= width:
        return text
    if isinstance(value, str) and "/" in value:  # a path: its end names the file
        return "..." + text[-(width - 3):]
    return text[: width - 3] + "..."


class Results(list):
    """A list of result rows (dataclasses), best first, that a notebook can turn into a table.

    `to_arrow()` gives a pyarrow Table, `df()` a pandas DataFrame (pandas is optional); repr()
    prints a summary and the first rows; Jupyter shows an HTML table.

        >>> hits = db.search("dog.n.01")              # doctest: +SKIP
        >>> hits.df().head()                            # doctest: +SKIP
    """

    #: What one row is called in the summary line ("hit", "region", ...).
    noun = "row"

    def __init__(self, rows: Iterable = (), row_type: type | None = None):
        super().__init__(rows)
        self.row_type = row_type or (type(self[0]) if self else None)

    def to_arrow(self):
        """The rows as a pyarrow Table (one column per field)."""
        return rows_to_arrow(list(self), self.row_type)

    def df(self):
        """The rows as a pandas DataFrame (needs pandas: pip install 'convis-db[pandas]')."""
        require_pandas()
        return self.to_arrow().to_pandas()

    def summary(self) -> str:
        """One line: how many rows, and what they are."""
        noun = self.noun if len(self) == 1 else self.noun + "s"
        return f"{type(self).__name__}: {len(self)} {noun}"

    def _columns(self) -> list[str]:
        if self.row_type is not None and is_dataclass(self.row_type):
            return [f.name for f in fields(self.row_type)]
        return list(_as_row(self[0])) if self else []

    def __repr__(self) -> str:
        lines = [f"<{self.summary()}>"]
        columns = self._columns()
        if len(columns) > REPR_COLUMNS:
            columns = columns[:REPR_COLUMNS]
            lines[0] = lines[0][:-1] + f"; {REPR_COLUMNS} of {len(self._columns())} columns shown: .df() has all>"
        shown = [_as_row(r) for r in list(self)[:REPR_ROWS]]
        if shown:
            cells = [[_cell(row[c], 30) for c in columns] for row in shown]
            widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
            lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
            lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
            if len(self) > REPR_ROWS:
                lines.append(f"... {len(self) - REPR_ROWS} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        columns = self._columns()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(_as_row(r)[c], 80))}</td>" for c in columns) + "</tr>"
                       for r in list(self)[:HTML_ROWS])
        more = f"<p>... {len(self) - HTML_ROWS} more</p>" if len(self) > HTML_ROWS else ""
        return (f"<p><b>{html.escape(self.summary())}</b></p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}")

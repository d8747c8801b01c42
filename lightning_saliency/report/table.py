"""Typed study tables: columns, rows of cells, and what every study defines.

A cell is an :class:`~lightning_saliency.generalization.Estimate` (a number with its
interval), a plain value (a split factor, a label) or None (not logged). A study is a
:class:`Study`: its rows from runs, its plot and its summary lines, so adding a study
touches one module of :mod:`lightning_saliency.report.studies`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_saliency.generalization import Estimate

from .runs import Run

__all__ = ["Cell", "Column", "Row", "Study", "Table", "cell_text", "difference", "fmt_x",
           "markdown_lines"]  # fmt: skip

Cell = Estimate | str | int | float | None


@dataclass(frozen=True)
class Column:
    """One column: the cell ``name`` of each row, its markdown ``header``, and for a number
    its ``metric`` in ``report.csv``, the cell that names its ``method`` and its ``group``."""

    name: str
    header: str
    metric: str | None = None
    method: str = "method"
    group: str | Callable[[Row], str] = ""


@dataclass(frozen=True)
class Row:
    """One table row: the run it comes from and its cells by column name."""

    run: str
    cells: Mapping[str, Cell]

    def __getitem__(self, name: str) -> Any:
        """The cell (None when missing); Any because its type depends on the column, which
        the study knows (an int split factor, a label, an Estimate); see :meth:`estimate`."""
        return self.cells.get(name)

    def estimate(self, name: str) -> Estimate | None:
        v = self.cells.get(name)
        return v if isinstance(v, Estimate) else None


@dataclass(frozen=True)
class Table:
    """A study's rows and how to print them."""

    study: str
    columns: tuple[Column, ...]
    rows: list[Row]
    x: str  # the cell the study varies along (its x axis)
    x_name: str | Callable[[Row], str]

    def values(self, name: str) -> list[float]:
        """The column's values (NaN where missing)."""
        return [_value(r[name]) for r in self.rows]


@dataclass(frozen=True)
class Study:
    """A study of the report: which runs it needs, its table, plot and summary."""

    key: str
    title: str
    needs: str
    build: Callable[[Sequence[Run]], Table]
    plot: Callable[[Table, Path], None]
    summary: Callable[[Table], list[str]] = field(default=lambda table: [])


def _value(cell: Cell) -> float:
    if isinstance(cell, Estimate):
        return cell.value
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return float(cell)
    return math.nan


def difference(a: Estimate | None, b: Estimate | None) -> Estimate | None:
    """``a - b`` of two estimates from one run; its interval treats them as independent
    (``sqrt(se_a^2 + se_b^2)``, normal quantile), which is conservative for two numbers
    of the same probes that are positively correlated, as maps of the same probes are.

    >>> d = difference(Estimate(0.5, 0.03, 0.44, 0.56, 32), Estimate(0.2, 0.04, 0.12, 0.28, 32))
    >>> round(d.value, 4), round(d.se, 4), d.method
    (0.3, 0.05, 'independent')
    """
    if a is None or b is None:
        return None
    if a.method == b.method == "seeds":  # seed-level means of independent runs: Welch's t
        from .intervals import welch_difference

        return welch_difference(a, b)
    n, bad = max(a.n, b.n), a.nonfinite + b.nonfinite
    value = a.value - b.value
    if not math.isfinite(value):
        return Estimate.nan(n, bad, "independent")
    se = math.sqrt(a.se**2 + b.se**2)
    half = 1.959963984540054 * se
    return Estimate(value, se, value - half, value + half, n, 0, "independent")


def fmt_x(value: Any) -> str:
    """A study's x value as text: ``none`` for None, integers without ``.0``.

    >>> fmt_x(None), fmt_x(2.0), fmt_x(0.5)
    ('none', '2', '0.5')
    """
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def cell_text(cell: Cell) -> str:
    """A cell as text: an estimate as ``value [lo, hi]`` (its 95% interval, when it has
    one), ``nan (k non-finite)`` when undefined, ``n/a`` when not logged.

    >>> cell_text(Estimate(0.5, 0.01, 0.48, 0.52, 8)), cell_text(None), cell_text(2)
    ('0.5000 [0.4800, 0.5200]', 'n/a', '2')
    """
    if cell is None:
        return "n/a"
    if isinstance(cell, Estimate):
        if math.isfinite(cell.value) and not math.isfinite(cell.lo):
            return f"{cell.value:.4f}"  # logged without an interval (version 0.1 runs)
        return str(cell)
    if isinstance(cell, bool):
        return str(cell).lower()
    if isinstance(cell, float):
        return "nan" if math.isnan(cell) else f"{cell:.4f}"
    return md_escape(str(cell))


def md_escape(text: str) -> str:
    r"""Text safe inside a Markdown table cell: HTML escaped, ``|`` escaped, one line.

    >>> print(md_escape("a|b <script>"))
    a\|b &lt;script&gt;
    """
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


#: Columns whose values are a study's x (printed by :func:`fmt_x`: ``none``, ``2``, ``0.5``).
_X_COLUMNS = ("spectral_norm_factor", "value")


def markdown_lines(table: Table) -> list[str]:
    """The table as Markdown lines: a header, then one line per row (cells by :func:`cell_text`).

    >>> t = Table("s", (Column("run", "run"), Column("v", "value")), [Row("a", {"v": 0.5})], "v", "v")
    >>> markdown_lines(t)
    ['| run | value |', '|---|---|', '| a | 0.5000 |']
    """
    cols = table.columns
    lines = ["| " + " | ".join(c.header for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in table.rows:
        cells = []
        for c in cols:
            v = row.run if c.name == "run" else row[c.name]
            if c.name in _X_COLUMNS and (v is None or isinstance(v, float)):
                cells.append(fmt_x(v))
            else:
                cells.append(cell_text(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines

"""Shared plotting helpers of the report: figures, error bars from estimates, legends."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning_saliency.generalization import Estimate

from .table import Cell

__all__ = ["errorbar", "legend_outside", "log_axis_at", "new_figure", "value_and_error"]


def new_figure(ncols: int, height: float = 4.0, width: float = 5.2) -> Any:
    """A matplotlib Figure (no pyplot state) with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width * ncols, height), layout="constrained")


def value_and_error(cells: Sequence[Cell]) -> tuple[list[float], list[list[float]] | None]:
    """Values and asymmetric error bars (None when no cell has an interval)."""
    ys, lo, hi = [], [], []
    for c in cells:
        if isinstance(c, Estimate):
            ys.append(c.value)
            lo.append(c.value - c.lo)
            hi.append(c.hi - c.value)
        else:
            ys.append(float(c) if isinstance(c, (int, float)) else math.nan)
            lo.append(math.nan)
            hi.append(math.nan)
    has = any(math.isfinite(v) for v in lo + hi)
    return ys, ([[v if math.isfinite(v) else 0.0 for v in lo],
                 [v if math.isfinite(v) else 0.0 for v in hi]] if has else None)  # fmt: skip


def errorbar(ax: Any, xs: Sequence[float], cells: Sequence[Cell], **kw: Any) -> Any:
    """Plot cells against xs with their 95% intervals as error bars; returns the line."""
    ys, err = value_and_error(cells)
    container = ax.errorbar(list(xs), ys, yerr=err, capsize=3, **kw)
    return container.lines[0]


def legend_outside(fig: Any, ax: Any) -> None:
    """One legend beside the axes, off the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)


def log_axis_at(ax: Any, xs: Sequence[float], base: float = 10) -> None:
    """A log x axis labelled at the settings that ran (``2``, ``16``), nowhere else.

    Matplotlib's default labels a log axis spanning less than a decade with minor ticks
    such as ``2x10^0``; a settings axis reads better with the values themselves. Does
    nothing unless every x is positive (a log axis needs them).

    >>> fig = new_figure(1); ax = fig.subplots(1, 1); _ = ax.plot([1, 4], [0, 1])
    >>> log_axis_at(ax, [1, 4])
    >>> [t.get_text() for t in ax.get_xticklabels()], ax.get_xticklabels(minor=True)
    (['1', '4'], [])
    """
    ticks = sorted({float(x) for x in xs if math.isfinite(x)})
    if not ticks or ticks[0] <= 0:
        return
    ax.set_xscale("log", base=base)
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.set_xticks([], minor=True)

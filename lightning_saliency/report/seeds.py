"""Seeds as an axis: runs of one setting that differ only by their seeds, aggregated.

Two runs are **seed replicates** when their configs are equal once the seeds, logger and
paths are removed (:attr:`~lightning_saliency.report.runs.Run.signature`). For every study
row whose setting has two or more replicates, the seed-level row holds, per number, the
mean over the runs and a Student-t interval over them (k - 1 degrees of freedom): the
noise of training (initialization, split, data order, probes), which per-probe intervals
do not cover. Verdicts use these intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lightning_saliency.generalization import Estimate, t_quantile

from .runs import Run
from .table import Cell, Row, Table

__all__ = ["seed_level", "seed_table"]


def seed_level(values: Sequence[Estimate | None]) -> Estimate | None:
    """Mean and seed-level 95% interval of one number over k runs (NaN if any is undefined).

    >>> e = seed_level([Estimate(v, 0.0, v, v, 32) for v in (0.1, 0.2, 0.3)])
    >>> round(e.value, 4), round(e.se, 4), e.n, e.method
    (0.2, 0.0577, 3, 'seeds')
    """
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    x = np.array([v.value for v in vals], dtype=np.float64)
    bad = int((~np.isfinite(x)).sum())
    if bad:
        return Estimate.nan(len(vals), bad, "seeds")
    mean, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))
    half = float(t_quantile(len(x) - 1.0)) * se
    return Estimate(mean, se, mean - half, mean + half, len(vals), 0, "seeds")


def seed_table(table: Table, runs: Sequence[Run]) -> Table | None:
    """The study table aggregated over seed replicates (None when no setting has two)."""
    signature = {r.name: r.signature for r in runs}
    groups: dict[tuple, list[Row]] = {}
    for row in table.rows:
        sig = signature.get(row.run)
        if sig is None:
            continue
        ident = tuple((k, v) for k, v in row.cells.items() if not isinstance(v, Estimate))
        groups.setdefault((sig, ident), []).append(row)
    if not any(len(g) >= 2 for g in groups.values()):
        return None
    rows = []
    for (_, ident), members in groups.items():
        if len(members) < 2:
            continue
        cells: dict[str, Cell] = dict(ident)
        names = {c for r in members for c, v in r.cells.items() if isinstance(v, Estimate)}
        for name in names:
            cells[name] = seed_level([r.estimate(name) for r in members])
        seeds = sorted(r.run for r in members)
        rows.append(Row(f"{len(members)} seeds: " + ", ".join(seeds), cells))
    return Table(table.study, table.columns, rows, table.x, table.x_name)

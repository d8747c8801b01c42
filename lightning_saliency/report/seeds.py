"""Seeds as an axis: runs of one setting that differ only by their seeds, aggregated.

Two runs are **seed replicates** when their configs are equal once the seeds, logger and
paths are removed (:attr:`~lightning_saliency.report.runs.Run.signature`). For every study
row whose setting has two or more replicates, the seed-level row holds, per number, the
mean over the runs and a Student-t interval over them (k - 1 degrees of freedom;
:mod:`~lightning_saliency.report.intervals`, which keeps correlations and proportions in
range): the noise of training (initialization, split, data order), which per-probe
intervals do not cover. Verdicts use these intervals. Which runs count as replicates
(distinct seeds, distinct records, one epoch) is :mod:`~lightning_saliency.report.replicates`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lightning_saliency.generalization import Estimate

from .intervals import bounds_of, t_interval
from .runs import Run
from .table import Cell, Row, Table

__all__ = ["seed_level", "seed_table"]


def seed_level(
    values: Sequence[Estimate | None], bounds: tuple[float, float] | None = None
) -> Estimate | None:
    """Mean and seed-level 95% interval of one number over k runs (NaN with a count if any is
    undefined or was not logged; ``bounds``: its range, kept by the interval,
    :func:`~.intervals.t_interval`).

    >>> e = seed_level([Estimate(v, 0.0, v, v, 32) for v in (0.1, 0.2, 0.3)])
    >>> round(e.value, 4), round(e.se, 4), e.n, e.method
    (0.2, 0.0577, 3, 'seeds')
    >>> seed_level([Estimate(0.1, 0.0, 0.1, 0.1, 32), None, Estimate(0.3, 0.0, 0.3, 0.3, 32)])
    Estimate(value=nan, se=nan, lo=nan, hi=nan, n=3, nonfinite=1, method='seeds')
    """
    return t_interval([math.nan if v is None else v.value for v in values], bounds)


def seed_table(table: Table, runs: Sequence[Run]) -> Table | None:
    """The study table aggregated over seed replicates (None when no setting has two); a row
    of a setting with one run, or of a run without a config, stays as it is (its intervals
    over probes, its run's name), so that the plot and summary drawn from this table show it."""
    signature = {r.name: r.signature for r in runs}
    # a number one run did not log (None where others hold an Estimate) is missing, not part
    # of the row's identity: it must not split the setting's seeds (its mean becomes NaN)
    numbers = {k for row in table.rows for k, v in row.cells.items() if isinstance(v, Estimate)}
    groups: dict[tuple, list[Row]] = {}
    for row in table.rows:
        sig = signature.get(row.run) or f"run:{row.run}"  # no config: a setting of its own
        ident = tuple((k, v) for k, v in row.cells.items() if k not in numbers)
        groups.setdefault((sig, ident), []).append(row)
    if not any(len(g) >= 2 for g in groups.values()):
        return None
    rows = []
    for (_, ident), members in groups.items():
        if len(members) < 2:  # a setting of one run keeps its row (intervals over probes)
            rows.append(members[0])
            continue
        cells: dict[str, Cell] = dict(ident)
        names = {c for r in members for c, v in r.cells.items() if isinstance(v, Estimate)}
        for name in names:
            cells[name] = seed_level([r.estimate(name) for r in members], bounds_of(name))
        seeds = sorted(r.run for r in members)
        rows.append(Row(f"{len(members)} seeds: " + ", ".join(seeds), cells))
    return Table(table.study, table.columns, rows, table.x, table.x_name)

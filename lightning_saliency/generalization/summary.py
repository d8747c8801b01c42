"""The headline of a monitored epoch: per method, the gap and the test agreement above chance.

Example:
    >>> from lightning_saliency.generalization import Estimate, MetricKey
    >>> est = {MetricKey("simple_grad", "mean", "gap", "gap"): Estimate(0.02, 0.005, 0.01, 0.03, 96),
    ...        MetricKey("simple_grad", "pairs", "test", "spearman_above_chance"):
    ...            Estimate(0.05, 0.03, -0.01, 0.11, 32)}
    >>> (row,) = headline(est, ["simple_grad"])
    >>> row.gap_excludes_zero, row.above_chance_excludes_zero
    (True, False)
    >>> print(format_headline([row]))
    method       gap [95% CI]               test spearman above chance [95% CI]
    simple_grad  0.0200 [0.0100, 0.0300] *  0.0500 [-0.0100, 0.1100]
    * the interval excludes 0 (a finding at this run's probe noise; not across seeds)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .schema import MetricKey, above_chance
from .statistics import Estimate

__all__ = ["FOOTNOTE", "HEADLINE_METRIC", "Headline", "format_headline", "headline"]

#: The line under a headline table that has a ``*``.
FOOTNOTE = "* the interval excludes 0 (a finding at this run's probe noise; not across seeds)"
#: The agreement metric of the headline (its test excess over chance): the end-of-fit
#: summary prints it and TensorBoard draws it by default.
HEADLINE_METRIC = "spearman"


@dataclass(frozen=True)
class Headline:
    """One method's headline numbers (None where not logged)."""

    method: str
    gap: Estimate | None
    above_chance: Estimate | None
    metric: str = HEADLINE_METRIC

    @property
    def gap_excludes_zero(self) -> bool:
        return self.gap is not None and self.gap.excludes_zero

    @property
    def above_chance_excludes_zero(self) -> bool:
        return self.above_chance is not None and self.above_chance.excludes_zero


def headline(
    estimates: Mapping[MetricKey, Estimate],
    methods: Sequence[str],
    *,
    metric: str = HEADLINE_METRIC,
    stage: str = "fit",
) -> list[Headline]:
    """Per method: the gap (test - train loss) and the test ``metric`` above chance."""
    rows = []
    for m in methods:
        gap = estimates.get(MetricKey(m, "mean", "gap", "gap", stage))
        above = estimates.get(MetricKey(m, "pairs", "test", above_chance(metric), stage))
        rows.append(Headline(m, gap, above, metric))
    return rows


def _cell(e: Estimate | None) -> str:
    if e is None:
        return "not logged"
    return f"{e}{' *' if e.excludes_zero else ''}"


def format_headline(rows: Sequence[Headline]) -> str:
    """A plain-text table of :func:`headline` rows; ``*`` marks intervals that exclude 0,
    explained by :data:`FOOTNOTE` under the table when a row has one."""
    if not rows:
        return ""
    metric = rows[0].metric
    head = ("method", "gap [95% CI]", f"test {metric} above chance [95% CI]")
    table = [head] + [(r.method, _cell(r.gap), _cell(r.above_chance)) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip() for t in table]
    if any(r.gap_excludes_zero or r.above_chance_excludes_zero for r in rows):
        lines.append(FOOTNOTE)
    return "\n".join(lines)

"""The stability-fidelity figure of a smoothing sweep, for TensorBoard and for the report.

:func:`stability_fidelity_figure` draws, from one epoch's estimates (the callback's, or a
run's CSV read back), per smoothing curve (:func:`~lightning_saliency.generalization.
stability_fidelity.smoothing_curves`): agreement above chance and the gap against the distance
to the plain gradient, both with 95% intervals in both directions, and the log-log view that
checks Ye and Farnia's slopes (inter-model distance ~ 1 / sigma, distance to the plain
gradient ~ sigma). :data:`STUDY` is the same as a report study (rows from run CSVs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_saliency.attribution import MethodSpec
from lightning_saliency.generalization import Estimate, MetricKey
from lightning_saliency.generalization.stability_fidelity import (
    StabilityFidelityPoint,
    loglog_slope,
    stability_fidelity_points,
)

from .plotting import new_figure
from .runs import Run
from .table import Cell, Column, Row, Study, Table

__all__ = ["STUDY", "slopes", "stability_fidelity_figure"]


def _v(e: Cell) -> tuple[float, float, float]:
    """Value and its lower/upper error-bar lengths (NaN value, 0 bars when missing)."""
    if not isinstance(e, Estimate):
        return math.nan, 0.0, 0.0
    lo = e.value - e.lo if math.isfinite(e.lo) else 0.0
    hi = e.hi - e.value if math.isfinite(e.hi) else 0.0
    return e.value, lo, hi


def _errorbar_xy(ax: Any, xs: Sequence[Cell], ys: Sequence[Cell], **kw: Any) -> Any:
    x, y = [_v(c) for c in xs], [_v(c) for c in ys]
    return ax.errorbar([p[0] for p in x], [p[0] for p in y], capsize=3,
                       xerr=[[p[1] for p in x], [p[2] for p in x]],
                       yerr=[[p[1] for p in y], [p[2] for p in y]], **kw)  # fmt: skip


def slopes(points: Sequence[StabilityFidelityPoint]) -> dict[str, tuple[float, float]]:
    """Per SmoothGrad curve, the log-log slopes on noise of the inter-model distance and of
    the distance to the plain gradient (predicted: about -1 and +1); noise 0 is left out."""
    out: dict[str, tuple[float, float]] = {}
    for curve in dict.fromkeys(p.curve for p in points if p.curve.startswith("smooth_grad")):
        pts = [p for p in points if p.curve == curve and p.noise > 0]
        xs = [p.noise for p in pts]
        inst = [_v(p.instability)[0] for p in pts]
        fid = [_v(p.fidelity)[0] for p in pts]
        out[curve] = loglog_slope(xs, inst), loglog_slope(xs, fid)
    return out


def _draw(fig: Any, points: Sequence[StabilityFidelityPoint], title: str, metric: str) -> None:
    axes = fig.subplots(1, 3)
    fit = slopes(points)
    for curve in dict.fromkeys(p.curve for p in points):
        pts = [p for p in points if p.curve == curve]
        fids = [p.fidelity for p in pts]
        line = _errorbar_xy(axes[0], fids, [p.above_chance for p in pts], marker="o", label=curve)
        color = line.lines[0].get_color()
        _errorbar_xy(axes[1], fids, [p.gap for p in pts], marker="o", color=color)
        for p in pts:
            axes[0].annotate(f"{p.noise:g}", (_v(p.fidelity)[0], _v(p.above_chance)[0]),
                             fontsize=6, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        if curve in fit:
            pos = [p for p in pts if p.noise > 0]
            a, b = fit[curve]
            axes[2].loglog([p.noise for p in pos], [_v(p.instability)[0] for p in pos], "o-",
                           color=color, label=f"between models, slope {a:.2f}")  # fmt: skip
            axes[2].loglog([p.noise for p in pos], [_v(p.fidelity)[0] for p in pos], "s--",
                           color=color, label=f"to plain gradient, slope {b:.2f}")  # fmt: skip
    dist = "distance to plain gradient (L2)"
    axes[0].set(xlabel=dist, ylabel=f"test {metric} above chance (higher = more stable)",
                title=f"stability vs fidelity, {title}")  # fmt: skip
    axes[1].set(xlabel=dist, ylabel="gap: test - train loss (closer to 0 = better)",
                title="gap vs fidelity, 95% intervals")  # fmt: skip
    axes[1].axhline(0, color="k", lw=0.5)
    axes[2].set(xlabel="SmoothGrad noise", ylabel="normalized L2 distance",
                title="predicted: ~1/noise and ~noise")  # fmt: skip
    for ax in axes:
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="k", marker="o", ls="-", label="between models"),
              Line2D([], [], color="k", marker="s", ls="--", label="to plain gradient")]  # fmt: skip
    axes[2].legend(handles=styles, fontsize=7)  # the slopes are in the report's summary
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7)


def stability_fidelity_figure(
    estimates: Mapping[MetricKey, Estimate],
    specs: Sequence[MethodSpec],
    stage: str = "fit",
    epoch: int = 0,
    metric: str = "spearman",
) -> Any:
    """The figure of one epoch (a matplotlib Figure; None when no smoothing method has its
    :data:`~lightning_saliency.generalization.stability_fidelity.FIDELITY_METRIC`), with
    the signature of the callback's figure functions."""
    points = stability_fidelity_points(estimates, specs, stage=stage, metric=metric)
    points = [p for p in points if p.fidelity is not None]
    if not points:
        return None
    fig = new_figure(3, height=4.0, width=4.6)
    _draw(fig, points, f"epoch {epoch}, 95% intervals", metric)
    return fig


# --------------------------------------------------------------------------- report study
_CELLS = ("fidelity", "above_chance", "instability", "gap")


def build(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        specs = list(run.specs.values())
        for p in stability_fidelity_points(run.estimates, specs, stage=run.stage):
            if p.fidelity is None:
                continue
            cells: dict[str, Cell] = {"curve": p.curve, "noise": p.noise, "method": p.label}
            cells.update({c: getattr(p, c) for c in _CELLS})
            rows.append(Row(run.name, cells))
    columns = (
        Column("run", "run"),
        Column("curve", "curve"),
        Column("noise", "noise"),
        Column("method", "method"),
        Column("fidelity", "distance to plain gradient", "plain_gradient_l2_test"),
        Column("above_chance", "test spearman above chance", "spearman_above_chance_test"),
        Column("instability", "test L2 between models", "l2_test"),
        Column("gap", "gap", "gap"),
    )
    return Table("stability_fidelity", columns, rows, x="noise", x_name="noise")


def _points(table: Table) -> list[StabilityFidelityPoint]:
    multi = len({r.run for r in table.rows}) > 1
    return [
        StabilityFidelityPoint(
            r["curve"] + (f" ({r.run})" if multi else ""),
            r["noise"],
            r["method"],
            *(r.estimate(c) for c in _CELLS),
        )
        for r in table.rows
    ]


def plot(table: Table, path: Path) -> None:
    curves = len({p.curve for p in _points(table)})
    fig = new_figure(3, height=4.2 + 0.18 * math.ceil(curves / 2), width=4.6)
    _draw(fig, _points(table), "95% intervals", "spearman")
    fig.savefig(path, dpi=100)


def summary(table: Table) -> list[str]:
    return [
        f"{curve}: distance between models ~ noise^{a:.2f} (predicted -1), distance to the "
        f"plain gradient ~ noise^{b:.2f} (predicted +1)"
        for curve, (a, b) in slopes(_points(table)).items()
    ]


STUDY = Study(
    key="stability_fidelity",
    title="Stability against fidelity to the plain gradient, per smoothing method (Ye and Farnia 2025)",
    needs="runs with simple_grad and smooth_grad/adapt_grad methods whose CSV has plain_gradient_l2",
    build=build,
    plot=plot,
    summary=summary,
)

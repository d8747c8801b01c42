"""(b) L2 distance and gap against SmoothGrad noise (paper 000, sec. 6.4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_saliency.generalization.studies import smoothgrad_curves

from ..plotting import errorbar, new_figure
from ..runs import Run
from ..table import Cell, Column, Row, Study, Table


def build(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        for (kind, samples), points in smoothgrad_curves(run.logged_specs).items():
            for value, label in points:
                cells: dict[str, Cell] = {
                    "noise": kind, "value": value, "samples": samples, "method": label,
                    "l2": run.get(label, "pairs", "test", "l2"),
                    "l2_above_chance": run.get(label, "pairs", "test", "l2_above_chance"),
                    "gap": run.get(label, "mean", "gap", "gap"),
                    "test_loss": run.get(label, "mean", "test", "loss"),
                }  # fmt: skip
                rows.append(Row(run.name, cells))
    rows.sort(key=lambda r: (r.run, r["noise"], r["samples"], r["value"]))
    group = lambda r: f"samples={r['samples']}"  # noqa: E731
    columns = (
        Column("run", "run"),
        Column("noise", "noise"),
        Column("value", "value"),
        Column("samples", "samples"),
        Column("method", "method"),
        Column("l2", "test L2 distance", "l2_test", group=group),
        Column("l2_above_chance", "test L2 below chance", "l2_above_chance_test", group=group),
        Column("gap", "gap", "gap", group=group),
        Column("test_loss", "test loss", "test_loss", group=group),
    )
    return Table("smoothgrad", columns, rows, x="value", x_name=lambda r: str(r["noise"]))


def plot(table: Table, path: Path) -> None:
    fig = new_figure(2)
    axes = fig.subplots(1, 2)
    curves = list(dict.fromkeys((r.run, r["noise"], r["samples"]) for r in table.rows))
    multi = len({c[0] for c in curves}) > 1
    for ax, col, ylabel in zip(
        axes, ("l2", "gap"),
        ("test L2 between models (lower: agree more)", "gap (closer to 0 = better)"),
        strict=True,
    ):  # fmt: skip
        for run, kind, samples in curves:
            pts = [r for r in table.rows if (r.run, r["noise"], r["samples"]) == (run, kind, samples)]
            label = f"{kind}, n={samples}" + (f" ({run})" if multi else "")
            errorbar(ax, [r["value"] for r in pts], [r[col] for r in pts], marker="o", label=label)
        ax.set(xlabel="SmoothGrad noise (0 = simple gradient)", ylabel=ylabel)
        ax.set_title(f"{'test L2 distance' if col == 'l2' else 'interpretation gap'}, 95% intervals")
        ax.grid(alpha=0.3)
    axes[1].axhline(0, color="k", lw=0.6)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.savefig(path, dpi=100)


STUDY = Study(
    key="smoothgrad",
    title="(b) L2 distance and gap against SmoothGrad noise (paper 000, sec. 6.4)",
    needs="runs with smooth_grad methods (no super-pixels)",
    build=build,
    plot=plot,
)

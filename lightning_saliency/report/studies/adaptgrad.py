"""(e) Sparseness of AdaptGrad against SmoothGrad (paper 002, Table 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lightning_saliency.generalization.studies import adaptgrad_groups, gradient_base

from ..plotting import new_figure, value_and_error
from ..runs import Run
from ..table import Column, Row, Study, Table, cell_text

_ORDER = {"plain": 0, "smooth": 1, "adapt": 2}


def build(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        for label, spec, variant in adaptgrad_groups(run.logged_specs):
            cells = {
                "base": gradient_base(spec), "variant": variant, "method": label,
                "sparseness": run.get(label, "mean", "test", "sparseness"),
                "complexity": run.get(label, "mean", "test", "complexity"),
                "gap": run.get(label, "mean", "gap", "gap"),
            }  # fmt: skip
            rows.append(Row(run.name, cells))
    rows.sort(key=lambda r: (r.run, r["base"], _ORDER[r["variant"]], r["method"]))
    group = lambda r: str(r["variant"])  # noqa: E731
    columns = (
        Column("run", "run"),
        Column("base", "base"),
        Column("variant", "variant"),
        Column("method", "method"),
        Column("sparseness", "test sparseness (Gini)", "sparseness_test", group=group),
        Column("complexity", "test complexity", "complexity_test", group=group),
        Column("gap", "gap", "gap", group=group),
    )
    return Table("adaptgrad", columns, rows, x="base", x_name="base")


def plot(table: Table, path: Path) -> None:
    colors = {"plain": "tab:gray", "smooth": "tab:blue", "adapt": "tab:orange"}
    fig = new_figure(1, width=7.0)
    ax = fig.subplots(1, 1)
    ys, err = value_and_error([r["sparseness"] for r in table.rows])
    idx = list(range(len(table.rows)))
    ax.bar(idx, ys, yerr=err, capsize=3, color=[colors[r["variant"]] for r in table.rows])
    ax.set_xticks(idx, [r["method"] for r in table.rows], rotation=30, ha="right", fontsize=7)
    finite = [y - e for y, e in zip(ys, err[0] if err else [0.0] * len(ys), strict=True)
              if math.isfinite(y)]  # fmt: skip
    tops = [y + e for y, e in zip(ys, err[1] if err else [0.0] * len(ys), strict=True)
            if math.isfinite(y)]  # fmt: skip
    if finite:  # Gini values sit close together: a zero-based axis would hide the differences
        pad = 0.1 * (max(tops) - min(finite)) or 0.01
        ax.set_ylim(min(finite) - pad, max(tops) + pad)
    ax.set(ylabel="test Gini sparseness (higher: sparser)",
           title="sparseness: AdaptGrad (orange), SmoothGrad (blue), plain (gray); 95% intervals")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=100)


def summary(table: Table) -> list[str]:
    lines = []
    for run in dict.fromkeys(r.run for r in table.rows):
        for base in dict.fromkeys(r["base"] for r in table.rows if r.run == run):
            sel = [r for r in table.rows if r.run == run and r["base"] == base]
            parts = [f"`{r['method']}` {cell_text(r['sparseness'])}" for r in sel]
            lines.append(f"- {run}, base {base}: Gini " + ", ".join(parts))
    return lines


STUDY = Study(
    key="adaptgrad",
    title="(e) Sparseness of AdaptGrad against SmoothGrad (paper 002, Table 2)",
    needs="runs with adapt_grad among the methods",
    build=build,
    plot=plot,
    summary=summary,
)

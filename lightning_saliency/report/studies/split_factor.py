"""(a) Agreement of test maps against split factor (paper 000, Table 1, Fig. 1b)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lightning_saliency.generalization import Estimate

from ..order import run_method_key
from ..plotting import errorbar, log_axis_at, new_figure
from ..runs import Run
from ..table import Cell, Column, Row, Study, Table, cell_text, difference

_METRICS = ("spearman", "topk")


def build(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        if run.split_factor is None:
            continue
        pa = run.get("-", "pairs", "test", "prediction_agreement")
        for label in run.labels:
            cells = {m: run.get(label, "pairs", "test", m) for m in _METRICS}
            if all(v is None for v in cells.values()):
                continue
            for m in _METRICS:
                for suffix in ("_chance", "_above_chance"):
                    cells[m + suffix] = run.get(label, "pairs", "test", m + suffix)
            rows.append(Row(run.name, {"split_factor": int(run.split_factor), "method": label,
                                       "prediction_agreement": pa, **cells}))  # fmt: skip
    order = run_method_key(runs)
    rows.sort(key=lambda r: (order(r["method"]), r["split_factor"], r.run))
    pa_col = Column("prediction_agreement", "test prediction agreement",
                    "prediction_agreement_test", method="-")  # fmt: skip
    columns = (
        Column("split_factor", "split factor"),
        Column("run", "run"),
        Column("method", "method"),
        Column("spearman", "test Spearman", "spearman_test"),
        Column("topk", "test top-k", "topk_test"),
        pa_col,
        Column("spearman_chance", "test Spearman chance", "spearman_chance_test"),
        Column("topk_chance", "test top-k chance", "topk_chance_test"),
        Column("spearman_above_chance", "Spearman above chance", "spearman_above_chance_test"),
        Column("topk_above_chance", "top-k above chance", "topk_above_chance_test"),
    )
    return Table("split_factor", columns, rows, x="split_factor", x_name="split_factor")


def plot(table: Table, path: Path) -> None:
    methods = list(dict.fromkeys(r["method"] for r in table.rows))
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    entries = 2 * len(methods) + 1  # each method and its chance level, prediction agreement
    fig = new_figure(2, height=4.2 + 0.22 * math.ceil(entries / 4))
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(axes, _METRICS, ("Spearman", "top-k"), strict=True):
        for i, m in enumerate(methods):
            pts = sorted(((r["split_factor"], r[metric]) for r in table.rows
                          if r["method"] == m and r[metric] is not None),
                         key=lambda p: p[0])  # seed replicates share an x: never compare cells
            line = errorbar(ax, [x for x, _ in pts], [c for _, c in pts], marker="o", label=m,
                            color=palette(i % palette.N))  # one color per method, up to 20
            chance = [r[f"{metric}_chance"] for r in table.rows if r["method"] == m]
            if any(c is not None for c in chance):
                xs = [r["split_factor"] for r in table.rows if r["method"] == m]
                ys = [getattr(c, "value", math.nan) for c in chance]
                ax.plot(xs, ys, ":", color=line.get_color(), label=f"{m} chance")
        agree = {r["split_factor"]: r["prediction_agreement"] for r in table.rows}
        xs = sorted(agree)
        errorbar(ax, xs, [agree[x] for x in xs], fmt="k--", marker="s",
                 label="prediction agreement")  # fmt: skip
        log_axis_at(ax, xs, base=2)
        ax.set(xlabel="split factor (smaller splits to the right)",
               ylabel=f"test {title} / agreement (higher = more)")  # fmt: skip
        ax.set_title(f"test {title} and prediction agreement\n(95% intervals)", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    fig.savefig(path, dpi=100)


def summary(table: Table) -> list[str]:
    sfs = sorted({r["split_factor"] for r in table.rows})
    if len(sfs) < 2:
        return []
    lo, hi = sfs[0], sfs[-1]

    def at(sf: int, method: str | None, col: str) -> Cell:
        return next((r[col] for r in table.rows if r["split_factor"] == sf
                     and (method is None or r["method"] == method)), None)  # fmt: skip

    def change(a: Cell, b: Cell) -> str:
        d = difference(b, a) if isinstance(a, Estimate) and isinstance(b, Estimate) else None
        return f"{cell_text(a)} -> {cell_text(b)} (change {cell_text(d)})"

    pa = "prediction_agreement"
    lines = [f"From split factor {lo} to {hi} (changes with independent-runs intervals): "
             f"test prediction agreement {change(at(lo, None, pa), at(hi, None, pa))}."]  # fmt: skip
    for m in dict.fromkeys(r["method"] for r in table.rows):
        for col in ("spearman", "spearman_above_chance", "topk"):
            a, b = at(lo, m, col), at(hi, m, col)
            if a is not None and b is not None:
                lines.append(f"- `{m}` test {col.replace('_', ' ')}: {change(a, b)}")
    return lines


STUDY = Study(
    key="split_factor",
    title="(a) Agreement of test maps against split factor (paper 000, Table 1, Fig. 1b)",
    needs="runs with a split factor and test spearman/topk rows",
    build=build,
    plot=plot,
    summary=summary,
)

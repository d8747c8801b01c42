"""(d) Test interpretation loss against spectral-norm factor (paper 000, Fig. 1a)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..order import run_method_key
from ..plotting import errorbar, log_axis_at, new_figure
from ..runs import Run
from ..table import Column, Row, Study, Table


def build(runs: Sequence[Run]) -> Table:
    rows = []
    if any(run.spectral_norm_factor is not None for run in runs):
        for run in runs:
            factor = run.spectral_norm_factor
            for label in run.labels:
                test = run.get(label, "mean", "test", "loss")
                if test is None:
                    continue
                cells = {
                    "spectral_norm_factor": None if factor is None else float(factor),
                    "method": label, "test_loss": test,
                    "train_loss": run.get(label, "mean", "train", "loss"),
                    "gap": run.get(label, "mean", "gap", "gap"),
                }  # fmt: skip
                rows.append(Row(run.name, cells))
    inf = math.inf
    order = run_method_key(runs)
    rows.sort(key=lambda r: (order(r["method"]), inf if r["spectral_norm_factor"] is None
                             else r["spectral_norm_factor"], r.run))  # fmt: skip
    columns = (
        Column("spectral_norm_factor", "spectral-norm factor"),
        Column("run", "run"),
        Column("method", "method"),
        Column("test_loss", "test loss", "test_loss"),
        Column("train_loss", "train loss", "train_loss"),
        Column("gap", "gap", "gap"),
    )
    return Table("spectral_norm", columns, rows, x="spectral_norm_factor",
                 x_name="spectral_norm_factor")  # fmt: skip


def plot(table: Table, path: Path) -> None:
    fig = new_figure(1, width=6.5)
    ax = fig.subplots(1, 1)
    for m in dict.fromkeys(r["method"] for r in table.rows):
        pts = sorted(((r["spectral_norm_factor"], r["test_loss"]) for r in table.rows
                      if r["method"] == m and r["spectral_norm_factor"] is not None),
                     key=lambda p: p[0])  # fmt: skip
        line = errorbar(ax, [x for x, _ in pts], [c for _, c in pts], marker="o", label=m)
        plain = [r["test_loss"] for r in table.rows
                 if r["method"] == m and r["spectral_norm_factor"] is None]  # fmt: skip
        if plain:
            ax.axhline(plain[0].value, color=line.get_color(), ls="--", lw=1,
                       label=f"{m} (no spectral norm)")  # fmt: skip
    log_axis_at(ax, [r["spectral_norm_factor"] for r in table.rows
                     if r["spectral_norm_factor"] is not None])  # fmt: skip
    ax.set(xlabel="spectral-norm factor c (smaller = stricter Lipschitz bound)",
           ylabel="test interpretation loss (lower: nearer ref.)",
           title="test interpretation loss, 95% intervals")  # fmt: skip
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.savefig(path, dpi=100)


STUDY = Study(
    key="spectral_norm",
    title="(d) Test interpretation loss against spectral-norm factor (paper 000, Fig. 1a)",
    needs="runs with model.spectral_norm_factor set",
    build=build,
    plot=plot,
)

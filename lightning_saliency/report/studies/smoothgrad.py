"""(b) The SmoothGrad noise curve: L2 distance, agreement above chance and gap against noise
(paper 000, sec. 6.4).

Per SmoothGrad curve of a run (noise kind and draw count,
:func:`~lightning_saliency.generalization.studies.smoothgrad_curves`; the plain ``simple_grad``
is noise 0 of every curve): the test L2 distance between the models' maps, their test Spearman
above chance, the gap and the test interpretation loss. With K = 2 models the test loss *is*
the test L2 distance (the leave-one-out reference of one model is the other's normalized map,
and both average over the same test probes), so the column is dropped and a note says so.
Seed replicates get seed-level intervals (:mod:`~lightning_saliency.report.seeds`).
``configs/experiments/smoothgrad_curve.yaml`` is a small digits run of this study.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_saliency.generalization.studies import smoothgrad_curves

from ..plotting import errorbar, new_figure
from ..runs import Run
from ..table import Cell, Column, Row, Study, Table

_PANELS = (
    ("l2", "test L2 between models", "lower: agree more"),
    ("spearman_above_chance", "test Spearman above chance", "higher: agree more"),
    ("gap", "interpretation gap", "closer to 0: better"),
)
_K2_NOTE = ("With K = 2 models the test interpretation loss equals the test L2 distance (the "
            "leave-one-out reference of one model is the other's map); the table shows it once.")  # fmt: skip


def build(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        for (kind, samples), points in smoothgrad_curves(run.logged_specs).items():
            for value, label in points:
                cells: dict[str, Cell] = {
                    "noise": kind, "value": value, "samples": samples, "method": label,
                    "l2": run.get(label, "pairs", "test", "l2"),
                    "l2_above_chance": run.get(label, "pairs", "test", "l2_above_chance"),
                    "spearman_above_chance": run.get(label, "pairs", "test", "spearman_above_chance"),
                    "gap": run.get(label, "mean", "gap", "gap"),
                    "test_loss": run.get(label, "mean", "test", "loss"),
                }  # fmt: skip
                rows.append(Row(run.name, cells))
    rows.sort(key=lambda r: (r.run, r["noise"], r["samples"], r["value"]))
    group = lambda r: f"samples={r['samples']}"  # noqa: E731
    k2 = bool(runs) and all(r.num_models == 2 for r in runs if r.name in {x.run for x in rows})
    columns = (
        Column("run", "run"),
        Column("noise", "noise"),
        Column("value", "value"),
        Column("samples", "samples"),
        Column("method", "method"),
        Column("l2", "test L2 distance", "l2_test", group=group),
        Column("l2_above_chance", "test L2 below chance", "l2_above_chance_test", group=group),
        Column("spearman_above_chance", "test Spearman above chance",
               "spearman_above_chance_test", group=group),
        Column("gap", "gap", "gap", group=group),
        *(() if k2 else (Column("test_loss", "test loss", "test_loss", group=group),)),
    )  # fmt: skip
    return Table("smoothgrad", columns, rows, x="value", x_name=lambda r: str(r["noise"]))


def plot(table: Table, path: Path) -> None:
    fig = new_figure(3, width=4.6, height=4.4)
    axes = fig.subplots(1, 3)
    curves = list(dict.fromkeys((r.run, r["noise"], r["samples"]) for r in table.rows))
    multi = len({c[0] for c in curves}) > 1
    for ax, (col, title, better) in zip(axes, _PANELS, strict=True):
        for run, kind, samples in curves:
            pts = [r for r in table.rows if (r.run, r["noise"], r["samples"]) == (run, kind, samples)]
            label = f"{kind}, n={samples}" + (f" ({run})" if multi else "")
            errorbar(ax, [r["value"] for r in pts], [r[col] for r in pts], marker="o", label=label)
        ax.set(xlabel="SmoothGrad noise (0 = simple_grad)", ylabel=f"{title} ({better})")
        ax.set_title(f"{title}, 95% intervals", fontsize=10)
        ax.grid(alpha=0.3)
        if col != "l2":
            ax.axhline(0, color="k", lw=0.6)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=8)
    fig.savefig(path, dpi=100)


def summary(table: Table) -> list[str]:
    return [] if any(c.name == "test_loss" for c in table.columns) else [_K2_NOTE]


STUDY = Study(
    key="smoothgrad",
    title="(b) SmoothGrad noise curve: L2 distance, agreement above chance and gap "
    "(paper 000, sec. 6.4)",
    needs="runs with smooth_grad methods (no super-pixels)",
    build=build,
    plot=plot,
    summary=summary,
)

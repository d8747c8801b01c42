"""(e) Sparseness of AdaptGrad against SmoothGrad (paper 002, Table 2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_saliency.generalization import NO_METHOD
from lightning_saliency.generalization.input_bounds import SHARE_AT_BOUNDS
from lightning_saliency.generalization.studies import adaptgrad_groups, gradient_base

from ..order import run_method_key
from ..plotting import new_figure, value_and_error
from ..runs import Run
from ..table import Column, Row, Study, Table, cell_text


def build(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        for label, spec, variant in adaptgrad_groups(run.logged_specs):
            cells = {
                "base": gradient_base(spec), "variant": variant, "method": label,
                "sparseness": run.get(label, "mean", "test", "sparseness"),
                "complexity": run.get(label, "mean", "test", "complexity"),
                "gap": run.get(label, "mean", "gap", "gap"),
                # not a column: the summary prints it beside AdaptGrad's Gini
                "share_at_bounds": run.get(NO_METHOD, "mean", "test", SHARE_AT_BOUNDS)
                if variant == "adapt" else None,
            }  # fmt: skip
            rows.append(Row(run.name, cells))
    order = run_method_key(runs)
    rows.sort(key=lambda r: (r.run, order(r["method"])))
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
    """Points with their 95% intervals (Gini values sit close together: bars would need an
    axis that does not start at 0, which misstates their ratios)."""
    colors = {"plain": "tab:gray", "smooth": "tab:blue", "adapt": "tab:orange"}
    fig = new_figure(1, width=max(6.0, 0.45 * len(table.rows) + 2.5), height=4.6)
    ax = fig.subplots(1, 1)
    ys, err = value_and_error([r["sparseness"] for r in table.rows])
    for i, row in enumerate(table.rows):
        e = None if err is None else [[err[0][i]], [err[1][i]]]
        ax.errorbar([i], [ys[i]], yerr=e, fmt="o", capsize=3, color=colors[row["variant"]],
                    label=row["variant"])  # fmt: skip
    idx = list(range(len(table.rows)))
    ax.set_xticks(idx, [str(r["method"]) for r in table.rows], rotation=30, ha="right", fontsize=7)
    groups = list(dict.fromkeys(r.run for r in table.rows))
    if len(groups) > 1:  # one block per run (or seed group), named above it
        for g in groups:
            at = [i for i, r in enumerate(table.rows) if r.run == g]
            ax.axvline(at[0] - 0.5, color="k", lw=0.5, ls=":")
            name = g if len(g) <= 28 else g[:26] + "..."
            ax.annotate(name, ((at[0] + at[-1]) / 2, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=6)  # fmt: skip
    ax.set(ylabel="test Gini sparseness (higher: sparser)")
    ax.set_title("sparseness: AdaptGrad, SmoothGrad, plain; 95% intervals", fontsize=10,
                 pad=14 if len(groups) > 1 else 6)  # fmt: skip
    ax.grid(alpha=0.3, axis="y")
    handles, labels = ax.get_legend_handles_labels()
    by_label = dict(zip(labels, handles, strict=True))
    fig.legend(list(by_label.values()), list(by_label), loc="outside right upper", fontsize=8)
    fig.savefig(path, dpi=100)


def summary(table: Table) -> list[str]:
    lines = []
    for run in dict.fromkeys(r.run for r in table.rows):
        for base in dict.fromkeys(r["base"] for r in table.rows if r.run == run):
            sel = [r for r in table.rows if r.run == run and r["base"] == base]
            parts = [f"`{r['method']}` {cell_text(r['sparseness'])}" for r in sel]
            shares = [r["share_at_bounds"] for r in sel if r["share_at_bounds"] is not None]
            share = shares[0] if shares else None
            where = "" if share is None else (
                "; the probes' share of pixels at the input bounds, where AdaptGrad adds no "
                f"noise (test): {cell_text(share)}")  # fmt: skip
            lines.append(f"- {run}, base {base}: Gini " + ", ".join(parts) + where)
    return lines


STUDY = Study(
    key="adaptgrad",
    title="(e) Sparseness of AdaptGrad against SmoothGrad (paper 002, Table 2)",
    needs="runs with adapt_grad among the methods",
    build=build,
    plot=plot,
    summary=summary,
)

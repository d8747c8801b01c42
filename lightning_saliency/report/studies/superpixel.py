"""(c) Pixel against super-pixel: SSIM and MeGe (paper 003)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lightning_saliency.generalization import Estimate
from lightning_saliency.generalization.studies import superpixel_pairs

from ..order import run_method_key
from ..plotting import new_figure, value_and_error
from ..runs import Run
from ..table import Column, Row, Study, Table, difference


def _above(run: Run, label: str) -> Estimate | None:
    """SSIM above chance as logged (paired per probe), else from the two levels."""
    logged = run.get(label, "pairs", "test", "ssim_above_chance")
    if logged is not None:
        return logged
    return difference(run.get(label, "pairs", "test", "ssim"),
                      run.get(label, "pairs", "test", "ssim_chance"))  # fmt: skip


def _row(run: Run, pixel: str, label: str, segmenter: str) -> Row:
    g = run.get
    ssim_p, ssim_s = g(pixel, "pairs", "test", "ssim"), g(label, "pairs", "test", "ssim")
    mege_p, mege_s = g(pixel, "pairs", "train", "mege"), g(label, "pairs", "train", "mege")
    cells = {
        "method": pixel, "segmenter": segmenter, "superpixel_method": label,
        "ssim_pixel": ssim_p, "ssim_superpixel": ssim_s, "ssim_diff": difference(ssim_s, ssim_p),
        "ssim_chance_pixel": g(pixel, "pairs", "test", "ssim_chance"),
        "ssim_chance_superpixel": g(label, "pairs", "test", "ssim_chance"),
        "ssim_above_chance_diff": difference(_above(run, label), _above(run, pixel)),
        "mege_pixel": mege_p, "mege_superpixel": mege_s, "mege_diff": difference(mege_s, mege_p),
        "gap_pixel": g(pixel, "mean", "gap", "gap"), "gap_superpixel": g(label, "mean", "gap", "gap"),
    }  # fmt: skip
    return Row(run.name, cells)


def build(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        for pixel, label, spec in superpixel_pairs(run.logged_specs):
            assert spec.superpixel is not None  # a super-pixel pair's second spec is grouped
            segmenter = label.split("_sp-", 1)[1] if "_sp-" in label else spec.superpixel["algorithm"]
            rows.append(_row(run, pixel, label, segmenter))
    order = run_method_key(runs)
    rows.sort(key=lambda r: (r.run, order(r["method"]), r["segmenter"]))
    sp = {"method": "superpixel_method", "group": "superpixel"}
    px = {"group": "pixel"}
    columns = (
        Column("run", "run"),
        Column("method", "method"),
        Column("segmenter", "segmenter"),
        Column("ssim_pixel", "test SSIM pixel", "ssim_test", **px),
        Column("ssim_superpixel", "test SSIM super-pixel", "ssim_test", **sp),
        Column("ssim_diff", "SSIM super-pixel - pixel", "ssim_diff_test", **sp),
        Column("ssim_chance_pixel", "SSIM chance pixel", "ssim_chance", **px),
        Column("ssim_chance_superpixel", "SSIM chance super-pixel", "ssim_chance", **sp),
        Column("ssim_above_chance_diff", "SSIM above chance, super-pixel - pixel",
               "ssim_above_chance_diff", **sp),
        Column("mege_pixel", "MeGe pixel", "mege", **px),
        Column("mege_superpixel", "MeGe super-pixel", "mege", **sp),
        Column("mege_diff", "MeGe super-pixel - pixel", "mege_diff", **sp),
        Column("gap_pixel", "gap pixel", "gap", **px),
        Column("gap_superpixel", "gap super-pixel", "gap", **sp),
    )  # fmt: skip
    return Table("superpixel", columns, rows, x="segmenter", x_name="segmenter")


def plot(table: Table, path: Path) -> None:
    fig = new_figure(2)
    axes = fig.subplots(1, 2)
    groups = list(dict.fromkeys((r["method"], r["segmenter"]) for r in table.rows))
    idx = list(range(len(groups)))
    for ax, metric, ylabel in zip(
        axes, ("ssim", "mege"),
        ("test SSIM between models (higher: agree more)", "MeGe (higher = more consistent)"),
        strict=True,
    ):  # fmt: skip
        for offset, kind in ((-0.2, "pixel"), (0.2, "superpixel")):
            cells = [next((r[f"{metric}_{kind}"] for r in table.rows
                           if (r["method"], r["segmenter"]) == g), None) for g in groups]  # fmt: skip
            ys, err = value_and_error(cells)
            ax.bar([i + offset for i in idx], ys, 0.4, yerr=err, capsize=3,
                   label="super-pixel" if kind == "superpixel" else "pixel")  # fmt: skip
            if metric == "ssim":  # chance levels: the agreement of maps of different probes
                chance = [next((r[f"ssim_chance_{kind}"] for r in table.rows
                                if (r["method"], r["segmenter"]) == g), None) for g in groups]  # fmt: skip
                cy = [getattr(c, "value", math.nan) for c in chance]
                ax.scatter([i + offset for i in idx], cy, marker="_", s=300, color="k", zorder=3,
                           label="chance level" if kind == "pixel" else None)  # fmt: skip
        ax.set_xticks(idx, [f"{m}\n{s}" for m, s in groups], rotation=30, ha="right", fontsize=7)
        ax.set(ylabel=ylabel, title=f"{metric.upper() if metric == 'ssim' else 'MeGe'}: pixel vs super-pixel")
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.savefig(path, dpi=100)


STUDY = Study(
    key="superpixel",
    title="(c) Pixel against super-pixel: SSIM and MeGe (paper 003)",
    needs="runs with a super-pixel method and its pixel twin",
    build=build,
    plot=plot,
)

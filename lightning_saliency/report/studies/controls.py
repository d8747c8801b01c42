"""(f) Positive controls: does the measure move when something is planted? (issue 20)

A run made with a data module's ``shortcut=``, ``memorize=`` or ``shift=`` option (read from
its ``config.yaml``, else Lightning's ``hparams.yaml``: :attr:`~..runs.Run.control`) is a
*planted* arm; its *clean twin* is a run whose config is the same without the option
(:attr:`~..runs.Run.twin_signature`). Per planted kind and method, for the planted split's
model k (``split`` of the option, 0 by default): its own-train excess
(:data:`~lightning_saliency.generalization.controls.OWN_EXCESS`) and its gap, planted arm and
clean twin, as the mean over the arm's seeds with a Student-t interval (one run: the run's
interval over its probes, which covers probe noise only), and the difference planted minus
clean (paired by seed). docs/metrics.md fixes the expected moves: excess > 0, gap < 0.
The deciding number (docs/results_protocol.md) is the excess of integrated gradients.
``benchmarks/controls_report.py`` prints this study's table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_saliency.generalization import Estimate
from lightning_saliency.generalization.controls import OWN_EXCESS

from ..intervals import t_interval
from ..order import run_method_key
from ..plotting import new_figure, value_and_error
from ..runs import CONTROL_OPTIONS, Run
from ..table import Cell, Column, Row, Study, Table, cell_text, difference

__all__ = ["EXPECTED", "STUDY", "build", "control_verdict"]

#: The quantities and the sign each planted control is expected to move them by (docs/metrics.md).
EXPECTED: dict[str, int] = {"excess": +1, "gap": -1}


def control_verdict(estimate: Estimate | None, expected: int, planted: bool) -> str:
    """The verdict word of an arm's interval: a planted arm is *detected* (interval on the
    expected side of 0), *quiet* (includes 0) or *opposite*; a clean twin *quiet* or *moved*.

    >>> e = lambda lo, hi: Estimate((lo + hi) / 2, 0.01, lo, hi, 3, method="seeds")
    >>> [control_verdict(e(*b), +1, True) for b in ((0.01, 0.05), (-0.01, 0.05), (-0.05, -0.01))]
    ['detected', 'quiet', 'opposite']
    >>> control_verdict(e(-0.01, 0.05), +1, False), control_verdict(e(0.01, 0.05), -1, False)
    ('quiet', 'moved')
    """
    if estimate is None:
        return "not logged"
    if not estimate.is_finite:
        return "undefined"
    if not estimate.excludes_zero:
        return "quiet"
    if not planted:
        return "moved"
    return "detected" if (estimate.value > 0) == (expected > 0) else "opposite"


def _arm_value(runs: Sequence[Run], key: tuple[str, str, str, str]) -> tuple[Estimate | None, dict[int, float]]:
    """The arm's seed-level estimate (one run: its own) and its per-seed values."""
    per: dict[int, float] = {}
    values = []
    for r in runs:
        e = r.get(*key)
        if e is not None:
            values.append(e)
            if r.seed is not None:
                per[int(r.seed)] = e.value
    if len(runs) == 1:
        return (values[0] if values else None), per
    if len(values) != len(runs):
        return None, per
    return t_interval([e.value for e in values]), per


def _paired(a: tuple[Estimate | None, dict[int, float]], b: tuple[Estimate | None, dict[int, float]]) -> Estimate | None:
    """Planted minus clean: a t-interval of per-seed differences where >= 2 seeds pair, else
    the difference of the two estimates (independent)."""
    seeds = sorted(set(a[1]) & set(b[1]))
    if len(seeds) >= 2:
        return t_interval([a[1][s] - b[1][s] for s in seeds])
    return difference(a[0], b[0])


def _arms(runs: Sequence[Run]) -> list[tuple[str, int, list[Run], list[Run]]]:
    """``(kind, split, planted runs, clean-twin runs)`` per planted kind and config."""
    twin = lambda r: r.twin_signature or f"run:{r.path}"  # noqa: E731
    planted: dict[tuple[str, str, int], list[Run]] = {}
    for r in runs:
        if r.control:
            planted.setdefault((twin(r), r.control, r.control_split or 0), []).append(r)
    clean: dict[str, list[Run]] = {}
    for r in runs:
        if not r.control:
            clean.setdefault(twin(r), []).append(r)
    rank = lambda kind: [CONTROL_OPTIONS.index(k) for k in kind.split("+")]  # noqa: E731
    return [(kind, split, members, clean.get(key, []))
            for (key, kind, split), members in sorted(planted.items(), key=lambda i: rank(i[0][1]))]  # fmt: skip


def _names(runs: Sequence[Run]) -> str:
    names = sorted(r.name for r in runs)
    return names[0] if len(names) == 1 else f"{len(names)} seeds: " + ", ".join(names)


def build(runs: Sequence[Run]) -> Table:
    rows: list[Row] = []
    order = run_method_key(runs)
    for kind, k, planted, clean in _arms(runs):
        labels = sorted({lb for r in planted for lb in r.labels
                         if r.get(lb, f"model_{k}", "train", OWN_EXCESS) is not None}, key=order)  # fmt: skip
        for label in labels:
            keys = {"excess": (label, f"model_{k}", "train", OWN_EXCESS),
                    "gap": (label, f"model_{k}", "gap", "gap")}  # fmt: skip
            arms = [("planted", planted)] + ([("clean twin", clean)] if clean else [])
            values = {arm: {q: _arm_value(members, key) for q, key in keys.items()}
                      for arm, members in arms}  # fmt: skip
            for arm, members in arms:
                cells: dict[str, Cell] = {"kind": kind, "arm": arm, "model": k, "method": label}
                for q in keys:
                    est = values[arm][q][0]
                    cells[q] = est
                    cells[f"{q}_verdict"] = control_verdict(est, EXPECTED[q], arm == "planted")
                    if arm == "planted" and clean:
                        cells[f"{q}_diff"] = _paired(values["planted"][q], values["clean twin"][q])
                rows.append(Row(_names(members), cells))
    group = lambda r: str(r["arm"])  # noqa: E731
    columns = (
        Column("kind", "planted kind"), Column("arm", "arm"), Column("run", "runs"),
        Column("model", "model"), Column("method", "method"),
        Column("excess", "own-train excess", OWN_EXCESS, group=group),
        Column("excess_verdict", "excess verdict"),
        Column("excess_diff", "excess, planted - clean", f"{OWN_EXCESS}_diff", group=group),
        Column("gap", "gap", "gap", group=group), Column("gap_verdict", "gap verdict"),
        Column("gap_diff", "gap, planted - clean", "gap_diff", group=group),
    )  # fmt: skip
    return Table("controls", columns, rows, x="kind", x_name="kind")


def plot(table: Table, path: Path) -> None:
    fig = new_figure(2, width=5.5, height=4.2)
    axes = fig.subplots(1, 2)
    arms = list(dict.fromkeys((r["kind"], r["arm"]) for r in table.rows))
    methods = list(dict.fromkeys(r["method"] for r in table.rows))
    width = 0.6 / max(len(methods), 1)
    for ax, q, title in zip(axes, ("excess", "gap"), ("own-train excess (expected > 0)",
                                                      "gap (expected < 0)"), strict=True):  # fmt: skip
        for i, m in enumerate(methods):
            cells = [next((r[q] for r in table.rows if (r["kind"], r["arm"]) == a
                           and r["method"] == m), None) for a in arms]  # fmt: skip
            ys, err = value_and_error(cells)
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(arms))]
            ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=m)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(arms)), [f"{k}\n{a}" for k, a in arms], fontsize=8)
        ax.set(ylabel=f"{title.split(' (')[0]}, model of the planted split", title=f"{title}, 95% intervals")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    fig.savefig(path, dpi=100)


def summary(table: Table) -> list[str]:
    """The deciding number per planted kind: integrated gradients' excess (first such method)."""
    lines = []
    for kind in dict.fromkeys(r["kind"] for r in table.rows):
        rows = [r for r in table.rows if r["kind"] == kind]
        ig = next((r["method"] for r in rows if str(r["method"]).startswith("integrated_gradients")), None)
        if ig is None:
            continue
        sel = {r["arm"]: r for r in rows if r["method"] == ig}
        p, c = sel["planted"], sel.get("clean twin")  # every method has a planted row
        text = (f"- {kind}: model {p['model']}'s own-train excess of `{ig}` {cell_text(p['excess'])} "
                f"over {p.run}: **{p['excess_verdict']}**")  # fmt: skip
        if c is not None:
            text += f"; clean twin {cell_text(c['excess'])}: **{c['excess_verdict']}**"
        lines.append(text + ".")
    if lines and any("seeds:" not in r.run for r in table.rows):
        lines.append("- An arm of one run has its interval over probes only (probe noise, not "
                     "training noise): run seeds 0, 1, 2 for a verdict (benchmarks/run_controls.sh).")  # fmt: skip
    head = ("Deciding number (docs/results_protocol.md): the planted model's own-train excess "
            "of integrated gradients, interval above 0 (detected); its clean twin's includes 0 "
            "(quiet).")  # fmt: skip
    return [head, *lines] if lines else []


STUDY = Study(
    key="controls",
    title="(f) Positive controls: own-train excess and gap, planted against the clean twin",
    needs="runs with a data option shortcut=, memorize= or shift=, and their clean twins",
    build=build,
    plot=plot,
    summary=summary,
)

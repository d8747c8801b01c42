"""Tables of the power study (docs/results_protocol.md, version 2) from ``runs/power``.

Per-seed numbers are means over the first n test probes of per-probe values; the seed-level
half-width is that of the 95% Student-t interval over the seeds.

>>> round(t_interval([1.0, 2.0, 3.0])[2], 4)  # t(0.975, 2) * 1 / sqrt(3)
2.4841
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning_saliency.report.intervals import t_interval as t_interval_of

COUNTS = (64, 256, 1024)
NOISE_LEVELS = (0.05, 0.1, 0.2, 0.5, 1.0)
Values = dict[str, list[float]]


def _above(v: Values, m: str) -> list[float]:
    return [s - c for s, c in zip(v[f"{m}/spearman"], v[f"{m}/spearman_chance"], strict=True)]


def _minus(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


#: The deciding numbers of the protocol: id -> per-probe values of one seed.
DECIDING: dict[str, Callable[[Values], list[float]]] = {
    "P-a": lambda v: _above(v, "simple_grad"),
    "P-b": lambda v: _minus(v["sg0.2/l2"], v["simple_grad/l2"]),
    "P-b2": lambda v: _minus(v["sg0.2/l2"], v["sg0.2_n1/l2"]),
    "P-e": lambda v: _minus(v["adapt/gini"], v["sg0.2/gini"]),
    "P-d": lambda v: v["simple_grad/l2"],
    "P-ig": lambda v: v["ig/l2"],
}


def t_interval(xs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, sd, half-width) of the report's 95% Student-t interval
    (:func:`lightning_saliency.report.intervals.t_interval`): NaN when a value is not finite
    (never dropped) and a NaN half-width below 2 values."""
    xs = list(xs)
    if len(xs) < 2:
        return (float(xs[0]) if xs else math.nan), math.nan, math.nan
    e = t_interval_of(xs)
    assert e is not None
    return e.value, e.se * math.sqrt(e.n), e.hi - e.value


def load(root: Path, dataset: str) -> dict[int, dict]:
    """``{seed: record}`` of the finished seeds of one dataset."""
    out = {}
    for path in sorted((root / dataset).glob("seed*.json")):
        rec = json.loads(path.read_text())
        out[int(rec["seed"])] = rec
    return out


def _fmt(mean: float, hw: float) -> str:
    return f"{mean:+.4f} [{mean - hw:+.4f}, {mean + hw:+.4f}]"


def _half_width(means: dict[int, float], seeds: Sequence[int]) -> str:
    """The seed-level half-width over exactly these seeds, or "n/a" while one is missing."""
    if not all(s in means for s in seeds):
        return "n/a"
    return f"{t_interval([means[s] for s in seeds])[2]:.4f}"


def power_rows(recs: dict[int, dict]) -> list[str]:
    """One row per deciding number and probe count: seed-level half-widths (3 and 5 seeds),
    the probe-level half-width, and the 5-seed interval."""
    rows, most = [], min(int(r["num_probes"]) for r in recs.values())
    for name, fn in DECIDING.items():
        for n_used in sorted({min(n, most) for n in COUNTS}):  # digits: 64, 256, 359
            per = {s: fn(r["values"])[:n_used] for s, r in recs.items()}
            means = {s: t_interval(v)[0] for s, v in per.items()}
            probe_hw = sum(t_interval(v)[2] for v in per.values()) / len(per)
            m5, _, hw5 = t_interval(list(means.values()))
            hw3 = _half_width(means, (0, 1, 2))
            rows.append(f"| {name} | {n_used} | {hw3} | {_half_width(means, range(5))} "
                        f"| {probe_hw:.4f} "
                        f"| {_fmt(m5, hw5)} (seeds {len(means)}) |")  # fmt: skip
    return rows


def choice_lines(recs: dict[int, dict]) -> list[str]:
    """The protocol's rules: the smallest probe count whose 5-seed half-width is within 10% of
    the largest count's for every deciding number; 5 seeds if their half-width is at most 0.75
    of the 3-seed one for a majority of the numbers."""
    if not all(s in recs for s in range(5)):
        return ["- rules: need seeds 0-4"]
    most = min(int(r["num_probes"]) for r in recs.values())
    counts = sorted({min(n, most) for n in COUNTS})
    hw: dict[str, dict[int, float]] = {}
    shrink = 0
    for name, fn in DECIDING.items():
        means = {n: [t_interval(fn(r["values"])[:n])[0] for r in recs.values()] for n in counts}
        hw[name] = {n: t_interval(m)[2] for n, m in means.items()}
        shrink += t_interval(means[most])[2] <= 0.75 * t_interval(means[most][:3])[2]
    chosen = next(n for n in counts if all(h[n] <= 1.1 * h[most] for h in hw.values()))
    seeds = 5 if shrink > len(DECIDING) / 2 else 3
    return [f"- rules: probe count {chosen}; seeds {seeds} ({shrink} of {len(DECIDING)} numbers "
            "narrow to <= 0.75 with 5 seeds)"]  # fmt: skip


def curve_rows(recs: dict[int, dict]) -> list[str]:
    """The SmoothGrad curve: L2 and Spearman above chance, SmoothGrad minus simple_grad."""
    rows = []
    for a in NOISE_LEVELS:
        l2, sp = [], []
        for r in recs.values():
            v = r["values"]
            l2.append(t_interval(_minus(v[f"sg{a}/l2"], v["simple_grad/l2"]))[0])
            sp.append(t_interval(_minus(_above(v, f"sg{a}"), _above(v, "simple_grad")))[0])
        (ml, _, hl), (ms, _, hs) = t_interval(l2), t_interval(sp)
        rows.append(f"| {a} | {_fmt(ml, hl)} | {_fmt(ms, hs)} |")
    return rows


def setting_lines(recs: dict[int, dict]) -> list[str]:
    """Accuracies, saturation and scale of the probes, timings."""
    r0 = next(iter(recs.values()))
    sat = r0["saturation"]
    acc = ", ".join(f"seed {s}: " + "/".join(f"{a:.1%}" for a in r["accuracy"])
                    for s, r in recs.items())  # fmt: skip
    fit = sum(r["fit_wall_s"] for r in recs.values()) / len(recs)
    return [
        f"- test probes: {r0['num_probes']}; test accuracy (model 0/1): {acc}",
        f"- input range [{sat['x_min']:.3f}, {sat['x_max']:.3f}]; probe std {sat['probe_std']:.3f}; "
        f"pixels at the image bounds {sat['image_bounds']:.1%}; at the input-range bounds "
        f"(AdaptGrad) {sat['input_range_bounds']:.1%}",
        f"- mean fit wall time {fit:.0f} s; torch {r0['torch']}",
    ]


def main_table(root: Path) -> None:
    """Print the markdown tables of every dataset in ``root``."""
    for dataset in ("digits", "cifar10"):
        recs = load(root, dataset)
        if not recs:
            continue
        print(f"\n### {dataset} (seeds {sorted(recs)})\n")
        print("\n".join(setting_lines(recs) + choice_lines(recs)))
        print(
            "\n| number | probes | seed-level half-width, seeds 0-2 | seeds 0-4 "
            "| probe-level half-width | mean [95% CI], all seeds |"
        )
        print("|---|---:|---:|---:|---:|---|")
        print("\n".join(power_rows(recs)))
        print(
            "\n| noise level | test L2, SmoothGrad - simple_grad | "
            "test Spearman above chance, SmoothGrad - simple_grad |"
        )
        print("|---|---|---|")
        print("\n".join(curve_rows(recs)))


if __name__ == "__main__":
    main_table(Path("runs/power"))

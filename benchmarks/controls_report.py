"""The positive controls' seed-level table (benchmarks/run_controls.sh writes the runs).

For every dataset, method and arm (clean twin, shortcut, memorize, shift) of a runs folder laid
out as ``<root>/<dataset>/<arm>-seed<s>/interpretation_metrics.csv``, at each run's last fit
epoch: model 0's own-train excess (its train loss minus the other models' mean train loss,
``lightning_saliency.generalization.controls``; computed here from the per-model train-loss
rows) and its gap, per seed, then the mean over seeds with its Student-t 95% interval (n - 1
degrees of freedom) and the protocol's verdict: *detected* when a planted arm's interval lies
above 0 (excess) or excludes 0 (gap), *quiet* when the clean twin's includes 0.

    python benchmarks/controls_report.py runs/controls [--out docs/controls_table.md]
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from collections import defaultdict
from pathlib import Path

from scipy import stats

ARMS = ("clean", "shortcut", "memorize", "shift")


def last_epoch_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["stage"] == "fit"]
    last = max(int(r["epoch"]) for r in rows)
    return [r for r in rows if int(r["epoch"]) == last]


def run_numbers(path: Path) -> dict[str, dict[str, float]]:
    """method -> {"excess": model 0's own-train excess, "gap": model 0's gap}."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    train: dict[str, dict[int, float]] = defaultdict(dict)
    for r in last_epoch_rows(path):
        agg = r["aggregate"]
        if not agg.startswith("model_"):
            continue
        k = int(agg.split("_")[1])
        if r["split"] == "train" and r["metric"] == "loss":
            train[r["method"]][k] = float(r["value"])
        if k == 0 and r["split"] == "gap" and r["metric"] == "gap":
            out[r["method"]]["gap"] = float(r["value"])
    for method, losses in train.items():
        others = [v for k, v in losses.items() if k != 0]
        out[method]["excess"] = losses[0] - sum(others) / len(others)
    return out


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(arm: str, quantity: str, lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "one seed"
    if arm == "clean":
        return "quiet" if lo <= 0 <= hi else "MOVED"
    if quantity == "excess":
        return "detected" if lo > 0 else "missed"
    return "detected" if not lo <= 0 <= hi else "missed"


def table(root: Path) -> str:
    found: dict[tuple[str, str], dict[int, Path]] = defaultdict(dict)
    for csv_path in sorted(root.glob("*/*-seed*/interpretation_metrics.csv")):
        m = re.fullmatch(r"(\w+)-seed(\d+)", csv_path.parent.name)
        if m and m.group(1) in ARMS:
            found[(csv_path.parent.parent.name, m.group(1))][int(m.group(2))] = csv_path
    lines = ["| dataset | method | arm | quantity | per seed | mean [95% CI over seeds] | verdict |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (dataset, arm), runs in sorted(found.items(), key=lambda i: (i[0][0], ARMS.index(i[0][1]))):
        numbers = {s: run_numbers(p) for s, p in sorted(runs.items())}
        methods = sorted({m for per in numbers.values() for m in per})
        for method in methods:
            for q in ("excess", "gap"):
                vals = [numbers[s][method][q] for s in sorted(numbers) if q in numbers[s][method]]
                mean, lo, hi = seed_interval(vals)
                per = ", ".join(f"{v:+.4f}" for v in vals)
                lines.append(f"| {dataset} | {method} | {arm} | {q} | {per} | "
                             f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}] | {verdict(arm, q, lo, hi)} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = table(args.root)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""The positive controls' seed-level table (benchmarks/run_controls.sh writes the runs).

Prints the report's controls study (``lightning_saliency.report.studies.controls``, one owner
of the numbers and verdicts): per planted kind (read from each run's saved config) and method,
the planted model's own-train excess and gap, planted arm and clean twin, as the mean over the
seeds with its Student-t 95% interval, the difference planted minus clean (paired by seed), and
the verdict words (*detected* / *quiet* / *opposite*; a clean twin *quiet* or *moved*).

    python benchmarks/controls_report.py runs/controls [--out docs/controls_table.md]

``lightning-saliency report runs/controls --out reports/controls`` writes the same table into
a full report, with its plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_saliency.report import load_runs
from lightning_saliency.report.replicates import select_replicates
from lightning_saliency.report.studies.controls import STUDY
from lightning_saliency.report.table import markdown_lines


def table(root: Path) -> str:
    """The controls study of the runs under ``root`` as Markdown (its deciding lines first)."""
    runs, apart = select_replicates(load_runs(root))
    study = STUDY.build(runs)
    if not study.rows:
        return f"no planted runs (shortcut=, memorize=, shift=) under {root}"
    lines = [*STUDY.summary(study), "", *markdown_lines(study)]
    lines += [f"- set apart: {r.name}: {why}" for r, why in apart]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = table(args.root)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

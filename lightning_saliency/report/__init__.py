"""Read finished runs back into an answer, then the studies' tables and plots.

``lightning-saliency report RUN_DIR [RUN_DIR ...] --out OUT_DIR [--epoch N] [--stage S]``
reads each run's ``interpretation_metrics.csv``, ``methods.json`` (the callback's method
specs) and ``config.yaml``, and writes ``report.md``, ``report.csv`` (one tidy row per
number) and one PNG per study with data into ``OUT_DIR``. ``report.md`` opens with the
answer (:mod:`.answer`): per setting and method, do its maps generalize (the gap and the
agreement above chance, with the rule that decides), then the studies, methods in order of
meaning (:mod:`.order`); a study without data prints nothing:

(a) ``split_factor``: test-map Spearman and top-k against the split factor, beside
    prediction agreement and the chance levels (paper 000, Table 1, Fig. 1b);
(b) ``smoothgrad``: test L2 distance, Spearman above chance and gap against SmoothGrad
    noise, one curve per noise kind and draw count (paper 000, sec. 6.4);
(c) ``superpixel``: SSIM and MeGe with and without super-pixel grouping (paper 003);
(d) ``spectral_norm``: test interpretation loss against the spectral-norm factor
    (paper 000, Fig. 1a);
(e) ``adaptgrad``: sparseness (Gini) of AdaptGrad against SmoothGrad (paper 002, Table 2);
    ``stability_fidelity``: agreement and gap against the distance to the plain gradient;
(f) ``controls``: the positive controls (a planted shortcut, memorization or shift against
    its clean twin): the planted model's own-train excess and gap.

A ``RUN_DIR`` is a run's log folder (``runs/<name>/version_<n>``) or a folder above several.
Adding a study: a module in :mod:`lightning_saliency.report.studies` and one entry in its
``ALL_STUDIES``.

Example:
    >>> from lightning_saliency.report import load_runs, write_report
    >>> runs = load_runs(["runs/split_factor"])  # doctest: +SKIP
    >>> write_report(runs, "reports/split_factor")  # doctest: +SKIP
    PosixPath('reports/split_factor/report.md')
"""

from __future__ import annotations

import argparse

from lightning_saliency.generalization import STAGES

from .accuracy import AccuracyBar
from .markdown import REPORT_FIELDS, build_studies, write_report
from .runs import LEGACY_CSV_FIELDS, Run, find_runs, load_run, load_runs
from .studies import ALL_STUDIES
from .table import Column, Row, Study, Table, cell_text

__all__ = [
    "ALL_STUDIES",
    "LEGACY_CSV_FIELDS",
    "REPORT_FIELDS",
    "STUDIES",
    "AccuracyBar",
    "Column",
    "Row",
    "Run",
    "Study",
    "Table",
    "build_studies",
    "cell_text",
    "find_runs",
    "load_run",
    "load_runs",
    "main",
    "write_report",
]

#: Study keys and titles, in report order.
STUDIES: dict[str, str] = {s.key: s.title for s in ALL_STUDIES}


def main(argv: list[str] | None = None) -> None:
    """``lightning-saliency report RUN_DIR [RUN_DIR ...] --out OUT_DIR [--epoch N] [--stage S]``.

    >>> main(["runs/split_factor", "--out", "reports/split_factor"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(
        prog="lightning-saliency report",
        description="A verdict per method, then tables (report.md, report.csv) and plots (PNG) of the studies from "
        "run folders written by the InterpretationGeneralization callback.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="a run's log folder (runs/<name>/version_<n>) or a folder holding several")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder")
    parser.add_argument("--epoch", type=int, default=None,
                        help="monitored epoch to read from every run (default: each run's last complete one)")  # fmt: skip
    parser.add_argument("--min-accuracy", action="append", default=[], metavar="BAR",
                        help="set apart runs whose models' test accuracy (val/model_<k>/acc at the read "
                        "epoch) is below BAR or cannot be read: a fraction (0.85: every run) or "
                        "0.85@sf2 (runs at split factor 2 without spectral normalization); repeatable")  # fmt: skip
    parser.add_argument("--stage", choices=STAGES, default="fit",
                        help="rows to read: those written while training (fit, the default) or by a "
                        "`lightning-saliency validate/test` run of a trained checkpoint")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        bars = [AccuracyBar.parse(text) for text in args.min_accuracy]
        runs = load_runs(args.runs, epoch=args.epoch, stage=args.stage)
        report = write_report(runs, args.out, bars)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {report} ({len(runs)} run(s))")

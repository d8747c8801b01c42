"""Writing the report: ``report.md`` (tables with 95% intervals), ``report.csv``, PNGs."""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightning_saliency.generalization import Estimate

from .accuracy import AccuracyBar
from .answer import answer_lines
from .intervals import detectable_effect
from .replicates import SetApart, select_replicates
from .runs import Run
from .seeds import seed_table
from .studies import ALL_STUDIES
from .table import Column, Row, Table, cell_text, fmt_x, markdown_lines, md_escape
from .verdicts import verdict_rows

__all__ = ["REPORT_FIELDS", "build_studies", "write_report"]

#: Columns of ``report.csv``: one tidy row per number of the tables.
REPORT_FIELDS: tuple[str, ...] = (
    "study", "run", "method", "x_name", "x", "group", "metric", "value", "se", "lo", "hi", "n",
)  # fmt: skip


def _group(col: Column, row: Row) -> str:
    return col.group(row) if callable(col.group) else col.group


def _tidy(table: Table) -> list[dict[str, Any]]:
    out, seen = [], set()
    for row in table.rows:
        x_name = table.x_name(row) if callable(table.x_name) else table.x_name
        for col in table.columns:
            cell = row[col.name]
            if col.metric is None or not isinstance(cell, Estimate):
                continue
            method = "-" if col.method == "-" else str(row[col.method])
            rec = {"study": table.study, "run": row.run, "method": method, "x_name": x_name,
                   "x": fmt_x(row[table.x]), "group": _group(col, row), "metric": col.metric,
                   "value": repr(cell.value), "se": repr(cell.se), "lo": repr(cell.lo),
                   "hi": repr(cell.hi), "n": cell.n}  # fmt: skip
            key = tuple(rec.values())
            if key not in seen:  # e.g. prediction agreement: once per run, not once per method
                seen.add(key)
                out.append(rec)
    return out


def build_studies(runs: Sequence[Run]) -> dict[str, Table]:
    """Every study's table: ``{study key: Table}`` (a table may have no rows).

    >>> build_studies([])["split_factor"].rows
    []
    """
    return {s.key: s.build(runs) for s in ALL_STUDIES}


def _runs_table(runs: Sequence[Run]) -> list[str]:
    md = [
        "| run | epoch | epochs | backbone | models | split factor | spectral-norm factor "
        "| seed | methods |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ep = r.epochs
        md.append(
            f"| {md_escape(r.name)} | {r.epoch} | {ep[0]}-{ep[-1]} ({len(ep)}) | {cell_text(r.backbone)} | "
            f"{cell_text(r.num_models)} | {cell_text(r.split_factor)} | "
            f"{fmt_x(r.spectral_norm_factor)} | {cell_text(r.seed)} | {len(r.labels)} |"
        )
    return md


def _verdicts(runs: Sequence[Run]) -> list[str]:
    """The protocol's verdicts, when some finding has two or more seeds."""
    rows = [r for r in verdict_rows(runs) if r[1] is not None]
    if not rows:
        return []
    md = ["## Verdicts (the rules of docs/results_protocol.md)", "",
          "Seed-level mean of the deciding number and its 95% interval over the seeds. "
          "Power: the smallest true effect this many seeds, at this spread, detect 80% of "
          "the time (two-sided 5% t test; an effect as large as the half-width is detected "
          "only 55-61% of the time with 5-3 seeds).", "",
          "| finding | claim | deciding number | seed-level value [95% CI] | detectable (80% "
          "power) | runs used | seeds | verdict |",
          "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for f, est, seeds, word, used in rows:
        md.append(f"| {f.key} | {f.claim} | {f.metric} | {cell_text(est)} | "
                  f"{detectable_effect(est):.4f} | {md_escape(', '.join(used))} | "
                  f"{', '.join(map(str, seeds))} | **{md_escape(word)}** |")  # fmt: skip
    return [*md, ""]


def _set_apart(apart: Sequence[SetApart], bars: Sequence[AccuracyBar] = ()) -> list[str]:
    """The accuracy bars, the runs left out of every table and verdict, and why (also a
    warning)."""
    md = [f"Accuracy bar: {bar.describe()}; a run below it, or whose accuracy cannot be "
          "read, is set apart." for bar in bars]  # fmt: skip
    md += [""] if md else []
    if not apart:
        return md
    for run, why in apart:
        warnings.warn(f"report: run {run.name} is set apart: {why}", stacklevel=3)
    md += ["## Set apart (not in any table or verdict)", "",
           "These runs are not further replicates, or miss a stated accuracy bar; the tables "
           "and verdicts leave them out.", "", "| run | why |", "|---|---|"]  # fmt: skip
    return [*md, *(f"| {md_escape(r.name)} | {md_escape(why)} |" for r, why in apart), ""]


def write_report(
    runs: Sequence[Run], out_dir: str | os.PathLike[str], bars: Sequence[AccuracyBar] = ()
) -> Path:
    """Write ``report.md``, ``report.csv`` and one PNG per study with data into ``out_dir``.

    ``report.md`` opens with the answer (:mod:`~lightning_saliency.report.answer`); a study
    without data prints nothing; runs failing one of ``bars`` (``--min-accuracy``) are set
    apart. Returns the path of ``report.md``.

    >>> write_report(load_runs("runs/smoothgrad"), "reports/smoothgrad")  # doctest: +SKIP
    PosixPath('reports/smoothgrad/report.md')
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {str(out)!r} is a file; expected a folder")
    out.mkdir(parents=True, exist_ok=True)
    runs, apart = select_replicates(runs, bars)
    md = ["# lightning-saliency report", "", *answer_lines(runs), *_set_apart(apart, bars),
          "## Runs", ""]
    stages = sorted({r.stage for r in runs} - {"fit"})
    if stages:
        md += [f"Rows of the {', '.join(stages)} stage (a trained checkpoint evaluated).", ""]
    md += [*_runs_table(runs), "",
           "Numbers are `value [95% interval]`: per run, over its probes (probe-to-probe "
           "noise); where a setting has several seeds, a seed-level table gives the mean over "
           "the seeds and its interval over them (training noise), and the verdicts use it. A "
           "difference is a finding only when its interval excludes 0.", ""]  # fmt: skip
    tidy: list[dict[str, Any]] = []
    md += _verdicts(runs)
    for study in ALL_STUDIES:
        table = study.build(runs)
        if not table.rows:
            continue
        md += [f"## {study.title}", ""]
        seeds = seed_table(table, runs)
        main = table if seeds is None else seeds
        if seeds is not None:
            md += ["Seed level: every number is the mean over the seed replicates of a setting "
                   "with its 95% interval over the seeds (training noise); verdicts use these. "
                   "A setting with one run keeps that run's row (named by the run; its interval "
                   "is over probes only).",
                   "", *markdown_lines(seeds), ""]  # fmt: skip
        summary = study.summary(main)
        if summary:
            md += [*summary, ""]
        study.plot(main, out / f"{study.key}.png")
        md += [f"![{study.key}]({study.key}.png)", ""]
        if seeds is not None:
            md += ["Per run (intervals over probes):", ""]
        md += [*markdown_lines(table), ""]
        tidy += _tidy(table)
        if seeds is not None:  # the seed-level rows (a one-run setting's row is already there)
            own = {id(r) for r in table.rows}
            tidy += _tidy(replace(seeds, rows=[r for r in seeds.rows if id(r) not in own]))
    report = out / "report.md"
    report.write_text("\n".join(md))
    with (out / "report.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(tidy)
    return report

"""Which runs are replicates: the report's grouping rule, in one place.

Runs are seed replicates of one *setting* when their configs are equal without the seeds
(:attr:`~lightning_saliency.report.runs.Run.signature`), the monitor's arguments read as its
run recorded them (``precision="auto"`` that ran as float32 equals ``"32"``). A replicate adds information only
if it is another draw: :func:`select_replicates` sets apart (and the report lists, loudly)

- a run whose interpretation CSV is byte-identical to another's (a copied folder, or seeds
  that did not reach the numbers),
- a run of a setting whose *effective* seeds (``identity.json``, else the config's
  ``seed_everything``, ``init_seed``, ``split_seed``, ``data_seed``) repeat another run's,
- a run read at another epoch than the rest of its setting (a run stopped early): a setting
  is compared at one stated epoch, the one most of its runs reached (the latest on a tie),
- with accuracy bars (``--min-accuracy``, :mod:`~lightning_saliency.report.accuracy`), a run
  held to a bar whose models fall below it, or whose accuracy cannot be read.

The choice never depends on the order the runs were given in (runs are taken by name).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_saliency._identity import IDENTITY_NAME, effective_seeds
from lightning_saliency.generalization import CSV_NAME

from ._safe_yaml import load_yaml_file
from .accuracy import AccuracyBar
from .runs import Run

__all__ = ["SetApart", "run_seeds", "select_replicates"]

#: ``(run, reason)`` of a run left out of the tables and verdicts.
SetApart = tuple[Run, str]


def _csv_hash(run: Run) -> str | None:
    path = Path(run.path) / CSV_NAME
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_seeds(run: Run) -> tuple[tuple[str, Any], ...]:
    """The run's effective seeds as sorted ``(key, value)`` pairs (empty when unknown)."""
    folder = Path(run.path)
    seeds: dict[str, Any] = {}
    try:
        record = json.loads((folder / IDENTITY_NAME).read_text(encoding="utf-8"))
        seeds = dict(record.get("seeds", {})) if isinstance(record, dict) else {}
    except (OSError, ValueError):
        config = load_yaml_file(folder / "config.yaml")
        seeds = effective_seeds(config) if config else {}
        if not seeds and run.seed is not None:
            seeds = {"seed_everything": run.seed}
    return tuple(sorted((str(k), v) for k, v in seeds.items()))


def _stated_epoch(members: Sequence[Run]) -> int:
    counts = Counter(r.epoch for r in members)
    return max(counts, key=lambda e: (counts[e], e))


def select_replicates(
    runs: Sequence[Run], bars: Sequence[AccuracyBar] = ()
) -> tuple[list[Run], list[SetApart]]:
    """``(kept, set_apart)``: the runs the tables and verdicts use, and the others with why.

    ``kept`` keeps the given order; which run of two duplicates stays is decided by name.
    A run failing one of ``bars`` is set apart first (it is no replicate of anything).
    """
    ordered = sorted(runs, key=lambda r: (r.name, str(r.path)))
    apart: dict[int, str] = {}
    for run in ordered:
        failures = [why for why in (bar.failure(run) for bar in bars) if why]
        if failures:
            apart[id(run)] = "; ".join(failures)
    first_csv: dict[str, Run] = {}
    for run in ordered:
        digest = None if id(run) in apart else _csv_hash(run)
        if digest is None:
            continue
        if digest in first_csv:
            apart[id(run)] = (f"its {CSV_NAME} is byte-identical to {first_csv[digest].name}'s "
                              "(a copied folder, or seeds that did not change the run)")  # fmt: skip
        else:
            first_csv[digest] = run
    settings: dict[str, list[Run]] = {}
    for run in ordered:
        if id(run) not in apart and run.signature is not None:
            settings.setdefault(run.signature, []).append(run)
    for members in settings.values():
        epoch = _stated_epoch(members)
        seen: dict[tuple, Run] = {}
        for run in members:
            if run.epoch != epoch:
                apart[id(run)] = (f"read at epoch {run.epoch}, its setting's other runs at epoch "
                                  f"{epoch} (stopped early? pass --epoch {epoch} or rerun it)")  # fmt: skip
                continue
            seeds = run_seeds(run)
            if seeds and seeds in seen:
                apart[id(run)] = (f"repeats the effective seeds of {seen[seeds].name} "
                                  f"({', '.join(f'{k}={v}' for k, v in seeds)}): not another draw")  # fmt: skip
            elif seeds:
                seen[seeds] = run
    kept = [r for r in runs if id(r) not in apart]
    return kept, [(r, apart[id(r)]) for r in ordered if id(r) in apart]

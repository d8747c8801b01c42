"""The accuracy bar: runs whose models fall below a stated test accuracy leave the verdicts.

A protocol may require a recipe to reach an accuracy before its runs decide anything
(``docs/results_protocol.md``, version 2: every model >= 85% at split factor 2; a run below it
is reported and excluded, not re-run). ``lightning-saliency report --min-accuracy 0.85@sf2``
states such a bar. The report reads each model's held-out accuracy
(``val/model_<k>/acc``, logged by :class:`~lightning_saliency.models.DisjointEnsemble`) at the
run's read epoch, from the run folder's TensorBoard events or Lightning's ``metrics.csv``;
a run below the bar, or whose accuracy at that epoch cannot be read, is set apart with the
reason (:func:`~lightning_saliency.report.replicates.select_replicates`): a bar that cannot be
checked is never taken as passed.

>>> AccuracyBar.parse("0.85@sf2")
AccuracyBar(minimum=0.85, split_factor=2)
>>> AccuracyBar.parse("0.85@sf2").describe()
'test accuracy >= 85.00% for every model (runs at split factor 2 without spectral normalization)'
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runs import Run

__all__ = ["ACCURACY_TAG", "AccuracyBar", "read_accuracies"]

#: The per-model held-out accuracy tag; ``{k}`` is the model's index.
ACCURACY_TAG = re.compile(r"^val/model_(\d+)/acc$")

_BAR = re.compile(r"^(?P<acc>[0-9.]+)(?:@sf(?P<sf>\d+))?$")


@dataclass(frozen=True)
class AccuracyBar:
    """Every model of a run must reach ``minimum`` (a fraction) test accuracy; with
    ``split_factor``, only runs at that split factor and without spectral normalization (the
    plain recipe) are held to it."""

    minimum: float
    split_factor: int | None = None

    @classmethod
    def parse(cls, text: str) -> AccuracyBar:
        """``"0.85"`` (every run) or ``"0.85@sf2"`` (the plain recipe at split factor 2)."""
        match = _BAR.match(text.strip())
        try:
            minimum = float(match["acc"]) if match else float("nan")
        except ValueError:
            minimum = float("nan")
        if match is None or not 0.0 < minimum <= 1.0:
            raise ValueError(
                f"--min-accuracy takes a fraction in (0, 1], optionally @sf<N> for the runs at "
                f"split factor N without spectral normalization (e.g. 0.85 or 0.85@sf2); got {text!r}"
            )
        return cls(minimum, None if match["sf"] is None else int(match["sf"]))

    def describe(self) -> str:
        """The bar in words."""
        where = ("every run" if self.split_factor is None else
                 f"runs at split factor {self.split_factor} without spectral normalization")  # fmt: skip
        return f"test accuracy >= {self.minimum:.2%} for every model ({where})"

    def applies(self, run: Run) -> bool:
        """Whether ``run`` is held to this bar."""
        if self.split_factor is None:
            return True
        return run.split_factor == self.split_factor and not run.spectral_norm_factor

    def failure(self, run: Run) -> str | None:
        """Why ``run`` fails the bar (None when it passes or is not held to it)."""
        if not self.applies(run):
            return None
        accuracies = read_accuracies(run.path, run.epoch)
        if not accuracies:
            return (f"no test accuracy (val/model_<k>/acc) logged at epoch {run.epoch}: "
                    f"the bar ({self.describe()}) cannot be checked")  # fmt: skip
        if run.num_models is not None and len(accuracies) != run.num_models:
            return (f"test accuracy logged for {len(accuracies)} of {run.num_models} models at "
                    f"epoch {run.epoch}: the bar ({self.describe()}) cannot be checked")  # fmt: skip
        below = {k: a for k, a in accuracies.items() if not a >= self.minimum}
        if not below:
            return None
        listed = ", ".join(f"model {k} {a:.2%}" for k, a in sorted(below.items()))
        return f"below the accuracy bar at epoch {run.epoch}: {listed} ({self.describe()})"


def read_accuracies(folder: Path, epoch: int) -> dict[int, float]:
    """``{model index: test accuracy}`` logged at ``epoch`` in a run folder (empty if none).

    Reads TensorBoard event files (the ``epoch`` scalar maps each step to its epoch), else
    Lightning's CSVLogger ``metrics.csv``; the last value logged at that epoch wins.
    """
    folder = Path(folder)
    if sorted(folder.glob("events.out.tfevents.*")):
        return _from_events(folder, epoch)
    if (folder / "metrics.csv").is_file():
        return _from_metrics_csv(folder / "metrics.csv", epoch)
    return {}


def _from_events(folder: Path, epoch: int) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 1,
                              "histograms": 1, "tensors": 1}).Reload()  # fmt: skip
    scalars = events.Tags().get("scalars", [])
    if "epoch" not in scalars:
        return {}
    step_epoch = {s.step: round(s.value) for s in events.Scalars("epoch")}
    out: dict[int, float] = {}
    for tag in scalars:
        match = ACCURACY_TAG.match(tag)
        if match is None:
            continue
        for s in events.Scalars(tag):  # in logging order: the last one at the epoch wins
            if step_epoch.get(s.step) == epoch:
                out[int(match[1])] = float(s.value)
    return out


def _from_metrics_csv(path: Path, epoch: int) -> dict[int, float]:
    out: dict[int, float] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("epoch", "") == "" or int(float(row["epoch"])) != epoch:
                continue
            for key, value in row.items():
                match = ACCURACY_TAG.match(key or "")
                if match is not None and value not in ("", None):
                    out[int(match[1])] = float(value)
    return out

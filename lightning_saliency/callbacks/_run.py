"""The callback's run state: what one run resolved (probes, segments, input range, the probes'
share at the input bounds, reference, record, families) and what it has done (schedule, logged
epochs, last values, previous maps).

:class:`MonitorRun` owns that state: its methods are the only writers. The probe indices,
logged epochs, final values, previous maps and schedule travel in checkpoints
(:meth:`MonitorRun.state_dict`); the rest is rebuilt at every ``setup``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_saliency.generalization import EpochEvaluation, Estimate, MetricKey
from lightning_saliency.generalization._timing import StageTimes
from lightning_saliency.generalization.record import RunRecord

from ._media import MediaWorker
from ._probes import ProbeSet
from ._schedule import Schedule
from ._settings import MonitorSettings

__all__ = ["MonitorRun", "PreparedProbes", "RunSetup"]


class PreparedProbes(NamedTuple):
    """The fixed probes of a run and what is derived from them once."""

    probes: ProbeSet
    input_range: tuple[float, float] | None  # the argument, else the data's, else the probes'
    unnormalize: Callable[[Tensor], Tensor] | None  # the argument, else the data module's
    segments: dict[str, Tensor]  # method label -> segmentation of the probes
    #: per probe, the share of its elements at AdaptGrad's input bounds (None: no AdaptGrad)
    share_at_bounds: Tensor | None = None


class RunSetup(NamedTuple):
    """What ``setup`` resolves for a run (``_setup.resolve_run``)."""

    reference: nn.Module | None
    families: tuple[str, ...]
    prepared: PreparedProbes
    record: RunRecord


@dataclass
class MonitorRun:
    """The state of one run of the callback (see the module's docstring).

    >>> from lightning_saliency.callbacks import InterpretationGeneralization
    >>> run = MonitorRun.fresh(InterpretationGeneralization(every_n_epochs=2).config)
    >>> run.schedule.every_n_epochs, run.last_logged_epoch, run.once("layout"), run.once("layout")
    (2, -1, True, False)
    """

    schedule: Schedule
    probes: ProbeSet | None = None
    families: tuple[str, ...] = ()
    segments: dict[str, Tensor] = field(default_factory=dict)
    input_range: tuple[float, float] | None = None
    unnormalize: Callable[[Tensor], Tensor] | None = None
    share_at_bounds: Tensor | None = None  # per probe (``PreparedProbes``), on the CPU
    reference: nn.Module | None = None
    record: RunRecord = field(default_factory=lambda: RunRecord(None))
    previous: dict[str, Tensor] | None = None  # first monitored epoch's test-probe maps (drift)
    logged_epochs: list[int] = field(default_factory=list)  # training epochs monitored
    final_values: dict[str, float] = field(default_factory=dict)  # tag -> last fit value
    last: dict[MetricKey, Estimate] | None = None  # the last fit-stage estimates
    loaded_indices: dict[str, list[int]] | None = None  # probe indices of a checkpoint
    decided: tuple[int, bool] | None = None  # (epoch, due): decided once per epoch
    sources: int = 2  # map sources: K models, plus the reference model
    epoch_start: float | None = None
    epoch_monitor: float = 0.0  # seconds the monitor took in the current epoch
    done: set[str] = field(default_factory=set)  # one-time actions done (warnings, layout)
    times: StageTimes = field(default_factory=StageTimes)  # per-stage seconds (``profile``)
    media: MediaWorker = field(default_factory=MediaWorker)  # grids and figures, off-thread

    @classmethod
    def fresh(cls, settings: MonitorSettings) -> MonitorRun:
        return cls(schedule=Schedule(settings.every_n_epochs, settings.max_overhead))

    # ------------------------------------------------------------------ setup
    def start_fit(self, settings: MonitorSettings) -> None:
        """A new fit starts a new run; a checkpoint restore (after setup) refills this."""
        self.logged_epochs, self.final_values, self.previous = [], {}, None
        self.loaded_indices, self.last, self.decided = None, None, None
        self.schedule = Schedule(settings.every_n_epochs, settings.max_overhead)
        self.times = StageTimes()

    def begin(self, setup: RunSetup) -> None:
        """Take what ``setup`` resolved."""
        self.reference, self.families, self.record = setup.reference, setup.families, setup.record
        self.use_probes(setup.prepared)

    def use_probes(self, prepared: PreparedProbes) -> None:
        self.probes, self.input_range = prepared.probes, prepared.input_range
        self.unnormalize, self.segments = prepared.unnormalize, prepared.segments
        self.share_at_bounds = prepared.share_at_bounds

    def to(self, device: torch.device) -> None:
        """Probes, segments and reference onto the module's device."""
        if self.probes is None:
            raise RuntimeError("InterpretationGeneralization.setup has not run")
        self.probes.to(device)
        if self.reference is not None:
            self.reference.to(device)
        self.segments = {k: v.to(device) for k, v in self.segments.items()}

    def once(self, what: str) -> bool:
        """True the first time ``what`` is asked for in this run's life, then False."""
        first = what not in self.done
        self.done.add(what)
        return first

    # ------------------------------------------------------------------ epochs
    def profiling(self, enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
        """With ``enabled`` (the ``profile`` option), the block's stages are charged to
        :attr:`times` (CUDA synchronized at each stage's ends on a CUDA ``device``)."""
        if not enabled:
            return contextlib.nullcontext()
        return self.times.active(device)

    @property
    def last_logged_epoch(self) -> int:
        return max(self.logged_epochs, default=-1)

    def decision(self, epoch: int) -> bool | None:
        """Whether ``epoch`` is monitored, once decided (else None)."""
        return self.decided[1] if self.decided is not None and self.decided[0] == epoch else None

    def decide(self, epoch: int, due: bool, reason: str) -> None:
        if not due:
            self.schedule.record_skip(epoch, reason)
        self.decided = (epoch, due)

    def start_epoch(self) -> None:
        self.epoch_start, self.epoch_monitor = time.perf_counter(), 0.0

    def end_epoch(self) -> None:
        """This epoch's training time, the monitor's excluded, into the schedule."""
        if self.epoch_start is not None:
            spent = time.perf_counter() - self.epoch_start - self.epoch_monitor
            self.schedule.record_training(spent)
            self.epoch_start = None

    def record_result(
        self, result: EpochEvaluation, epoch: int, stage: str, k_models: int, seconds: float
    ) -> None:
        """A monitored epoch's bookkeeping: its timing and, for a fit, its maps and values."""
        if stage == "fit":
            self.schedule.record_monitor(epoch, seconds)
            self.epoch_monitor += seconds
        self.sources = result.maps[result.methods[0]].shape[0] if result.methods else 2
        if stage == "fit":
            assert self.probes is not None
            test = self.probes.layout.test
            if self.previous is None:  # drift is measured against the fit's first monitored epoch
                self.previous = {
                    k: v[:k_models, test].detach().cpu().clone() for k, v in result.maps.items()
                }
            self.logged_epochs.append(epoch)
            self.final_values = {k.tag: e.value for k, e in result.estimates.items()}
            self.last = result.estimates

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "probe_indices": None if self.probes is None else self.probes.indices,
            "logged_epochs": list(self.logged_epochs),
            "final_values": dict(self.final_values),
            # last monitored epoch's test-probe maps: drift of the first resumed epoch
            "previous": None if self.previous is None else dict(self.previous),
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded_indices = state.get("probe_indices")
        self.logged_epochs = [int(e) for e in state.get("logged_epochs", [])]
        self.final_values = {str(k): float(v) for k, v in state.get("final_values", {}).items()}
        self.previous = state.get("previous")
        self.schedule.load_state_dict(state.get("schedule", {}))

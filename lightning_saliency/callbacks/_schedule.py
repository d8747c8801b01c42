"""Which epochs the callback monitors: every n-th epoch, within a cost budget.

With ``max_overhead`` (a fraction of the fit's training time) the callback times its own
monitored epochs and the training epochs, and spreads the monitors it can afford evenly
over the fit: the first and the last epoch are always monitored (the last one's cost is
reserved), the others only while the projected monitoring time stays within
``max_overhead x`` the projected training time. The decisions depend only on the
timings, which travel in the checkpoint, so a resumed run keeps its past schedule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Schedule"]


@dataclass
class Schedule:
    """The monitoring schedule and the timings it is decided from (seconds, wall)."""

    every_n_epochs: int = 1
    max_overhead: float | None = None
    train_seconds: float = 0.0
    trained_epochs: int = 0
    monitor_seconds: float = 0.0
    monitor_runs: int = 0
    last_monitored: int | None = None
    skipped: list[list[Any]] = field(default_factory=list)  # [epoch, reason]

    def candidate(self, epoch: int) -> bool:
        """Whether ``every_n_epochs`` makes ``epoch`` a candidate."""
        return (epoch + 1) % self.every_n_epochs == 0

    def due(self, epoch: int, last_epoch: int | None) -> tuple[bool, str]:
        """Whether to monitor ``epoch`` (``last_epoch``: the fit's last, when known), and why.

        >>> s = Schedule(max_overhead=0.1, train_seconds=10.0, trained_epochs=1,
        ...              monitor_seconds=5.0, monitor_runs=1, last_monitored=0)
        >>> s.due(1, last_epoch=9)
        (False, 'over budget: 10 epochs x 10.0 s of training allow 10.0 s of monitoring, 5.0 s spent, 5.0 s per monitored epoch')
        >>> s.due(9, last_epoch=9)
        (True, 'last epoch')
        """
        is_last = last_epoch is not None and epoch >= last_epoch
        if is_last:
            return True, "last epoch"
        if not self.candidate(epoch):
            return False, "every_n_epochs"
        if self.max_overhead is None:
            return True, "every_n_epochs"
        if self.monitor_runs == 0:
            return True, "first monitored epoch"
        return self._within_budget(epoch, last_epoch)

    def _within_budget(self, epoch: int, last_epoch: int | None) -> tuple[bool, str]:
        per_train = self.train_seconds / max(self.trained_epochs, 1)
        per_monitor = self.monitor_seconds / self.monitor_runs
        epochs = (last_epoch + 1) if last_epoch is not None else self.trained_epochs
        budget = self.max_overhead * per_train * epochs  # type: ignore[operator]
        reserve = per_monitor if last_epoch is not None else 0.0  # the last epoch's monitor
        affordable = math.floor((budget - self.monitor_seconds - reserve) / per_monitor)
        if affordable < 1:
            return False, (
                f"over budget: {epochs} epochs x {per_train:.1f} s of training allow "
                f"{budget:.1f} s of monitoring, {self.monitor_seconds:.1f} s spent, "
                f"{per_monitor:.1f} s per monitored epoch"
            )
        if last_epoch is None:
            return True, "within budget"
        left = last_epoch - (self.last_monitored if self.last_monitored is not None else -1)
        spacing = math.ceil(left / (affordable + 1))
        since = epoch - (self.last_monitored if self.last_monitored is not None else -1)
        if since < spacing:
            return False, f"spread over the fit: {affordable} more monitored epochs, every {spacing}"
        return True, "within budget"

    def record_training(self, seconds: float) -> None:
        self.train_seconds += max(seconds, 0.0)
        self.trained_epochs += 1

    def record_monitor(self, epoch: int, seconds: float) -> None:
        self.monitor_seconds += max(seconds, 0.0)
        self.monitor_runs += 1
        self.last_monitored = epoch

    def record_skip(self, epoch: int, reason: str) -> None:
        if reason != "every_n_epochs":
            self.skipped.append([epoch, reason])

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("train_seconds", "trained_epochs", "monitor_seconds", "monitor_runs",
                    "last_monitored", "skipped"):  # fmt: skip
            if key in state:
                setattr(self, key, state[key])

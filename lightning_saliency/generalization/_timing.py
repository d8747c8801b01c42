"""Where a monitored epoch's time goes: per-stage timers (issue 21).

A :class:`StageTimes` accumulates, per named stage, process CPU seconds and wall seconds
(CUDA synchronized at both ends of a stage when a device is given, so that queued kernels
are charged to the stage that launched them). Code marks its stages with :func:`stage`,
a context manager that is a no-op unless a timer is active (:meth:`StageTimes.active`):
the pure functions need no extra argument, and an unprofiled run pays one context
variable lookup per stage.

Stages nest: an inner stage's time is excluded from the outer one's (each second is
charged to exactly one stage), so the stages sum to at most the total.

>>> times = StageTimes()
>>> with times.active():
...     with stage("attribution"):
...         _ = sum(range(10_000))
...     with stage("statistics"):
...         with stage("agreement"):
...             _ = sum(range(10_000))
>>> sorted(times.cpu), times.count["agreement"]
(['agreement', 'attribution', 'statistics'], 1)
>>> sum(times.cpu.values()) <= times.total_cpu + 1e-9
True
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["ATTRIBUTION", "STAGES", "StageTimes", "stage"]

#: The stage whose time is the monitor's floor: the attribution passes alone.
ATTRIBUTION = "attribution"
#: The stages the callback marks, in the order of the closing table (others may be added).
STAGES = ("models", "attribution", "segmentation", "reference", "agreement", "statistics",
          "families", "logging", "images")  # fmt: skip

_ACTIVE: contextvars.ContextVar[StageTimes | None] = contextvars.ContextVar("_ACTIVE", default=None)


def _clocks(device: torch.device | None) -> tuple[float, float]:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.process_time(), time.perf_counter()


@dataclass
class StageTimes:
    """CPU and wall seconds per stage, summed over the spans timed (see the module)."""

    device: torch.device | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    total_cpu: float = 0.0
    total_wall: float = 0.0
    _stack: list[list[float]] = field(default_factory=list, repr=False)

    @contextlib.contextmanager
    def active(self, device: torch.device | None = None) -> Iterator[StageTimes]:
        """Time the block as a whole (``total_*``) and let :func:`stage` charge to this
        (CUDA synchronized at each stage's ends when ``device`` is a CUDA device)."""
        self.device = device if device is not None else self.device
        token = _ACTIVE.set(self)
        cpu0, wall0 = _clocks(self.device)
        try:
            yield self
        finally:
            cpu1, wall1 = _clocks(self.device)
            self.total_cpu += cpu1 - cpu0
            self.total_wall += wall1 - wall0
            _ACTIVE.reset(token)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Charge the block's time, less its nested stages', to ``name``."""
        cpu0, wall0 = _clocks(self.device)
        self._stack.append([0.0, 0.0])  # the nested stages' cpu and wall seconds
        try:
            yield
        finally:
            cpu1, wall1 = _clocks(self.device)
            inner_cpu, inner_wall = self._stack.pop()
            cpu, wall = cpu1 - cpu0, wall1 - wall0
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu - inner_cpu
            self.wall[name] = self.wall.get(name, 0.0) + wall - inner_wall
            self.count[name] = self.count.get(name, 0) + 1
            if self._stack:
                self._stack[-1][0] += cpu
                self._stack[-1][1] += wall

    @property
    def floor_cpu(self) -> float:
        """CPU seconds of the attribution passes alone."""
        return self.cpu.get(ATTRIBUTION, 0.0)

    def lines(self, epochs: int) -> list[str]:
        """The closing table's rows: per stage, CPU and wall seconds per monitored epoch.

        >>> t = StageTimes(cpu={"attribution": 2.0}, wall={"attribution": 1.0},
        ...                count={"attribution": 2}, total_cpu=4.0, total_wall=2.0)
        >>> t.lines(2)[1]
        'attribution        1.000 s cpu   0.500 s wall  50.0% of the monitor'
        """
        n = max(epochs, 1)
        names = [s for s in STAGES if s in self.cpu] + sorted(set(self.cpu) - set(STAGES))
        out = [f"monitor profile, per monitored epoch ({epochs} epochs):"]
        for name in [*names, "other"]:
            cpu = self.cpu.get(name, self.total_cpu - sum(self.cpu.values()))
            wall = self.wall.get(name, self.total_wall - sum(self.wall.values()))
            share = cpu / self.total_cpu if self.total_cpu > 0 else float("nan")
            out.append(f"{name:<16} {cpu / n:7.3f} s cpu {wall / n:7.3f} s wall "
                       f"{100 * share:5.1f}% of the monitor")  # fmt: skip
        out.append(f"{'total':<16} {self.total_cpu / n:7.3f} s cpu {self.total_wall / n:7.3f} s wall; "
                   f"floor (attribution alone) {self.floor_cpu / n:.3f} s cpu")  # fmt: skip
        return out


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the block to stage ``name`` of the active :class:`StageTimes` (else nothing).

    >>> with stage("agreement"):  # no active timer: nothing is timed
    ...     pass
    """
    times = _ACTIVE.get()
    if times is None:
        yield
        return
    with times.span(name):
        yield

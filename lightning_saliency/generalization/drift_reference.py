"""Drift against a stated epoch (issue 19, case 9): which maps a drift is measured against.

``drift`` (:func:`~lightning_saliency.generalization.drift`) compares the test maps of this
epoch with earlier ones. Measured against the *previous monitored* epoch, its meaning
depends on the schedule: under a time budget the previous monitored epoch is 1 or 3 epochs
back depending on wall-clock timings (0.456 vs 0.940 at one epoch, one seed). Against a
fixed reference, the *first monitored* epoch (always monitored), a drift at epoch e means
the same whatever epochs were skipped. The reference epoch is logged beside the number.

Pure: the callback keeps a :class:`DriftReference` in its state (and checkpoint) and calls
:func:`update_reference` after each monitored epoch, :func:`drift_against` to measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from .core import drift
from .layout import ProbeLayout
from .statistics import ProbeStatistic

__all__ = ["DriftMode", "DriftReference", "drift_against", "update_reference"]

#: ``"first"``: against the first monitored epoch (schedule-independent, the default);
#: ``"previous"``: against the previous monitored epoch (depends on the schedule).
DriftMode = Literal["first", "previous"]


@dataclass(frozen=True)
class DriftReference:
    """The test maps ``(K, n_test, ...)`` of epoch ``epoch`` that drift is measured against."""

    epoch: int
    maps: Tensor


def update_reference(
    ref: DriftReference | None, epoch: int, test_maps: Tensor, mode: DriftMode = "first"
) -> DriftReference:
    """The reference after monitoring ``epoch``: the first one kept (``"first"``), or this one.

    >>> import torch
    >>> r = update_reference(None, 0, torch.zeros(1, 2))
    >>> update_reference(r, 3, torch.ones(1, 2)).epoch, update_reference(r, 3, torch.ones(1, 2), "previous").epoch
    (0, 3)
    """
    if mode not in ("first", "previous"):
        raise ValueError(f"drift mode must be 'first' or 'previous', got {mode!r}")
    if ref is not None and mode == "first":
        return ref
    return DriftReference(int(epoch), test_maps.detach().clone())


def drift_against(
    maps: Tensor, ref: DriftReference, layout: ProbeLayout, epoch: int, *, normalize: bool = True
) -> tuple[ProbeStatistic, int]:
    """``(drift statistic, reference epoch)`` of this epoch's maps ``(M, N, ...)``.

    Raises ``ValueError`` when the reference is not an earlier epoch.
    """
    if not ref.epoch < epoch:
        raise ValueError(f"drift at epoch {epoch} needs an earlier reference, got epoch {ref.epoch}")
    return drift(maps, ref.maps, layout, normalize=normalize), ref.epoch

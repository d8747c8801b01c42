"""The probes' validation rules, each in one place: input range, finite pixels.

(The arguments' rules and the resume check belong to the settings, ``_settings.py``; the share
of probe pixels at the input bounds, to :mod:`lightning_saliency.generalization.input_bounds`.)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_input_range", "check_probe_values"]


def check_input_range(value: Any, name: str) -> None:
    """``(x_min, x_max)``: two finite numbers with x_min < x_max (or None)."""
    if value is None:
        return
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Real) and math.isfinite(float(v)) for v in value)
        and float(value[0]) < float(value[1])
    )
    if not ok:
        raise ValueError(f"{name} must be (x_min, x_max) with finite x_min < x_max; got {value!r}")


def check_probe_values(x: Tensor, indices: Mapping[str, list[int]]) -> None:
    """Probes must be finite numbers: a NaN or infinite pixel is named, with its probe."""
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        where = _probe_name(row, indices)
        raise ValueError(
            f"probe {where} has NaN or infinite pixels ({int(bad.sum())} of {len(x)} probes): "
            "fix the data (or its transform) before monitoring it"
        )


def _probe_name(row: int, indices: Mapping[str, list[int]]) -> str:
    start = 0
    for part, idx in indices.items():
        if row < start + len(idx):
            return f"{part}[{row - start}] (dataset index {idx[row - start]})"
        start += len(idx)
    return f"row {row}"

"""Validation of the attribution arguments, and the dedicated noise generator.

One owner for every accepted value (``OUTPUTS``, ``PRECISIONS``, ``RULES``, ``REDUCTIONS``)
and for the messages that reject the others; :mod:`._core`, the methods and the registry
import them from here (``_core`` re-exports them).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_saliency.attribution.outputs import require_tensor

__all__ = [
    "OUTPUTS",
    "PRECISIONS",
    "REDUCTIONS",
    "RULES",
    "check_choice",
    "check_input",
    "check_input_range",
    "check_nonneg_float",
    "check_output",
    "check_positive_int",
    "check_target",
    "make_generator",
]

Output = Literal["logit", "log_softmax"]
Precision = Literal["32", "bf16"]
Rule = Literal["riemann", "gauss_legendre"]
Reduction = Literal["mean", "mean_square", "var", "none"]

OUTPUTS: tuple[str, ...] = ("logit", "log_softmax")
PRECISIONS: tuple[str, ...] = ("32", "bf16")
RULES: tuple[str, ...] = ("riemann", "gauss_legendre")
REDUCTIONS: tuple[str, ...] = ("mean", "mean_square", "var", "none")
#: Seed of the dedicated generator when neither ``generator`` nor ``seed`` is given.
DEFAULT_SEED = 0


def check_input(x: object) -> Tensor:
    """Check that ``x`` is a 4-D floating point tensor (N, C, H, W)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got dtype {x.dtype}")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one sample, got an empty batch")
    return x


def check_target(target: object, n: int, device: torch.device) -> Tensor:
    """Return ``target`` as a LongTensor (N,) on ``device``; an int means the same class for all."""
    if isinstance(target, bool) or (isinstance(target, Tensor) and target.dtype == torch.bool):
        raise TypeError("target must hold integer class indices, got bool")
    if isinstance(target, numbers.Integral):
        t = torch.full((n,), int(target), dtype=torch.long, device=device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TypeError(
                f"target must be an integer tensor of class indices, got {target.dtype}"
            )
        with torch.inference_mode(False):
            t = target.detach().to(device=device, dtype=torch.long).clone()
        if t.ndim == 0:
            t = t.expand(n).clone()
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(
                f"target must have shape ({n},) to match x's batch size, got {tuple(target.shape)}"
            )
    else:
        raise TypeError(f"target must be an int or a LongTensor (N,), got {type(target).__name__}")
    if n and int(t.min()) < 0:
        raise ValueError(f"target must hold class indices >= 0, got min {int(t.min())}")
    return t


def check_positive_int(name: str, value: object) -> int:
    """Check that ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def check_nonneg_float(name: str, value: object) -> float:
    """Check that ``value`` is a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_input_range(input_range: object) -> tuple[float, float]:
    """Check ``input_range`` = (x_min, x_max), two finite numbers with x_min < x_max."""
    if isinstance(input_range, Tensor):
        input_range = input_range.tolist()
    if (
        not isinstance(input_range, Sequence)
        or isinstance(input_range, str)
        or len(input_range) != 2
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in input_range)
    ):
        raise TypeError(
            f"input_range must be a pair of numbers (x_min, x_max), got {input_range!r}"
        )
    lo, hi = float(input_range[0]), float(input_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"input_range must be finite with x_min < x_max, got ({lo}, {hi})")
    return lo, hi


def check_output(out: object, rows: int, target_max: int | Tensor) -> Tensor:
    """Check that the model returned (rows, num_classes) logits and the target classes fit.

    ``target_max`` is the largest target class, as an int (computed once per pass, so this
    check costs no device-to-host synchronization) or a tensor of targets.
    """
    out = require_tensor(out)  # the message every method path gives
    if out.ndim != 2 or out.shape[0] != rows:
        raise ValueError(
            "the model must return 2-D logits (N, num_classes) with one row per input, "
            f"got output shape {tuple(out.shape)} for {rows} input rows"
        )
    if isinstance(target_max, Tensor):
        target_max = int(target_max.max()) if target_max.numel() else -1
    if rows and target_max >= out.shape[1]:
        raise ValueError(
            f"target class {target_max} is out of range for a model with {out.shape[1]} classes"
        )
    return out


def make_generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator:
    """The generator to draw noise from: ``generator`` itself, or a new one seeded with ``seed``."""
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None:
        seed = DEFAULT_SEED
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen

"""Shared checks and per-map basics of the metrics (:mod:`lightning_saliency.metrics`).

Input checks, the compute dtype, channel reduction, finite-row detection and L2
normalization: the one owner of these rules for every metric module.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

ChannelReduction = Literal["sum", "abs_sum"]

_REDUCTIONS = ("sum", "abs_sum")


# --------------------------------------------------------------------------- helpers
def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    return x


def _check_model_inputs(
    x: object, target: object, baseline: object
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, target, baseline)`` of a score that runs the model: x ``(N, C, H, W)``, the target
    as ``(N,)`` integer classes on x's device, the baseline broadcast to x."""
    x = _check_tensor(x, "x")
    if x.ndim != 4:
        raise ValueError(f"`x` must be (N, C, H, W), got shape {tuple(x.shape)}.")
    n = x.shape[0]
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((n,), target, dtype=torch.long, device=x.device)
    target = _check_tensor(target, "target")
    if target.shape != (n,) or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(
            f"`target` must be an int or an integer tensor of shape ({n},), "
            f"got {target.dtype} {tuple(target.shape)}."
        )
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        base = base.expand_as(x)
    except RuntimeError as err:
        raise ValueError(
            f"`baseline` of shape {tuple(base.shape)} does not broadcast to x {tuple(x.shape)}."
        ) from err
    return x, target.to(x.device), base


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, float32 otherwise."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_maps(x: object, name: str, ndims: tuple[int, ...] = (2, 3, 4)) -> Tensor:
    x = _check_tensor(x, name)
    if x.ndim not in ndims:
        shapes = {4: "(N, C, H, W)", 3: "(N, H, W)", 2: "(N, D)"}
        expected = " or ".join(shapes[d] for d in sorted(ndims, reverse=True))
        raise ValueError(f"`{name}` must be maps shaped {expected}, got shape {tuple(x.shape)}.")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"`{name}` must be a real numeric tensor, got dtype {x.dtype}.")
    return x


def _check_pair(a: object, b: object, ndims: tuple[int, ...] = (2, 3, 4)) -> tuple[Tensor, Tensor]:
    a = _check_maps(a, "a", ndims)
    b = _check_maps(b, "b", ndims)
    if a.shape != b.shape:
        raise ValueError(
            f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if a.device != b.device:
        raise ValueError(f"`a` and `b` must be on the same device, got {a.device} and {b.device}.")
    return a, b


def _check_reduction(mode: object, allow_none: bool = True) -> None:
    if mode is None and allow_none:
        return
    if mode not in _REDUCTIONS:
        allowed = ", ".join(repr(m) for m in (*_REDUCTIONS, *((None,) if allow_none else ())))
        raise ValueError(f"`channel_reduction` must be one of {allowed}, got {mode!r}.")


def _flat(maps: Tensor, channel_reduction: ChannelReduction | None, dtype: torch.dtype) -> Tensor:
    """Reduce channels (or not) and flatten to (N, D) in ``dtype``."""
    _check_reduction(channel_reduction)
    maps = maps.to(dtype)
    if channel_reduction is not None:
        maps = reduce_channels(maps, channel_reduction)
    return maps.reshape(maps.shape[0], -1)


def finite_rows(maps: Tensor) -> Tensor:
    """``(N,)`` bool: True where sample n (``maps[n]``, any shape after dim 0) is all finite.

    Vectorized on the maps' device (no host sync); integer maps are always finite.
    Computed as ``sum(x * 0) == 0`` per sample: ``x * 0`` is 0 for a finite element and NaN
    for a NaN or an infinity, so the sum is 0 exactly when every element is finite (it
    cannot overflow). The same answer as ``isfinite(x).all()``, without its four passes
    (about 10x faster on CPU: the monitor calls it on every map it compares, issue 21).

    >>> finite_rows(torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("-inf")]]))
    tensor([ True, False, False])
    """
    maps = _check_tensor(maps, "maps")
    if maps.ndim == 0:
        raise ValueError("`maps` must have a batch dimension, got a 0-dim tensor.")
    if not (maps.is_floating_point() or maps.is_complex()):
        return torch.ones(maps.shape[0], dtype=torch.bool, device=maps.device)
    zeros = maps * 0
    return (zeros.flatten(1).sum(dim=1) if zeros.ndim > 1 else zeros) == 0


def informative_rows(maps: Tensor) -> Tensor:
    """``(N,)`` bool: True where map n is finite and not constant (an all-zero or flat map
    ranks nothing: comparing two of them would score as perfect agreement).

    >>> informative_rows(torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0], [float("nan"), 1.0]]))
    tensor([ True, False, False, False])
    """
    ok = finite_rows(maps)
    if maps.ndim < 2 or maps.dtype == torch.bool:
        return ok
    flat = maps.flatten(1)
    return ok & (flat.amax(dim=1) > flat.amin(dim=1)) if flat.shape[1] else ok


def nonzero_rows(maps: Tensor) -> Tensor:
    """``(N,)`` bool: True where map n is finite and not all zero (it has a direction: it
    can be normalized).

    >>> nonzero_rows(torch.tensor([[1.0, 1.0], [0.0, 0.0], [float("inf"), 1.0]]))
    tensor([ True, False, False])
    """
    ok = finite_rows(maps)
    if maps.ndim < 2:
        return ok & (maps != 0)
    return ok & (maps.flatten(1) != 0).any(dim=1)


def _nan_unless(ok: Tensor, values: Tensor) -> Tensor:
    """``values`` where ``ok``, NaN elsewhere (``ok`` broadcast from the left)."""
    return torch.where(ok.view(-1, *([1] * (values.ndim - 1))), values, math.nan)


def _pearson_rows(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of each row of x with the same row of y (NaN if a row is constant)."""
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    num = (xc * yc).sum(dim=1)
    den = torch.sqrt((xc * xc).sum(dim=1) * (yc * yc).sum(dim=1))
    r = num / den  # 0 / 0 -> NaN for constant rows
    return r.clamp(-1.0, 1.0)


# ----------------------------------------------------------------------- basic maps
def reduce_channels(maps: Tensor, mode: ChannelReduction = "sum") -> Tensor:
    """Reduce the channel axis of ``(N, C, H, W)`` maps to ``(N, H, W)``.

    ``mode="sum"`` is the signed channel sum, ``mode="abs_sum"`` the sum of absolute
    values.  A 3-D ``(N, H, W)`` or 2-D ``(N, D)`` input has no channel axis and is
    returned as is (``"sum"``) or as its absolute value (``"abs_sum"``).  The dtype
    of the input is kept.

    >>> m = torch.tensor([[[[1.0, -2.0]], [[3.0, 1.0]]]])  # (1, 2, 1, 2)
    >>> reduce_channels(m, "sum")
    tensor([[[ 4., -1.]]])
    >>> reduce_channels(m, "abs_sum")
    tensor([[[4., 3.]]])
    """
    maps = _check_maps(maps, "maps")
    if mode not in _REDUCTIONS:
        raise ValueError(f"`mode` must be 'sum' or 'abs_sum', got {mode!r}.")
    if mode == "abs_sum":
        maps = maps.abs()
    return maps.sum(dim=1) if maps.ndim == 4 else maps


def normalize_maps(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale each sample's map to unit L2 norm (over all non-batch dimensions).

    The norm is clamped below at ``eps``, so an all-zero map stays all zero.  A map with
    any non-finite element becomes all NaN.  The result has the input's shape and is
    float64 for float64 input, float32 otherwise.

    >>> normalize_maps(torch.tensor([[3.0, 4.0], [0.0, 0.0], [float("inf"), 1.0]]))
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000],
            [   nan,    nan]])
    """
    maps = _check_tensor(maps, "maps")
    if maps.ndim < 2:
        raise ValueError(
            f"`maps` must have a batch dimension and >= 2 dims, got {tuple(maps.shape)}."
        )
    if eps <= 0:
        raise ValueError(f"`eps` must be > 0, got {eps}.")
    maps = maps.to(_compute_dtype(maps))
    norms = maps.reshape(maps.shape[0], -1).norm(dim=1).clamp_min(eps)
    return _nan_unless(finite_rows(maps), maps / norms.view(-1, *([1] * (maps.ndim - 1))))

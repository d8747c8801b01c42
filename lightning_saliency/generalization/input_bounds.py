"""The probes' share of elements at the input bounds: where AdaptGrad adds no noise.

AdaptGrad's per-element noise std is ``min(|x - x_min|, |x - x_max|) / (sqrt(2) erfinv(c))``
(:func:`~lightning_saliency.attribution.adapt_sigma`): zero at the bounds. On data with many
saturated pixels (digits: most of the image is background at ``x_min``) AdaptGrad is the plain
gradient there, and its verdict must be read beside that share. :func:`share_at_input_bounds`
computes it per probe; the callback does not log it yet. When it does, it logs the mean over a
split's probes as ``MetricKey("-", "mean", split, SHARE_AT_BOUNDS)`` and the report prints it
beside AdaptGrad's verdict (the report computes nothing it cannot read from a run).

>>> import torch
>>> x = torch.tensor([[[[0.0, 0.5], [1.0, 1e-7]]]])  # one probe, 4 pixels in [0, 1]
>>> share_at_input_bounds(x, (0.0, 1.0)).tolist()
[0.75]
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_saliency.attribution._checks import check_input_range

__all__ = ["SHARE_AT_BOUNDS", "share_at_input_bounds"]

#: The metric name of the share in keys, tags and CSV rows (method ``"-"``, aggregate ``"mean"``).
SHARE_AT_BOUNDS = "share_at_input_bounds"


def share_at_input_bounds(
    x: Tensor, input_range: tuple[float, float], atol: float = 1e-6
) -> Tensor:
    """Per probe ``(N,)``: the fraction of its elements within ``atol`` of ``x_min`` or ``x_max``.

    ``x`` is ``(N, ...)`` in the model's input space and ``input_range`` its ``(x_min, x_max)``
    (the same pair AdaptGrad uses). A non-finite element counts as not at a bound; a probe with
    no elements is NaN.

    >>> s = share_at_input_bounds(torch.tensor([[-1.0, 0.0, 2.0], [0.5, 0.5, 0.5]]), (-1.0, 2.0))
    >>> [round(v, 4) for v in s.tolist()]
    [0.6667, 0.0]
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating point tensor of probes (N, ...)")
    if x.ndim < 1:
        raise ValueError("x must have a probe dimension (N, ...)")
    if not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0:
        raise ValueError(f"atol must be a number >= 0; got {atol!r}")
    lo, hi = check_input_range(input_range)
    flat = x.detach().reshape(x.shape[0], -1)
    at = ((flat - lo).abs() <= atol) | ((flat - hi).abs() <= atol)
    if flat.shape[1] == 0:
        return torch.full((x.shape[0],), float("nan"))
    return at.float().mean(dim=1)

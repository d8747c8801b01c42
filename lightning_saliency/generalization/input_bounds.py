"""The probes' share of elements at the input bounds: where AdaptGrad adds no noise.

AdaptGrad's per-element noise std is ``min(|x - x_min|, |x - x_max|) / (sqrt(2) erfinv(c))``
(:func:`~lightning_saliency.attribution.adapt_sigma`): zero at the bounds. On data with many
saturated pixels (digits: most of the image is background at ``x_min``) AdaptGrad is the plain
gradient there, and its verdict must be read beside that share. :func:`share_at_input_bounds`
computes it per probe, against the pair AdaptGrad uses (:func:`adapt_grad_ranges`). When a
run's methods include ``adapt_grad``, the callback computes it once per probe set (the probes
are fixed) and logs, at every monitored epoch, the mean over each split's probes with its 95%
interval (:func:`share_statistics`) as ``MetricKey("-", "mean", split, SHARE_AT_BOUNDS)``,
``split`` in ``train``/``test``; the report prints the test one beside AdaptGrad's verdict
(the report computes nothing it cannot read from a run).

>>> import torch
>>> x = torch.tensor([[[[0.0, 0.5], [1.0, 1e-7]]]])  # one probe, 4 pixels in [0, 1]
>>> share_at_input_bounds(x, (0.0, 1.0)).tolist()
[0.75]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_saliency.attribution import MethodSpec, spec_input_range
from lightning_saliency.attribution._checks import check_input_range

from .core import split_statistics
from .layout import ProbeLayout
from .schema import NO_METHOD, MetricKey
from .statistics import ProbeStatistic

__all__ = ["SHARE_AT_BOUNDS", "adapt_grad_ranges", "share_at_input_bounds", "share_statistics"]

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


def adapt_grad_ranges(
    specs: Sequence[MethodSpec], input_range: tuple[float, float] | None
) -> list[tuple[float, float]]:
    """The distinct ``(x_min, x_max)`` pairs the ``adapt_grad`` specs (pixel or super-pixel)
    are computed with: each spec's own pair, else ``input_range``, as
    :func:`~lightning_saliency.attribution.compute_attribution` resolves them
    (:func:`~lightning_saliency.attribution.spec_input_range`). Empty when no spec is
    AdaptGrad; more than one pair means the share is not one number for the run.

    >>> from lightning_saliency.attribution import resolve_method
    >>> names = ("simple_grad", "adapt_grad", {"method": "adapt_grad", "samples": 4})
    >>> specs = [resolve_method(m) for m in names]
    >>> adapt_grad_ranges(specs, (-1.0, 2.0)), adapt_grad_ranges(specs[:1], (-1.0, 2.0))
    ([(-1.0, 2.0)], [])
    """
    out: list[tuple[float, float]] = []
    for spec in specs:
        rng = spec_input_range(spec, input_range) if spec.method == "adapt_grad" else None
        if rng is not None and (float(rng[0]), float(rng[1])) not in out:
            out.append((float(rng[0]), float(rng[1])))
    return out


def share_statistics(
    share: Tensor, layout: ProbeLayout, stage: str = "fit"
) -> dict[MetricKey, ProbeStatistic]:
    """The ``train`` and ``test`` means of the per-probe ``share`` ``(N,)`` (from
    :func:`share_at_input_bounds`), as statistics of the probe groups of ``layout``: ``test``
    the mean over the test probes, ``train`` the mean over models of each model's train-probe
    mean (with equal train-probe counts, the mean over all train probes). Their estimates
    carry a Student-t interval over probes (:func:`~.statistics.estimate_all`).

    >>> from lightning_saliency.generalization import estimate_all
    >>> share = torch.tensor([0.5, 0.7, 0.1, 0.3, 0.6, 0.8])  # 1 + 1 train probes, 4 test probes
    >>> s = share_statistics(share, ProbeLayout.from_sizes([1, 1], 4))
    >>> {k.split: round(e.value, 4) for k, e in estimate_all(s).items()}
    {'train': 0.6, 'test': 0.45}
    """
    values = share.reshape(1, -1).expand(layout.num_models, -1)
    stats = split_statistics(values, layout)
    return {MetricKey(NO_METHOD, "mean", split, SHARE_AT_BOUNDS, stage): stats[split]
            for split in ("train", "test")}  # fmt: skip

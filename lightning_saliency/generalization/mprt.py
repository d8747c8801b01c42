"""The repaired randomization checks of Binder et al. (CVPR 2023): Smooth and Efficient MPRT.

The cascading model-parameter randomization test (MPRT, Adebayo et al. 2018;
:func:`~lightning_saliency.generalization.randomization_values`) compares a model's maps with
those of copies whose top layers are re-initialized. Binder et al. showed that gradient noise
can make an uninformative method pass it, and proposed two repairs (both in Quantus 0.6):

* **Smooth MPRT** (``quantus.SmoothMPRT``): the same comparison on *noise-averaged* maps, the
  mean of the method's maps of ``samples`` inputs ``x + z_i`` (the last one ``x`` itself,
  ``z_i ~ N(0, s^2)`` with ``s = noise_level * (max x - min x)`` per probe, as Quantus), so
  that shattered gradient noise does not decide the similarity. Metrics
  ``smooth_spearman`` and ``smooth_ssim``; lower means the maps depend on the weights.
* **Efficient MPRT** (``quantus.EfficientMPRT``): no similarity at all, the relative rise of
  the maps' complexity, ``(H(randomized) - H(original)) / H(original)``, with ``H`` the
  discrete entropy of the histogram (``n_bins`` equal-width bins between the map's minimum
  and maximum, as ``numpy.histogram``) of the channel-summed ``|map|``. Metric
  ``entropy_rise``; higher means randomizing the weights made the maps noisier. Quantus scores
  the fully randomized model (cascade level ``"all"``); here it is reported at every level.

Both are keyed as the cascading test, ``randomization_metric(metric, level)``
(``randomization_smooth_spearman_top1``, ``randomization_entropy_rise_all``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_saliency.attribution import MethodSpec, resolve_method
from lightning_saliency.metrics import reduce_channels

from .core import agreement_values
from .epoch import compute_maps
from .randomization import Reinit, cascade_copies
from .schema import RANDOMIZATION_CASCADE

__all__ = [
    "ENTROPY_BINS",
    "MPRT_VARIANT_METRICS",
    "SMOOTH_MPRT_NOISE",
    "SMOOTH_MPRT_SAMPLES",
    "discrete_entropy",
    "entropy_rise",
    "smooth_randomization_values",
    "smoothed_maps",
]

#: The repaired randomization metrics (beside ``RANDOMIZATION_METRICS``): Smooth MPRT's
#: similarities and Efficient MPRT's relative complexity rise.
MPRT_VARIANT_METRICS: tuple[str, ...] = ("smooth_spearman", "smooth_ssim", "entropy_rise")
#: Smooth MPRT's maps per noise average (Quantus' default is 50; 16 keeps a monitored epoch
#: affordable) and its noise level (Quantus' default ``noise_magnitude``).
SMOOTH_MPRT_SAMPLES = 16
SMOOTH_MPRT_NOISE = 0.1
#: Bins of Efficient MPRT's histogram (Quantus' ``discrete_entropy`` default).
ENTROPY_BINS = 100


def _histogram_counts(v: Tensor, n_bins: int) -> Tensor:
    """``(N, n_bins)`` counts of each row of ``v`` (N, D) in ``n_bins`` equal-width bins between
    the row's min and max, placed as ``numpy.histogram`` does (a constant row: ``[a - 0.5,
    a + 0.5]``; the last bin closed)."""
    lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    flat = lo == hi
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
    steps = torch.arange(n_bins + 1, dtype=v.dtype, device=v.device) / n_bins
    edges = lo + (hi - lo) * steps  # (N, n_bins + 1), as numpy's linspace
    idx = ((v - lo) * (n_bins / (hi - lo))).floor().long().clamp(0, n_bins - 1)
    idx = idx - (v < edges.gather(1, idx)).long()  # numpy's corrections at bin edges
    up = (v >= edges.gather(1, idx + 1)) & (idx != n_bins - 1)
    idx = idx + up.long()
    counts = torch.zeros(v.shape[0], n_bins, dtype=v.dtype, device=v.device)
    return counts.scatter_add_(1, idx, torch.ones_like(v))


def discrete_entropy(maps: Tensor, n_bins: int = ENTROPY_BINS) -> Tensor:
    """``(N,)`` entropy (natural log) of the histogram of each channel-summed ``|map|``.

    Quantus' ``discrete_entropy`` (``scipy.stats.entropy`` of ``numpy.histogram(a, n_bins)``)
    per map; NaN for a map that is not finite.

    >>> discrete_entropy(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]), 2)
    tensor([0.6931, 0.5623], dtype=torch.float64)
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    v = reduce_channels(maps.detach(), "abs_sum").reshape(len(maps), -1).to(torch.float64)
    ok = torch.isfinite(v).all(1)
    counts = _histogram_counts(torch.where(ok[:, None], v, 0.0), n_bins)
    p = counts / counts.sum(1, keepdim=True)
    return torch.where(ok, torch.special.entr(p).sum(1), math.nan)


def entropy_rise(original: Tensor, randomized: Tensor, n_bins: int = ENTROPY_BINS) -> Tensor:
    """``(N,)`` Efficient MPRT score: ``(H(randomized) - H(original)) / H(original)`` with
    :func:`discrete_entropy`; NaN where ``H(original)`` is 0 (a map of one value)."""
    h0, h1 = discrete_entropy(original, n_bins), discrete_entropy(randomized, n_bins)
    return torch.where(h0 > 0, (h1 - h0) / h0, math.nan)


def smoothed_maps(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    spec: MethodSpec | str | Mapping[str, Any],
    *,
    samples: int = SMOOTH_MPRT_SAMPLES,
    noise_level: float = SMOOTH_MPRT_NOISE,
    noise_seed: int = 0,
    seed: int = 0,
    segments: Tensor | None = None,
    **map_options: Any,
) -> Tensor:
    """``(N, C, H, W)`` Smooth MPRT's maps: the mean of the spec's maps of ``samples - 1``
    noisy inputs ``x + z_i`` and of ``x`` itself (as ``quantus.SmoothMPRT``), ``z_i ~ N(0,
    s_n^2)``, ``s_n = noise_level * (max x_n - min x_n)``. The noise comes from a generator
    seeded with ``noise_seed`` on x's device (the same draws for every model given the same
    seed); ``seed``, ``segments`` and ``map_options`` go to :func:`compute_maps`."""
    spec = resolve_method(spec)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not (isinstance(noise_level, (int, float)) and noise_level >= 0):
        raise ValueError(f"noise_level must be a number >= 0, got {noise_level!r}")
    seg = None if segments is None else {spec.label: segments}
    flat = x.detach().flatten(1)
    std = (noise_level * (flat.amax(1) - flat.amin(1))).view(-1, *([1] * (x.dim() - 1)))
    gen = torch.Generator(device=x.device).manual_seed(int(noise_seed))
    total: Tensor | None = None
    for i in range(samples):
        xi = x
        if i < samples - 1:  # the last evaluation is the clean input, as Quantus
            xi = x + std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        m = compute_maps([model], xi, target, [spec], seed=seed, segments=seg, **map_options)
        m0 = m[spec.label].maps[0].to(torch.float64)
        total = m0 if total is None else total + m0
    assert total is not None
    return (total / samples).to(torch.float32)


def smooth_randomization_values(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    spec: MethodSpec | str | Mapping[str, Any],
    *,
    cascade: Sequence[str] = RANDOMIZATION_CASCADE,
    seed: int = 0,
    weight_seed: int = 0,
    noise_seed: int = 0,
    samples: int = SMOOTH_MPRT_SAMPLES,
    noise_level: float = SMOOTH_MPRT_NOISE,
    metrics: Sequence[str] = ("smooth_spearman", "smooth_ssim"),
    segments: Tensor | None = None,
    reinit: Reinit | None = None,
    **map_options: Any,
) -> dict[str, dict[str, Tensor]]:
    """``{level: {metric: (N,)}}`` of Smooth MPRT: the similarity (``smooth_<agreement>``) of
    ``model``'s :func:`smoothed_maps` to those of its copy randomized up to each cascade level
    (the same noise draws for both, unlike Quantus, which draws new noise per model: common
    random numbers lower the variance). Costs ``samples`` attribution passes per distinct
    depth, plus ``samples`` for the original."""
    base = [m.removeprefix("smooth_") for m in metrics]
    if not metrics or any(not m.startswith("smooth_") for m in metrics):
        raise ValueError(f"Smooth MPRT metrics are 'smooth_<agreement>', got {list(metrics)}")
    kw: dict[str, Any] = dict(samples=samples, noise_level=noise_level, noise_seed=noise_seed,
                              seed=seed, segments=segments, **map_options)  # fmt: skip
    original = smoothed_maps(model, x, target, spec, **kw)
    out: dict[str, dict[str, Tensor]] = {}
    last: tuple[int, dict[str, Tensor]] | None = None
    for level, depth, twin in cascade_copies(model, x, cascade, seed=weight_seed, reinit=reinit):
        if last is None or last[0] != depth:
            values = agreement_values(original, smoothed_maps(twin, x, target, spec, **kw), base)
            last = depth, {f"smooth_{m}": v for m, v in values.items()}
        out[level] = last[1]
    return {level: out[level] for level in cascade}

"""SmoothGrad's two faces measured together: stability against fidelity to the plain gradient.

Ye and Farnia (AISTATS 2025) bound the stability of SmoothGrad under training-set randomness:
the distance between two independently trained models' maps falls roughly as ``1 / sigma``,
while the distance of the smoothed map to the plain gradient of the same model grows roughly as
``sigma``. The monitor measures the first side (agreement above chance between the models'
test maps, the gap); this module adds the second and pairs them per smoothing method:

* **fidelity distance** (metric :data:`FIDELITY_METRIC`): per test probe, the normalized L2
  distance ``|| m / ||m|| - g / ||g|| ||`` between a smoothed map ``m`` and the ``simple_grad``
  map ``g`` of the *same model* on the same probe (``[0, 2]``, 0 = the plain gradient), mean
  over the K models; an interval from the probes, as every other number
  (``MetricKey(label, "mean", "test", FIDELITY_METRIC, stage)``);
* :func:`stability_fidelity_points`: per smoothing method, that distance beside its agreement
  above chance, the inter-model distance and the gap, grouped in curves (one per SmoothGrad
  noise kind and draw count, with the plain gradient as noise 0; AdaptGrad by confidence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_saliency.attribution import MethodSpec
from lightning_saliency.metrics import l2_distance

from .core import MapStack
from .layout import ProbeLayout
from .schema import MetricKey, above_chance
from .statistics import Estimate, ProbeStatistic
from .studies import is_plain_baseline, noise, noise_samples, smoothgrad_curve

__all__ = [
    "FIDELITY_METRIC",
    "StabilityFidelityPoint",
    "fidelity_statistics",
    "loglog_slope",
    "smoothing_curves",
    "stability_fidelity_points",
]

#: Normalized L2 distance of a method's maps to the plain gradient of the same model
#: (test probes, mean over models): lower is closer to the plain gradient.
FIDELITY_METRIC = "plain_gradient_l2"


def _is_adapt_curve(spec: MethodSpec) -> bool:
    """AdaptGrad on pixels with the plain gradient as base (what a sweep compares)."""
    return (spec.method == "adapt_grad" and spec.superpixel is None
            and set(spec.params) <= {"confidence", "samples", "include_clean"})  # fmt: skip


def smoothing_curves(specs: Sequence[MethodSpec]) -> dict[str, list[tuple[float, str]]]:
    """``{curve: [(noise, label), ...]}`` sorted by noise: SmoothGrad per (noise kind, draws)
    with the plain gradient (if among ``specs``) at noise 0, AdaptGrad by confidence.

    >>> from lightning_saliency.attribution import resolve_method
    >>> specs = [resolve_method(m) for m in ("simple_grad", {"method": "smooth_grad",
    ...          "sigma": 0.5}, {"method": "adapt_grad", "samples": 8})]
    >>> smoothing_curves(specs)
    {'smooth_grad sigma, n=16': [(0.0, 'simple_grad'), (0.5, 'smooth_grad_s0.5')], 'adapt_grad, n=8': [(0.95, 'adapt_grad_c0.95_n8')]}
    """
    base = next((s.label for s in specs if is_plain_baseline(s)), None)
    curves: dict[str, list[tuple[float, str]]] = {}
    for s in specs:
        curve, level = smoothgrad_curve(s), noise(s)
        if curve is not None and level is not None:
            kind, samples = curve
            curves.setdefault(f"smooth_grad {kind}, n={samples}", []).append((level[1], s.label))
        elif _is_adapt_curve(s):
            clean = "+clean" if s.params.get("include_clean") else ""
            name = f"adapt_grad{clean}, n={noise_samples(s)}"
            curves.setdefault(name, []).append((float(s.params["confidence"]), s.label))
    for name, points in curves.items():
        if base is not None and name.startswith("smooth_grad"):
            points.append((0.0, base))
        points.sort()
    return curves


def fidelity_statistics(
    maps: Mapping[str, MapStack | Tensor],
    specs: Sequence[MethodSpec],
    layout: ProbeLayout,
    *,
    stage: str = "fit",
) -> dict[MetricKey, ProbeStatistic]:
    """:data:`FIDELITY_METRIC` of every smoothing method of :func:`smoothing_curves` (and of
    the plain gradient itself, 0) on the test probes: ``maps[label]`` ``(M, N, C, H, W)``
    with the K models of ``layout`` first. Empty when ``specs`` has no plain gradient."""
    base = next((s.label for s in specs if is_plain_baseline(s)), None)
    if base is None:
        return {}
    k, t = layout.num_models, layout.test
    as_tensor = lambda m: m.maps if isinstance(m, MapStack) else m  # noqa: E731
    plain = as_tensor(maps[base])[:k, t]
    out: dict[MetricKey, ProbeStatistic] = {}
    labels = dict.fromkeys(lb for pts in smoothing_curves(specs).values() for _, lb in pts)
    for label in labels:
        stack = as_tensor(maps[label])[:k, t].to(plain.device)
        per_model = torch.stack([l2_distance(stack[i], plain[i]) for i in range(k)])
        key = MetricKey(label, "mean", "test", FIDELITY_METRIC, stage)
        out[key] = ProbeStatistic({"test": per_model.mean(0)})
    return out


@dataclass(frozen=True)
class StabilityFidelityPoint:
    """One smoothing method of one curve: its noise and its numbers (None: not logged).

    ``fidelity`` is :data:`FIDELITY_METRIC`; ``above_chance`` the agreement of the models'
    test maps above chance (``metric``); ``instability`` the normalized L2 distance between
    the models' test maps; ``gap`` the interpretation gap."""

    curve: str
    noise: float
    label: str
    fidelity: Estimate | None
    above_chance: Estimate | None
    instability: Estimate | None
    gap: Estimate | None


def stability_fidelity_points(
    estimates: Mapping[MetricKey, Estimate],
    specs: Sequence[MethodSpec],
    *,
    stage: str = "fit",
    metric: str = "spearman",
) -> list[StabilityFidelityPoint]:
    """Every point of :func:`smoothing_curves`, with its estimates from ``estimates`` (the
    callback's, an :class:`~.epoch.EpochEvaluation`'s after :func:`fidelity_statistics`, or a
    run's CSV), curve by curve in noise order."""
    get = lambda lb, agg, split, m: estimates.get(MetricKey(lb, agg, split, m, stage))  # noqa: E731
    return [
        StabilityFidelityPoint(
            curve,
            noise,
            lb,
            fidelity=get(lb, "mean", "test", FIDELITY_METRIC),
            above_chance=get(lb, "pairs", "test", above_chance(metric)),
            instability=get(lb, "pairs", "test", "l2"),
            gap=get(lb, "mean", "gap", "gap"),
        )
        for curve, points in smoothing_curves(specs).items()
        for noise, lb in points
    ]


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x`` over the pairs where both are positive
    and finite (NaN with fewer than 2): ``y ~ x^slope``.

    >>> round(loglog_slope([0.1, 0.2, 0.4], [5.0, 2.5, 1.25]), 6)
    -1.0
    """
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True)
           if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)]  # fmt: skip
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return math.nan
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx

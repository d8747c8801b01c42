"""Every seed-level interval of the report, from one place.

Over k seed replicates a number has k - 1 degrees of freedom: intervals use Student's t
(never the normal quantile). A difference of two settings is *paired* where the seeds pair
(the same seed in both: a t-interval of the per-seed differences, :func:`t_interval`) and
*Welch* otherwise (:func:`welch_difference`). Bounded numbers stay in range: a correlation
in [-1, 1] gets its interval on Fisher's z = atanh(r) scale, a proportion in [0, 1] on the
logit scale, both mapped back (:data:`BOUNDS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lightning_saliency.generalization import Estimate, t_quantile
from lightning_saliency.generalization.input_bounds import SHARE_AT_BOUNDS

__all__ = ["BOUNDS", "bounds_of", "detectable_effect", "t_interval", "welch_difference"]

#: Numbers with a bounded range, by the study column (or metric) name.
BOUNDS: dict[str, tuple[float, float]] = {
    **{m: (-1.0, 1.0) for m in ("spearman", "pearson", "ssim", "prediction_kappa", "kappa",
                                "spearman_chance", "ssim_chance")},
    **{m: (0.0, 1.0) for m in ("topk", "topk_chance", "prediction_agreement", "iou",
                               SHARE_AT_BOUNDS)},
}
_EPS = 1e-6


def bounds_of(name: str) -> tuple[float, float] | None:
    """The range of a column or metric name (None: unbounded).

    >>> bounds_of("spearman"), bounds_of("spearman_above_chance")
    ((-1.0, 1.0), None)
    """
    return BOUNDS.get(name)


def _to(x: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = bounds
    u = np.clip((x - lo) / (hi - lo), _EPS, 1 - _EPS)  # to (0, 1)
    return np.log(u / (1 - u))  # logit; for [-1, 1] this is 2 * atanh(r): Fisher's z


def _back(z: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return lo + (hi - lo) / (1 + math.exp(-z))


def t_interval(values: Sequence[float], bounds: tuple[float, float] | None = None) -> Estimate | None:
    """Mean of k >= 2 seed-level values and its 95% Student-t interval (k - 1 df).

    With ``bounds`` the interval is computed on the logit / Fisher-z scale and mapped back,
    so it stays inside the range; where a value lies at a bound (a prediction agreement of
    1.0, which has no logit) the plain t-interval is clipped to the range instead. The value
    is the plain mean. NaN with a count when a value
    is not finite; None for fewer than two values.

    >>> e = t_interval([0.1, 0.2, 0.3])
    >>> round(e.lo, 4), round(e.hi, 4), e.method  # 0.2 -/+ t(0.975, 2) * 0.0577
    (-0.0484, 0.4484, 'seeds')
    >>> e = t_interval([0.9, 0.99], bounds=(-1.0, 1.0))
    >>> -1 <= e.lo <= e.hi <= 1
    True
    >>> e = t_interval([1.0, 1.0, 0.9688], bounds=(0.0, 1.0))  # not [0.01, 1.0]
    >>> round(e.lo, 4), e.hi
    (0.9449, 1.0)
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size < 2:
        return None
    bad = int((~np.isfinite(x)).sum())
    if bad:
        return Estimate.nan(int(x.size), bad, "seeds")
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(x.size))
    q = float(t_quantile(x.size - 1.0))
    if bounds is None:
        return Estimate(mean, se, mean - q * se, mean + q * se, int(x.size), 0, "seeds")
    if np.any(x <= bounds[0]) or np.any(x >= bounds[1]):  # a value at a bound has no logit:
        lo, hi = max(mean - q * se, bounds[0]), min(mean + q * se, bounds[1])  # clip instead
        return Estimate(mean, se, lo, hi, int(x.size), 0, "seeds")
    z = _to(x, bounds)
    zm, zse = float(z.mean()), float(z.std(ddof=1) / math.sqrt(x.size))
    lo, hi = _back(zm - q * zse, bounds), _back(zm + q * zse, bounds)
    return Estimate(mean, se, min(lo, mean), max(hi, mean), int(x.size), 0, "seeds")


def welch_difference(a: Estimate, b: Estimate) -> Estimate:
    """``a - b`` of two seed-level estimates of independent runs (Welch's t interval).

    ``se`` and ``n`` (the number of seeds) of each give the Welch-Satterthwaite degrees of
    freedom; with 3 seeds each and equal spread that is 4, not the normal's infinity.

    >>> a = Estimate(0.5, 0.05, 0.0, 1.0, 3, method="seeds")
    >>> b = Estimate(0.3, 0.05, 0.0, 1.0, 3, method="seeds")
    >>> d = welch_difference(a, b)
    >>> round(d.value, 4), round(d.hi - d.value, 4)  # t(0.975, 4) * sqrt(2) * 0.05
    (0.2, 0.1963)
    """
    n, bad = min(a.n, b.n), a.nonfinite + b.nonfinite
    value = a.value - b.value
    va, vb = a.se**2, b.se**2
    if not math.isfinite(value) or not math.isfinite(va + vb) or min(a.n, b.n) < 2:
        return Estimate.nan(n, bad, "welch")
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(value, 0.0, value, value, n, 0, "welch")
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = float(t_quantile(df)) * se
    return Estimate(value, se, value - half, value + half, n, 0, "welch")


def detectable_effect(estimate: Estimate | None, power: float = 0.8) -> float:
    """The smallest true effect a seed-level t interval (``n`` seeds, ``n - 1`` df) excludes
    0 for with probability ``power``, at the estimate's standard error: the design's power,
    stated beside a verdict (two-sided 5% level, the noncentral t distribution).

    NaN without at least 2 seeds or a finite standard error. With many seeds it tends to
    ``(1.96 + 0.84) * se``; with 5 seeds it is about ``3.8 * se`` (the half-width is
    ``2.78 * se``): an effect as large as the half-width is detected only 55% of the time.

    >>> round(detectable_effect(Estimate(0.0, 1.0, -2.78, 2.78, 5, method="seeds")), 2)
    3.76
    >>> round(detectable_effect(Estimate(0.0, 1.0, -1.96, 1.96, 10_000, method="seeds")), 2)
    2.8
    """
    if estimate is None or estimate.n < 2 or not math.isfinite(estimate.se):
        return math.nan
    if not 0.05 < power < 1.0:
        raise ValueError(f"power must lie in (0.05, 1); got {power!r}")
    return estimate.se * _noncentrality(int(estimate.n) - 1, power)


def _noncentrality(df: int, power: float) -> float:
    """The noncentrality at which a two-sided 5% t test with ``df`` df rejects with
    probability ``power``."""
    from scipy import optimize, stats

    crit = float(t_quantile(float(df)))

    def shortfall(nc: float) -> float:  # the lower tail vanishes (NaN in scipy) for a large nc
        dist = stats.nct(df, nc)
        lower = float(dist.cdf(-crit))
        return float(dist.sf(crit)) + (lower if math.isfinite(lower) else 0.0) - power

    hi = 1.0
    while shortfall(hi) < 0:  # power rises with nc: bracket the root
        hi *= 2.0
    return float(optimize.brentq(shortfall, 0.0, hi, xtol=1e-10))

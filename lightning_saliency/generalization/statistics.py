"""Estimates with their uncertainty: every aggregated number is a statistic of per-probe values.

A *probe group* is an independent sample of probes (model k's train probes, the test
probes; see :class:`~lightning_saliency.generalization.ProbeLayout`). Two kinds of
statistic cover every number the library logs:

* :class:`ProbeStatistic`, **linear**: ``sum_g mean(u_g)`` over probe groups, where
  ``u_g`` holds one value per probe of group g. A mean over probes, a mean over models
  of per-model means, a difference of means (the gap: test minus train), an agreement
  minus its chance level on the same probes (paired: one difference per probe) are all
  of this form. Its standard error is ``sqrt(sum_g var(u_g) / n_g)`` and its 95%
  interval a Student-t interval with Welch-Satterthwaite degrees of freedom.
* **nonlinear** statistics (:class:`Transformed`, e.g. a difference of absolute gaps, and
  MeGe/ReCo): a percentile bootstrap over probes, resampling every probe group with
  replacement from one dedicated generator; the resamples are shared by all statistics
  of an epoch, so differences between methods stay paired.

These intervals cover the noise of *which probes* were drawn (and, for stochastic
methods, each probe's own noise draws); they do not cover the randomness of training
(initialization, data order, split), which only repeated seeds measure.

Any non-finite per-probe value makes the estimate NaN, with the count of such probes in
:attr:`Estimate.nonfinite` (never a silent drop).

Example:
    >>> import torch
    >>> test = ProbeStatistic({"test": torch.tensor([1.0, 2.0, 3.0, 4.0])})
    >>> train = ProbeStatistic({"train_0": torch.tensor([1.0, 1.5, 2.0, 2.5])})
    >>> gap = estimate(test - train)
    >>> round(gap.value, 4), gap.n, gap.nonfinite
    (0.75, 8, 0)
    >>> gap.lo < 0 < gap.hi  # the interval includes 0: not a finding
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "CONFIDENCE",
    "Estimate",
    "ProbeStatistic",
    "Statistic",
    "Transformed",
    "bootstrap_counts",
    "estimate",
    "estimate_all",
    "t_quantile",
]

#: Coverage of every interval the library reports.
CONFIDENCE = 0.95
#: Bootstrap resamples for the nonlinear statistics.
BOOTSTRAP_RESAMPLES = 1000

Counts = Mapping[str, Tensor]  # probe group -> (B, n_g) resample counts
K = TypeVar("K")


@dataclass(frozen=True)
class Estimate:
    """A number with its standard error and 95% interval, over ``n`` probes.

    ``nonfinite`` counts the probes whose value was not finite; the estimate is then
    NaN. ``method`` names the interval: ``"t"``, ``"wilson"`` or ``"bootstrap"``.

    >>> e = Estimate(0.5, 0.1, 0.3, 0.7, 32)
    >>> str(e), e.excludes_zero
    ('0.5000 [0.3000, 0.7000]', True)
    """

    value: float
    se: float
    lo: float
    hi: float
    n: int
    nonfinite: int = 0
    method: str = "t"

    @classmethod
    def nan(cls, n: int, nonfinite: int = 0, method: str = "t") -> Estimate:
        """An undefined estimate over ``n`` probes."""
        return cls(math.nan, math.nan, math.nan, math.nan, n, nonfinite, method)

    @property
    def is_finite(self) -> bool:
        return math.isfinite(self.value)

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below 0 (False when undefined)."""
        return bool(self.lo > 0 or self.hi < 0)  # NaN compares False

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def __str__(self) -> str:
        if not self.is_finite:
            return f"nan ({self.nonfinite} non-finite)" if self.nonfinite else "nan"
        return f"{self.value:.4f} [{self.lo:.4f}, {self.hi:.4f}]"


class Statistic(Protocol):
    """What :func:`estimate_all` needs of a statistic."""

    linear: bool

    def support(self) -> dict[str, Tensor]:
        """Per-probe values (any non-finite one marks its probe) of every group used."""
        ...

    def point(self) -> Tensor:
        """The 0-dim value."""
        ...

    def bootstrap(self, counts: Counts) -> Tensor:
        """``(B,)`` values on resampled probes."""
        ...


class ProbeStatistic:
    """``sum_g mean(u_g)``: a linear statistic of per-probe values in independent groups.

    ``terms`` maps a probe group name to its ``(n_g,)`` values, already weighted (a mean
    over K models' train groups has terms ``loss_k / K``). Adding or subtracting two
    statistics merges their terms; on a shared group the values are added probe by
    probe, which pairs them (the same probes, the same order). ``proportion=True`` marks
    a mean of 0/1 outcomes over all its probes (Wilson interval).

    >>> a = ProbeStatistic({"test": torch.tensor([1.0, 3.0])})
    >>> b = ProbeStatistic({"test": torch.tensor([0.5, 1.0])})
    >>> (a - b).terms["test"].tolist(), float((0.5 * a).point())
    ([0.5, 2.0], 1.0)
    """

    linear = True
    __slots__ = ("proportion", "terms")

    def __init__(self, terms: Mapping[str, Tensor], proportion: bool = False) -> None:
        if not terms:
            raise ValueError("a probe statistic needs at least one probe group")
        self.terms = {g: v.reshape(-1) for g, v in terms.items()}
        self.proportion = proportion

    def _combine(self, other: ProbeStatistic, sign: float) -> ProbeStatistic:
        terms = dict(self.terms)
        for g, v in other.terms.items():
            if g in terms:
                if terms[g].shape != v.shape:
                    raise ValueError(
                        f"probe group {g!r} has {terms[g].numel()} values in one statistic "
                        f"and {v.numel()} in the other; paired terms need the same probes"
                    )
                terms[g] = terms[g] + sign * v
            else:
                terms[g] = sign * v
        return ProbeStatistic(terms)

    def __add__(self, other: ProbeStatistic) -> ProbeStatistic:
        return self._combine(other, 1.0)

    def __sub__(self, other: ProbeStatistic) -> ProbeStatistic:
        return self._combine(other, -1.0)

    def __mul__(self, c: float) -> ProbeStatistic:
        return ProbeStatistic({g: c * v for g, v in self.terms.items()})

    __rmul__ = __mul__

    def __neg__(self) -> ProbeStatistic:
        return self * -1.0

    def support(self) -> dict[str, Tensor]:
        return self.terms

    def point(self) -> Tensor:
        return torch.stack([v.double().mean() for v in self.terms.values()]).sum()

    def bootstrap(self, counts: Counts) -> Tensor:
        out: Tensor | int = 0
        for g, v in self.terms.items():
            out = out + counts[g].to(v.device) @ v.double() / v.numel()
        assert isinstance(out, Tensor)  # terms is never empty (checked in __init__)
        return out


class Transformed:
    """A nonlinear function of statistics, estimated by the bootstrap.

    >>> a = ProbeStatistic({"test": torch.tensor([-1.0, -2.0])})
    >>> b = ProbeStatistic({"test": torch.tensor([0.5, 0.5])})
    >>> float(Transformed(lambda x, y: x.abs() - y.abs(), a, b).point())
    1.0
    """

    linear = False

    def __init__(self, fn: Callable[..., Tensor], *stats: Statistic) -> None:
        self.fn, self.stats = fn, stats

    def support(self) -> dict[str, Tensor]:
        merged: dict[str, Tensor] = {}
        for s in self.stats:
            for g, v in s.support().items():
                merged[g] = merged[g] + v if g in merged else v
        return merged

    def point(self) -> Tensor:
        return self.fn(*(s.point() for s in self.stats))

    def bootstrap(self, counts: Counts) -> Tensor:
        return self.fn(*(s.bootstrap(counts) for s in self.stats))


def bootstrap_counts(
    sizes: Mapping[str, int],
    generator: torch.Generator,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Tensor]:
    """For each probe group, ``(resamples, n_g)`` counts of each probe in a resample.

    >>> c = bootstrap_counts({"test": 4}, torch.Generator().manual_seed(0), resamples=3)
    >>> c["test"].shape, c["test"].sum(1).tolist()
    (torch.Size([3, 4]), [4.0, 4.0, 4.0])
    """
    out = {}
    device = generator.device
    for group, n in sizes.items():
        idx = torch.randint(n, (resamples, n), generator=generator, device=device)
        counts = torch.zeros(resamples, n, dtype=torch.float64, device=device)
        out[group] = counts.scatter_add_(1, idx, torch.ones_like(counts))
    return out


def t_quantile(df: np.ndarray | float, level: float = CONFIDENCE) -> np.ndarray:
    """Two-sided Student-t quantile ``t_{(1 + level) / 2, df}`` (scipy's ``stdtrit``).

    >>> round(float(t_quantile(10.0)), 4)
    2.2281
    """
    from scipy.special import stdtrit

    return np.asarray(stdtrit(np.asarray(df, dtype=np.float64), (1 + level) / 2))


def _group_moments(stat: Statistic) -> Tensor:
    """``(G, 4)`` per group: n, non-finite count, mean, variance."""
    rows = []
    for v in stat.support().values():
        v = v.double()
        var = v.var() if v.numel() > 1 else torch.full_like(v[0], math.nan)
        n = torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device)
        rows.append(torch.stack([n, (~torch.isfinite(v)).sum().double(), v.mean(), var]))
    return torch.stack(rows)


def _linear_estimate(m: np.ndarray, level: float, proportion: bool) -> Estimate:
    n, bad, mean, var = m.T
    total, nonfinite = int(n.sum()), int(bad.sum())
    if nonfinite or not np.isfinite(mean).all():
        return Estimate.nan(total, nonfinite, "wilson" if proportion else "t")
    value = float(mean.sum())
    if proportion:
        return _wilson(min(max(value, 0.0), 1.0), total, level)
    v = var / n
    se = float(math.sqrt(v.sum())) if np.isfinite(v).all() else math.nan
    if se == 0:
        return Estimate(value, 0.0, value, value, total)
    df = v.sum() ** 2 / (v**2 / np.maximum(n - 1, 1)).sum()
    half = float(t_quantile(df, level)) * se
    return Estimate(value, se, value - half, value + half, total)


def _wilson(p: float, n: int, level: float) -> Estimate:
    z = float(t_quantile(math.inf, level))
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, math.sqrt(p * (1 - p) / n), center - half, center + half, n, 0, "wilson")


def _bootstrap_estimate(point: float, boot: np.ndarray, n: int, bad: int, level: float) -> Estimate:
    if bad or not math.isfinite(point):
        return Estimate.nan(n, bad, "bootstrap")
    finite = boot[np.isfinite(boot)]
    if finite.size < level * boot.size:  # too many resamples where it is undefined
        return Estimate(point, math.nan, math.nan, math.nan, n, 0, "bootstrap")
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(point, float(finite.std(ddof=1)), float(lo), float(hi), n, 0, "bootstrap")


def estimate_all(
    stats: Mapping[K, Statistic],
    counts: Counts | None = None,
    level: float = CONFIDENCE,
) -> dict[K, Estimate]:
    """Estimate many statistics with one device-to-host transfer.

    ``counts`` (from :func:`bootstrap_counts`) are needed when a statistic is nonlinear.

    >>> s = {"a": ProbeStatistic({"test": torch.tensor([0.0, 1.0, 1.0, 1.0])}, proportion=True)}
    >>> estimate_all(s)["a"].method
    'wilson'
    """
    keys = list(stats)
    parts: list[Tensor] = []
    for key in keys:
        stat = stats[key]
        moments = _group_moments(stat).reshape(-1)
        parts.append(moments)
        if not stat.linear:
            if counts is None:
                raise ValueError(f"{key!r} is nonlinear: pass bootstrap counts")
            parts.append(torch.cat([stat.point().double().reshape(1), stat.bootstrap(counts)]))
    flat = torch.cat([p.double().reshape(-1).cpu() for p in parts]).numpy() if parts else None
    out: dict[K, Estimate] = {}
    pos = 0
    for key in keys:
        stat = stats[key]
        g = len(stat.support())
        assert flat is not None  # there are parts when there are keys
        m = flat[pos : pos + 4 * g].reshape(g, 4)
        pos += 4 * g
        if stat.linear:
            out[key] = _linear_estimate(m, level, getattr(stat, "proportion", False))
            continue
        assert counts is not None  # checked above for every nonlinear statistic
        b = counts[next(iter(counts))].shape[0]
        point, boot = float(flat[pos]), flat[pos + 1 : pos + 1 + b]
        pos += 1 + b
        out[key] = _bootstrap_estimate(point, boot, int(m[:, 0].sum()), int(m[:, 1].sum()), level)
    return out


def estimate(stat: Statistic, counts: Counts | None = None, level: float = CONFIDENCE) -> Estimate:
    """Estimate one statistic (see :func:`estimate_all`)."""
    return estimate_all({0: stat}, counts, level)[0]


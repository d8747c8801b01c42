"""The protocol's verdicts (docs/results_protocol.md), computed from seed replicates.

Each finding has one deciding number per seed (a difference within a run, or between the
runs of two settings with the same seed), and the verdict reads the seed-level 95%
interval of it: *reproduces* when it excludes 0 in the paper's direction, *does not
reproduce* when it excludes 0 the other way, *cannot tell* otherwise (fewer than 2
seeds: *not run*). A finding reads each of its settings from exactly one setting of runs:
when runs of two settings match (e.g. a split-factor-2 run and a control with a planted
shortcut), it says so instead of mixing them, whatever the order of the runs; it names the
runs it used. The runs are the replicates the tables use
(:func:`~lightning_saliency.report.replicates.select_replicates`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from lightning_saliency.generalization import Estimate
from lightning_saliency.generalization.studies import (
    gradient_base,
    is_plain_baseline,
    noise,
    smoothgrad_curve,
    variant,
)

from .runs import Run
from .seeds import seed_level

__all__ = ["FINDINGS", "Finding", "verdict", "verdict_rows"]

Value = Callable[[Run], float | None]


@dataclass(frozen=True)
class Finding:
    """One finding: its name, the deciding number per seed, and the paper's direction."""

    key: str
    claim: str
    metric: str
    per_seed: Callable[[Sequence[Run]], dict[int, float]]
    direction: int  # +1: the paper predicts > 0; -1: < 0


class _Mixed(ValueError):
    """Runs of two settings (or two runs of one seed) give one side of a finding."""


#: names of the runs the finding being computed reads (set by :func:`verdict_rows`)
_USED: ContextVar[set[str] | None] = ContextVar("_USED", default=None)


def _get(run: Run, method: str, aggregate: str, split: str, metric: str) -> float | None:
    e = run.get(method, aggregate, split, metric)
    return None if e is None or not math.isfinite(e.value) else e.value


def _label(run: Run, pred: Callable) -> str | None:
    return next((lb for lb, s in run.specs.items() if pred(s) and lb in run.labels), None)


def _within(value: Value, where: Callable[[Run], bool]) -> Callable[[Sequence[Run]], dict[int, float]]:
    """A number of one run, per seed, over the runs ``where`` selects."""

    def per_seed(runs: Sequence[Run]) -> dict[int, float]:
        chosen = [(r, v) for r in runs if where(r) and r.seed is not None
                  and (v := value(r)) is not None]  # fmt: skip
        names = ", ".join(sorted(r.name for r, _ in chosen))
        if len({r.signature for r, _ in chosen}) > 1:
            raise _Mixed(f"runs of several settings give one side ({names}): report them "
                         "separately")  # fmt: skip
        out = {int(r.seed): v for r, v in chosen if r.seed is not None}
        if len(out) != len(chosen):
            raise _Mixed(f"two runs of one side share a seed ({names})")
        used = _USED.get()
        if used is not None:
            used.update(r.name for r, _ in chosen)
        return out

    return per_seed


def _between(value: Value, a: Callable[[Run], bool], b: Callable[[Run], bool],
             combine: Callable[[float, float], float]) -> Callable[[Sequence[Run]], dict[int, float]]:  # fmt: skip
    """combine(value of the run of setting a, of setting b) for each seed both have."""

    def per_seed(runs: Sequence[Run]) -> dict[int, float]:
        va, vb = _within(value, a)(runs), _within(value, b)(runs)
        return {s: combine(va[s], vb[s]) for s in sorted(set(va) & set(vb))}

    return per_seed


def _plain(run: Run) -> str | None:
    return _label(run, is_plain_baseline)


def _sg(samples: int) -> Callable[[Run], str | None]:
    return lambda run: _label(run, lambda s: smoothgrad_curve(s) == ("noise_level", samples)
                              and noise(s) == ("noise_level", 0.2))  # fmt: skip


def _diff(first: Callable[[Run], str | None], second: Callable[[Run], str | None], *key: str) -> Value:
    def value(run: Run) -> float | None:
        a, b = first(run), second(run)
        va = None if a is None else _get(run, a, *key)
        vb = None if b is None else _get(run, b, *key)
        return None if va is None or vb is None else va - vb

    return value


def _of(method: Callable[[Run], str | None], *key: str) -> Value:
    return lambda run: None if (m := method(run)) is None else _get(run, m, *key)


def _slic(run: Run) -> str | None:
    return _label(run, lambda s: s.superpixel is not None and is_plain_baseline(s.pixel_twin)
                  and s.superpixel["algorithm"] == "slic" and s.superpixel["reduction"] == "sum"
                  and len(s.superpixel) == 2)  # fmt: skip


def _adapt(run: Run) -> str | None:
    return _label(run, lambda s: variant(s) == "adapt" and gradient_base(s) == "grad")


def _sf(n: int) -> Callable[[Run], bool]:
    return lambda r: r.split_factor == n and r.spectral_norm_factor is None


def _sn(c: float | None) -> Callable[[Run], bool]:
    return lambda r: r.split_factor == 2 and r.spectral_norm_factor == c


def _relative_drop_difference(runs: Sequence[Run]) -> dict[int, float]:
    above = _of(_plain, "pairs", "test", "spearman_above_chance")
    kappa = lambda r: _get(r, "-", "pairs", "test", "prediction_kappa")  # noqa: E731
    s2, s16 = _within(above, _sf(2))(runs), _within(above, _sf(16))(runs)
    k2, k16 = _within(kappa, _sf(2))(runs), _within(kappa, _sf(16))(runs)
    seeds = sorted(set(s2) & set(s16) & set(k2) & set(k16))
    return {s: (s16[s] / s2[s] - 1) - (k16[s] / k2[s] - 1) for s in seeds if s2[s] and k2[s]}


SF2 = _sf(2)
FINDINGS: tuple[Finding, ...] = (
    Finding("a", "map agreement falls as the splits shrink (000, Table 1)",
            "Spearman above chance (simple_grad, test), sf 16 minus sf 2",
            _between(_of(_plain, "pairs", "test", "spearman_above_chance"), _sf(16), SF2,
                     lambda a, b: a - b), -1),
    Finding("a2", "... faster than prediction agreement (000, Fig. 1b)",
            "relative drop of Spearman above chance minus that of Cohen's kappa, sf 2 to 16",
            _relative_drop_difference, -1),
    Finding("b", "L2 distance falls with SmoothGrad noise (000, sec. 6.4)",
            "test L2, SmoothGrad (noise 0.2, 16 draws) minus simple_grad, sf 2",
            _within(_diff(_sg(16), _plain, "pairs", "test", "l2"), SF2), -1),
    Finding("b2", "... and with the number of draws",
            "test L2, 16 draws minus 1 draw (noise 0.2), sf 2",
            _within(_diff(_sg(16), _sg(1), "pairs", "test", "l2"), SF2), -1),
    Finding("b3", "SmoothGrad shrinks the interpretation gap (000, Thm. 2)",
            "gap reduction of SmoothGrad (noise 0.2, 16 draws), sf 2",
            _within(_of(_sg(16), "mean", "gap", "gap_reduction"), SF2), 1),
    Finding("c", "super-pixel grouping raises SSIM across models (003, Fig. 2)",
            "test SSIM above chance, SLIC-grouped minus pixel simple_grad, sf 2",
            _within(_diff(_slic, _plain, "pairs", "test", "ssim_above_chance"), SF2), 1),
    Finding("c2", "... and MeGe", "MeGe, SLIC-grouped minus pixel simple_grad, sf 2",
            _within(_diff(_slic, _plain, "pairs", "train", "mege"), SF2), 1),
    Finding("d", "a stricter spectral-norm factor lowers the test loss (000, Fig. 1a)",
            "test loss (simple_grad), factor 1 minus factor 4, sf 2",
            _between(_of(_plain, "mean", "test", "loss"), _sn(1.0), _sn(4.0),
                     lambda a, b: a - b), -1),
    Finding("e", "AdaptGrad is sparser than SmoothGrad (002, Table 2)",
            "test sparseness (Gini), AdaptGrad minus SmoothGrad (noise 0.2, 16 draws), sf 2",
            _within(_diff(_adapt, _sg(16), "mean", "test", "sparseness"), SF2), 1),
)  # fmt: skip


def verdict(estimate: Estimate | None, direction: int) -> str:
    """The verdict word of a seed-level estimate and the paper's direction.

    >>> verdict(Estimate(0.1, 0.01, 0.05, 0.15, 3, method="seeds"), +1)
    'reproduces'
    >>> verdict(Estimate(0.1, 0.05, -0.1, 0.3, 3, method="seeds"), +1)
    'cannot tell'
    """
    if estimate is None:
        return "not run"
    if not estimate.is_finite:
        return "cannot tell (undefined)"
    if estimate.lo > 0 or estimate.hi < 0:
        return "reproduces" if (estimate.value > 0) == (direction > 0) else "does not reproduce"
    return "cannot tell"


def verdict_rows(
    runs: Sequence[Run],
) -> list[tuple[Finding, Estimate | None, list[int], str, list[str]]]:
    """Per finding: its seed-level estimate, the seeds it used, the verdict, the runs used."""
    runs = sorted(runs, key=lambda r: (r.name, str(r.path)))  # the order given never matters
    rows: list[tuple[Finding, Estimate | None, list[int], str, list[str]]] = []
    for f in FINDINGS:
        token = _USED.set(set())
        try:
            per = f.per_seed(runs)
        except _Mixed as err:
            rows.append((f, Estimate.nan(0, 0, "seeds"), [], f"cannot tell: {err}", []))
            continue
        finally:
            used = _USED.get() or set()
            _USED.reset(token)
        est = seed_level([Estimate(v, 0.0, v, v, 1) for v in per.values()])
        names = sorted(n for n in used if any(r.name == n and r.seed in per for r in runs))
        rows.append((f, est, sorted(per), verdict(est, f.direction), names))
    return rows

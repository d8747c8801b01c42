"""The built-in metrics of the registry (:mod:`.registry`): one declaration each.

Agreement and quality metrics are functions of maps; the other families' numbers are
computed in :mod:`lightning_saliency.generalization` and are declared here for their
direction and range (what a report or a clipped interval needs).
"""

from __future__ import annotations

import math

from torch import Tensor

from lightning_saliency.metrics._agreement import l2_distance, spearman, topk_intersection
from lightning_saliency.metrics._scores import complexity, sparseness
from lightning_saliency.metrics._ssim import ssim
from lightning_saliency.metrics.registry import register_metric

__all__ = ["ssim_window"]

_INF = math.inf


def ssim_window(height: int, width: int) -> int | None:
    """SSIM's default window (11 px) where the maps are large enough, else the largest odd
    size that fits (8x8 digits: 7), so small images are scored instead of failing.

    >>> ssim_window(32, 32), ssim_window(8, 8)
    (None, 7)
    """
    side = min(height, width)
    return None if side >= 11 else (side if side % 2 else side - 1)


def _l2(a: Tensor, b: Tensor, *, normalize: bool = True) -> Tensor:
    """L2 distance of the (unit-normalized) maps, the interpretation loss between two sources"""
    return l2_distance(a, b, normalize=normalize)


def _spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the channel-summed |maps|"""
    return spearman(a, b)


def _topk(a: Tensor, b: Tensor, *, k: float = 0.1) -> Tensor:
    """fraction of the top-k pixels of the channel-summed |maps| the two share (k: fraction or count)"""
    return topk_intersection(a, b, k=k)


def _ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM of the |maps| scaled to [0, 1] (window: 11 px, or the largest odd size that fits)"""
    return ssim(a, b, win_size=ssim_window(*a.shape[-2:]))


def _register() -> None:
    agree = {"_builtin": True, "family": "agreement"}
    register_metric(_l2, name="l2", higher_is_better=False, bounds=(0, _INF), **agree)  # type: ignore[arg-type]
    register_metric(_spearman, name="spearman", higher_is_better=True, bounds=(-1, 1),
                    headline=True, **agree)  # type: ignore[arg-type]  # fmt: skip
    register_metric(_topk, name="topk", higher_is_better=True, bounds=(0, 1), **agree)  # type: ignore[arg-type]
    register_metric(_ssim, name="ssim", higher_is_better=True, bounds=(-1, 1),
                    headline=True, **agree)  # type: ignore[arg-type]  # fmt: skip
    quality = {"_builtin": True, "family": "quality", "chance": None}
    register_metric(sparseness, name="sparseness", higher_is_better=True, bounds=(0, 1),
                    description="Gini index of |map| (more concentrated: higher)", **quality)  # type: ignore[arg-type]  # fmt: skip
    register_metric(complexity, name="complexity", higher_is_better=False, bounds=(0, _INF),
                    description="entropy of |map| / sum |map| (simpler: lower)", **quality)  # type: ignore[arg-type]  # fmt: skip
    numbers: list[tuple[str, str, bool | None, tuple[float, float], str]] = [
        ("gap", "loss", False, (0, _INF), "interpretation loss: L2 distance of a map to its reference"),
        ("gap", "gap", None, (-_INF, _INF), "test minus train interpretation loss (closer to 0: better)"),
        ("gap", "gap_reduction", True, (-_INF, _INF), "|gap(simple_grad)| - |gap(method)|"),
        ("gap", "own_excess", None, (-_INF, _INF), "a model's train loss minus the other models' (own-train excess)"),
        ("gap", "drift", False, (0, _INF), "L2 distance to the maps of the fit's first monitored epoch"),
        ("mege_reco", "mege", True, (0, 1), "MeGe: 1 / (1 + mean L2 distance) of correct pairs"),
        ("mege_reco", "reco", True, (-1, 1), "ReCo: best TPR + TNR - 1 telling wrong pairs apart"),
        ("faithfulness", "mu_fidelity", True, (-1, 1), "muFidelity (Pearson correlation)"),
        ("faithfulness", "deletion_auc", False, (0, 1), "area under the deletion curve (softmax probability)"),
        ("faithfulness", "insertion_auc", True, (0, 1), "area under the insertion curve (softmax probability)"),
        ("randomization", "spearman", False, (-1, 1), "Spearman to a randomized copy's maps"),
        ("randomization", "ssim", False, (-1, 1), "SSIM to a randomized copy's maps"),
        ("gap", "plain_gradient_l2", False, (0, _INF), "L2 distance to the same model's plain gradient (fidelity)"),
    ]
    for family, name, better, bounds, text in numbers:
        register_metric(name=name, family=family, higher_is_better=better, bounds=bounds,
                        chance=None, description=text, _builtin=True)  # fmt: skip


_register()

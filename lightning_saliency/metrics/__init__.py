"""Pure, batched torch metrics that compare and score saliency maps (per-sample results):
agreement and quality of maps, muFidelity, deletion/insertion curves.

A sample with a non-finite map gets NaN from every metric; ``finite_rows`` finds them.
"""

from __future__ import annotations

from lightning_saliency.metrics.faithfulness import (
    DEFAULT_PERTURBATION_ROWS,
    DEFAULT_PERTURBATION_STEPS,
    PerturbationCurves,
    curve_auc,
    perturbation_curves,
    perturbation_ranks,
)
from lightning_saliency.metrics.functional import (
    complexity,
    finite_rows,
    l2_distance,
    mege_reco,
    mu_fidelity,
    normalize_maps,
    prediction_agreement,
    reduce_channels,
    sparseness,
    spearman,
    ssim,
    topk_intersection,
)

__all__ = [
    "DEFAULT_PERTURBATION_ROWS",
    "DEFAULT_PERTURBATION_STEPS",
    "PerturbationCurves",
    "complexity",
    "curve_auc",
    "finite_rows",
    "l2_distance",
    "mege_reco",
    "mu_fidelity",
    "normalize_maps",
    "perturbation_curves",
    "perturbation_ranks",
    "prediction_agreement",
    "reduce_channels",
    "sparseness",
    "spearman",
    "ssim",
    "topk_intersection",
]

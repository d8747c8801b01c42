"""Pure, batched torch metrics that compare and score saliency maps (per-sample results).

A sample with a non-finite map gets NaN from every metric; ``finite_rows`` finds them.
"""

from __future__ import annotations

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
    "complexity",
    "finite_rows",
    "l2_distance",
    "mege_reco",
    "mu_fidelity",
    "normalize_maps",
    "prediction_agreement",
    "reduce_channels",
    "sparseness",
    "spearman",
    "ssim",
    "topk_intersection",
]

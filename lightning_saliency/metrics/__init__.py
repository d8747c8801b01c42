"""Pure, batched torch metrics that compare and score saliency maps (per-sample results):
agreement and quality of maps, muFidelity, deletion/insertion curves.

A sample with a non-finite map gets NaN from every metric; ``finite_rows`` finds them.
"""

from __future__ import annotations

from lightning_saliency.metrics._builtin_metrics import ssim_window
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
from lightning_saliency.metrics.registry import (
    MetricInfo,
    MetricSpec,
    agreement_specs,
    get_metric,
    higher_is_better,
    metric_names,
    metric_table,
    register_metric,
    resolve_metric,
    unregister_metric,
)

__all__ = [
    "DEFAULT_PERTURBATION_ROWS",
    "DEFAULT_PERTURBATION_STEPS",
    "MetricInfo",
    "MetricSpec",
    "PerturbationCurves",
    "agreement_specs",
    "complexity",
    "curve_auc",
    "finite_rows",
    "get_metric",
    "higher_is_better",
    "l2_distance",
    "mege_reco",
    "metric_names",
    "metric_table",
    "mu_fidelity",
    "normalize_maps",
    "perturbation_curves",
    "perturbation_ranks",
    "prediction_agreement",
    "reduce_channels",
    "register_metric",
    "resolve_metric",
    "sparseness",
    "spearman",
    "ssim",
    "ssim_window",
    "topk_intersection",
    "unregister_metric",
]

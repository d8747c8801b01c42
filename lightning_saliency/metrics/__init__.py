"""Pure, batched torch metrics that compare and score saliency maps (per-sample results):
agreement and quality of maps, muFidelity, deletion/insertion curves, and the metric
registry (:mod:`.registry`: each metric's parameters, direction, range and chance rule).

Every function takes maps shaped ``(N, C, H, W)``, ``(N, H, W)`` or ``(N, D)`` and
returns one value per sample (shape ``(N,)``) unless stated otherwise.  Computation
happens in float64 when an input is float64 and in float32 otherwise (half and
bfloat16 inputs are promoted), on the device of the inputs.  No numpy, no Lightning.

Channel reduction (``channel_reduction``):

* ``"sum"``: signed sum over the channel axis of a 4-D map;
* ``"abs_sum"``: sum of absolute values over the channel axis;
* ``None``: no reduction, the whole map is flattened per sample.

A 3-D ``(N, H, W)`` or 2-D ``(N, D)`` map has no channel axis: ``"sum"`` leaves it
as it is and ``"abs_sum"`` takes its absolute value.

Non-finite input (one rule for every metric): a sample whose map, or either map of a
pair, holds any NaN or +-Inf element gets NaN, never a number computed from the rest of
the map; non-finite logits make ``prediction_agreement`` NaN, and MeGe/ReCo are NaN when
any map or logit row they use is non-finite.  :func:`finite_rows` says which samples
are all finite, so callers can count the non-finite ones.  A NaN from finite maps means
the metric is undefined for them instead (e.g. ``spearman`` of a constant map); each
function documents its constant-map value.
"""

from __future__ import annotations

from lightning_saliency.metrics._agreement import (
    l2_distance,
    mege_reco,
    prediction_agreement,
    spearman,
    topk_intersection,
)
from lightning_saliency.metrics._builtin_metrics import ssim_window
from lightning_saliency.metrics._maps import finite_rows, normalize_maps, reduce_channels
from lightning_saliency.metrics._scores import complexity, mu_fidelity, sparseness
from lightning_saliency.metrics._ssim import ssim
from lightning_saliency.metrics.faithfulness import (
    DEFAULT_PERTURBATION_ROWS,
    DEFAULT_PERTURBATION_STEPS,
    PerturbationCurves,
    curve_auc,
    perturbation_curves,
    perturbation_ranks,
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

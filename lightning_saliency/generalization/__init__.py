"""Do saliency maps generalize? The paper's quantities as pure functions, with uncertainty.

Lightning-free: everything here works on tensors of maps ``(M, N, C, H, W)`` (M sources:
K models and an optional reference model; N probes laid out by a :class:`ProbeLayout`)
and returns per-probe values, statistics built from them, and :class:`Estimate` values
with their standard error and 95% interval. The callback and the report are thin
clients of this package, :class:`MetricKey` is the one schema they share, and
:mod:`.record` the run folder's files (CSV rows, ``methods.json``) both read or write.

Example: the leave-one-out gap of three models from hand-made maps.
    >>> import torch
    >>> from lightning_saliency.generalization import (
    ...     ProbeLayout, estimate, interpretation_gap, interpretation_loss,
    ...     leave_one_out_reference)
    >>> layout = ProbeLayout.from_sizes([2, 2, 2], 4)   # K = 3 models, 4 test probes
    >>> maps = torch.randn(3, 10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> loss = interpretation_loss(maps, leave_one_out_reference(maps))  # (K, N) per probe
    >>> loss.shape
    torch.Size([3, 10])
    >>> e = estimate(interpretation_gap(loss, layout))
    >>> e.n, e.lo < e.value < e.hi
    (10, True)
"""

from __future__ import annotations

from .chance import CHANCE_DRAWS, ChancePairing, PredictionChance
from .core import (
    MapStack,
    agreement_values,
    drift,
    gap_reduction,
    interpretation_gap,
    interpretation_loss,
    leave_one_out_reference,
    pairwise_agreement,
    prediction_agreement,
    quality,
    split_statistics,
    ssim_window,
)
from .epoch import (
    EpochEvaluation,
    compute_maps,
    compute_pixel_maps,
    evaluate_epoch,
    group_maps,
    model_logits,
    nonfinite_key,
    predictions,
)
from .families import (
    faithfulness_statistics,
    faithfulness_values,
    family_statistics,
    randomization_statistics,
    randomization_values,
)
from .layout import ProbeLayout
from .mege import MegeReco, mege_reco_statistics
from .mprt import (
    MPRT_VARIANT_METRICS,
    discrete_entropy,
    entropy_rise,
    smooth_randomization_values,
    smoothed_maps,
)
from .randomization import (
    NORM_LAYERS,
    cascade_copies,
    cascade_depths,
    default_reinit,
    randomization_layers,
    randomized_copies,
)
from .record import (
    CSV_FIELDS,
    CSV_NAME,
    LEGACY_CSV_FIELDS,
    METHODS_NAME,
    RunRecord,
    choose_epoch,
    csv_row,
    epoch_rows,
    parse_csv_row,
    read_csv,
    read_methods,
    read_settings,
)
from .schema import (
    AGREEMENT_METRICS,
    DEFAULT_FAMILIES,
    FAITHFULNESS_METRICS,
    FAMILIES,
    HPARAMS_PREFIX,
    NO_METHOD,
    OPT_IN_FAMILIES,
    QUALITY_METRICS,
    RANDOMIZATION_CASCADE,
    RANDOMIZATION_METRICS,
    REFERENCE_FAMILIES,
    STAGES,
    MetricKey,
    above_chance,
    chance,
    chance_same_class,
    figure_tag,
    image_tag,
    randomization_metric,
)
from .statistics import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    Estimate,
    ProbeStatistic,
    Transformed,
    bootstrap_counts,
    estimate,
    estimate_all,
    t_quantile,
)
from .summary import Headline, format_headline, headline

__all__ = [
    "AGREEMENT_METRICS",
    "BOOTSTRAP_RESAMPLES",
    "CHANCE_DRAWS",
    "CONFIDENCE",
    "CSV_FIELDS",
    "CSV_NAME",
    "DEFAULT_FAMILIES",
    "FAITHFULNESS_METRICS",
    "FAMILIES",
    "HPARAMS_PREFIX",
    "LEGACY_CSV_FIELDS",
    "METHODS_NAME",
    "MPRT_VARIANT_METRICS",
    "NORM_LAYERS",
    "NO_METHOD",
    "OPT_IN_FAMILIES",
    "QUALITY_METRICS",
    "RANDOMIZATION_CASCADE",
    "RANDOMIZATION_METRICS",
    "REFERENCE_FAMILIES",
    "STAGES",
    "ChancePairing",
    "EpochEvaluation",
    "Estimate",
    "Headline",
    "MapStack",
    "MegeReco",
    "MetricKey",
    "PredictionChance",
    "ProbeLayout",
    "ProbeStatistic",
    "RunRecord",
    "Transformed",
    "above_chance",
    "agreement_values",
    "bootstrap_counts",
    "cascade_copies",
    "cascade_depths",
    "chance",
    "chance_same_class",
    "choose_epoch",
    "compute_maps",
    "compute_pixel_maps",
    "csv_row",
    "default_reinit",
    "discrete_entropy",
    "drift",
    "entropy_rise",
    "epoch_rows",
    "estimate",
    "estimate_all",
    "evaluate_epoch",
    "faithfulness_statistics",
    "faithfulness_values",
    "family_statistics",
    "figure_tag",
    "format_headline",
    "gap_reduction",
    "group_maps",
    "headline",
    "image_tag",
    "interpretation_gap",
    "interpretation_loss",
    "leave_one_out_reference",
    "mege_reco_statistics",
    "model_logits",
    "nonfinite_key",
    "pairwise_agreement",
    "parse_csv_row",
    "prediction_agreement",
    "predictions",
    "quality",
    "randomization_layers",
    "randomization_metric",
    "randomization_statistics",
    "randomization_values",
    "randomized_copies",
    "read_csv",
    "read_methods",
    "read_settings",
    "smooth_randomization_values",
    "smoothed_maps",
    "split_statistics",
    "ssim_window",
    "t_quantile",
]

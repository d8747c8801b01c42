"""The built-in agreement metrics split into a per-map part and a row-by-row comparison
(issue 21): ``metric(a, b) == compare(features(a), features(b))``, so that comparing many
pairs of rows of the same maps (the model pairs and the chance draws of an epoch) ranks,
sorts, scales and filters each map once instead of once per pair and draw.

The parameters are read as the built-in declarations (:mod:`._builtin_metrics`) pass them;
``tests/test_metrics.py`` checks every built-in metric against its declared function.

>>> import torch
>>> from lightning_saliency.metrics.registry import MetricSpec
>>> a, b = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
>>> p = prepared_metric(MetricSpec("spearman"), torch.float32)
>>> torch.equal(p.compare(p.features(a), p.features(b)), MetricSpec("spearman")(a, b))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_saliency.metrics._agreement import (
    RowFeatures,
    l2_compare,
    l2_features,
    spearman_compare,
    spearman_features,
    topk_compare,
    topk_features,
)
from lightning_saliency.metrics._builtin_metrics import ssim_window
from lightning_saliency.metrics._ssim import ssim_compare, ssim_features
from lightning_saliency.metrics.registry import MetricSpec

__all__ = ["PreparedMetric", "RowFeatures", "prepared_metric"]


class PreparedMetric(NamedTuple):
    """A pair metric as ``compare(features(a), features(b))``."""

    features: Callable[[Tensor], RowFeatures]
    compare: Callable[[RowFeatures, RowFeatures], Tensor]


def prepared_metric(spec: MetricSpec, dtype: torch.dtype) -> PreparedMetric | None:
    """The built-in agreement metric ``spec`` computed in ``dtype``, split in two; None for
    a user-registered metric (it is called on each pair of batches as it is)."""
    info = spec.info
    if not info.builtin or info.family != "agreement":
        return None
    params = {**info.defaults, **spec.params}
    if spec.name == "l2":
        normalize = bool(params["normalize"])
        return PreparedMetric(lambda m: l2_features(m, dtype, normalize=normalize), l2_compare)
    if spec.name == "spearman":
        return PreparedMetric(lambda m: spearman_features(m, dtype), spearman_compare)
    if spec.name == "topk":
        k = params["k"]
        return PreparedMetric(lambda m: topk_features(m, dtype, k), topk_compare)
    if spec.name == "ssim":
        return PreparedMetric(
            lambda m: ssim_features(m, dtype, win_size=ssim_window(*m.shape[-2:])), ssim_compare
        )
    return None

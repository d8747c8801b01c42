"""Saliency methods, their chunked gradient primitive, super-pixel grouping and the registry.

Pure torch (+ scikit-image for segmentation; Captum only for ``"captum"`` specs); no
Lightning. Every method is ``method(model, x, target, **params) -> Tensor`` shaped like
``x`` (float32, detached). Add your own with :func:`register_method`; any Captum class is
the spec ``{"method": "captum", "attribution": "<Class>", ...}``.

>>> import torch
>>> from torch import nn
>>> from lightning_saliency.attribution import compute_attribution, smooth_grad
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
>>> x = torch.randn(2, 3, 2, 2)
>>> smooth_grad(net, x, torch.tensor([0, 2]), sigma=0.1, samples=4).shape
torch.Size([2, 3, 2, 2])
>>> compute_attribution({"method": "smooth_grad", "sigma": 0.1}, net, x, 0).shape
torch.Size([2, 3, 2, 2])
"""

from __future__ import annotations

from lightning_saliency.attribution._chunks import activation_memory
from lightning_saliency.attribution._core import forward_scores, input_gradients, path_nodes
from lightning_saliency.attribution._grad_cam import find_grad_cam_layer, grad_cam
from lightning_saliency.attribution._gradient_methods import (
    grad_x_input,
    integrated_gradients,
    simple_grad,
)
from lightning_saliency.attribution._guard import attribution_state
from lightning_saliency.attribution._smoothing import adapt_grad, adapt_sigma, smooth_grad, var_grad
from lightning_saliency.attribution.captum_adapter import captum_attribution
from lightning_saliency.attribution.fold import attribution_model, foldable_pairs
from lightning_saliency.attribution.outputs import as_logits, logits_outputs
from lightning_saliency.attribution.specs import (
    FrozenParams,
    MethodInfo,
    MethodSpec,
    adaptgrad_paper_specs,
    available_methods,
    compute_attribution,
    method_info,
    method_is_stochastic,
    method_needs_input_range,
    register_method,
    resolve_method,
    segmenter_args,
    spec_input_range,
    unregister_method,
)
from lightning_saliency.attribution.superpixels import (
    GROUP_REDUCTIONS,
    SEGMENTERS,
    default_segment_params,
    group_by_segments,
    segment,
)

__all__ = [
    "GROUP_REDUCTIONS",
    "SEGMENTERS",
    "FrozenParams",
    "MethodInfo",
    "MethodSpec",
    "activation_memory",
    "adapt_grad",
    "adapt_sigma",
    "adaptgrad_paper_specs",
    "as_logits",
    "attribution_model",
    "attribution_state",
    "available_methods",
    "captum_attribution",
    "compute_attribution",
    "default_segment_params",
    "find_grad_cam_layer",
    "foldable_pairs",
    "forward_scores",
    "grad_cam",
    "grad_x_input",
    "group_by_segments",
    "input_gradients",
    "integrated_gradients",
    "logits_outputs",
    "method_info",
    "method_is_stochastic",
    "method_needs_input_range",
    "path_nodes",
    "register_method",
    "resolve_method",
    "segment",
    "segmenter_args",
    "simple_grad",
    "smooth_grad",
    "spec_input_range",
    "unregister_method",
    "var_grad",
]

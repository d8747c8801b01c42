"""Gradient saliency methods on top of the chunked primitive :func:`input_gradients`.

Every method has the signature ``method(model, x, target, **params) -> Tensor`` and
returns a detached float32 map shaped like ``x`` (N, C, H, W) on x's device; ``target``
is a LongTensor (N,) of class indices or an int (same class for all). Gradients are of
the target logit (``output="logit"``) or log-softmax w.r.t. the input, in eval mode.
Common keyword arguments (see :mod:`._core` for the guarantees):

* ``output``: ``"logit"`` or ``"log_softmax"``;
* ``precision``: ``"32"`` or ``"bf16"`` (bf16 autocast of the forward, CPU and CUDA);
* ``channels_last``: channels-last input chunks (any device);
* ``batch_size``: max rows of the expanded batch (N x samples x steps) per chunk;
* ``memory_budget_mb``: derive the chunk size from a memory budget instead (default: a
  quarter of the free CUDA memory, 1024 MB on CPU), divided by the bytes the model keeps
  for backward per row (:func:`activation_memory`); on CPU chunks are also capped for
  cache locality (:func:`~._chunks.cpu_row_cap`).

For speed, pass :func:`~.fold.attribution_model`'s copy of the model (BatchNorm folded,
channels-last weights on CPU); the default path runs the model as given.

Definitions (``/DESIGN.md``): with f_c the target score and g = grad f_c,

* ``simple_grad`` = g(x); ``grad_x_input`` = x * g(x);
* ``integrated_gradients`` = (x - x0) * sum_t w_t g(x0 + a_t (x - x0));
* ``smooth_grad`` = mean_i B(x + z_i), z_i ~ N(0, s^2), B = base method (g, x*g or IG);
* ``var_grad`` = variance over i of g(x + z_i);
* ``adapt_grad`` = smooth_grad with per-element s_i = min(|x_i - x_min|, |x_i - x_max|) /
  (sqrt(2) erfinv(c));
* ``grad_cam`` = upsample(ReLU(sum_k alpha_k A_k)), alpha_k = spatial mean of d f_c / d A_k.
"""

from __future__ import annotations

from lightning_saliency.attribution._grad_cam import find_grad_cam_layer, grad_cam
from lightning_saliency.attribution._gradient_methods import (
    BASES as BASES,  # re-exported: the bases of smooth_grad/adapt_grad, and their types
)
from lightning_saliency.attribution._gradient_methods import (
    Base as Base,
)
from lightning_saliency.attribution._gradient_methods import (
    BaselineArg as BaselineArg,
)
from lightning_saliency.attribution._gradient_methods import (
    grad_x_input,
    integrated_gradients,
    simple_grad,
)
from lightning_saliency.attribution._smoothing import (
    adapt_grad,
    adapt_sigma,
    smooth_grad,
    var_grad,
)

__all__ = [
    "adapt_grad",
    "adapt_sigma",
    "find_grad_cam_layer",
    "grad_cam",
    "grad_x_input",
    "integrated_gradients",
    "simple_grad",
    "smooth_grad",
    "var_grad",
]

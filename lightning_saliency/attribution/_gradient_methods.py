"""The gradient family: simple gradient, gradient x input, Integrated Gradients; also the
bases and baselines the noise-based methods (``_smoothing.py``) build on, and the
conventions every built-in method follows (Grad-CAM in ``_grad_cam.py`` included).

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
  for backward per row (:func:`~._chunks.activation_memory`); on CPU chunks are also capped for
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

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_saliency.attribution._checks import (
    Output,
    Precision,
    Rule,
    check_choice,
    check_input_range,
)
from lightning_saliency.attribution._core import _expanded_pass, forward_scores, input_gradients

Base = Literal["grad", "grad_x_input", "integrated_gradients"]
BASES: tuple[str, ...] = ("grad", "grad_x_input", "integrated_gradients")
BaselineArg = float | Tensor | Literal["zero", "min", "max"] | None


# --------------------------------------------------------------------------- helpers
def _resolve_baseline(
    baseline: BaselineArg, input_range: tuple[float, float] | None
) -> float | Tensor | None:
    """None/"zero" -> 0; "min"/"max" -> x_min/x_max of input_range (black/white image)."""
    if isinstance(baseline, str):
        check_choice("baseline", baseline, ("zero", "min", "max"))
        if baseline == "zero":
            return None
        if input_range is None:
            raise ValueError(f'baseline="{baseline}" needs input_range=(x_min, x_max)')
        lo, hi = check_input_range(input_range)
        return lo if baseline == "min" else hi
    return baseline


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


# --------------------------------------------------------------------------- methods
def simple_grad(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """Plain gradient ``d f_c / d x``.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> m = simple_grad(net, torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 1]))
    >>> torch.allclose(m[0].flatten(), net[1].weight[0])
    True
    """
    return input_gradients(
        model,
        x,
        target,
        multiply_by_inputs=False,
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
    )


def grad_x_input(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """Gradient times input ``x * d f_c / d x``.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.randn(1, 1, 2, 2)
    >>> torch.allclose(grad_x_input(net, x, 1).flatten(), x.flatten() * net[1].weight[1])
    True
    """
    return input_gradients(
        model,
        x,
        target,
        multiply_by_inputs=True,
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
    )


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    steps: int = 16,
    baseline: BaselineArg = None,
    rule: Rule = "riemann",
    return_delta: bool = False,
    input_range: tuple[float, float] | None = None,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated Gradients ``(x - x0) * sum_t w_t g(x0 + a_t (x - x0))``.

    ``rule="riemann"``: right Riemann sum, a_t = t/m, w_t = 1/m (Captum's
    ``"riemann_right"``); ``"gauss_legendre"``: Gauss-Legendre quadrature on [0, 1]
    (Captum's ``"gausslegendre"``). ``baseline``: None/"zero" (0), a number, a tensor
    broadcastable to x, or "min"/"max" (x_min/x_max of ``input_range``: black/white image).
    ``return_delta=True`` also returns the completeness delta per sample,
    ``sum(IG) - (f_c(x) - f_c(x0))`` (N,).

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> maps, delta = integrated_gradients(net, torch.randn(2, 1, 2, 2), 0, return_delta=True)
    >>> bool(delta.abs().max() < 1e-5)
    True
    """
    _check_bool("return_delta", return_delta)
    base_value = _resolve_baseline(baseline, input_range)
    values = _expanded_pass(
        model,
        x,
        target,
        samples=1,
        noise_std=None,
        steps=steps,
        baseline=base_value,
        rule=rule,
        multiply_by_inputs=True,
        reduction="mean",
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
        generator=None,
        seed=None,
    )
    maps = values.float()
    if not return_delta:
        return maps
    if isinstance(base_value, Tensor):
        x0 = torch.broadcast_to(base_value.detach().to(device=x.device, dtype=x.dtype), x.shape)
    else:
        x0 = torch.full_like(x, 0.0 if base_value is None else float(base_value))
    kwargs: dict[str, Any] = dict(
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
    )
    fx = forward_scores(model, x, target, **kwargs)
    f0 = forward_scores(model, x0, target, **kwargs)
    delta = values.flatten(1).sum(1).to(fx.dtype) - (fx - f0)
    return maps, delta.float()

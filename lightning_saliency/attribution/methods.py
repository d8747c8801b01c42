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

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_saliency.attribution._core import (
    OUTPUTS,
    PRECISIONS,
    Output,
    Precision,
    Rule,
    _autocast,
    _expanded_pass,
    attribution_mode,
    check_choice,
    check_input,
    check_input_range,
    check_nonneg_float,
    check_output,
    check_target,
    chunk_rows,
    forward_scores,
    input_gradients,
    prepare_rows,
    select_scores,
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


def _resolve_sigma(
    sigma: float | None, noise_level: float | None, input_range: tuple[float, float] | None
) -> float:
    """Absolute noise std from ``sigma`` or ``noise_level * (x_max - x_min)``."""
    if sigma is not None and noise_level is not None:
        raise ValueError(f"give either sigma or noise_level, not both (got {sigma}, {noise_level})")
    if sigma is None and noise_level is None:
        raise ValueError(
            "give the noise scale: sigma (absolute std in input units, e.g. sigma=0.2) or "
            "noise_level (fraction of x_max - x_min, with input_range)"
        )
    if sigma is not None:
        return check_nonneg_float("sigma", sigma)
    level = check_nonneg_float("noise_level", noise_level)
    if input_range is None:
        raise ValueError(
            "noise_level needs input_range=(x_min, x_max) to turn it into an absolute sigma"
        )
    lo, hi = check_input_range(input_range)
    return level * (hi - lo)


def _check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise TypeError(f"confidence must be a number in (0, 1), got {confidence!r}")
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return c


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _smoothed(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    noise_std: float | Tensor,
    samples: int,
    base: str,
    steps: int,
    squared: bool,
    baseline: BaselineArg,
    rule: Rule,
    input_range: tuple[float, float] | None,
    output: Output,
    precision: Precision,
    channels_last: bool,
    batch_size: int | None,
    memory_budget_mb: float | None,
    generator: torch.Generator | None,
    seed: int | None,
) -> Tensor:
    check_choice("base", base, BASES)
    _check_bool("squared", squared)
    is_ig = base == "integrated_gradients"
    return _expanded_pass(
        model,
        x,
        target,
        samples=samples,
        noise_std=noise_std,
        steps=steps if is_ig else None,
        baseline=_resolve_baseline(baseline, input_range) if is_ig else None,
        rule=rule,
        multiply_by_inputs=base != "grad",
        reduction="mean_square" if squared else "mean",
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
        generator=generator,
        seed=seed,
    ).float()


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


def smooth_grad(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    sigma: float | None = None,
    noise_level: float | None = None,
    input_range: tuple[float, float] | None = None,
    samples: int = 16,
    base: Base = "grad",
    steps: int = 16,
    squared: bool = False,
    baseline: BaselineArg = None,
    rule: Rule = "riemann",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """SmoothGrad: ``mean_i B(x + z_i)``, ``z_i ~ N(0, s^2 I)``, over ``samples`` draws.

    ``s = sigma`` (absolute, input units) or ``s = noise_level * (x_max - x_min)`` with
    ``input_range=(x_min, x_max)``. ``base`` B: ``"grad"`` (g at the noisy point),
    ``"grad_x_input"`` (x_noisy * g(x_noisy), as Captum's NoiseTunnel over
    InputXGradient) or ``"integrated_gradients"`` (IG of the noisy point from the fixed
    baseline, ``steps``/``rule``/``baseline`` as in :func:`integrated_gradients`).
    ``squared=True`` averages the squared values. ``sigma=0`` is exactly the base method
    (no noise is drawn). Noise comes from ``generator`` or a new generator seeded with
    ``seed`` (0 when neither is given), never from the global RNG.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.randn(2, 1, 2, 2)
    >>> torch.equal(smooth_grad(net, x, 0, sigma=0.0), simple_grad(net, x, 0))
    True
    """
    s = _resolve_sigma(sigma, noise_level, input_range)
    return _smoothed(
        model,
        x,
        target,
        noise_std=s,
        samples=samples,
        base=base,
        steps=steps,
        squared=squared,
        baseline=baseline,
        rule=rule,
        input_range=input_range,
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
        generator=generator,
        seed=seed,
    )


def var_grad(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    sigma: float | None = None,
    noise_level: float | None = None,
    input_range: tuple[float, float] | None = None,
    samples: int = 16,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """VarGrad: the (population) variance over draws of ``g(x + z_i)``, z_i as in smooth_grad.

    Matches Captum's ``NoiseTunnel(..., nt_type="vargrad")`` (mean of squares minus square
    of the mean), computed with a numerically stable streaming update.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> float(var_grad(net, torch.randn(1, 1, 2, 2), 0, sigma=0.5).abs().max()) < 1e-10
    True
    """
    s = _resolve_sigma(sigma, noise_level, input_range)
    return _expanded_pass(
        model,
        x,
        target,
        samples=samples,
        noise_std=s,
        steps=None,
        baseline=None,
        rule="riemann",
        multiply_by_inputs=False,
        reduction="var",
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
        generator=generator,
        seed=seed,
    ).float()


def adapt_sigma(x: Tensor, input_range: tuple[float, float], confidence: float = 0.95) -> Tensor:
    """AdaptGrad's per-element noise std ``min(|x - x_min|, |x - x_max|) / (sqrt(2) erfinv(c))``.

    With this std, P(|z_i| <= distance to the nearer bound) = c (the AdaptGrad authors'
    code; the paper's Eq. 13 prints erfinv((1 + c) / 2), which would give a two-sided
    probability of 2 Phi(...) - 1 != c). Zero at the bounds. Same dtype as x.

    >>> s = adapt_sigma(torch.tensor([0.0, 0.25, 0.5, 1.0]), (0.0, 1.0), 0.5)
    >>> [round(v, 3) for v in s.tolist()]
    [0.0, 0.371, 0.741, 0.0]
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating point tensor")
    lo, hi = check_input_range(input_range)
    c = _check_confidence(confidence)
    scale = math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(c, dtype=torch.float64)))
    return torch.minimum((x - lo).abs(), (x - hi).abs()) / scale


def adapt_grad(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    confidence: float = 0.95,
    input_range: tuple[float, float] | None = None,
    samples: int = 16,
    base: Base = "grad",
    steps: int = 16,
    squared: bool = False,
    baseline: BaselineArg = None,
    rule: Rule = "riemann",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """AdaptGrad: smooth_grad with per-element noise std :func:`adapt_sigma` (required range).

    ``input_range=(x_min, x_max)`` are dataset-level bounds of the (normalized) input
    space; elements at a bound get no noise. ``base``, ``squared``, ``steps``, ``rule``,
    ``baseline``, ``generator`` and ``seed`` as in :func:`smooth_grad`.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.rand(2, 1, 2, 2)
    >>> m = adapt_grad(net, x, 0, input_range=(0.0, 1.0))
    >>> torch.allclose(m, simple_grad(net, x, 0))  # a linear model: any noise averages out
    True
    """
    if input_range is None:
        raise ValueError(
            "adapt_grad needs input_range=(x_min, x_max), the bounds of the input space"
        )
    check_input(x)
    std = adapt_sigma(x.detach(), input_range, confidence)
    return _smoothed(
        model,
        x,
        target,
        noise_std=std,
        samples=samples,
        base=base,
        steps=steps,
        squared=squared,
        baseline=baseline,
        rule=rule,
        input_range=input_range,
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
        generator=generator,
        seed=seed,
    )


# --------------------------------------------------------------------------- Grad-CAM
def _module_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")


def _trace_modules(
    model: nn.Module, x: Tensor
) -> tuple[dict[str, int], dict[str, tuple], list[str], list[str]]:
    """One dry forward on x[:1]: call counts, last output shapes, Conv2d call order, and the
    order in which modules finished."""
    calls: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    conv_order: list[str] = []
    finished: list[str] = []
    handles = []

    def make_hook(name: str, is_conv: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(out.shape) if isinstance(out, Tensor) else ()
            finished.append(name)
            if is_conv:
                conv_order.append(name)

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(
                module.register_forward_hook(make_hook(name, isinstance(module, nn.Conv2d)))
            )
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return calls, shapes, conv_order, finished


def find_grad_cam_layer(model: nn.Module, x: Tensor) -> str:
    """Dotted name of the layer Grad-CAM uses by default.

    Rule: take the last ``nn.Conv2d`` executed in a forward pass of ``x[:1]``; among its
    ancestors (outermost first, the model itself excluded) and itself, pick the outermost
    module that is called once and returns a 4-D tensor with more than one spatial
    position; if none has more than one, the outermost 4-D one. For a torchvision/timm
    ResNet this is ``"layer4"``; for ``nn.Sequential(conv, relu, ..., conv, ...)`` it is the
    last conv itself; for a model wrapping a backbone (``self.model = resnet``) it is
    ``"model.layer4"``.

    A token model (ViT, Mixer: the last convolution is the patch embedding, and the modules
    after it output ``(N, tokens, dim)`` sequences) gets the last such module, called once
    (normalization layers aside), whose patch tokens the output still depends on: for a
    global-average-pooled model its last block, for a class-token ViT the block before the
    last (the last block's patch tokens never reach the class token). :func:`grad_cam`
    reshapes it to the patch grid. Never the patch embedding.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    >>> find_grad_cam_layer(net, torch.zeros(1, 1, 5, 5))
    '0'
    """
    check_input(x)
    with attribution_mode(model):
        calls, shapes, conv_order, finished = _trace_modules(model, x.detach().clone())
    if not conv_order:
        raise ValueError(
            "grad_cam found no nn.Conv2d in the model's forward pass; pass layer= "
            "(a submodule or its dotted name) whose output is a 4-D feature map"
        )
    tokens = _token_layers(model, conv_order[-1], calls, shapes, finished)
    if tokens:
        return _last_with_patch_gradient(model, x.detach()[:1].clone(), tokens)
    parts = conv_order[-1].split(".")
    chain = [".".join(parts[: i + 1]) for i in range(len(parts))]
    spatial = [n for n in chain if calls.get(n) == 1 and len(shapes.get(n, ())) == 4]
    for name in spatial:
        if shapes[name][2] * shapes[name][3] > 1:
            return name
    return spatial[0] if spatial else conv_order[-1]


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.Identity, nn.Dropout)


def _token_layers(model: nn.Module, last_conv: str, calls: dict[str, int],
                  shapes: dict[str, tuple], finished: list[str]) -> list[str]:  # fmt: skip
    """Token-sequence layers after a patch-embedding convolution, in finishing order."""
    conv_shape = shapes.get(last_conv, ())
    if len(conv_shape) != 4:
        return []
    grid = conv_shape[2] * conv_shape[3]
    after = finished[finished.index(last_conv) + 1 :]
    parents = {n: model.get_submodule(n.rpartition(".")[0]) if "." in n else model for n in after}
    seqs = [n for n in after if calls.get(n) == 1 and len(shapes.get(n, ())) == 3
            and grid <= shapes[n][1] <= grid + _MAX_PREFIX_TOKENS
            and isinstance(parents[n], (nn.Sequential, nn.ModuleList))  # a block of a stack
            and not isinstance(model.get_submodule(n), _NORMS)]  # fmt: skip
    return seqs if len(seqs) >= 2 else []  # a convnet: a lone reshape after its last conv


def _last_with_patch_gradient(model: nn.Module, x: Tensor, names: list[str]) -> str:
    """The last of ``names`` whose patch tokens the model's top logit depends on (the last of
    them all when no gradient reaches any, as with a zero-initialized head)."""
    acts: dict[str, Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: acts.__setitem__(n, o)) for n in names]  # fmt: skip
    try:
        with attribution_mode(model), torch.enable_grad():
            out = model(x.requires_grad_(True))
            score = out.max(dim=1).values.sum() if isinstance(out, Tensor) else None
            if score is None:
                raise TypeError(f"the model returned a {type(out).__name__}, not logits")
            grads = torch.autograd.grad(score, [acts[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    for name, g in zip(reversed(names), reversed(grads), strict=True):
        grid = _tokens_to_grid(acts[name].detach(), x.shape[-2], x.shape[-1])
        patches = grid.shape[-2] * grid.shape[-1]
        if g is not None and bool(g[:, -patches:].abs().sum() > 0):
            return name
    return names[-1]  # no gradient anywhere (e.g. a zero-initialized head): the last block


#: Class / distillation / register tokens a ViT may put before its patch tokens.
_MAX_PREFIX_TOKENS = 16


def _tokens_to_grid(act: Tensor, h: int, w: int) -> Tensor:
    """``(N, T, D)`` tokens -> ``(N, D, gh, gw)`` patch grid (prefix tokens dropped), with
    ``gh x gw`` (at least 2 x 2) the patch grid of an ``h x w`` input (same aspect ratio)."""
    n, t, d = act.shape
    for prefix in range(0, min(_MAX_PREFIX_TOKENS, t - 4) + 1):  # at least a 2 x 2 grid
        patches = t - prefix
        gh = round(math.sqrt(patches * h / w))
        if gh > 0 and patches % gh == 0 and abs(patches // gh / gh - w / h) < 1e-6 + 0.5 / gh:
            return act[:, prefix:].transpose(1, 2).reshape(n, d, gh, patches // gh)
    raise ValueError(
        f"the grad_cam layer outputs {t} tokens, which do not make a patch grid of a "
        f"{h}x{w} input with up to {_MAX_PREFIX_TOKENS} prefix tokens; pass layer= naming a "
        "feature map (N, C, H, W)"
    )


def _resolve_layer(model: nn.Module, layer: nn.Module | str | None, x: Tensor) -> nn.Module:
    if layer is None:
        return model.get_submodule(find_grad_cam_layer(model, x))
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(f"the model has no submodule named {layer!r}") from err
    if isinstance(layer, nn.Module):
        _module_name(model, layer)
        return layer
    raise TypeError(
        f"layer must be an nn.Module, a dotted name or None, got {type(layer).__name__}"
    )


def _check_not_folded(model: nn.Module, module: nn.Module) -> None:
    """A convolution with BatchNorm folded into it outputs what the BN did: not its own A."""
    folded = {conv for conv, _ in getattr(model, "folded_batchnorm", ())}
    if folded and (name := _module_name(model, module)) in folded:
        raise ValueError(
            f"the grad_cam layer {name!r} is a convolution with BatchNorm folded into it "
            "(attribution_model); its output is the BN's, not the convolution's: build the "
            f"copy with attribution_model(model, keep=[{name!r}]) or use the model itself"
        )


def grad_cam(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    layer: nn.Module | str | None = None,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """Grad-CAM: ``upsample(ReLU(sum_k alpha_k A_k))``, alpha_k = spatial mean of d f_c/dA_k.

    ``A`` is the 4-D output of ``layer`` (a submodule, its dotted name, or None for
    :func:`find_grad_cam_layer`), or its ``(N, tokens, dim)`` output reshaped to the patch
    grid for a token model (prefix tokens such as a class token dropped); the map is upsampled bilinearly to x's H x W
    (``align_corners=False``, as Captum's ``LayerAttribution.interpolate``) and repeated
    over x's channels, so it is shaped like x. The layer must be called once per forward
    and its output must not be modified in place afterwards (e.g. by ``ReLU(inplace=True)``).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))
    >>> grad_cam(net, torch.randn(2, 1, 4, 4), 0).shape
    torch.Size([2, 1, 4, 4])
    """
    check_input(x)
    check_choice("output", output, OUTPUTS)
    check_choice("precision", precision, PRECISIONS)
    n, c, h, w = x.shape
    with attribution_mode(model):
        xd = x.detach().clone()
        tgt = check_target(target, n, x.device)
        tmax = int(tgt.max())
        chunk = chunk_rows(model, xd, batch_size, memory_budget_mb, precision, channels_last)
        module = _resolve_layer(model, layer, xd)
        _check_not_folded(model, module)
        acc_dtype = torch.promote_types(x.dtype, torch.float32)
        parts = []
        for c0 in range(0, n, chunk):
            # requires grad: keeps A in the graph even if all parameters are frozen
            rows = prepare_rows(xd[c0 : c0 + chunk], channels_last)
            captured: list[object] = []
            handle = module.register_forward_hook(lambda m, a, o, store=captured: store.append(o))
            try:
                with _autocast(precision, rows.device):
                    out = model(rows)
            finally:
                handle.remove()
            if len(captured) != 1:
                raise ValueError(
                    f"the grad_cam layer must be called exactly once per forward, "
                    f"it was called {len(captured)} times"
                )
            act = captured[0]
            if not isinstance(act, Tensor) or act.ndim not in (3, 4):
                shape = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
                raise ValueError(
                    "the grad_cam layer must output a 4-D feature map (N, K, h, w) or a token "
                    f"sequence (N, tokens, dim), got {shape}"
                )
            tg = tgt[c0 : c0 + chunk]
            check_output(out, rows.shape[0], tmax)
            scores = select_scores(out, tg, output)
            if not scores.requires_grad or not act.requires_grad:
                raise RuntimeError("the model output does not depend differentiably on the layer")
            (d_act,) = torch.autograd.grad(scores.sum(), inputs=[act], allow_unused=True)
            a32 = act.detach().to(acc_dtype)
            d32 = torch.zeros_like(a32) if d_act is None else d_act.to(acc_dtype)
            if a32.ndim == 3:  # tokens (ViT, Mixer): the patch grid
                a32, d32 = _tokens_to_grid(a32, h, w), _tokens_to_grid(d32, h, w)
            alpha = d32.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((alpha * a32).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
            finite = torch.isfinite(a32.flatten(1)).all(1) & torch.isfinite(d32.flatten(1)).all(1)
            parts.append(torch.where(finite.view(-1, 1, 1, 1), cam, float("nan")))
        cams = torch.cat(parts).float()
        bad = ~torch.isfinite(cams.flatten(1)).all(1)
        n_bad = int(bad.sum())
        if n_bad:
            warnings.warn(
                f"{n_bad} of {n} samples produced non-finite (NaN/inf) Grad-CAM values; "
                "their maps are set to NaN",
                RuntimeWarning,
                stacklevel=2,
            )
            cams[bad] = float("nan")
    return cams.expand(n, c, h, w).contiguous().detach()

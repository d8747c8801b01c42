"""Noise-based methods: SmoothGrad, VarGrad and AdaptGrad (with its noise std).

Part of :mod:`lightning_saliency.attribution.methods` (signature and keywords are stated
there).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from lightning_saliency.attribution._checks import (
    Output,
    Precision,
    Rule,
    check_choice,
    check_input,
    check_input_range,
    check_nonneg_float,
)
from lightning_saliency.attribution._core import _expanded_pass
from lightning_saliency.attribution._gradient_methods import (
    BASES,
    Base,
    BaselineArg,
    _check_bool,
    _resolve_baseline,
)


# --------------------------------------------------------------------------- helpers
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


def _finite_draw_mean(values: Tensor, squared: bool) -> Tensor:
    """Mean over dim 1 (the draws) of the draws whose values are all finite.

    A draw with any non-finite value is dropped, as the AdaptGrad authors' ``saliency.py``
    does; a sample with no finite draw gets a NaN map. A ``RuntimeWarning`` counts the drops.

    >>> v = torch.tensor([[[1.0], [3.0], [float("nan")]]])
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     _finite_draw_mean(v, squared=False).tolist()
    [[2.0]]
    """
    ok = torch.isfinite(values.flatten(2)).all(2)  # (N, draws)
    keep = ok.view(*ok.shape, *([1] * (values.dim() - 2)))
    v = values.square() if squared else values
    total = torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device)).sum(1)
    count = ok.sum(1).to(v.dtype).view(-1, *([1] * (values.dim() - 2)))
    dropped = int((~ok).sum())
    if dropped:
        empty = int((count.flatten() == 0).sum())
        warnings.warn(
            f"{dropped} of {ok.numel()} gradient draws were not finite and were dropped from "
            f"the average; {empty} of {ok.shape[0]} samples had no finite draw (NaN maps)",
            RuntimeWarning,
            stacklevel=4,
        )
    return total / count


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
    include_clean: bool = False,
) -> Tensor:
    check_choice("base", base, BASES)
    _check_bool("squared", squared)
    _check_bool("include_clean", include_clean)
    is_ig = base == "integrated_gradients"
    common: dict[str, Any] = dict(
        steps=steps if is_ig else None,
        baseline=_resolve_baseline(baseline, input_range) if is_ig else None,
        rule=rule,
        multiply_by_inputs=base != "grad",
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
    )
    if not include_clean:
        return _expanded_pass(
            model,
            x,
            target,
            samples=samples,
            noise_std=noise_std,
            reduction="mean_square" if squared else "mean",
            generator=generator,
            seed=seed,
            **common,
        ).float()
    # the authors' n + 1 average: the clean input's value, then the n noisy draws (the same
    # draws as the default), each draw kept as it is so that a non-finite one can be dropped
    clean = _expanded_pass(
        model, x, target, samples=1, noise_std=None, reduction="none",
        generator=None, seed=0, keep_nonfinite=True, **common,
    )  # fmt: skip
    noisy = _expanded_pass(
        model, x, target, samples=samples, noise_std=noise_std, reduction="none",
        generator=generator, seed=seed, keep_nonfinite=True, **common,
    )  # fmt: skip
    return _finite_draw_mean(torch.cat([clean, noisy], dim=1), squared).float()


# --------------------------------------------------------------------------- methods
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

    >>> from lightning_saliency.attribution import simple_grad
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
    include_clean: bool = False,
) -> Tensor:
    """AdaptGrad: smooth_grad with per-element noise std :func:`adapt_sigma` (required range).

    ``input_range=(x_min, x_max)`` are dataset-level bounds of the (normalized) input
    space; elements at a bound get no noise. ``base``, ``squared``, ``steps``, ``rule``,
    ``baseline``, ``generator`` and ``seed`` as in :func:`smooth_grad`.

    ``include_clean=True`` is the authors' variant (AiShare-WHU/AdaptGrad, ``saliency.py``):
    the average of n + 1 values, the clean input's ``B(x)`` and the ``samples`` noisy ones
    (the same draws as the default), and a draw with any non-finite value is dropped from
    the average (counted in a ``RuntimeWarning``) instead of making the map NaN. It keeps
    every draw in memory until the average (``samples + 1`` maps per input).

    >>> from lightning_saliency.attribution import simple_grad
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
        include_clean=include_clean,
    )

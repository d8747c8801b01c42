"""Spectral normalization of Conv/Linear layers and the spectral capacity terms of paper 000.

``apply_spectral_norm(model, c)`` makes every ``nn.Linear`` / ``nn.Conv*d`` weight
``c * W / sigma_max(W)`` (torch's ``parametrizations.spectral_norm`` followed by a scale
parametrization). ``spectral_norms`` reads each layer's exact largest singular value of the
weight the forward pass uses, and ``capacity`` the product of the layer norms and the
capacity terms ``R_w`` (Theorem 1) and ``L_w`` (Theorem 2) of "generalization of gradient
interpretations" (paper 000, section 5).

Weights are viewed as matrices like torch's ``spectral_norm`` does: ``(out, -1)``, i.e. the
output dimension first (dim 1 for transposed convolutions) and everything else flattened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from lightning_saliency._compat import SpectralNormParametrization, set_spectral_vectors
from lightning_saliency._modes import eval_mode

__all__ = ["apply_spectral_norm", "capacity", "spectral_layers", "spectral_norms"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

_CAPACITY_KEYS = (
    "norm_product",
    "sum_prefix_products",
    "ratio_term",
    "L_w",
    "R_w",
    "log_norm_product",
    "log_L_w",
    "log_R_w",
)
"""The keys of :func:`capacity`'s result, in order."""


class _Scale(nn.Module):
    """Parametrization multiplying a tensor by a constant factor."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.factor

    def right_inverse(self, value: Tensor) -> Tensor:
        return value / self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def spectral_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(qualified_name, module)`` of every ``nn.Linear`` / ``nn.Conv*d`` of ``model``.

    The order is the module registration order, which this module takes as the layer order
    ``W_1, ..., W_L`` of the theorems (true for sequential nets such as the built-ins).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    >>> [name for name, _ in spectral_layers(net)]
    ['0', '3']
    """
    layers: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            weight = getattr(module, "weight", None)
            if weight is None:
                continue
            if isinstance(weight, nn.parameter.UninitializedParameter):
                raise ValueError(
                    f"layer {name!r} ({type(module).__name__}) has an uninitialized (lazy) "
                    "weight; run one forward pass before using spectral tools"
                )
            layers.append((name, module))
    return layers


def _weight_matrix(module: nn.Module, weight: Tensor) -> Tensor:
    """View a weight as the ``(out, -1)`` matrix torch's ``spectral_norm`` uses."""
    if isinstance(module, _TRANSPOSED):
        weight = weight.transpose(0, 1)
    return weight.reshape(weight.shape[0], -1)


def _weight_parametrizations(module: nn.Module) -> parametrize.ParametrizationList:
    """``module.parametrizations["weight"]`` of a module whose weight is parametrized."""
    plists = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, plists["weight"])


def _has_spectral_norm(module: nn.Module) -> bool:
    if not parametrize.is_parametrized(module, "weight"):
        return False
    return any(isinstance(p, SpectralNormParametrization) for p in _weight_parametrizations(module))


def apply_spectral_norm(model: nn.Module, factor: float, n_power_iterations: int = 1) -> nn.Module:
    """Make every Conv/Linear weight ``factor * W / sigma_max(W)`` (in place; returns ``model``).

    Uses ``torch.nn.utils.parametrizations.spectral_norm`` (power iteration, one step per
    train-mode forward or train-mode read of ``.weight``) plus a scale parametrization. The
    power-iteration vectors ``u, v`` are initialised to the exact top singular vectors (an
    SVD), so the effective largest singular value equals ``factor`` at registration (up to
    float precision); during training it tracks the changing weight by power iteration.

    Registration draws ``u, v`` from the global RNG inside torch; this function runs it under
    a forked RNG, so the global RNG state is left unchanged. Still, apply it after all models
    are initialized (as ``DisjointEnsemble`` does).

    Args:
        model: any module; every ``nn.Linear`` and ``nn.Conv{1,2,3}d`` /
            ``nn.ConvTranspose{1,2,3}d`` inside it is normalized. Other layers (BatchNorm,
            LayerNorm, ``nn.MultiheadAttention.in_proj_weight``, ...) are left unchanged.
        factor: the target spectral norm ``c > 0`` of each layer's weight matrix.
        n_power_iterations: power-iteration steps per train-mode forward.

    >>> torch.manual_seed(0) and None
    >>> net = apply_spectral_norm(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), 0.5)
    >>> [round(v, 4) for v in spectral_norms(net).values()]
    [0.5, 0.5]
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise TypeError(f"factor must be a positive float, got {type(factor).__name__}")
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"spectral norm factor must be a finite number > 0, got {factor}")
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int):
        raise TypeError(f"n_power_iterations must be an int, got {n_power_iterations!r}")
    if n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
    layers = spectral_layers(model)
    for name, module in layers:
        if _has_spectral_norm(module):
            raise ValueError(f"layer {name!r} already has spectral normalization")
    devices = sorted(
        {p.device.index or 0 for _, m in layers for p in m.parameters() if p.device.type == "cuda"}
    )
    with torch.random.fork_rng(devices=devices):
        for _, module in layers:
            dim = 1 if isinstance(module, _TRANSPOSED) else 0
            spectral_norm(module, "weight", n_power_iterations=n_power_iterations, dim=dim)
            parametrize.register_parametrization(module, "weight", _Scale(factor))
    with torch.no_grad():
        for _, module in layers:
            sn = _weight_parametrizations(module)[0]
            w = _weight_matrix(module, _weight_parametrizations(module).original)
            u, s, vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
            # a few power-iteration steps from the exact vectors keep them at the fixed point
            exact = s[0] > 0
            set_spectral_vectors(sn, u[:, 0] if exact else None, vh[0].conj() if exact else None,
                                 w.detach())  # fmt: skip
    return model


def _layer_stats(model: nn.Module) -> list[tuple[str, float, float]]:
    """``(name, ||W||_2, ||W||_{2,1})`` of each layer's effective weight, read in eval mode.

    Both are NaN for a weight with a NaN or +-Inf element (the SVD is undefined there).
    """
    stats = []
    with torch.no_grad(), eval_mode(model):
        for name, module in spectral_layers(model):
            weight = cast(Tensor, module.weight)  # a Conv/Linear weight (spectral_layers)
            w = _weight_matrix(module, weight).detach().to(torch.float64)
            if not bool(torch.isfinite(w).all()):
                stats.append((name, math.nan, math.nan))
                continue
            sigma = float(torch.linalg.matrix_norm(w, ord=2))
            norm21 = float(torch.linalg.vector_norm(w, ord=2, dim=1).sum())
            stats.append((name, sigma, norm21))
    return stats


def spectral_norms(model: nn.Module) -> dict[str, float]:
    """Exact largest singular value of each Conv/Linear layer's effective weight.

    The effective weight is the one the forward pass uses (after any spectral-norm/scale
    parametrization), viewed as an ``(out, -1)`` matrix. It is read in eval mode so no
    power-iteration step runs; every submodule's ``training`` flag is restored afterwards.
    A layer whose weight holds a NaN or +-Inf gets NaN.

    >>> net = nn.Linear(3, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))
    >>> spectral_norms(net)
    {'': 4.0}
    """
    return {name: sigma for name, sigma, _ in _layer_stats(model)}


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _safe_log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def capacity(model: nn.Module, gammas: float | Sequence[float] = 1.0) -> dict[str, float]:
    r"""Spectral capacity terms of Theorems 1 and 2 of paper 000 (section 5).

    With ``s_i = ||W_i||_2`` (largest singular value) and ``r_i = ||W_i||_{2,1}`` (sum of the
    L2 norms of the rows of ``W_i`` as an ``(out, -1)`` matrix) of the L Conv/Linear layers
    in registration order, and activation constants ``gamma_i``:

    * ``norm_product = prod_i s_i``
    * ``sum_prefix_products = sum_{i=1}^L prod_{j<=i} gamma_j s_j``
    * ``ratio_term = (sum_{i=1}^L (r_i / s_i)^{2/3})^{3/2}``
    * ``L_w = prod_i gamma_i s_i * ratio_term`` (Theorem 2, "spectral capacity"; the
      Bartlett et al. 2017 term with reference matrices 0)
    * ``R_w = sum_prefix_products * prod_i gamma_i s_i * ratio_term`` (Theorem 1,
      "interpretation capacity")

    and their natural logs ``log_norm_product``, ``log_R_w``, ``log_L_w`` (finite even when
    the products overflow float64). Weights are the effective ones, read in eval mode. Only
    Conv/Linear layers count (BatchNorm/LayerNorm scales are not part of eq. 7's model).
    A zero layer counts ``r_i / s_i = 0``. Every term is NaN when any layer's weight holds a
    NaN or +-Inf (e.g. a diverged model), never a number computed from the other layers.

    Args:
        model: the network.
        gammas: the activation constants ``gamma_i`` (Lipschitz/smoothness bounds): one
            float for every layer (default 1, as for ReLU-like activations) or one per layer.

    >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    ...     _ = net[2].weight.copy_(torch.tensor([[3.0, 4.0]]))
    >>> c = capacity(net)  # s = (2, 5), r = (3, 5)
    >>> round(c["norm_product"], 6), round(c["L_w"], 4), round(c["R_w"], 4)
    (10.0, 35.1174, 421.4089)
    """
    stats = _layer_stats(model)
    n = len(stats)
    if n == 0:
        raise ValueError(f"model {type(model).__name__} has no Conv/Linear layer")
    if isinstance(gammas, bool):  # not a float here (iterating it raised this TypeError)
        raise TypeError(f"gammas must be a float or a sequence of floats, got {gammas!r}")
    if isinstance(gammas, (int, float)):
        gamma_list = [float(gammas)] * n
    else:
        gamma_list = [float(g) for g in gammas]
        if len(gamma_list) != n:
            raise ValueError(
                f"gammas must be a float or have one value per Conv/Linear layer ({n}), "
                f"got {len(gamma_list)} values"
            )
    if any(not math.isfinite(g) or g < 0 for g in gamma_list):
        raise ValueError(f"gammas must be finite and >= 0, got {gamma_list}")
    if any(math.isnan(s) or math.isnan(r) for _, s, r in stats):
        return dict.fromkeys(_CAPACITY_KEYS, math.nan)

    sigmas = [s for _, s, _ in stats]
    ratio_sum = sum((r / s) ** (2.0 / 3.0) if s > 0 else 0.0 for _, s, r in stats)
    log_ratio_term = 1.5 * _safe_log(ratio_sum)
    log_sigmas = [_safe_log(s) for s in sigmas]
    log_gs = [_safe_log(g) + ls for g, ls in zip(gamma_list, log_sigmas, strict=True)]
    log_norm_product = sum(log_sigmas)
    log_gamma_product = sum(log_gs)
    # prefix products in the log domain, summed with logsumexp
    prefix, logs = 0.0, []
    for lg in log_gs:
        prefix += lg
        logs.append(prefix)
    finite = [v for v in logs if v != -math.inf]
    if finite:
        top = max(finite)
        log_prefix_sum = top + math.log(sum(math.exp(v - top) for v in finite))
    else:
        log_prefix_sum = -math.inf
    log_l = log_gamma_product + log_ratio_term
    log_r = log_prefix_sum + log_l
    values = (
        _safe_exp(log_norm_product),
        _safe_exp(log_prefix_sum),
        _safe_exp(log_ratio_term),
        _safe_exp(log_l),
        _safe_exp(log_r),
        log_norm_product,
        log_l,
        log_r,
    )
    return dict(zip(_CAPACITY_KEYS, values, strict=True))

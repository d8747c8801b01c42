"""Cascading model-parameter randomization (Adebayo et al. 2018), on copies of a model.

A *layer* is a module that holds weights of its own (its direct parameters, or the
unconstrained tensors of a ``torch.nn.utils.parametrize`` parametrization such as spectral
norm), in the order a forward pass first calls it: from the input (bottom) to the output
(top). Normalization layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm) are not
layers here: they keep their affine parameters and running statistics, so a randomized
convolution is followed by the original normalization (its running statistics no longer
match the new activations; the randomized model is still one fixed function in eval mode).

The cascade randomizes the top layers cumulatively, from the output down; a *level* names
how many: ``"top<n>"`` (the top n layers), ``"half"`` (the top ``ceil(L / 2)``) or ``"all"``
(every layer). :func:`randomized_copies` works on one ``deepcopy`` of the model, never on
the model itself, and draws the new weights from a dedicated CPU generator (never the global
RNG), layer by layer from the top, so the top layer gets the same weights whatever the levels
asked for. The default re-initialization is PyTorch's own default for Linear/Conv layers
(:func:`default_reinit`). A spectral-norm parametrization is kept: its power-iteration vectors
are set to the exact top singular vectors of the new weight, so the randomized layer has the
same spectral norm as before (``c`` of ``apply_spectral_norm``).

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
>>> [name for name, _ in randomization_layers(net, torch.zeros(2, 4))]
['0', '3']
>>> same = lambda a, b: bool(torch.equal(a.weight, b.weight))
>>> [(lv, same(c[3], net[3]), same(c[0], net[0]))  # top1: only the output layer is new
...  for lv, c in randomized_copies(net, torch.zeros(2, 4), ("top1", "all"), seed=0)]
[('top1', False, True), ('all', False, False)]
>>> bool(net[3].weight.requires_grad), net.training  # the model itself is untouched
(True, True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_saliency._modes import eval_mode

from .schema import RANDOMIZATION_CASCADE

__all__ = [
    "NORM_LAYERS",
    "Reinit",
    "cascade_copies",
    "cascade_depths",
    "default_reinit",
    "randomization_layers",
    "randomized_copies",
]

#: Layers the cascade leaves as they are (affine parameters and running statistics kept).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)  # fmt: skip

#: ``reinit(module, generator)`` gives a layer new weights in place (under ``no_grad``).
Reinit = Callable[[nn.Module, torch.Generator], None]


def _own_tensors(module: nn.Module) -> list[Tensor]:
    """The layer's weights: its direct parameters and its parametrizations' originals."""
    out: list[Tensor] = list(module.parameters(recurse=False))
    if parametrize.is_parametrized(module):
        for plist in cast(nn.ModuleDict, module.parametrizations).values():
            out.extend(plist.parameters(recurse=False))
    return out


def _is_layer(module: nn.Module) -> bool:
    if isinstance(module, (*NORM_LAYERS, parametrize.ParametrizationList)):
        return False  # a parametrization's tensors belong to the layer it parametrizes
    return bool(_own_tensors(module))


def randomization_layers(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer, bottom to top: the order in which one forward pass
    on ``x[:1]`` (eval mode, ``no_grad``) first calls them. Layers the forward never calls are
    left out; a model without any layer raises ``ValueError``."""
    names = {m: name for name, m in model.named_modules()}
    order: list[nn.Module] = []

    def first_call(module: nn.Module, _args: object) -> None:
        if all(module is not m for m in order):
            order.append(module)

    handles = [m.register_forward_pre_hook(first_call) for m in names if _is_layer(m)]
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("the model has no layer with weights to randomize")
    return [(names[m] or "<root>", m) for m in order]


def cascade_depths(cascade: Sequence[str], num_layers: int) -> list[int]:
    """How many top layers each level randomizes, for a model of ``num_layers`` layers.

    >>> cascade_depths(("top1", "half", "all"), 5)
    [1, 3, 5]
    """
    if not cascade:
        raise ValueError(f"cascade needs at least one level, e.g. {RANDOMIZATION_CASCADE}")
    out = []
    for level in cascade:
        if level == "all":
            out.append(num_layers)
        elif level == "half":
            out.append(math.ceil(num_layers / 2))
        elif isinstance(level, str) and level.startswith("top") and level[3:].isdigit():
            n = int(level[3:])
            if not 1 <= n <= num_layers:
                raise ValueError(f"cascade level {level!r}: the model has {num_layers} layers")
            out.append(n)
        else:
            raise ValueError(f"cascade levels are 'top<n>', 'half' or 'all'; got {level!r}")
    if len(set(cascade)) != len(cascade):
        raise ValueError(f"cascade levels repeat: {list(cascade)}")
    return out


@torch.no_grad()
def default_reinit(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear/Conv initialization, drawn from ``generator``: every weight
    tensor ``U(-b, b)`` with ``b = 1 / sqrt(fan_in)`` (``kaiming_uniform_(a=sqrt(5))``), where
    ``fan_in`` is ``size(1) * prod(size[2:])`` of the tensor, or, for a 1-D tensor (a bias), of
    the layer's first tensor with 2 or more dimensions (``b = 1`` if it has none).

    >>> lin = nn.Linear(16, 2)
    >>> default_reinit(lin, torch.Generator().manual_seed(0))
    >>> bool(lin.weight.abs().max() <= 0.25) and bool(lin.bias.abs().max() <= 0.25)
    True
    """
    tensors = _own_tensors(module)
    fans = [t.shape[1] * math.prod(t.shape[2:]) for t in tensors if t.dim() >= 2]
    for t in tensors:
        fan = t.shape[1] * math.prod(t.shape[2:]) if t.dim() >= 2 else (fans[0] if fans else 1)
        bound = 1.0 / math.sqrt(max(fan, 1))
        new = torch.empty(t.shape, dtype=torch.float64, device=generator.device)
        new.uniform_(-bound, bound, generator=generator)
        t.copy_(new.to(dtype=t.dtype))
    _resync_spectral_norm(module)


@torch.no_grad()
def _resync_spectral_norm(module: nn.Module) -> None:
    """Set torch's spectral-norm power-iteration vectors (``_u``, ``_v``, private to
    ``torch.nn.utils.parametrizations._SpectralNorm``) to the exact top singular vectors of the
    layer's new weight, so that its eval-mode sigma is exact (stale vectors would misjudge it)."""
    if not parametrize.is_parametrized(module):
        return
    for plist in cast(nn.ModuleDict, module.parametrizations).values():
        assert isinstance(plist, parametrize.ParametrizationList)  # what torch stores there
        weight = plist.original if hasattr(plist, "original") else None
        for p in plist:
            if weight is None:
                break
            if hasattr(p, "_u") and hasattr(p, "_v") and hasattr(p, "dim"):
                sn: Any = p  # torch's private _SpectralNorm, duck-typed by these attributes
                w = weight.detach().movedim(sn.dim, 0).flatten(1).to(torch.float64)
                u, s, vh = torch.linalg.svd(w, full_matrices=False)
                if s[0] > 0:
                    sn._u.copy_(u[:, 0].to(sn._u.dtype))
                    sn._v.copy_(vh[0].to(sn._v.dtype))
            weight = p(weight)


def randomized_copies(
    model: nn.Module,
    x: Tensor,
    cascade: Sequence[str] = RANDOMIZATION_CASCADE,
    *,
    seed: int = 0,
    reinit: Reinit | None = None,
) -> Iterator[tuple[str, nn.Module]]:
    """``(level, copy)`` for each level of ``cascade``, from the fewest layers to the most.

    One ``deepcopy`` of ``model`` (in eval mode, its parameters not requiring grad) is
    randomized cumulatively from the top, with new weights from ``reinit`` (default
    :func:`default_reinit`) and a CPU generator seeded with ``seed``; every level yields the
    same copy object, randomized up to that level, so use it before asking for the next.
    ``model`` is never changed (a LightningModule's copy drops its trainer reference).
    """
    for level, _, twin in cascade_copies(model, x, cascade, seed=seed, reinit=reinit):
        yield level, twin


def cascade_copies(
    model: nn.Module,
    x: Tensor,
    cascade: Sequence[str] = RANDOMIZATION_CASCADE,
    *,
    seed: int = 0,
    reinit: Reinit | None = None,
) -> Iterator[tuple[str, int, nn.Module]]:
    """:func:`randomized_copies` with each level's depth: ``(level, depth, copy)``."""
    twin = copy.deepcopy(model).eval().requires_grad_(False)
    layers = randomization_layers(twin, x)
    depths = cascade_depths(cascade, len(layers))
    gen = torch.Generator().manual_seed(int(seed))
    reinit = default_reinit if reinit is None else reinit
    done = 0
    for depth, level in sorted(zip(depths, cascade, strict=True), key=lambda d: d[0]):
        for _, layer in layers[len(layers) - depth : len(layers) - done][::-1]:
            with torch.no_grad():
                reinit(layer, gen)
        done = max(done, depth)
        yield level, depth, twin

"""An eval-mode copy of a model for attribution passes, with BatchNorm folded into its convolutions.

:func:`attribution_model` deep-copies a model (no parameter, buffer or submodule is shared with
the original, so training cannot change the copy and attribution cannot change the model),
puts the copy in eval mode with every parameter frozen (input gradients need no weight
gradients), bakes parametrizations such as spectral normalization into plain weights (their
eval-mode value), and folds every eval-mode ``BatchNorm2d`` that directly and only consumes a
``Conv2d``'s output into that convolution:

    W' = W * g / sqrt(v + eps),    b' = (b - m) * g / sqrt(v + eps) + beta

(g, beta: the BN's affine weight and bias; m, v: its running statistics), replacing the BN by
``nn.Identity`` so that module names stay the same (a Grad-CAM layer name still resolves).
A convolution-BN pair is found from the module graph of the forward pass (``torch.fx``
symbolic tracing: the BN's only input is the convolution's output and nothing else uses that
output), or, for models ``torch.fx`` cannot trace, from consecutive children of plain
``nn.Sequential`` containers. A BN is left as it is (in eval mode) when it does not use running
statistics, is called more than once, carries hooks, is a subclass with its own ``forward``
(e.g. timm's ``BatchNormAct2d``) or follows anything but a plain ``Conv2d`` called once.

Folding changes floating-point rounding only: maps agree with the unfolded model's to about
1e-5 relative in float32 (``tests/test_fold.py``). The input-gradient methods are linear in the
model, so this is the same map up to rounding, not an approximation. One exception: where
max-pooling meets exact ties (constant image regions, such as digits' background, give equal
activations), the rounding decides which tied input receives the gradient. Both maps are valid
subgradients, but one probe in a few dozen may then differ by a few percent from the unfolded
model's (``tests/test_callback.py``); pass ``fold_batchnorm=False`` for the model's own routing.

The copy is cheap to build (a deep copy and one symbolic trace, tens of milliseconds for a
ResNet-18): build one per monitored epoch rather than keeping it in sync with training.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

__all__ = ["attribution_model", "foldable_pairs"]

_BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)
#: Relative tolerance of the optional check of the copy's outputs against the model's.
CHECK_RTOL = 1e-3


def _has_hooks(m: nn.Module) -> bool:
    """Module-level forward or backward hooks (they could read or change the activations)."""
    return bool(
        m._forward_hooks
        or m._forward_pre_hooks
        or m._backward_hooks
        or getattr(m, "_backward_pre_hooks", None)
    )


def _plain_conv(m: nn.Module | None) -> bool:
    """A Conv2d whose forward is torch's own (parametrized classes keep it)."""
    return (
        isinstance(m, nn.Conv2d)
        and type(m).forward is nn.Conv2d.forward
        and type(m)._conv_forward is nn.Conv2d._conv_forward
        and not _has_hooks(m)
    )


def _foldable_bn(m: nn.Module | None) -> bool:
    """A BatchNorm2d with running statistics whose forward is torch's own, without hooks."""
    return (
        isinstance(m, _BN_TYPES)
        and type(m).forward in (_BatchNorm.forward, nn.SyncBatchNorm.forward)
        and m.track_running_stats
        and m.running_mean is not None
        and m.running_var is not None
        and not _has_hooks(m)
    )


def _pairs_from_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    """(conv, bn) names from a symbolic trace; None when the model cannot be traced."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any tracing failure: fall back to Sequential containers
        return None
    mods = dict(model.named_modules())
    calls: dict[object, int] = {}  # call_module target (a name) -> number of calls
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_bn(mods.get(node.target)):
            continue
        if len(node.args) != 1 or node.kwargs or calls[node.target] != 1:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        if calls.get(src.target) != 1 or len(src.users) != 1 or src.kwargs:
            continue
        if _plain_conv(mods.get(src.target)):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _pairs_from_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) names of consecutive children of plain ``nn.Sequential`` containers."""
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    pairs = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        if _has_hooks(seq):
            continue
        children = list(seq.named_children())
        for (cn, conv), (bn_name, bn) in itertools.pairwise(children):
            if _plain_conv(conv) and _foldable_bn(bn) and counts[id(conv)] == counts[id(bn)] == 1:
                prefix = f"{name}." if name else ""
                pairs.append((prefix + cn, prefix + bn_name))
    return pairs


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Dotted names ``(conv, batchnorm)`` of the pairs :func:`attribution_model` would fold.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    >>> foldable_pairs(net)
    [('0', '1')]
    """
    pairs = _pairs_from_fx(model)
    pairs = _pairs_from_sequentials(model) if pairs is None else pairs
    valid = []
    for conv_name, bn_name in pairs:
        # the names come from _plain_conv / _foldable_bn
        conv = cast(nn.Conv2d, model.get_submodule(conv_name))
        bn = cast(_BatchNorm, model.get_submodule(bn_name))
        if conv.out_channels == bn.num_features and conv.weight.is_floating_point():
            valid.append((conv_name, bn_name))
    return valid


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """Fold ``bn`` (eval mode) into ``conv``'s weight and bias, computed in float64."""
    w = conv.weight
    assert bn.running_mean is not None and bn.running_var is not None  # see _foldable_bn
    var = bn.running_var.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    new_w = (w.double() * scale.view(-1, *[1] * (w.ndim - 1))).to(w.dtype)
    conv.weight = nn.Parameter(new_w, requires_grad=False)
    conv.bias = nn.Parameter(shift.to(device=w.device, dtype=w.dtype), requires_grad=False)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _bake_parametrizations(model: nn.Module) -> None:
    """Replace every parametrized tensor by its current (eval-mode) value, as a plain parameter.

    Done by hand rather than with ``parametrize.remove_parametrizations``: that deletes the
    property from the module's injected class, which a deep copy shares with the original
    model (the original would lose its ``weight``).
    """
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        plists = cast(nn.ModuleDict, module.parametrizations)  # it is parametrized
        with torch.no_grad():
            values = {name: getattr(module, name).detach().clone() for name in plists}
        base = type(module).__bases__[0]  # parametrize injects class Parametrized<Cls>(Cls)
        del module._modules["parametrizations"]
        module.__class__ = base
        for name, value in values.items():
            module.register_parameter(name, nn.Parameter(value, requires_grad=False))


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _first_device(model: nn.Module) -> torch.device:
    for t in _tensors(model):
        return t.device
    return torch.device("cpu")


def _tensors(model: nn.Module) -> Iterator[Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def _check_copy(model: nn.Module, clone: nn.Module, example: Tensor) -> float:
    """Max |copy(x) - model(x)| / max |model(x)| in eval mode (the model's flags restored)."""
    from lightning_saliency._modes import eval_mode

    with eval_mode(model), torch.inference_mode(False), torch.no_grad():
        want = model(example.detach().clone()).float()
        got = clone(example.detach().clone()).float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _check_keep(model: nn.Module, keep: Sequence[str]) -> set[str]:
    if isinstance(keep, str) or not all(isinstance(k, str) for k in keep):
        raise TypeError(f"keep must be a sequence of dotted module names, got {keep!r}")
    names = dict(model.named_modules())
    unknown = sorted(set(keep) - set(names))
    if unknown:
        raise ValueError(f"keep names modules the model does not have: {unknown}")
    return set(keep)


def attribution_model(
    model: nn.Module,
    *,
    fold_batchnorm: bool = True,
    channels_last: bool | None = None,
    example: Tensor | None = None,
    keep: Sequence[str] = (),
) -> nn.Module:
    """An eval-mode, frozen deep copy of ``model`` for attribution passes (see the module doc).

    Args:
        model: the model to copy; it is not modified (its BN statistics, parametrizations,
            ``training`` flags and parameters stay as they are).
        fold_batchnorm: fold ``Conv2d -> BatchNorm2d`` pairs (see :func:`foldable_pairs`).
        channels_last: convert the copy's 4-D weights to channels-last memory format, which
            makes its convolutions run channels-last whatever the input's layout. ``None``:
            on when the model has a ``Conv2d`` and lives on the CPU (measured faster there,
            ``docs/benchmarks.md``); off on CUDA unless asked.
        example: a few input rows; if given, the copy's logits on them are compared with the
            model's (eval mode), and if they differ by more than ``CHECK_RTOL`` relative the
            folding is dropped with a warning (an unfolded copy is returned).
        keep: dotted names of convolutions whose own output must stay as in the model (a
            folded convolution outputs what its BN did); :func:`grad_cam` refuses a folded
            convolution as its layer, so name a Grad-CAM layer here if it is a convolution.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    >>> with torch.no_grad():
    ...     _ = net[1].running_mean.fill_(0.5)
    >>> copy_ = attribution_model(net)
    >>> type(copy_[1]).__name__, copy_.training, net.training, copy_[0].weight.requires_grad
    ('Identity', False, True, False)
    >>> x = torch.randn(2, 1, 4, 4)
    >>> bool(torch.allclose(copy_(x), net.eval()(x), atol=1e-6))
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(fold_batchnorm, bool):
        raise TypeError(f"fold_batchnorm must be a bool, got {fold_batchnorm!r}")
    if channels_last is not None and not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool or None, got {channels_last!r}")
    clone = copy.deepcopy(model)
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
        p.grad = None
    _bake_parametrizations(clone)
    kept = _check_keep(model, keep)
    folded = [p for p in foldable_pairs(clone) if p[0] not in kept] if fold_batchnorm else []
    for conv_name, bn_name in folded:
        conv = cast(nn.Conv2d, clone.get_submodule(conv_name))  # see foldable_pairs
        _fold(conv, cast(_BatchNorm, clone.get_submodule(bn_name)))
        _set_submodule(clone, bn_name, nn.Identity())
    if channels_last is None:
        channels_last = _has_conv(clone) and _first_device(clone).type == "cpu"
    if channels_last:
        clone = clone.to(memory_format=torch.channels_last)
    if example is not None and folded:
        err = _check_copy(model, clone, example)
        if not err <= CHECK_RTOL:
            warnings.warn(
                f"folding BatchNorm changed the model's outputs by {err:.2e} (relative); "
                "returning a copy without folding",
                RuntimeWarning,
                stacklevel=2,
            )
            return attribution_model(model, fold_batchnorm=False, channels_last=channels_last)
    clone.folded_batchnorm = tuple(folded)  # type: ignore[assignment]
    return clone

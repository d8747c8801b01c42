"""The guarantees of the built-ins, given to any registered method by running it guarded.

Inside :func:`attribution_state` the model is in eval mode with gradients enabled (also
under ``torch.inference_mode``), and afterwards every submodule's ``training`` flag and
every parameter's ``.grad`` are what they were: a method that calls ``backward()`` cannot
leak gradients into the next optimizer step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lightning_saliency.attribution._context import attribution_mode
from lightning_saliency.attribution.outputs import tensor_output_errors

__all__ = ["attribution_state", "check_maps", "guarded"]


@contextlib.contextmanager
def attribution_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients on; ``training`` flags and parameter ``.grad`` restored after;
    a failure on a model whose output is not a tensor gets the built-ins' message
    (:func:`~lightning_saliency.attribution.outputs.tensor_output_errors`).

    >>> net = nn.Linear(2, 1)
    >>> net.weight.grad = torch.ones(1, 2)
    >>> with attribution_state(net):
    ...     net(torch.full((1, 2), 2.0)).sum().backward()
    ...     net.training, net.weight.grad.tolist()
    (False, [[2.0, 2.0]])
    >>> net.training, net.weight.grad.tolist()
    (True, [[1.0, 1.0]])
    """
    params = list(model.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        with attribution_mode(model), tensor_output_errors(model):
            yield
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad


def check_maps(maps: object, x: Tensor, label: str) -> Tensor:
    """``maps`` as detached float32 shaped like ``x``, or a clear error naming the method."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"method {label!r} returned {type(maps).__name__}, not a Tensor")
    if maps.shape != x.shape:
        raise ValueError(
            f"method {label!r} returned maps of shape {tuple(maps.shape)}; they must be shaped "
            f"like the input {tuple(x.shape)}"
        )
    if not maps.is_floating_point():
        raise TypeError(f"method {label!r} returned {maps.dtype} maps, not floating point")
    return maps.detach().to(torch.float32)


def guarded(
    fn: Callable[..., Any], label: str, model: nn.Module, x: Tensor, target: Any, **kwargs: Any
) -> Tensor:
    """``fn(model, x, target, **kwargs)`` under :func:`attribution_state`, checked."""
    with attribution_state(model):
        if isinstance(x, Tensor) and x.is_inference():
            x = x.clone()
        maps = fn(model, x, target, **kwargs)
    return check_maps(maps, x, label)

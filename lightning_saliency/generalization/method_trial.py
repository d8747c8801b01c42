"""Try every method on one probe before training (issue 19, case 10).

A registered method returning the wrong shape, ``grad_cam`` on a model without a
convolution, or a Captum layer-name typo used to fail only after epoch 0 had trained.
:func:`try_methods` runs each method on one probe of each model at setup and raises one
``ValueError`` naming the method and what went wrong. Pure (no Lightning): the callback
calls it once from its setup, after checking the models' outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_saliency.attribution import MethodSpec

from .epoch import compute_pixel_maps

__all__ = ["try_methods"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def try_methods(
    models: Sequence[nn.Module],
    x: Tensor,
    target: Tensor,
    specs: Sequence[MethodSpec],
    *,
    input_range: tuple[float, float] | None = None,
) -> None:
    """Compute each spec's pixel maps of ``x[:1]`` with every model; the maps must have the
    probe's shape ``(C, H, W)`` (or one channel). ``ValueError`` naming the method otherwise.

    >>> import torch
    >>> from lightning_saliency.attribution import resolve_method
    >>> mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    >>> try_methods([mlp], x, y, [resolve_method("simple_grad")])
    >>> try_methods([mlp], x, y, [resolve_method("grad_cam")])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: method 'grad_cam' fails on one probe of model 0 before training: ...
    """
    x1, t1 = x[:1], target[:1]
    shape = tuple(x1.shape[1:])
    for spec in specs:
        for k, model in enumerate(models):
            try:
                maps = compute_pixel_maps([model], x1, t1, [spec], input_range=input_range)
            except Exception as err:  # a typo, a missing layer, a method's own error
                raise ValueError(
                    f"method {spec.label!r} fails on one probe of model {k} before training: "
                    f"{_first_line(err)}"
                ) from err
            (got,) = maps.values()
            got_shape = tuple(got.shape[2:])
            ok = got_shape == shape or (len(got_shape) == 3 and got_shape[0] == 1
                                        and got_shape[1:] == shape[1:])  # fmt: skip
            if got.shape[:2] != torch.Size([1, 1]) or not ok:
                raise ValueError(
                    f"method {spec.label!r} returns maps shaped {tuple(got.shape[1:])} for one "
                    f"probe shaped {(1, *shape)} of model {k}; a method must return one map "
                    "per probe with the probe's (C, H, W) (or one channel)"
                )

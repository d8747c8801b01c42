"""Deletion and insertion curves of saliency maps (Samek et al. 2016; Petsiuk et al. 2018).

Pixels are ranked by their *relevance*, the channel-summed ``|map|`` by default
(``relevance="abs_sum"``: a pixel that pushes the class down counts as much as one that
pushes it up; ``"sum"`` ranks by the signed channel sum, positive evidence first). Ties
are broken by pixel index (row-major, lower first), so the order is deterministic.

* **Deletion** starts from the probe ``x`` and sets the most relevant pixels (every
  channel) to ``baseline``; a faithful map makes the class probability fall fast:
  lower area under the curve is better.
* **Insertion** starts from the baseline image and puts the most relevant pixels of ``x``
  back; a faithful map makes the probability rise fast: higher is better.

Both curves hold the target class's **softmax probability** at ``steps + 1`` points: after
``k_t = floor(t * P / steps)`` of the P pixels are removed (inserted), t = 0..steps, at
x-coordinates ``k_t / P`` in [0, 1]. The AUC is the trapezoid rule over those points, so it
lies in [0, 1] (the x axis is normalized). Every perturbed image of a chunk of probes goes
through the model in one batched forward, in eval mode under ``no_grad`` (each submodule's
``training`` flag restored); nothing is random.

A probe whose map or input is not finite, or whose relevance is constant (an all-zero map:
no order at all), gets NaN curves and AUCs.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
>>> x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
>>> c = perturbation_curves(net, x, torch.rand(3, 1, 2, 2), 0, steps=4)
>>> c.fractions.tolist(), tuple(c.deletion.shape), tuple(c.deletion_auc.shape)
([0.0, 0.25, 0.5, 0.75, 1.0], (3, 5), (3,))
>>> bool(torch.allclose(c.deletion[:, 0], c.insertion[:, -1]))  # both are f(x)
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode
from lightning_saliency.metrics._maps import (
    _check_model_inputs,
    _check_tensor,
    _compute_dtype,
    _nan_unless,
    finite_rows,
)

__all__ = [
    "DEFAULT_PERTURBATION_ROWS",
    "DEFAULT_PERTURBATION_STEPS",
    "PerturbationCurves",
    "curve_auc",
    "perturbation_curves",
    "perturbation_ranks",
]

#: Points of a deletion/insertion curve past its start (the curve has ``steps + 1``).
DEFAULT_PERTURBATION_STEPS = 16
#: Perturbed images per forward pass when no ``batch_size`` is given: small chunks stay in
#: the CPU's cache (a 32x32 small CNN: 0.26 ms a row at 256 rows, 0.41 ms at 1,024; one
#: thread); on a GPU pass a larger ``batch_size``.
DEFAULT_PERTURBATION_ROWS = 256

Relevance = Literal["abs_sum", "sum"]


class PerturbationCurves(NamedTuple):
    """Deletion and insertion curves ``(N, steps + 1)`` of the target-class probability at the
    fractions ``(steps + 1,)`` of pixels removed (deletion) or inserted (insertion)."""

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        """``(N,)`` area under the deletion curve, in [0, 1]; lower is better."""
        return curve_auc(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> Tensor:
        """``(N,)`` area under the insertion curve, in [0, 1]; higher is better."""
        return curve_auc(self.insertion, self.fractions)


def curve_auc(curves: Tensor, fractions: Tensor) -> Tensor:
    """Trapezoid-rule area under each row of ``curves`` ``(N, T)`` over ``fractions`` ``(T,)``.

    >>> curve_auc(torch.tensor([[1.0, 0.5, 0.0]]), torch.tensor([0.0, 0.5, 1.0]))
    tensor([0.5000])
    """
    dx = (fractions[1:] - fractions[:-1]).to(curves.dtype)
    return ((curves[:, 1:] + curves[:, :-1]) * dx / 2).sum(dim=1)


def _pixel_relevance(maps: Tensor, n: int, h: int, w: int, relevance: str) -> Tensor:
    """``(N, H * W)`` relevance of maps shaped like x, ``(N, 1, H, W)`` or ``(N, H, W)``."""
    if relevance not in ("abs_sum", "sum"):
        raise ValueError(f"`relevance` must be 'abs_sum' or 'sum', got {relevance!r}.")
    if maps.ndim == 4 and maps.shape[0] == n and maps.shape[2:] == (h, w):
        m = maps.abs() if relevance == "abs_sum" else maps
        return m.sum(dim=1).reshape(n, h * w)
    if maps.shape == (n, h, w):
        return (maps.abs() if relevance == "abs_sum" else maps).reshape(n, h * w)
    raise ValueError(
        f"`maps` must be ({n}, C, {h}, {w}) or ({n}, {h}, {w}); got {tuple(maps.shape)}."
    )


def perturbation_ranks(relevance: Tensor) -> Tensor:
    """``(N, P)`` position of each pixel in the order of decreasing relevance (0 = first
    perturbed), ties broken by pixel index.

    >>> perturbation_ranks(torch.tensor([[0.1, 0.9, 0.1, 0.5]])).tolist()
    [[2, 0, 3, 1]]
    """
    order = torch.sort(relevance, dim=1, descending=True, stable=True).indices
    pos = torch.arange(relevance.shape[1], device=relevance.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def _probabilities(model: Callable[[Tensor], Tensor], rows: Tensor, target: Tensor,
                   dtype: torch.dtype) -> Tensor:  # fmt: skip
    logits = model(rows)
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != rows.shape[0]:
        raise ValueError("the model must return (rows, num_classes) logits")
    probs = torch.softmax(logits.to(dtype), dim=-1)
    return probs[torch.arange(rows.shape[0], device=rows.device), target]


def perturbation_curves(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    maps: Tensor,
    target: Tensor | int,
    *,
    steps: int = DEFAULT_PERTURBATION_STEPS,
    baseline: float | Tensor = 0.0,
    relevance: Relevance = "abs_sum",
    batch_size: int | None = None,
) -> PerturbationCurves:
    """Deletion and insertion curves of each probe (see the module docstring).

    Args:
        model: classifier returning logits ``(B, num_classes)``.
        x: ``(N, C, H, W)`` probes in the model's input space.
        maps: attributions shaped like ``x``, ``(N, 1, H, W)`` or ``(N, H, W)``.
        target: ``(N,)`` class indices or one int for every probe.
        steps: curve points past the start (1 <= steps <= H * W).
        baseline: what a removed pixel becomes, in the input space (a float or a tensor that
            broadcasts to ``x``, e.g. per channel ``(C, 1, 1)``); 0 in a mean/std-normalized
            space is the dataset's mean colour.
        relevance: ``"abs_sum"`` (channel sum of ``|map|``) or ``"sum"`` (signed channel sum).
        batch_size: perturbed images per forward (default ``DEFAULT_PERTURBATION_ROWS``);
            a chunk holds whole probes (``2 * steps`` images each), at least one.
    """
    x, target, base = _check_model_inputs(x, target, baseline)
    maps = _check_tensor(maps, "maps")
    n, c, h, w = x.shape
    p = h * w
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= p:
        raise ValueError(f"`steps` must be an int in [1, {p}] (pixels per probe), got {steps!r}.")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
    dtype = _compute_dtype(x, maps)
    rel = _pixel_relevance(maps.to(device=x.device, dtype=dtype), n, h, w, relevance)
    ranks = perturbation_ranks(rel)
    k = torch.arange(steps + 1, device=x.device) * p // steps  # pixels perturbed at step t
    per_probe = 2 * steps  # x, baseline, steps - 1 deletion and steps - 1 insertion images
    chunk = max(1, (batch_size or DEFAULT_PERTURBATION_ROWS) // per_probe)
    modules = (model,) if isinstance(model, nn.Module) else ()
    parts = []
    with eval_mode(*modules), torch.no_grad():
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            rk = ranks[sl]
            m = (rk[:, None, :] < k[None, 1:steps, None]).view(len(rk), steps - 1, 1, h, w)
            xe, be = x[sl].unsqueeze(1), base[sl].unsqueeze(1)
            rows = torch.cat([xe, be, torch.where(m, be, xe), torch.where(m, xe, be)], dim=1)
            tgt = target[sl].repeat_interleave(per_probe)
            probs = _probabilities(model, rows.reshape(-1, c, h, w), tgt, dtype)
            parts.append(probs.view(-1, per_probe))
    out = torch.cat(parts) if parts else torch.empty(0, per_probe, dtype=dtype, device=x.device)
    full, empty = out[:, :1], out[:, 1:2]
    deletion = torch.cat([full, out[:, 2 : steps + 1], empty], dim=1)
    insertion = torch.cat([empty, out[:, steps + 1 :], full], dim=1)
    ok = finite_rows(rel) & finite_rows(x) & (rel.amax(dim=1) > rel.amin(dim=1))
    fractions = k.to(dtype) / p
    return PerturbationCurves(fractions, _nan_unless(ok, deletion), _nan_unless(ok, insertion))

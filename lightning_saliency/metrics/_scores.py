"""Single-map scores (sparseness, complexity) and muFidelity.

Part of :mod:`lightning_saliency.metrics` (conventions are stated there).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode
from lightning_saliency.metrics._maps import (
    ChannelReduction,
    _check_maps,
    _check_model_inputs,
    _check_tensor,
    _compute_dtype,
    _flat,
    _nan_unless,
    _pearson_rows,
    finite_rows,
)


# ---------------------------------------------------------------- single-map scores
def _sorted_rows(x: Tensor) -> Tensor:
    """Each row of ``(N, D)`` sorted ascending (NaN last); on CPU by numpy, an order of
    magnitude faster than ``torch.sort`` there (the same values).

    >>> _sorted_rows(torch.tensor([[3.0, 1.0, 2.0]])).tolist()
    [[1.0, 2.0, 3.0]]
    """
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).values
    return torch.from_numpy(np.sort(x.detach().numpy(), axis=1))


def sparseness(maps: Tensor, *, channel_reduction: ChannelReduction | None = "abs_sum") -> Tensor:
    """Per-sample Gini index of ``|map|`` (Quantus' Sparseness, paper 002).

    With the reduced map's absolute values sorted ascending ``x_(1) <= ... <= x_(n)``:
    ``G = sum_i (2 i - n - 1) x_(i) / (n * sum_i x_(i))``.  0 for an all-equal map,
    ``(n - 1) / n`` for a one-hot map; an all-zero map counts as all-equal (0).
    Unlike Quantus no 1e-7 is added to the map.  NaN for a map that is not finite.

    >>> sparseness(torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0] * 4]))
    tensor([0.7500, 0.0000, 0.0000])
    """
    maps = _check_maps(maps, "maps")
    x = _flat(maps, channel_reduction, _compute_dtype(maps)).abs()
    n = x.shape[1]
    xs = _sorted_rows(x)
    i = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    num = ((2 * i - n - 1) * xs).sum(dim=1)
    total = xs.sum(dim=1)
    gini = torch.where(total > 0, num / (n * total.clamp_min(torch.finfo(x.dtype).tiny)), 0.0)
    return _nan_unless(finite_rows(maps), gini)


def complexity(maps: Tensor, *, channel_reduction: ChannelReduction | None = "abs_sum") -> Tensor:
    """Per-sample Shannon entropy (natural log) of ``p = |map| / sum |map|`` (Quantus' Complexity).

    ``0 * log 0 = 0``.  ``log n`` for a uniform map, 0 for a one-hot map; an all-zero
    map counts as uniform (``log n``).  NaN for a map that is not finite.

    >>> complexity(torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0] * 4]))
    tensor([0.0000, 1.3863, 1.3863])
    """
    maps = _check_maps(maps, "maps")
    x = _flat(maps, channel_reduction, _compute_dtype(maps)).abs()
    n = x.shape[1]
    total = x.sum(dim=1, keepdim=True)
    p = x / total.clamp_min(torch.finfo(x.dtype).tiny)
    ent = torch.special.entr(p).sum(dim=1)  # entr(0) = 0
    ent = torch.where(total.squeeze(1) > 0, ent, math.log(n))
    return _nan_unless(finite_rows(maps), ent)


# -------------------------------------------------------------------- muFidelity
def _checked_fidelity_inputs(
    x: Tensor,
    maps: Tensor,
    target: Tensor | int,
    baseline: float | Tensor,
    num_subsets: int,
    subset_fraction: float,
    batch_size: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`mu_fidelity`'s inputs checked: ``(x, maps, pixel maps, target, baseline)``."""
    x, target, base = _check_model_inputs(x, target, baseline)
    maps = _check_tensor(maps, "maps")
    n, _, h, w = x.shape
    if maps.shape == x.shape or maps.shape == (n, 1, h, w):
        pix_attr = maps.sum(dim=1)
    elif maps.shape == (n, h, w):
        pix_attr = maps
    else:
        raise ValueError(
            f"`maps` must have the shape of x {tuple(x.shape)}, or ({n}, {h}, {w}) or "
            f"({n}, 1, {h}, {w}); got {tuple(maps.shape)}."
        )
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 2:
        raise ValueError(f"`num_subsets` must be an int >= 2, got {num_subsets!r}.")
    if not (0.0 < subset_fraction <= 1.0):
        raise ValueError(f"`subset_fraction` must be in (0, 1], got {subset_fraction}.")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
    return x, maps, pix_attr, target, base


def mu_fidelity(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    maps: Tensor,
    target: Tensor | int,
    *,
    num_subsets: int = 32,
    subset_fraction: float = 0.2,
    baseline: float | Tensor = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Per-sample muFidelity (Bhatt et al. 2020).

    For each sample, ``num_subsets`` random pixel subsets S of size
    ``round(subset_fraction * H * W)`` (the same pixels in every channel) are drawn
    from ``generator``; the pixels of S are set to ``baseline`` and the drop
    ``f_c(x) - f_c(x_S)`` of the target logit is paired with the summed attribution
    ``sum_{p in S, channels} maps``.  The result is the Pearson correlation of the two
    over the subsets (NaN if either is constant, e.g. for an all-zero map, and NaN
    for a sample whose map or input is not finite).

    Args:
        model: classifier returning logits ``(B, num_classes)``; run in eval mode under
            ``no_grad``; every submodule's ``training`` flag is restored afterwards.
        x: ``(N, C, H, W)`` inputs (in the model's input space).
        maps: attributions shaped like ``x``, or ``(N, H, W)`` / ``(N, 1, H, W)``.
        target: ``(N,)`` class indices or one int for all samples.
        baseline: float or tensor broadcastable to ``x`` (e.g. per-channel ``(C, 1, 1)``).
        generator: source of the subsets (never the global RNG); ``None`` uses a fresh
            CPU generator seeded with 0, so results are reproducible.
        batch_size: rows per forward pass over the ``N * num_subsets`` masked copies
            (default ``N``).

    >>> lin = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    >>> x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> w = lin[1].weight[1].detach().view(1, 1, 2, 2)
    >>> r = mu_fidelity(lin, x, w * x, 1, num_subsets=8, subset_fraction=0.5)
    >>> bool(torch.allclose(r, torch.ones(3), atol=1e-5))
    True
    """
    x, maps, pix_attr, target, base = _checked_fidelity_inputs(
        x, maps, target, baseline, num_subsets, subset_fraction, batch_size
    )
    n, _, h, w = x.shape
    dtype = _compute_dtype(x, maps)
    hw = h * w
    m = min(hw, max(1, round(subset_fraction * hw)))
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    scores = torch.rand((n, num_subsets, hw), generator=generator, device=generator.device)
    idx = torch.topk(scores, m, dim=-1).indices.to(x.device)
    mask = torch.zeros((n, num_subsets, hw), dtype=torch.bool, device=x.device)
    mask.scatter_(2, idx, True)  # (N, S, HW)

    attr_sum = (mask.to(dtype) * pix_attr.reshape(n, 1, hw).to(dtype)).sum(dim=2)  # (N, S)

    rows = n * num_subsets
    chunk = batch_size or max(n, 1)
    sample_of_row = torch.arange(n, device=x.device).repeat_interleave(num_subsets)
    flat_mask = mask.reshape(rows, 1, h, w)
    modules = (model,) if isinstance(model, nn.Module) else ()
    with eval_mode(*modules), torch.no_grad():
        full = model(x)[torch.arange(n, device=x.device), target].to(dtype)
        masked_out = []
        for start in range(0, rows, chunk):
            sl = slice(start, start + chunk)
            s_idx = sample_of_row[sl]
            xm = torch.where(flat_mask[sl], base[s_idx], x[s_idx])
            masked_out.append(model(xm)[torch.arange(xm.shape[0], device=x.device), target[s_idx]])
        masked = torch.cat(masked_out).to(dtype).view(n, num_subsets)
    drop = full.unsqueeze(1) - masked
    return _nan_unless(finite_rows(maps) & finite_rows(x), _pearson_rows(drop, attr_sum))

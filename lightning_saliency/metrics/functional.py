"""Pure, batched torch functions that compare and score saliency maps.

Every function takes maps shaped ``(N, C, H, W)``, ``(N, H, W)`` or ``(N, D)`` and
returns one value per sample (shape ``(N,)``) unless stated otherwise.  Computation
happens in float64 when an input is float64 and in float32 otherwise (half and
bfloat16 inputs are promoted), on the device of the inputs.  No numpy, no Lightning.

Channel reduction (``channel_reduction``):

* ``"sum"``: signed sum over the channel axis of a 4-D map;
* ``"abs_sum"``: sum of absolute values over the channel axis;
* ``None``: no reduction, the whole map is flattened per sample.

A 3-D ``(N, H, W)`` or 2-D ``(N, D)`` map has no channel axis: ``"sum"`` leaves it
as it is and ``"abs_sum"`` takes its absolute value.

Non-finite input (one rule for every metric): a sample whose map, or either map of a
pair, holds any NaN or +-Inf element gets NaN, never a number computed from the rest of
the map; non-finite logits make ``prediction_agreement`` NaN, and MeGe/ReCo are NaN when
any map or logit row they use is non-finite.  :func:`finite_rows` says which samples
are all finite, so callers can count the non-finite ones.  A NaN from finite maps means
the metric is undefined for them instead (e.g. ``spearman`` of a constant map); each
function documents its constant-map value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode

__all__ = [
    "complexity",
    "finite_rows",
    "l2_distance",
    "mege_reco",
    "mu_fidelity",
    "normalize_maps",
    "prediction_agreement",
    "reduce_channels",
    "sparseness",
    "spearman",
    "ssim",
    "topk_intersection",
]

ChannelReduction = Literal["sum", "abs_sum"]

_REDUCTIONS = ("sum", "abs_sum")


# --------------------------------------------------------------------------- helpers
def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    return x


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, float32 otherwise."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_maps(x: object, name: str, ndims: tuple[int, ...] = (2, 3, 4)) -> Tensor:
    x = _check_tensor(x, name)
    if x.ndim not in ndims:
        shapes = {4: "(N, C, H, W)", 3: "(N, H, W)", 2: "(N, D)"}
        expected = " or ".join(shapes[d] for d in sorted(ndims, reverse=True))
        raise ValueError(f"`{name}` must be maps shaped {expected}, got shape {tuple(x.shape)}.")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"`{name}` must be a real numeric tensor, got dtype {x.dtype}.")
    return x


def _check_pair(a: object, b: object, ndims: tuple[int, ...] = (2, 3, 4)) -> tuple[Tensor, Tensor]:
    a = _check_maps(a, "a", ndims)
    b = _check_maps(b, "b", ndims)
    if a.shape != b.shape:
        raise ValueError(
            f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if a.device != b.device:
        raise ValueError(f"`a` and `b` must be on the same device, got {a.device} and {b.device}.")
    return a, b


def _check_reduction(mode: object, allow_none: bool = True) -> None:
    if mode is None and allow_none:
        return
    if mode not in _REDUCTIONS:
        allowed = ", ".join(repr(m) for m in (*_REDUCTIONS, *((None,) if allow_none else ())))
        raise ValueError(f"`channel_reduction` must be one of {allowed}, got {mode!r}.")


def _flat(maps: Tensor, channel_reduction: ChannelReduction | None, dtype: torch.dtype) -> Tensor:
    """Reduce channels (or not) and flatten to (N, D) in ``dtype``."""
    _check_reduction(channel_reduction)
    maps = maps.to(dtype)
    if channel_reduction is not None:
        maps = reduce_channels(maps, channel_reduction)
    return maps.reshape(maps.shape[0], -1)


def finite_rows(maps: Tensor) -> Tensor:
    """``(N,)`` bool: True where sample n (``maps[n]``, any shape after dim 0) is all finite.

    Vectorized on the maps' device (no host sync); integer maps are always finite.

    >>> finite_rows(torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("-inf")]]))
    tensor([ True, False, False])
    """
    maps = _check_tensor(maps, "maps")
    if maps.ndim == 0:
        raise ValueError("`maps` must have a batch dimension, got a 0-dim tensor.")
    ok = torch.isfinite(maps)
    return ok.flatten(1).all(dim=1) if ok.ndim > 1 else ok


def _nan_unless(ok: Tensor, values: Tensor) -> Tensor:
    """``values`` where ``ok``, NaN elsewhere (``ok`` broadcast from the left)."""
    return torch.where(ok.view(-1, *([1] * (values.ndim - 1))), values, math.nan)


def _pearson_rows(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of each row of x with the same row of y (NaN if a row is constant)."""
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    num = (xc * yc).sum(dim=1)
    den = torch.sqrt((xc * xc).sum(dim=1) * (yc * yc).sum(dim=1))
    r = num / den  # 0 / 0 -> NaN for constant rows
    return r.clamp(-1.0, 1.0)


# ----------------------------------------------------------------------- basic maps
def reduce_channels(maps: Tensor, mode: ChannelReduction = "sum") -> Tensor:
    """Reduce the channel axis of ``(N, C, H, W)`` maps to ``(N, H, W)``.

    ``mode="sum"`` is the signed channel sum, ``mode="abs_sum"`` the sum of absolute
    values.  A 3-D ``(N, H, W)`` or 2-D ``(N, D)`` input has no channel axis and is
    returned as is (``"sum"``) or as its absolute value (``"abs_sum"``).  The dtype
    of the input is kept.

    >>> m = torch.tensor([[[[1.0, -2.0]], [[3.0, 1.0]]]])  # (1, 2, 1, 2)
    >>> reduce_channels(m, "sum")
    tensor([[[ 4., -1.]]])
    >>> reduce_channels(m, "abs_sum")
    tensor([[[4., 3.]]])
    """
    maps = _check_maps(maps, "maps")
    if mode not in _REDUCTIONS:
        raise ValueError(f"`mode` must be 'sum' or 'abs_sum', got {mode!r}.")
    if mode == "abs_sum":
        maps = maps.abs()
    return maps.sum(dim=1) if maps.ndim == 4 else maps


def normalize_maps(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale each sample's map to unit L2 norm (over all non-batch dimensions).

    The norm is clamped below at ``eps``, so an all-zero map stays all zero.  A map with
    any non-finite element becomes all NaN.  The result has the input's shape and is
    float64 for float64 input, float32 otherwise.

    >>> normalize_maps(torch.tensor([[3.0, 4.0], [0.0, 0.0], [float("inf"), 1.0]]))
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000],
            [   nan,    nan]])
    """
    maps = _check_tensor(maps, "maps")
    if maps.ndim < 2:
        raise ValueError(
            f"`maps` must have a batch dimension and >= 2 dims, got {tuple(maps.shape)}."
        )
    if eps <= 0:
        raise ValueError(f"`eps` must be > 0, got {eps}.")
    maps = maps.to(_compute_dtype(maps))
    norms = maps.reshape(maps.shape[0], -1).norm(dim=1).clamp_min(eps)
    return _nan_unless(finite_rows(maps), maps / norms.view(-1, *([1] * (maps.ndim - 1))))


# ------------------------------------------------------------------ pair metrics
def l2_distance(
    a: Tensor,
    b: Tensor,
    *,
    normalize: bool = True,
    channel_reduction: ChannelReduction | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """Per-sample L2 distance between two batches of maps.

    With ``normalize=True`` (default, paper 000 sec. 6.4) this is
    ``|| a/||a|| - b/||b|| ||_2`` and lies in ``[0, 2]``; an all-zero map stays zero
    after normalization, so it is 1 from any other map and 0 from another zero map.
    By default the full maps are compared (no channel reduction).  NaN where either
    map is not finite.

    >>> a = torch.tensor([[3.0, 0.0]]); b = torch.tensor([[0.0, 5.0]])
    >>> l2_distance(a, b)
    tensor([1.4142])
    >>> l2_distance(a, b, normalize=False)
    tensor([5.8310])
    """
    a, b = _check_pair(a, b, ndims=(2, 3, 4))
    dtype = _compute_dtype(a, b)
    fa = _flat(a, channel_reduction, dtype)
    fb = _flat(b, channel_reduction, dtype)
    if normalize:
        fa = normalize_maps(fa, eps)
        fb = normalize_maps(fb, eps)
    return _nan_unless(finite_rows(a) & finite_rows(b), (fa - fb).norm(dim=1))


def _average_ranks(x: Tensor) -> Tensor:
    """Row-wise ranks 1..D with ties given their average rank (like scipy's rankdata)."""
    n, d = x.shape
    sorted_vals, order = torch.sort(x, dim=1, stable=True)
    pos = torch.arange(d, device=x.device).expand(n, d)
    starts_group = torch.ones((n, d), dtype=torch.bool, device=x.device)
    starts_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    ends_group = torch.ones_like(starts_group)
    ends_group[:, :-1] = starts_group[:, 1:]
    start = torch.where(starts_group, pos, 0).cummax(dim=1).values
    end = torch.where(ends_group, pos, d).flip(1).cummin(dim=1).values.flip(1)
    rank_sorted = (start + end).to(x.dtype) / 2 + 1
    return torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)


def spearman(
    a: Tensor, b: Tensor, *, channel_reduction: ChannelReduction | None = "abs_sum"
) -> Tensor:
    """Per-sample Spearman rank correlation between two batches of maps.

    Ties get their average rank (as ``scipy.stats.spearmanr``).  The result is NaN
    for a sample where either (reduced) map is constant (e.g. all zero: undefined) or
    not finite (see :func:`finite_rows` to tell the two apart).

    >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]]); b = torch.tensor([[1.0, 3.0, 2.0, 4.0]])
    >>> spearman(a, b, channel_reduction=None)
    tensor([0.8000])
    """
    a, b = _check_pair(a, b)
    dtype = _compute_dtype(a, b)
    ra = _average_ranks(_flat(a, channel_reduction, dtype))
    rb = _average_ranks(_flat(b, channel_reduction, dtype))
    return _nan_unless(finite_rows(a) & finite_rows(b), _pearson_rows(ra, rb))


def _resolve_k(k: float | int, d: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"`k` must be an int count or a float fraction, got {type(k).__name__}.")
    if isinstance(k, int):
        if not 1 <= k <= d:
            raise ValueError(f"integer `k` must be in [1, {d}] (elements per map), got {k}.")
        return k
    if not (0.0 < k <= 1.0):
        raise ValueError(f"float `k` is a fraction and must be in (0, 1], got {k}.")
    return min(d, max(1, round(k * d)))


def topk_intersection(
    a: Tensor,
    b: Tensor,
    k: float | int = 0.1,
    *,
    channel_reduction: ChannelReduction | None = "abs_sum",
) -> Tensor:
    """Fraction of the top-k elements of ``a`` that are also among the top-k of ``b``.

    ``k`` is either an ``int`` count in ``[1, D]`` or a ``float`` fraction in
    ``(0, 1]`` of the number ``D`` of elements of the reduced map (rounded to the
    nearest integer, at least 1): ``k=1`` means one element, ``k=1.0`` all of them.
    Elements are ranked by the value of the reduced map (largest first).  Ties are
    broken deterministically by position: among equal values the element with the
    smaller flat index ranks higher (stable sort), so a constant (e.g. all-zero) map's
    top-k is its first k elements.  NaN where either map is not finite.

    >>> a = torch.tensor([[4.0, 3.0, 2.0, 1.0]]); b = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    >>> topk_intersection(a, b, 2, channel_reduction=None)
    tensor([0.5000])
    """
    a, b = _check_pair(a, b)
    dtype = _compute_dtype(a, b)
    fa = _flat(a, channel_reduction, dtype)
    fb = _flat(b, channel_reduction, dtype)
    kk = _resolve_k(k, fa.shape[1])
    top_a = torch.sort(fa, dim=1, descending=True, stable=True).indices[:, :kk]
    top_b = torch.sort(fb, dim=1, descending=True, stable=True).indices[:, :kk]
    mask_a = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, top_a, True)
    mask_b = torch.zeros_like(fb, dtype=torch.bool).scatter_(1, top_b, True)
    frac = (mask_a & mask_b).sum(dim=1).to(dtype) / kk
    return _nan_unless(finite_rows(a) & finite_rows(b), frac)


# --------------------------------------------------------------------------- SSIM
def _percentile_rows(x: Tensor, q: float) -> Tensor:
    """Row-wise q-th percentile with linear interpolation (numpy's default method)."""
    d = x.shape[1]
    s = torch.sort(x, dim=1).values
    pos = q / 100.0 * (d - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, d - 1)
    frac = pos - lo
    return s[:, lo] + frac * (s[:, hi] - s[:, lo])


def _gaussian_kernel(sigma: float, truncate: float) -> list[float]:
    """1-D Gaussian weights as scipy.ndimage builds them: radius int(truncate*sigma+0.5)."""
    radius = int(truncate * sigma + 0.5)
    w = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = math.fsum(w)
    return [v / total for v in w]


def _symmetric_index(n: int, radius: int, device: torch.device) -> Tensor:
    """Indices padding an axis of length n by ``radius`` in scipy's 'reflect' mode (d c b a | a b c d)."""
    idx = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def _gaussian_filter(x: Tensor, kernel: list[float]) -> Tensor:
    """Separable Gaussian filter of (B, H, W) with scipy 'reflect' borders.

    A weighted sum of shifted slices: memory bound, exact in the compute dtype and
    faster on CPU than a single-channel conv2d.
    """
    _, h, w = x.shape
    r = (len(kernel) - 1) // 2
    xp = x.index_select(1, _symmetric_index(h, r, x.device))
    xp = xp.index_select(2, _symmetric_index(w, r, x.device))
    rows = xp[:, 0:h, :] * kernel[0]
    for i in range(1, len(kernel)):
        rows.add_(xp[:, i : i + h, :], alpha=kernel[i])
    out = rows[:, :, 0:w] * kernel[0]
    for i in range(1, len(kernel)):
        out.add_(rows[:, :, i : i + w], alpha=kernel[i])
    return out


def _ssim_preprocess(
    maps: Tensor, channel_reduction: ChannelReduction, percentile: float | None, dtype: torch.dtype
) -> Tensor:
    m = reduce_channels(maps.to(dtype), channel_reduction).abs()
    if m.ndim != 3:
        raise ValueError(f"ssim needs 2-D maps per sample, got maps of shape {tuple(maps.shape)}.")
    if percentile is None:
        return m
    flat = m.reshape(m.shape[0], -1)
    scale = _percentile_rows(flat, percentile)
    peak = flat.amax(dim=1)
    scale = torch.where(scale > 0, scale, peak)  # sparse maps: fall back to the maximum
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero map stays zero
    return (m / scale.view(-1, 1, 1)).clamp(max=1.0)


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    channel_reduction: ChannelReduction = "abs_sum",
    percentile: float | None = 99.0,
    sigma: float = 1.5,
    data_range: float = 1.0,
    win_size: int | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Per-sample SSIM between 2-D |maps| scaled to [0, 1] (paper 003).

    Preprocessing: reduce channels (``abs_sum`` by default), take ``|.|``, divide each
    map by its own ``percentile``-th percentile (numpy's linear interpolation) and
    clamp to 1.  If that percentile is 0 the map's maximum is used; an all-zero map
    stays zero (SSIM 1 against another zero map).  ``percentile=None`` skips the
    scaling.  NaN where either map is not finite.

    SSIM then matches ``skimage.metrics.structural_similarity(a, b, data_range=1.0,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: Gaussian
    weights truncated at 3.5 sigma (11 taps for sigma 1.5), scipy 'reflect' borders,
    population covariances, and the mean of the SSIM map after cropping
    ``(win_size - 1) // 2`` pixels from each border.  ``win_size`` defaults to the
    filter's size ``2 * int(3.5 * sigma + 0.5) + 1``; like skimage, an image side
    smaller than ``win_size`` raises ``ValueError``: for small maps (e.g. 8x8 digits)
    pass an odd ``win_size`` <= the smaller side (as ``win_size=...`` in skimage).
    It only changes the crop; the Gaussian filter stays the same.

    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.rand(2, 3, 16, 16, generator=g)
    >>> ssim(a, a)
    tensor([1., 1.])
    """
    a, b = _check_pair(a, b, ndims=(3, 4))
    _check_reduction(channel_reduction, allow_none=False)
    if percentile is not None and not (0.0 < percentile <= 100.0):
        raise ValueError(f"`percentile` must be in (0, 100] or None, got {percentile}.")
    if sigma <= 0:
        raise ValueError(f"`sigma` must be > 0, got {sigma}.")
    if data_range <= 0:
        raise ValueError(f"`data_range` must be > 0, got {data_range}.")
    if k1 < 0 or k2 < 0:
        raise ValueError(f"`k1` and `k2` must be >= 0, got {k1} and {k2}.")
    truncate = 3.5
    if win_size is None:
        win_size = 2 * int(truncate * sigma + 0.5) + 1
    if (
        isinstance(win_size, bool)
        or not isinstance(win_size, int)
        or win_size < 1
        or win_size % 2 == 0
    ):
        raise ValueError(f"`win_size` must be a positive odd int, got {win_size!r}.")
    h, w = a.shape[-2:]
    if min(h, w) < win_size:
        raise ValueError(
            f"maps of size {h}x{w} are smaller than the SSIM window ({win_size}); "
            f"pass an odd `win_size` <= {min(h, w)} (this crops (win_size - 1) // 2 "
            "pixels per border, as skimage does)."
        )
    dtype = _compute_dtype(a, b)
    x = _ssim_preprocess(a, channel_reduction, percentile, dtype)
    y = _ssim_preprocess(b, channel_reduction, percentile, dtype)
    n = x.shape[0]
    kernel = _gaussian_kernel(sigma, truncate)
    stats = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y], dim=0), kernel)
    ux, uy, uxx, uyy, uxy = stats.split(n, dim=0)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    mean = s[:, pad : h - pad, pad : w - pad].mean(dim=(1, 2))
    return _nan_unless(finite_rows(a) & finite_rows(b), mean)


# ---------------------------------------------------------------- single-map scores
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
    xs = torch.sort(x, dim=1).values
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


# ------------------------------------------------------------------- predictions
def _as_labels(x: object, name: str) -> Tensor:
    x = _check_tensor(x, name)
    if x.ndim == 2:
        return x.argmax(dim=1)
    if x.ndim == 1:
        if x.is_floating_point() or x.is_complex():
            raise TypeError(
                f"`{name}` of shape (N,) must hold integer class labels, got dtype {x.dtype}; "
                "pass logits as (N, C)."
            )
        return x
    raise ValueError(
        f"`{name}` must be logits (N, C) or predicted labels (N,), got shape {tuple(x.shape)}."
    )


def prediction_agreement(logits_or_preds_a: Tensor, logits_or_preds_b: Tensor) -> Tensor:
    """Fraction of rows where two models predict the same class (0-dim float32 tensor).

    Each argument is either logits ``(N, C)`` (argmax is taken) or integer predicted
    labels ``(N,)``; the two may be mixed.  NaN for ``N == 0`` and when any row of
    logits holds a NaN or +-Inf (its argmax is meaningless).

    >>> prediction_agreement(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    tensor(0.5000)
    """
    pa = _as_labels(logits_or_preds_a, "logits_or_preds_a")
    pb = _as_labels(logits_or_preds_b, "logits_or_preds_b")
    if pa.shape != pb.shape:
        raise ValueError(
            f"the two inputs describe different numbers of samples: {pa.shape[0]} and {pb.shape[0]}."
        )
    if pa.device != pb.device:
        raise ValueError(f"inputs must be on the same device, got {pa.device} and {pb.device}.")
    ok = torch.ones((), dtype=torch.bool, device=pa.device)
    for x in (logits_or_preds_a, logits_or_preds_b):
        if x.ndim == 2:
            ok = ok & finite_rows(x).all()
    return torch.where(ok, (pa == pb).to(torch.float32).mean(), math.nan)


# ------------------------------------------------------------------ MeGe / ReCo
def _youden_max(dist: Tensor, positive: Tensor) -> Tensor:
    """max over thresholds t in dist of TPR + TNR - 1, predicting positive iff d > t."""
    order = torch.argsort(dist)
    d = dist[order]
    pos = positive[order].to(dist.dtype)
    n_pos = pos.sum()
    n_neg = pos.numel() - n_pos
    cum_pos = pos.cumsum(0)
    cum_neg = (1 - pos).cumsum(0)
    last = torch.searchsorted(d, d, right=True) - 1  # last index of each tie group
    tpr = (n_pos - cum_pos[last]) / n_pos  # positives with d > t
    tnr = cum_neg[last] / n_neg  # negatives with d <= t
    return (tpr + tnr - 1).max()


def mege_reco(
    maps: Tensor,
    preds: Tensor,
    labels: Tensor,
    seen: Tensor | None = None,
    *,
    pairs: Literal["one_seen", "all"] = "all",
    normalize: bool = True,
    channel_reduction: ChannelReduction | None = None,
) -> tuple[Tensor, Tensor]:
    """MeGe and ReCo (Fel et al. 2022) of K models' maps, adapted to disjoint splits.

    Args:
        maps: ``(K, N, ...)`` maps of the same N samples by K >= 2 models.
        preds: ``(K, N)`` predicted labels or ``(K, N, C)`` logits.
        labels: ``(N,)`` true labels.
        seen: ``(K, N)`` bool, ``seen[k, n]`` = model k was trained on sample n.
            Needed only for ``pairs="one_seen"``.
        pairs: ``"all"`` uses every unordered model pair (i < j) for every sample
            (held-out probes); ``"one_seen"`` keeps only the pair-samples where exactly
            one of the two models saw the sample (Fel et al.'s setting; train probes of
            disjoint splits).
        normalize, channel_reduction: passed to :func:`l2_distance` (normalized full maps
            by default).

    For every kept pair-sample the distance ``d = l2_distance(maps[i, n], maps[j, n])``
    is computed.  Pair-samples where both models predict ``labels[n]`` are
    "same-correct" (negatives); those where exactly one does are "one-correct"
    (positives); pairs where both are wrong are ignored.

    * ``MeGe = 1 / (1 + mean d over same-correct pair-samples)``.
    * ``ReCo = max_t TPR(t) + TNR(t) - 1`` over thresholds ``t`` in the set of
      observed distances (of kept same- and one-correct pair-samples), where a
      pair-sample is predicted one-correct iff ``d > t``: ``TPR`` is the fraction of
      one-correct pairs with ``d > t`` and ``TNR`` the fraction of same-correct pairs
      with ``d <= t``.  The largest threshold gives 0, so ReCo lies in ``[0, 1]``;
      1 means the distance separates the two groups perfectly.

    Returns ``(mege, reco)``, 0-dim tensors, NaN when there is no same-correct
    pair-sample (MeGe) or no positive or no negative (ReCo).  Both are NaN when any
    kept pair-sample (every one for ``pairs="all"``) has a non-finite map or, for
    ``(K, N, C)`` logits, a non-finite logit row: both-wrong pair-samples are not
    excused, since a non-finite model's predictions (which decide the groups) are
    meaningless too.  Count such samples with :func:`finite_rows`.

    >>> maps = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # K=3, N=1, D=2
    >>> preds = torch.tensor([[0], [0], [1]]); labels = torch.tensor([0])
    >>> mege, reco = mege_reco(maps, preds, labels)
    >>> mege, reco
    (tensor(1.), tensor(1.))
    """
    maps = _check_tensor(maps, "maps")
    preds = _check_tensor(preds, "preds")
    labels = _check_tensor(labels, "labels")
    if maps.ndim < 3:
        raise ValueError(
            f"`maps` must be (K, N, ...) with at least 3 dims, got {tuple(maps.shape)}."
        )
    k, n = maps.shape[:2]
    if k < 2:
        raise ValueError(f"mege_reco needs maps of K >= 2 models, got K={k}.")
    if pairs not in ("one_seen", "all"):
        raise ValueError(f"`pairs` must be 'one_seen' or 'all', got {pairs!r}.")
    logits = preds if preds.ndim == 3 else None
    if logits is not None:
        preds = logits.argmax(dim=2)
    if preds.shape != (k, n):
        raise ValueError(
            f"`preds` must be (K, N) labels or (K, N, C) logits with (K, N)=({k}, {n}), "
            f"got shape {tuple(preds.shape)}."
        )
    bad = ~finite_rows(maps.flatten(0, 1)).view(k, n)  # (K, N): non-finite map or logits
    if logits is not None:
        bad = bad | ~finite_rows(logits.flatten(0, 1)).to(bad.device).view(k, n)
    if labels.shape != (n,):
        raise ValueError(f"`labels` must have shape (N,)=({n},), got {tuple(labels.shape)}.")
    if pairs == "one_seen":
        if seen is None:
            raise ValueError("`seen` (K, N) bool is required for pairs='one_seen'.")
    if seen is not None:
        seen = _check_tensor(seen, "seen")
        if seen.dtype != torch.bool:
            raise TypeError(f"`seen` must be a bool tensor, got dtype {seen.dtype}.")
        if seen.shape != (k, n):
            raise ValueError(f"`seen` must have shape (K, N)=({k}, {n}), got {tuple(seen.shape)}.")
    dtype = _compute_dtype(maps)
    device = maps.device
    correct = preds.to(device) == labels.to(device).unsqueeze(0)  # (K, N)

    dists, same, one, bad_pairs = [], [], [], []
    for i in range(k - 1):
        for j in range(i + 1, k):
            d = l2_distance(
                maps[i], maps[j], normalize=normalize, channel_reduction=channel_reduction
            )
            keep = torch.ones(n, dtype=torch.bool, device=device)
            if pairs == "one_seen":
                assert seen is not None  # required for "one_seen" (checked above)
                keep = seen[i].to(device) ^ seen[j].to(device)
            dists.append(d)
            same.append(correct[i] & correct[j] & keep)
            one.append((correct[i] ^ correct[j]) & keep)
            bad_pairs.append((bad[i] | bad[j]) & keep)
    dist = torch.cat(dists).to(dtype)
    same_m = torch.cat(same)
    one_m = torch.cat(one)

    nan = torch.tensor(float("nan"), dtype=dtype, device=device)
    mege = 1.0 / (1.0 + dist[same_m].mean()) if bool(same_m.any()) else nan
    if bool(same_m.any()) and bool(one_m.any()):
        used = same_m | one_m
        reco = _youden_max(dist[used], one_m[used])
    else:
        reco = nan.clone()
    any_bad = torch.cat(bad_pairs).any()
    return torch.where(any_bad, nan, mege), torch.where(any_bad, nan, reco)


# -------------------------------------------------------------------- muFidelity
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
    x = _check_tensor(x, "x")
    maps = _check_tensor(maps, "maps")
    if x.ndim != 4:
        raise ValueError(f"`x` must be (N, C, H, W), got shape {tuple(x.shape)}.")
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
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((n,), target, dtype=torch.long, device=x.device)
    target = _check_tensor(target, "target")
    if target.shape != (n,) or target.is_floating_point():
        raise ValueError(
            f"`target` must be an int or an integer tensor of shape ({n},), "
            f"got {target.dtype} {tuple(target.shape)}."
        )
    target = target.to(x.device)
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        base = base.expand_as(x)
    except RuntimeError as err:
        raise ValueError(
            f"`baseline` of shape {tuple(base.shape)} does not broadcast to x {tuple(x.shape)}."
        ) from err

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

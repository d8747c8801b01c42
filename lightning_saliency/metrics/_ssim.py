"""SSIM between 2-D |maps| scaled to [0, 1] (paper 003), matching scikit-image.

Part of :mod:`lightning_saliency.metrics` (conventions are stated there).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_saliency.metrics._agreement import RowFeatures
from lightning_saliency.metrics._maps import (
    ChannelReduction,
    _check_maps,
    _check_pair,
    _check_reduction,
    _compute_dtype,
    _nan_unless,
    informative_rows,
    reduce_channels,
)


# --------------------------------------------------------------------------- SSIM
def _percentile_rows(x: Tensor, q: float) -> Tensor:
    """Row-wise q-th percentile with linear interpolation (numpy's default method)."""
    d = x.shape[1]
    pos = q / 100.0 * (d - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, d - 1)
    frac = pos - lo
    # the order statistics lo and hi (ascending) are the (d-1-lo)-th and (d-1-hi)-th largest:
    # a partial selection of the top d - lo values instead of a full sort (the same values)
    top = torch.topk(x, d - lo, dim=1).values
    s_lo, s_hi = top[:, d - 1 - lo], top[:, d - 1 - hi]
    return s_lo + frac * (s_hi - s_lo)


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


def _reflect_pad(x: Tensor, dim: int, r: int) -> Tensor:
    """``x`` padded by ``r`` on both ends of ``dim`` in scipy's 'reflect' mode: two flipped
    slices where ``r`` fits in the axis (a few times faster than gathering), else gathered.

    >>> _reflect_pad(torch.tensor([[1, 2, 3]]), 1, 2).tolist()
    [[2, 1, 1, 2, 3, 3, 2]]
    """
    n = x.shape[dim]
    if r > n:
        return x.index_select(dim, _symmetric_index(n, r, x.device))
    head, tail = x.narrow(dim, 0, r).flip(dim), x.narrow(dim, n - r, r).flip(dim)
    return torch.cat([head, x, tail], dim=dim)


def _gaussian_filter(x: Tensor, kernel: list[float], crop: int = 0) -> Tensor:
    """Separable Gaussian filter of (B, H, W) with scipy 'reflect' borders, the output
    cropped by ``crop`` pixels on every border (only the inner pixels are computed).

    A weighted sum of shifted slices: memory bound, exact in the compute dtype and
    faster on CPU than a single-channel conv2d. Every output pixel is the same ordered sum
    whatever ``crop`` is, so a cropped filter equals the crop of the full one bit for bit.

    >>> x = torch.rand(2, 9, 9, dtype=torch.float64)
    >>> k = _gaussian_kernel(1.0, 3.5)
    >>> torch.equal(_gaussian_filter(x, k, crop=2), _gaussian_filter(x, k)[:, 2:7, 2:7])
    True
    """
    _, h, w = x.shape
    r = (len(kernel) - 1) // 2
    p = max(r - crop, 0)  # the border still to pad: output pixel i reads x[i - r .. i + r]
    xp = _reflect_pad(_reflect_pad(x, 1, p), 2, p) if p else x
    o, hh, ww = crop - r + p, h - 2 * crop, w - 2 * crop  # where output pixel `crop` starts
    rows = xp[:, o : o + hh, :] * kernel[0]
    for i in range(1, len(kernel)):
        rows.add_(xp[:, o + i : o + i + hh, :], alpha=kernel[i])
    out = rows[:, :, o : o + ww] * kernel[0]
    for i in range(1, len(kernel)):
        out.add_(rows[:, :, o + i : o + i + ww], alpha=kernel[i])
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
    dtype = _compute_dtype(a, b)
    options: dict[str, Any] = {"channel_reduction": channel_reduction, "percentile": percentile, "sigma": sigma,
               "data_range": data_range, "win_size": win_size, "k1": k1, "k2": k2}  # fmt: skip
    return ssim_compare(ssim_features(a, dtype, **options), ssim_features(b, dtype, **options))


def ssim_features(
    maps: Tensor,
    dtype: torch.dtype,
    *,
    channel_reduction: ChannelReduction = "abs_sum",
    percentile: float | None = 99.0,
    sigma: float = 1.5,
    data_range: float = 1.0,
    win_size: int | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
) -> RowFeatures:
    """:func:`ssim`'s per-map part (the arguments checked): the scaled map ``x`` and its
    filtered ``x`` and ``x * x`` on the pixels SSIM averages (``(win_size - 1) // 2`` cropped
    from each border); only the filtered product of two maps is left per pair.

    >>> f = ssim_features(torch.rand(2, 1, 12, 12), torch.float32)
    >>> [tuple(p.shape) for p in f.parts], f.meta[1:]
    ([(2, 12, 12), (2, 2, 2), (2, 2, 2)], (11, 1.0, 0.01, 0.03))
    """
    _check_maps(maps, "maps", (3, 4))
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
    h, w = maps.shape[-2:]
    if min(h, w) < win_size:
        raise ValueError(
            f"maps of size {h}x{w} are smaller than the SSIM window ({win_size}); "
            f"pass an odd `win_size` <= {min(h, w)} (this crops (win_size - 1) // 2 "
            "pixels per border, as skimage does)."
        )
    x = _ssim_preprocess(maps, channel_reduction, percentile, dtype)
    kernel = _gaussian_kernel(sigma, truncate)
    pad = (win_size - 1) // 2  # only the pixels SSIM averages are filtered
    ux, uxx = _gaussian_filter(torch.cat([x, x * x], dim=0), kernel, pad).split(x.shape[0], dim=0)
    return RowFeatures((x, ux, uxx), informative_rows(maps), (kernel, win_size, data_range, k1, k2))


def ssim_compare(fa: RowFeatures, fb: RowFeatures) -> Tensor:
    """:func:`ssim` of two batches' :func:`ssim_features` (the same arguments)."""
    (x, ux, uxx), (y, uy, uyy) = fa.parts, fb.parts
    kernel, win_size, data_range, k1, k2 = fa.meta
    uxy = _gaussian_filter(x * y, kernel, (win_size - 1) // 2)  # the cropped pixels only
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return _nan_unless(fa.ok & fb.ok, s.mean(dim=(1, 2)))

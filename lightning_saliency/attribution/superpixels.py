"""Super-pixel segmentation of probe images and grouping of saliency maps by segment.

Super-pixel grouping (paper 003, DESIGN "Definitions") replaces every pixel's score by the
signed score of its segment. :func:`segment` computes the segments with scikit-image on the
*unnormalized* RGB (or grayscale) images in ``[0, 1]``; :func:`group_by_segments` applies them
to any batch of maps, fully vectorized on the maps' device.

Algorithms (scikit-image 0.26) and the parameters each accepts through ``**params``:

=============  ==========================================================================
quickshift     ``ratio``, ``kernel_size``, ``max_dist``, ``sigma``, ``convert2lab``
slic           ``n_segments``, ``compactness``, ``max_num_iter``, ``sigma``,
               ``enforce_connectivity``, ``min_size_factor``, ``max_size_factor``,
               ``slic_zero``, ``convert2lab``
felzenszwalb   ``scale``, ``sigma``, ``min_size``
watershed      ``markers`` (number of grid seeds), ``compactness``: compact watershed on the
               Sobel gradient of the grayscale image
=============  ==========================================================================

Defaults (:func:`default_segment_params`) were calibrated on real images: CIFAR-10 at 32x32
and CIFAR-10 upsampled to 224x224 plus the natural images bundled with scikit-image. Segment
counts per image with the defaults, mean [min, max], measured with ``python
benchmarks/attribution_throughput.py --device cpu --data data/cifar10/test --cases
--skip-memory-budget`` (the first 512 images of the CIFAR-10 test set, interleaved over the
classes, at 32x32; the first 64 of them upsampled bilinearly to 224x224; the 7 bundled natural
images ``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ``hubble_deep_field``,
``immunohistochemistry``, ``retina``, center-cropped and resized)::

    algorithm      CIFAR 32x32 (512)   CIFAR 224x224 (64)   natural 32x32   natural 224x224
    quickshift     33.7 [13, 80]       131.0 [85, 191]      35.0 [18, 74]   195.0 [158, 229]
    slic           30.2 [20, 36]       190.8 [176, 196]     28.6 [21, 34]   156.1 [130, 172]
    felzenszwalb   44.1 [27, 63]       180.2 [137, 229]     37.4 [27, 47]   155.1 [120, 177]
    watershed      36.0 [36, 36]       169.0 [169, 169]     36.0 [36, 36]   169.0 [169, 169]

The means sit inside the targets (20-60 at 32x32, 100-250 at 224x224); quickshift, a
mode-seeking method without a target count, varies most from image to image. Watershed
gives one segment per seed of its regular grid (about ``markers``).

Parallelism: the four scikit-image segmenters release the GIL in their compiled loops, so
:func:`segment` uses a thread pool (no pickling, no process start-up); it runs serially for a
single image or ``n_jobs=1``. Measured on this project's 2-core machine while it was nearly
idle (load average 0.4), 8 slightly brightened copies of ``astronaut`` at 224x224, 2 threads
against a serial loop: 1.7x quickshift (kernel_size=5, max_dist=10), 1.5x slic
(n_segments=200), 1.6x felzenszwalb (scale=100, min_size=50), 1.4x watershed (markers=200).
With the cores busy with other processes (load average 5) the gain vanished (0.9x-1.35x).
The result does not depend on ``n_jobs``: every segmenter is deterministic (quickshift's
tie-breaking RNG is seeded with 42).

>>> import torch
>>> images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
>>> seg = segment(images, "slic", n_segments=20)
>>> seg.shape, seg.dtype
(torch.Size([2, 32, 32]), torch.int64)
>>> maps = torch.randn(2, 3, 32, 32)
>>> grouped = group_by_segments(maps, seg)
>>> grouped.shape
torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SEGMENTERS",
    "default_segment_params",
    "group_by_segments",
    "segment",
]

# ----------------------------------------------------------------------------------------
# Parameter validation
# ----------------------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _nonneg_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    value = _nonneg_float(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _at_least_one(name: str, value: Any) -> float:
    value = _nonneg_float(name, value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return bool(value)


_Validator = Callable[[str, Any], Any]

_PARAMS: dict[str, dict[str, _Validator]] = {
    "quickshift": {
        "ratio": _nonneg_float,
        "kernel_size": _at_least_one,
        "max_dist": _positive_float,
        "sigma": _nonneg_float,
        "convert2lab": _boolean,
    },
    "slic": {
        "n_segments": _positive_int,
        "compactness": _positive_float,
        "max_num_iter": _positive_int,
        "sigma": _nonneg_float,
        "enforce_connectivity": _boolean,
        "min_size_factor": _nonneg_float,
        "max_size_factor": _positive_float,
        "slic_zero": _boolean,
        "convert2lab": _boolean,
    },
    "felzenszwalb": {
        "scale": _positive_float,
        "sigma": _nonneg_float,
        "min_size": _positive_int,
    },
    "watershed": {
        "markers": _positive_int,
        "compactness": _nonneg_float,
    },
}

GroupReduction = Literal["sum", "mean", "abs_sum", "abs_mean"]
#: The reductions :func:`group_by_segments` accepts: signed (paper 003) and magnitude.
GROUP_REDUCTIONS: tuple[str, ...] = ("sum", "mean", "abs_sum", "abs_mean")

#: Known algorithms mapped to the names of the parameters each accepts (read-only).
SEGMENTERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {name: tuple(params) for name, params in _PARAMS.items()}
)


def _check_algorithm(algorithm: Any) -> str:
    if not isinstance(algorithm, str) or algorithm not in _PARAMS:
        raise ValueError(
            f"unknown segmentation algorithm {algorithm!r}; known: {', '.join(sorted(_PARAMS))}"
        )
    return algorithm


def _validate_params(algorithm: str, params: Mapping[str, Any]) -> dict[str, Any]:
    accepted = _PARAMS[algorithm]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for algorithm {algorithm!r}; "
            f"accepted: {', '.join(accepted)}"
        )
    return {name: accepted[name](name, value) for name, value in params.items()}


# ----------------------------------------------------------------------------------------
# Defaults
# ----------------------------------------------------------------------------------------


def _interp(at_32: float, at_224: float, image_size: int) -> float:
    """Power law through (32, at_32) and (224, at_224), in the image side."""
    exponent = math.log(at_224 / at_32) / math.log(224 / 32)
    return at_32 * (image_size / 32) ** exponent


def default_segment_params(algorithm: str, image_size: int) -> dict[str, Any]:
    """Default segmenter parameters for square images of side ``image_size``.

    Calibrated on CIFAR-10 at 32x32 and on CIFAR-10 and scikit-image's natural images at
    224x224 to give about 20-60 segments at 32x32 and 100-250 at 224x224 (measured counts in
    the module docstring); other sizes follow a power law through the two calibrated points.
    Quickshift's count depends most on the image content.

    >>> default_segment_params("slic", 32)
    {'n_segments': 46, 'compactness': 10.0, 'sigma': 0.0}
    >>> default_segment_params("watershed", 224)["markers"]
    175
    """
    algorithm = _check_algorithm(algorithm)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if image_size < 2:
        raise ValueError(f"image_size must be >= 2, got {image_size}")
    size = int(image_size)
    if algorithm == "slic":
        n_segments = max(1, round(_interp(46, 201, size)))
        return {"n_segments": n_segments, "compactness": 10.0, "sigma": 0.0}
    if algorithm == "watershed":
        return {"markers": max(1, round(_interp(40, 175, size))), "compactness": 1e-3}
    if algorithm == "felzenszwalb":
        return {"scale": 5.0, "sigma": 0.5, "min_size": max(1, round(_interp(8, 70, size)))}
    return {  # quickshift
        "kernel_size": round(max(1.0, _interp(1.0, 2.5, size)), 3),
        "max_dist": round(_interp(3.0, 5.0, size), 3),
        "ratio": 0.2,
        "sigma": 0.5,
    }


# ----------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------


def _rgb2gray(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return image[..., 0] if image.shape[-1] == 1 else rgb2gray(image)


def _segment_one(image: np.ndarray, algorithm: str, params: dict[str, Any]) -> np.ndarray:
    """Segment one (H, W, C) float image in [0, 1]; labels 0..S-1 as int64 (H, W)."""
    from skimage import segmentation

    gray = image.shape[-1] == 1
    if algorithm == "quickshift":
        rgb = np.repeat(image, 3, axis=-1) if gray else image
        labels = segmentation.quickshift(rgb, rng=42, channel_axis=-1, **params)
    elif algorithm == "slic":
        kwargs = dict(params)
        if gray:
            if kwargs.get("convert2lab"):
                raise ValueError("slic: convert2lab=True needs RGB images, got 1 channel")
            kwargs["convert2lab"] = False
        labels = segmentation.slic(
            image[..., 0] if gray else image,
            start_label=0,
            channel_axis=None if gray else -1,
            **kwargs,
        )
    elif algorithm == "felzenszwalb":
        labels = segmentation.felzenszwalb(
            image[..., 0] if gray else image, channel_axis=None if gray else -1, **params
        )
    else:  # watershed
        from skimage.filters import sobel

        gradient = sobel(_rgb2gray(image))
        labels = segmentation.watershed(
            gradient, markers=params.get("markers"), compactness=params.get("compactness", 0.0)
        )
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64)


def segment(
    images: Tensor,
    algorithm: str = "slic",
    *,
    n_jobs: int | None = None,
    **params: Any,
) -> Tensor:
    """Segment every image of a batch into super-pixels with scikit-image.

    Args:
        images: (N, C, H, W) floating tensor of *unnormalized* images in ``[0, 1]`` with
            C = 3 (RGB) or C = 1 (grayscale; replicated to RGB for quickshift, passed as a
            2-D image to the others). Any device; segmentation runs on the CPU.
        algorithm: one of ``"quickshift"``, ``"slic"``, ``"felzenszwalb"``, ``"watershed"``.
        n_jobs: worker threads (the segmenters release the GIL); None means
            ``min(N, os.cpu_count())``; 1 runs serially.
        **params: segmenter parameters (see :data:`SEGMENTERS`); those not given come from
            :func:`default_segment_params` for ``max(H, W)``.

    Returns:
        int64 tensor (N, H, W) on ``images.device``; the ids of image n are 0..S_n-1 (every
        id in that range occurs). Deterministic.

    >>> import torch
    >>> x = torch.zeros(1, 1, 8, 8)
    >>> x[..., 4:] = 1.0
    >>> segment(x, "felzenszwalb", scale=1.0, sigma=0.0, min_size=1)[0, 0]
    tensor([0, 0, 0, 0, 1, 1, 1, 1])
    """
    algorithm = _check_algorithm(algorithm)
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D (N, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 (gray) or 3 (RGB) channels, got C={c}")
    if n == 0:
        return torch.empty(0, h, w, dtype=torch.long, device=images.device)
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int)):
        raise TypeError(f"n_jobs must be an int or None, got {n_jobs!r}")
    if n_jobs is not None and n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1 or None, got {n_jobs}")
    validated = _validate_params(algorithm, params)
    full = {**default_segment_params(algorithm, max(h, w)), **validated}

    array = images.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(array).all():
        raise ValueError("images contain NaN or inf values")
    lo, hi = float(array.min()), float(array.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"images must be unnormalized in [0, 1] (got values in [{lo:.4g}, {hi:.4g}]); "
            "segment the images before normalization or unnormalize them first"
        )
    hwc = np.ascontiguousarray(np.clip(array, 0.0, 1.0).transpose(0, 2, 3, 1))

    workers = min(n, os.cpu_count() or 1) if n_jobs is None else min(n, n_jobs)
    if workers <= 1:
        labels = [_segment_one(img, algorithm, full) for img in hwc]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            labels = list(pool.map(lambda img: _segment_one(img, algorithm, full), hwc))
    return torch.from_numpy(np.stack(labels)).to(images.device)


# ----------------------------------------------------------------------------------------
# Grouping
# ----------------------------------------------------------------------------------------


def _segment_ids(maps: Tensor, segments: Tensor) -> tuple[Tensor, int]:
    """Validate and flatten segment ids into one (N * S) id space: (N*H*W,) ids and N*S."""
    if not isinstance(maps, Tensor) or not isinstance(segments, Tensor):
        raise TypeError(
            f"maps and segments must be tensors, got {type(maps).__name__} and "
            f"{type(segments).__name__}"
        )
    if maps.ndim != 4 or segments.ndim != 3 or maps.shape[:1] + maps.shape[2:] != segments.shape:
        raise ValueError(
            f"maps must be (N, C, H, W) and segments (N, H, W) with matching N, H, W; got maps "
            f"{tuple(maps.shape)} and segments {tuple(segments.shape)}"
        )
    if not maps.is_floating_point():
        raise TypeError(f"maps must be floating point, got dtype {maps.dtype}")
    if segments.is_floating_point() or segments.is_complex() or segments.dtype == torch.bool:
        raise TypeError(f"segments must have an integer dtype, got {segments.dtype}")
    n = segments.shape[0]
    seg = segments.to(device=maps.device, dtype=torch.long)
    if seg.numel() == 0:
        return seg.reshape(-1), 0
    if int(seg.min()) < 0:
        raise ValueError(f"segment ids must be >= 0, got minimum {int(seg.min())}")
    num = int(seg.max()) + 1
    offsets = torch.arange(n, device=maps.device, dtype=torch.long).view(n, 1, 1) * num
    return (seg + offsets).reshape(-1), n * num


def group_by_segments(
    maps: Tensor,
    segments: Tensor,
    reduction: GroupReduction = "sum",
) -> Tensor:
    """Give every pixel, in every channel, the score of its super-pixel.

    The score of segment G of sample n is ``s_G = sum_{(c, h, w): segments[n, h, w] = G}
    maps[n, c, h, w]`` (``reduction="sum"``, the gradient of f along the indicator of G, as in
    paper 003) or ``s_G / (C * |G|)`` (``reduction="mean"``), with |G| the number of pixels
    of G; every element of G gets that score.

    ``"abs_sum"`` and ``"abs_mean"`` do the same with ``|maps|``: the segment's gradient
    *mass* instead of its signed directional derivative. Signed sums cancel inside a
    segment when neighbouring pixels' gradients have opposite signs (on a CIFAR-10
    ResNet-18 a segment kept a median 13% of its mass, docs/results.md), so the two
    groupings can rank segments very differently; paper 003 defines the signed one.

    Invariants (per sample), with ``size[n, c, h, w] = C * |G(h, w)|`` the number of
    elements sharing a value:

    * ``reduction="sum"``: every segment counted once sums to the map's total,
      ``(grouped / size).sum() == maps.sum()``. The plain ``grouped.sum()`` is *not* the
      total (each segment's sum is replicated ``C * |G|`` times).
    * ``reduction="mean"``: ``grouped.sum() == maps.sum()`` (the total is kept as is).
    * ``"abs_sum"`` / ``"abs_mean"``: the same with ``maps.abs()`` in place of ``maps``;
      the result is non-negative.
    * All: constant within every segment and over channels.

    Args:
        maps: (N, C, H, W) floating tensor, any device.
        segments: (N, H, W) integer tensor of non-negative ids (need not be consecutive).
        reduction: ``"sum"`` (default), ``"mean"``, ``"abs_sum"`` or ``"abs_mean"``.

    Returns:
        Tensor shaped and typed like ``maps`` (accumulated in float32, or float64 for float64
        maps), on ``maps.device``. On CUDA the sums use atomic adds, so the last bits may vary
        between runs.

    >>> import torch
    >>> maps = torch.tensor([[[[1.0, 2.0], [3.0, -4.0]]]])
    >>> segments = torch.tensor([[[0, 0], [1, 1]]])
    >>> group_by_segments(maps, segments)
    tensor([[[[ 3.,  3.],
              [-1., -1.]]]])
    >>> group_by_segments(maps, segments, reduction="mean")
    tensor([[[[ 1.5000,  1.5000],
              [-0.5000, -0.5000]]]])
    >>> group_by_segments(maps, segments, reduction="abs_sum")
    tensor([[[[3., 3.],
              [7., 7.]]]])
    """
    if reduction not in GROUP_REDUCTIONS:
        raise ValueError(f"reduction must be one of {GROUP_REDUCTIONS}, got {reduction!r}")
    ids, total = _segment_ids(maps, segments)
    n, c, h, w = maps.shape
    acc_dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
    values = maps.to(acc_dtype)
    if reduction.startswith("abs_"):
        values = values.abs()
    per_pixel = values.sum(dim=1).reshape(-1)  # (N*H*W,) summed over channels
    sums = torch.zeros(total, dtype=acc_dtype, device=maps.device).index_add_(0, ids, per_pixel)
    if reduction.endswith("mean"):
        counts = torch.bincount(ids, minlength=total).to(acc_dtype) * c
        sums = sums / counts.clamp_min(1)
    grouped = sums.index_select(0, ids).view(n, 1, h, w).expand(n, c, h, w)
    return grouped.to(maps.dtype).contiguous()

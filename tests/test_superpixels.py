"""Tests of super-pixel segmentation and grouping against hand cases, loops and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from skimage import segmentation as skseg

from lightning_saliency.attribution.superpixels import (
    SEGMENTERS,
    default_segment_params,
    group_by_segments,
    segment,
)

ALGORITHMS = ("quickshift", "slic", "felzenszwalb", "watershed")


def _natural(
    size: int, names: tuple[str, ...] = ("astronaut", "chelsea", "coffee")
) -> torch.Tensor:
    """Images shipped inside scikit-image (no download), center-cropped and resized."""
    out = []
    for name in names:
        arr = np.asarray(getattr(skdata, name)())[..., :3].astype(np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1)[None]
        h, w = t.shape[-2:]
        m = min(h, w)
        t = t[..., (h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]
        t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
        out.append(t.clamp(0, 1))
    return torch.cat(out)


@pytest.fixture(scope="module")
def natural32() -> torch.Tensor:
    return _natural(32, ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"))


# ------------------------------------------------------------------ group_by_segments


def _loop_reference(maps: torch.Tensor, segments: torch.Tensor, reduction: str) -> torch.Tensor:
    out = torch.empty_like(maps, dtype=torch.float64)
    for n in range(maps.shape[0]):
        for s in segments[n].unique():
            mask = segments[n] == s
            values = maps[n][:, mask].double()
            if reduction.startswith("abs_"):
                values = values.abs()
            score = values.sum() if reduction.endswith("sum") else values.mean()
            out[n][:, mask] = score
    return out


def test_group_hand_computed() -> None:
    maps = torch.tensor(
        [
            [[[1.0, 2.0, 0.5], [3.0, -4.0, 1.0]], [[0.0, 1.0, -1.0], [2.0, 2.0, 0.0]]],
        ]
    )  # (1, 2, 2, 3)
    segments = torch.tensor([[[0, 0, 2], [5, 5, 2]]])
    # segment 0: 1+2+0+1 = 4 (4 elements); segment 5: 3-4+2+2 = 3; segment 2: .5+1-1+0 = .5
    expected_sum = torch.tensor([[4.0, 4.0, 0.5], [3.0, 3.0, 0.5]]).expand(1, 2, 2, 3)
    torch.testing.assert_close(group_by_segments(maps, segments), expected_sum)
    expected_mean = torch.tensor([[1.0, 1.0, 0.125], [0.75, 0.75, 0.125]]).expand(1, 2, 2, 3)
    torch.testing.assert_close(group_by_segments(maps, segments, reduction="mean"), expected_mean)
    # magnitudes: segment 0: 1+2+0+1 = 4; segment 5: 3+4+2+2 = 11; segment 2: .5+1+1+0 = 2.5
    expected_abs = torch.tensor([[4.0, 4.0, 2.5], [11.0, 11.0, 2.5]]).expand(1, 2, 2, 3)
    torch.testing.assert_close(group_by_segments(maps, segments, reduction="abs_sum"), expected_abs)
    torch.testing.assert_close(
        group_by_segments(maps, segments, reduction="abs_mean"), expected_abs / 4
    )


def test_signed_grouping_cancels_where_magnitude_grouping_does_not() -> None:
    """A segment whose pixels pull in opposite directions: signed score 0, mass kept."""
    maps = torch.tensor([[[[5.0, -5.0], [0.5, 0.25]]]])
    segments = torch.tensor([[[0, 0], [1, 1]]])
    signed = group_by_segments(maps, segments)[0, 0]
    mass = group_by_segments(maps, segments, reduction="abs_sum")[0, 0]
    assert signed.tolist() == [[0.0, 0.0], [0.75, 0.75]]  # the strong segment ranks lowest
    assert mass.tolist() == [[10.0, 10.0], [0.75, 0.75]]  # and highest by its mass


@pytest.mark.parametrize("reduction", ["sum", "mean", "abs_sum", "abs_mean"])
def test_group_matches_loop_reference(reduction: str) -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 3, 9, 7, generator=gen)
    segments = torch.randint(0, 6, (3, 9, 7), generator=gen) * 3  # ids 0,3,..,15, gaps
    segments[1] = 4  # a single segment
    got = group_by_segments(maps, segments, reduction=reduction)
    assert got.dtype == torch.float32 and got.shape == maps.shape
    # float32 accumulation of at most 3 * 63 terms of size ~1: error well below 2e-5
    torch.testing.assert_close(
        got.double(), _loop_reference(maps, segments, reduction), rtol=1e-5, atol=2e-5
    )


def _group_size(segments: torch.Tensor, channels: int) -> torch.Tensor:
    """Number of (pixel, channel) elements sharing each element's value, via numpy."""
    sizes = []
    for seg in segments.numpy():
        _, inverse, counts = np.unique(seg, return_inverse=True, return_counts=True)
        sizes.append(counts[inverse.reshape(seg.shape)] * channels)
    return torch.from_numpy(np.stack(sizes)).unsqueeze(1).double()


def test_group_invariants_total_and_constancy() -> None:
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(4, 3, 16, 16, generator=gen, dtype=torch.float64)
    segments = segment(torch.rand(4, 3, 16, 16, generator=gen), "watershed", markers=9)
    totals = maps.sum(dim=(1, 2, 3))

    grouped = group_by_segments(maps, segments)
    assert grouped.dtype == torch.float64
    # "sum": each segment counted once gives the map's total ...
    size = _group_size(segments, channels=3)
    torch.testing.assert_close((grouped / size).sum(dim=(1, 2, 3)), totals)
    # ... equivalently, one representative pixel (channel 0) per segment
    for n in range(4):
        flat_seg = segments[n].flatten()
        first = torch.tensor([int((flat_seg == s).nonzero()[0]) for s in flat_seg.unique()])
        torch.testing.assert_close(grouped[n, 0].flatten()[first].sum(), totals[n])
    # the plain sum is the total only with the "mean" reduction
    grouped_mean = group_by_segments(maps, segments, reduction="mean")
    torch.testing.assert_close(grouped_mean.sum(dim=(1, 2, 3)), totals)
    # the magnitude reductions keep the total of |maps| the same two ways, and are >= 0
    masses = maps.abs().sum(dim=(1, 2, 3))
    grouped_abs = group_by_segments(maps, segments, reduction="abs_sum")
    torch.testing.assert_close((grouped_abs / size).sum(dim=(1, 2, 3)), masses)
    grouped_abs_mean = group_by_segments(maps, segments, reduction="abs_mean")
    torch.testing.assert_close(grouped_abs_mean.sum(dim=(1, 2, 3)), masses)
    assert (grouped_abs >= 0).all() and (grouped_abs_mean >= 0).all()

    # constant within every segment and over channels
    for g in (grouped, grouped_mean, grouped_abs, grouped_abs_mean):
        for n in range(4):
            for s in segments[n].unique():
                values = g[n][:, segments[n] == s]
                assert torch.all(values == values.flatten()[0])


def test_group_keeps_dtype_and_device_and_validates() -> None:
    maps = torch.randn(2, 1, 4, 4)
    segments = torch.zeros(2, 4, 4, dtype=torch.int32)
    out = group_by_segments(maps, segments)
    assert out.dtype == torch.float32 and out.device == maps.device
    torch.testing.assert_close(out[:, 0, 0, 0], maps.sum(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 5, 4\)"):
        group_by_segments(maps, torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"maps \(1, 4, 4\) and segments \(4, 4\)"):
        group_by_segments(maps[0], segments[0])
    with pytest.raises(TypeError, match="integer"):
        group_by_segments(maps, segments.float())
    with pytest.raises(ValueError, match=">= 0"):
        group_by_segments(maps, segments - 1)
    with pytest.raises(ValueError, match="reduction"):
        group_by_segments(maps, segments, reduction="max")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_group_on_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 3, 8, 8, generator=gen)
    segments = torch.randint(0, 5, (2, 8, 8), generator=gen)
    got = group_by_segments(maps.cuda(), segments.cuda())
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), group_by_segments(maps, segments))


# ---------------------------------------------------------------------------- segment


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_segment_shape_ids_determinism(algorithm: str, natural32: torch.Tensor) -> None:
    seg = segment(natural32, algorithm, n_jobs=2)
    assert seg.shape == (5, 32, 32) and seg.dtype == torch.long
    for s in seg:
        assert torch.equal(s.unique(), torch.arange(int(s.max()) + 1))
    torch.testing.assert_close(segment(natural32, algorithm, n_jobs=1), seg, rtol=0, atol=0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_default_counts_in_documented_range_32(algorithm: str, natural32: torch.Tensor) -> None:
    counts = (segment(natural32, algorithm).flatten(1).amax(1) + 1).float()
    assert 20 <= counts.mean() <= 60, counts
    assert counts.min() >= 10 and counts.max() <= 100, counts  # quickshift varies most


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_default_counts_in_documented_range_224(algorithm: str) -> None:
    images = _natural(224, ("chelsea", "coffee"))
    counts = (segment(images, algorithm).flatten(1).amax(1) + 1).float()
    assert 100 <= counts.min() and counts.max() <= 250, counts


def test_segment_matches_scikit_image_directly(natural32: torch.Tensor) -> None:
    params = {"n_segments": 30, "compactness": 5.0}
    ours = segment(natural32[:2], "slic", **params)
    for img, seg in zip(natural32[:2], ours, strict=True):
        ref = skseg.slic(img.permute(1, 2, 0).double().numpy(), start_label=0, sigma=0, **params)
        _, ref_ids = np.unique(ref, return_inverse=True)
        np.testing.assert_array_equal(seg.numpy(), ref_ids.reshape(ref.shape))


def test_segment_two_halves() -> None:
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0
    seg = segment(x, "felzenszwalb", scale=1.0, sigma=0.0, min_size=1)[0]
    expected = torch.zeros(8, 8, dtype=torch.long)
    expected[:, 4:] = 1
    assert torch.equal(seg, expected)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_segment_grayscale(algorithm: str) -> None:
    gray = _natural(32, ("astronaut", "coffee")).mean(dim=1, keepdim=True)
    seg = segment(gray, algorithm)
    assert seg.shape == (2, 32, 32)
    counts = seg.flatten(1).amax(1) + 1
    assert torch.all(counts >= 2)
    for s in seg:
        assert torch.equal(s.unique(), torch.arange(int(s.max()) + 1))
    if algorithm == "quickshift":  # needs color: the gray channel is replicated to RGB
        torch.testing.assert_close(seg, segment(gray.expand(-1, 3, -1, -1), algorithm))


def test_segment_errors() -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="felzenszwalb, quickshift, slic, watershed"):
        segment(x, "kmeans")
    with pytest.raises(ValueError, match=r"\['n_segment'\].*accepted: n_segments"):
        segment(x, "slic", n_segment=10)
    with pytest.raises(ValueError, match="positive integer"):
        segment(x, "slic", n_segments=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        segment(x * 2 - 0.5, "slic")
    with pytest.raises(ValueError, match="NaN"):
        segment(torch.full((1, 3, 8, 8), float("nan")), "slic")
    with pytest.raises(ValueError, match="4-D"):
        segment(x[0], "slic")
    with pytest.raises(TypeError, match="floating"):
        segment((x * 255).to(torch.uint8), "slic")
    with pytest.raises(ValueError, match="C=2"):
        segment(x[:, :2], "slic")
    with pytest.raises(ValueError, match="n_jobs"):
        segment(x, "slic", n_jobs=0)
    with pytest.raises(ValueError, match="convert2lab"):
        segment(x[:, :1], "slic", convert2lab=True)


def test_default_segment_params() -> None:
    for algorithm in ALGORITHMS:
        for size in (16, 32, 64, 224, 512):
            params = default_segment_params(algorithm, size)
            assert set(params) <= set(SEGMENTERS[algorithm])
    assert (
        default_segment_params("slic", 224)["n_segments"]
        > default_segment_params("slic", 32)["n_segments"]
    )
    with pytest.raises(ValueError, match="known"):
        default_segment_params("kmeans", 32)
    with pytest.raises(ValueError, match=">= 2"):
        default_segment_params("slic", 1)
    with pytest.raises(TypeError, match="int"):
        default_segment_params("slic", 32.0)  # type: ignore[arg-type]

"""The agreement metrics' inner kernels against independent references (issue 21's faster
versions must give the same answers): ``finite_rows`` against ``torch.isfinite``, the cropped
Gaussian filter against the crop of the full one and against ``scipy.ndimage``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_saliency.metrics import finite_rows
from lightning_saliency.metrics._ssim import _gaussian_filter, _gaussian_kernel


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_rows_equals_isfinite_all(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, 5, generator=g).to(dtype)
    big = torch.finfo(dtype).max
    planted = [float("nan"), float("inf"), float("-inf"), big, -big, torch.finfo(dtype).tiny / 4]
    for r in range(0, 400, 7):  # one or two planted values in some rows, the rest finite
        flat = x[r].view(-1)
        flat[(r * 5) % flat.numel()] = planted[r % len(planted)]
        if r % 3 == 0:
            flat[(r * 11 + 1) % flat.numel()] = planted[(r // 3) % len(planted)]
    x[-1] = big  # a row of maxima: its sum overflows, yet every element is finite
    want = torch.isfinite(x).flatten(1).all(dim=1)
    got = finite_rows(x)
    assert got.dtype == torch.bool
    assert torch.equal(got, want)
    assert bool(got[-1]) and 0 < int((~got).sum()) < 400
    assert torch.equal(finite_rows(x[:, 0, 0]), torch.isfinite(x[:, 0, 0]))  # one value per row


def test_finite_rows_of_integer_and_bool_maps_and_empty_rows() -> None:
    assert finite_rows(torch.tensor([[1, 2], [3, 4]])).tolist() == [True, True]
    assert finite_rows(torch.tensor([[True], [False]])).tolist() == [True, True]
    assert finite_rows(torch.empty(3, 0)).tolist() == [True, True, True]  # as all() of nothing
    with pytest.raises(ValueError, match="batch dimension"):
        finite_rows(torch.tensor(1.0))


@pytest.mark.parametrize("sigma", [1.5, 0.8])
@pytest.mark.parametrize("crop", [0, 1, 3, 5, 7])
def test_cropped_gaussian_filter_is_the_crop_of_the_full_one_bit_for_bit(sigma: float, crop: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 17, 16, generator=g)  # float32: a different order would show
    k = _gaussian_kernel(sigma, 3.5)
    full = _gaussian_filter(x, k)
    got = _gaussian_filter(x, k, crop)
    assert got.shape == (4, 17 - 2 * crop, 16 - 2 * crop)
    assert torch.equal(got, full[:, crop : 17 - crop, crop : 16 - crop])


def test_gaussian_filter_equals_scipy_reflect() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 12, 9, generator=g, dtype=torch.float64)
    for sigma, crop in [(1.5, 0), (1.5, 2), (0.7, 1)]:
        got = _gaussian_filter(x, _gaussian_kernel(sigma, 3.5), crop).numpy()
        want = np.stack([ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=3.5)
                         for a in x.numpy()])  # fmt: skip
        want = want[:, crop : 12 - crop, crop : 9 - crop]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)

"""Non-finite maps give NaN (never a plausible number); constant maps keep their own rules.

References are scipy, skimage, numpy formulas and hand cases; the finite samples of a batch
that also holds non-finite ones must equal, bit for bit, the same samples computed alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.stats import entropy, spearmanr
from skimage.metrics import structural_similarity
from torch import Tensor, nn

from lightning_saliency.metrics import (
    complexity,
    finite_rows,
    l2_distance,
    mege_reco,
    mu_fidelity,
    normalize_maps,
    prediction_agreement,
    reduce_channels,
    sparseness,
    spearman,
    ssim,
    topk_intersection,
)

NAN, INF = float("nan"), float("inf")
BAD = (0, 1, 2)  # sample 0 all-NaN in a, 1 one +Inf in a, 2 one -Inf in b
GOOD = (3, 4, 5)


def _pair(size: int = 12, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    a = torch.randn(6, 3, size, size, generator=g, dtype=dtype)
    b = a + torch.randn(6, 3, size, size, generator=g, dtype=dtype)
    a[0] = NAN
    a[1, 2, 3, 4] = INF
    b[2, 0, 5, 1] = -INF
    return a, b


def _abs_sum(m: Tensor) -> np.ndarray:
    return np.abs(m.double().numpy()).sum(axis=0)


def _ref_l2(a: Tensor, b: Tensor) -> float:
    x, y = a.double().numpy().ravel(), b.double().numpy().ravel()
    return float(np.linalg.norm(x / np.linalg.norm(x) - y / np.linalg.norm(y)))


def _ref_spearman(a: Tensor, b: Tensor) -> float:
    return float(spearmanr(_abs_sum(a).ravel(), _abs_sum(b).ravel()).statistic)


def _ref_topk(a: Tensor, b: Tensor) -> float:
    x, y = _abs_sum(a).ravel(), _abs_sum(b).ravel()
    k = round(0.1 * x.size)
    top = set(np.argsort(-x, kind="stable")[:k]) & set(np.argsort(-y, kind="stable")[:k])
    return len(top) / k


def _ssim_prep(m: Tensor) -> np.ndarray:
    s = _abs_sum(m)
    return np.minimum(s / np.percentile(s, 99.0), 1.0)


def _ref_ssim(a: Tensor, b: Tensor) -> float:
    return float(
        structural_similarity(
            _ssim_prep(a), _ssim_prep(b), data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, win_size=7,
        )
    )  # fmt: skip


PAIR_METRICS: dict[str, tuple[Callable[..., Tensor], Callable[[Tensor, Tensor], float]]] = {
    "l2_distance": (l2_distance, _ref_l2),
    "spearman": (spearman, _ref_spearman),
    "topk_intersection": (topk_intersection, _ref_topk),
    "ssim": (lambda a, b: ssim(a, b, win_size=7), _ref_ssim),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(PAIR_METRICS))
def test_pair_metrics_nan_for_nonfinite_samples_only(name: str, dtype: torch.dtype) -> None:
    fn, ref = PAIR_METRICS[name]
    a, b = _pair(dtype=dtype)
    got = fn(a, b)
    assert got.dtype == dtype and torch.isnan(got[list(BAD)]).all()
    for i in GOOD:
        assert torch.equal(got[i : i + 1], fn(a[i : i + 1], b[i : i + 1]))
        assert got[i].item() == pytest.approx(ref(a[i], b[i]), abs=1e-4)
    # the rule is symmetric in the two maps
    assert torch.equal(fn(b, a).isnan(), got.isnan())


@pytest.mark.parametrize("name", sorted(PAIR_METRICS))
def test_pair_metrics_all_nan_maps_give_nan(name: str) -> None:
    """The issue's case: all-NaN maps used to give 0.054 (spearman) or 0.094 (top-k)."""
    fn, _ = PAIR_METRICS[name]
    nan_maps = torch.full((3, 3, 12, 12), NAN)
    assert torch.isnan(fn(nan_maps, nan_maps)).all()
    assert torch.isnan(fn(nan_maps, torch.rand(3, 3, 12, 12))).all()


@pytest.mark.parametrize("red", ["sum", "abs_sum", None])
def test_pair_metrics_nan_whatever_the_channel_reduction(red: str | None) -> None:
    a, b = _pair()
    a[4, 0, 0, 0], a[4, 1, 0, 0] = INF, -INF  # "sum" makes this NaN, "abs_sum" Inf
    for fn in (l2_distance, spearman, topk_intersection):
        got = fn(a, b, channel_reduction=red)
        assert got.isnan().tolist() == [True, True, True, False, True, False]


@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_single_map_scores_nan_for_nonfinite_samples_only(name: str) -> None:
    fn = {"sparseness": sparseness, "complexity": complexity}[name]
    a, b = _pair()
    maps = torch.cat([a[:2], b[2:]])  # NaN, +Inf, -Inf, finite x 3
    got = fn(maps)
    assert torch.isnan(got[list(BAD)]).all()
    for i in GOOD:
        assert torch.equal(got[i : i + 1], fn(maps[i : i + 1]))
        v = np.sort(_abs_sum(maps[i]).ravel())
        idx = np.arange(1, v.size + 1)
        gini = np.sum((2 * idx - v.size - 1) * v) / (v.size * v.sum())
        expected = gini if name == "sparseness" else entropy(v)
        assert got[i].item() == pytest.approx(expected, abs=1e-5)
    # the case: all-NaN maps used to give sparseness 0 and complexity log n
    assert torch.isnan(fn(torch.full((2, 3, 4, 4), NAN))).all()


def test_normalize_maps_nonfinite_rows_all_nan() -> None:
    a, _ = _pair()
    got = normalize_maps(a)
    assert torch.isnan(got[:2]).all()  # not [NaN, 0, 0, ...] for the +Inf row
    for i in range(2, 6):
        assert torch.equal(got[i], a[i] / a[i].norm())
    assert torch.equal(normalize_maps(torch.zeros(2, 5)), torch.zeros(2, 5))


def test_reduce_channels_propagates_nonfinite() -> None:
    m = torch.tensor([[[[INF, 1.0]], [[-INF, NAN]]]])  # (1, 2, 1, 2)
    assert finite_rows(reduce_channels(m, "sum")).tolist() == [False]
    assert torch.isnan(reduce_channels(m, "sum")).all()
    assert reduce_channels(m, "abs_sum")[0, 0, 0] == INF


def test_finite_rows() -> None:
    a, b = _pair()
    assert finite_rows(a).tolist() == [False, False, True, True, True, True]
    assert finite_rows(b).tolist() == [True, True, False, True, True, True]
    assert finite_rows(a.flatten(1)).tolist() == finite_rows(a).tolist()
    assert finite_rows(torch.tensor([1.0, NAN, -INF])).tolist() == [True, False, False]
    assert finite_rows(torch.zeros(0, 3, 4)).shape == (0,)
    assert finite_rows(torch.ones(2, 3, dtype=torch.long)).tolist() == [True, True]
    assert finite_rows(a.half()).tolist() == finite_rows(a).tolist()
    with pytest.raises(ValueError, match="batch dimension"):
        finite_rows(torch.tensor(1.0))


# ---------------------------------------------------------------- constant (zero) maps
def test_all_zero_and_constant_maps_are_nan_not_perfect_agreement() -> None:
    """Issue 19 (case 7): two all-zero maps used to score L2 0, top-k 1 and SSIM 1 (perfect
    agreement from a model that ignores its input); a flat map (one super-pixel segment)
    SSIM 1. Now every agreement metric is NaN for them; the single-map scores keep their
    documented constant-map rules, and a constant non-zero map keeps its L2 direction."""
    zero = torch.zeros(2, 3, 12, 12)
    flat = torch.full((2, 3, 12, 12), 0.5)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    assert finite_rows(zero).all()
    for a, b in ((zero, zero), (zero, x), (x, zero)):
        assert torch.isnan(l2_distance(a, b)).all()
        assert torch.isnan(spearman(a, b)).all()
        assert torch.isnan(topk_intersection(a, b)).all()
        assert torch.isnan(ssim(a, b, win_size=7)).all()
    assert torch.isnan(ssim(flat, flat, win_size=7)).all()
    assert torch.isnan(topk_intersection(flat, x)).all()
    assert l2_distance(flat, flat).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert l2_distance(zero, x, normalize=False).tolist() == pytest.approx(
        x.flatten(1).norm(dim=1).tolist())
    assert sparseness(zero).tolist() == [0.0, 0.0]
    assert complexity(zero).tolist() == pytest.approx([math.log(144)] * 2)
    assert torch.equal(normalize_maps(zero), zero)


# ------------------------------------------------------------------- predictions
def test_prediction_agreement_nonfinite_logits_nan() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    assert prediction_agreement(logits, labels).item() == pytest.approx(2 / 3)
    for bad in (NAN, INF, -INF):
        broken = logits.clone()
        broken[1, 0] = bad
        assert torch.isnan(prediction_agreement(broken, labels))
        assert torch.isnan(prediction_agreement(labels, broken))
    assert prediction_agreement(labels, labels).item() == 1.0  # integer labels are finite


# --------------------------------------------------------------------- MeGe / ReCo
def _mege_case() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(3, 8, 2, 4, 4, generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    preds = torch.where(torch.rand(3, 8, generator=g) < 0.6, labels, (labels + 1) % 3)
    seen = torch.zeros(3, 8, dtype=torch.bool)
    seen[0, :3], seen[1, 3:6], seen[2, 6] = True, True, True  # sample 7: seen by none
    return maps, preds, labels, seen


def test_mege_reco_nan_when_a_used_map_is_nonfinite() -> None:
    maps, preds, labels, seen = _mege_case()
    mege, reco = mege_reco(maps, preds, labels)
    assert math.isfinite(mege.item()) and math.isfinite(reco.item())
    for bad in (NAN, INF):
        broken = maps.clone()
        broken[1, 4, 0, 2, 2] = bad
        for pairs in ("all", "one_seen"):  # sample 4 is kept by one_seen (seen by model 1)
            m, r = mege_reco(broken, preds, labels, seen, pairs=pairs)
            assert torch.isnan(m) and torch.isnan(r)


def test_mege_reco_ignores_nonfinite_maps_of_unkept_pair_samples() -> None:
    maps, preds, labels, seen = _mege_case()
    ref = mege_reco(maps, preds, labels, seen, pairs="one_seen")
    assert all(math.isfinite(v.item()) for v in ref)
    broken = maps.clone()
    broken[:, 7] = NAN  # nobody saw sample 7: one_seen never uses it
    got = mege_reco(broken, preds, labels, seen, pairs="one_seen")
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_mege_reco_nan_for_nonfinite_logits() -> None:
    maps, preds, labels, _ = _mege_case()
    logits = nn.functional.one_hot(preds, 3).float()
    ref = mege_reco(maps, preds, labels)
    got = mege_reco(maps, logits, labels)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    logits[2, 0, 1] = NAN
    m, r = mege_reco(maps, logits, labels)
    assert torch.isnan(m) and torch.isnan(r)


# -------------------------------------------------------------------- muFidelity
def test_mu_fidelity_nan_for_nonfinite_maps_or_inputs() -> None:
    g = torch.Generator().manual_seed(9)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False))
    x = torch.randn(5, 1, 4, 4, generator=g)
    maps = lin[1].weight[2].detach().view(1, 1, 4, 4) * x  # exact for a linear model: 1
    kw = dict(num_subsets=8, subset_fraction=0.5)
    ref = mu_fidelity(lin, x, maps, 2, **kw)
    torch.testing.assert_close(ref, torch.ones(5), atol=1e-5, rtol=0)
    broken_maps, broken_x = maps.clone(), x.clone()
    broken_maps[0] = NAN
    broken_maps[1, 0, 2, 2] = -INF
    broken_x[2, 0, 1, 1] = NAN
    got = mu_fidelity(lin, broken_x, broken_maps, 2, **kw)
    assert torch.isnan(got[:3]).all()
    assert torch.equal(got[3:], ref[3:])  # same subsets (same generator), same values
    # an all-zero map is finite but constant: its correlation is undefined
    assert torch.isnan(mu_fidelity(lin, x, torch.zeros_like(x), 2, **kw)).all()

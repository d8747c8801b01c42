"""Tests of lightning_saliency.metrics against scipy, skimage, sklearn and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy, spearmanr
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_curve
from torch import nn

from lightning_saliency.metrics import (
    complexity,
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

SQRT2 = math.sqrt(2.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------ reduce / normalize
def test_reduce_channels_modes_and_shapes() -> None:
    m = torch.tensor([[[[1.0, -2.0]], [[3.0, 1.0]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(reduce_channels(m, "sum"), torch.tensor([[[4.0, -1.0]]]))
    torch.testing.assert_close(reduce_channels(m, "abs_sum"), torch.tensor([[[4.0, 3.0]]]))
    assert reduce_channels(m).shape == (1, 1, 2)  # default is the signed sum
    three = torch.tensor([[[-1.0, 2.0]]])  # (N, H, W): no channel axis
    torch.testing.assert_close(reduce_channels(three, "sum"), three)
    torch.testing.assert_close(reduce_channels(three, "abs_sum"), three.abs())
    flat = torch.tensor([[-1.0, 2.0]])
    torch.testing.assert_close(reduce_channels(flat, "abs_sum"), flat.abs())
    assert reduce_channels(m.double()).dtype == torch.float64


def test_reduce_channels_bad_input() -> None:
    with pytest.raises(ValueError, match="mode"):
        reduce_channels(torch.zeros(1, 2, 3, 3), "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 3, 3, 3\)"):
        reduce_channels(torch.zeros(1, 2, 3, 3, 3))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        reduce_channels(np.zeros((1, 2, 3, 3)))  # type: ignore[arg-type]


def test_normalize_maps() -> None:
    x = torch.randn(4, 3, 5, 5, generator=_gen())
    x[2] = 0.0
    y = normalize_maps(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    norms = y.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms[[0, 1, 3]], torch.ones(3))
    assert torch.all(y[2] == 0)  # zero map stays zero
    torch.testing.assert_close(y[0], x[0] / x[0].norm())
    assert normalize_maps(x.to(torch.bfloat16)).dtype == torch.float32
    with pytest.raises(ValueError, match="eps"):
        normalize_maps(x, eps=0.0)
    with pytest.raises(ValueError, match="batch"):
        normalize_maps(torch.ones(3))


# -------------------------------------------------------------------- L2 distance
def test_l2_distance_hand_case() -> None:
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 5.0], [-2.0, 0.0], [0.0, 7.0]])
    # normalized: (0.6, 0.8) vs (0, 1); (1, 0) vs (-1, 0); a zero map has no direction:
    # NaN, not the distance 1 it used to get (issue 19)
    torch.testing.assert_close(l2_distance(a, b), torch.tensor([math.sqrt(0.4), 2.0, math.nan]),
                               equal_nan=True)  # fmt: skip
    raw = l2_distance(a, b, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([math.sqrt(10.0), 3.0, 7.0]))
    # 4-D maps are flattened; optional channel reduction first
    a4 = torch.tensor([[[[1.0]], [[-1.0]]]])  # (1, 2, 1, 1)
    b4 = torch.tensor([[[[1.0]], [[1.0]]]])
    torch.testing.assert_close(l2_distance(a4, b4, normalize=False), torch.tensor([2.0]))
    red = l2_distance(a4, b4, normalize=False, channel_reduction="abs_sum")
    torch.testing.assert_close(red, torch.tensor([0.0]))


def test_pair_metrics_shape_errors() -> None:
    a = torch.zeros(2, 3, 4, 4)
    for fn in (l2_distance, spearman, topk_intersection, ssim):
        with pytest.raises(ValueError, match="same shape"):
            fn(a, torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="got shape"):
        spearman(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="got shape"):
        l2_distance(torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="channel_reduction"):
        spearman(a, a, channel_reduction="mean")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Tensor"):
        l2_distance([[1.0]], torch.ones(1, 1))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- Spearman
@pytest.mark.parametrize("with_ties", [False, True])
def test_spearman_matches_scipy(with_ties: bool) -> None:
    g = _gen(1)
    if with_ties:
        a = torch.randint(0, 4, (6, 3, 5, 5), generator=g).float() - 1.5
        b = torch.randint(0, 4, (6, 3, 5, 5), generator=g).float() - 1.5
    else:
        a = torch.randn(6, 3, 5, 5, generator=g)
        b = a + torch.randn(6, 3, 5, 5, generator=g)
    for red in ("abs_sum", "sum", None):
        got = spearman(a, b, channel_reduction=red)
        ra = a.flatten(1) if red is None else reduce_channels(a, red).flatten(1)
        rb = b.flatten(1) if red is None else reduce_channels(b, red).flatten(1)
        ref = [spearmanr(ra[i].numpy(), rb[i].numpy()).statistic for i in range(6)]
        np.testing.assert_allclose(got.numpy(), np.array(ref), atol=1e-6)


def test_spearman_many_ties_and_constant() -> None:
    a = torch.tensor([[1.0, 1.0, 2.0, 2.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    b = torch.tensor([[0.0, 3.0, 3.0, 1.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    got = spearman(a, b, channel_reduction=None)
    ref = spearmanr(a[0].numpy(), b[0].numpy()).statistic
    assert got[0].item() == pytest.approx(ref, abs=1e-6)
    assert torch.isnan(got[1])  # constant map: correlation undefined
    # invariance to monotone transforms, identity gives 1
    x = torch.randn(3, 40, generator=_gen(2))
    torch.testing.assert_close(spearman(x, x.exp(), channel_reduction=None), torch.ones(3))
    torch.testing.assert_close(spearman(x, -x, channel_reduction=None), -torch.ones(3))


def test_float64_and_half_inputs() -> None:
    x = torch.randn(2, 3, 12, 12, generator=_gen(3))
    y = torch.randn(2, 3, 12, 12, generator=_gen(4))
    assert spearman(x.double(), y.double()).dtype == torch.float64
    for fn in (spearman, topk_intersection, ssim, l2_distance):
        half = fn(x.to(torch.bfloat16), y.to(torch.bfloat16))
        assert half.dtype == torch.float32
        full = fn(x.to(torch.bfloat16).float(), y.to(torch.bfloat16).float())
        torch.testing.assert_close(half, full)


# ------------------------------------------------------------------------- top-k
def test_topk_intersection_hand_cases() -> None:
    a = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    b = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    f = topk_intersection
    assert f(a, b, 1, channel_reduction=None).item() == 1.0
    assert f(a, b, 2, channel_reduction=None).item() == 0.5  # {0,1} vs {0,2}
    assert f(a, b, 3, channel_reduction=None).item() == pytest.approx(2 / 3)  # {0,1,2} vs {0,2,3}
    assert f(a, b, 0.5, channel_reduction=None).item() == 0.5  # fraction: round(0.5 * 4) = 2
    assert f(a, b, 1.0, channel_reduction=None).item() == 1.0  # all elements
    # ties are broken by position (smaller flat index first)
    ta = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # top-2 = {0, 1}
    tb = torch.tensor([[0.0, 1.0, 1.0, 1.0]])  # top-2 = {1, 2}
    assert f(ta, tb, 2, channel_reduction=None).item() == 0.5
    # default abs_sum reduction: ranking by sum_c |.|
    a4 = torch.tensor([[[[-5.0, 1.0, 0.0, 0.5]], [[0.0, 1.0, 0.0, 0.0]]]])  # |.| sums 5, 2, 0, .5
    b4 = torch.tensor([[[[0.0, 0.0, 9.0, 0.0]], [[0.0, -3.0, 0.0, 0.0]]]])  # 0, 3, 9, 0
    assert f(a4, b4, 2).item() == 0.5  # {0, 1} vs {2, 1}
    assert f(a4, b4, 2, channel_reduction="sum").item() == 0.0  # sums -5,2,0,.5 / 0,-3,9,0
    x = torch.randn(5, 3, 8, 8, generator=_gen(5))
    torch.testing.assert_close(f(x, x), torch.ones(5))


def test_topk_bad_k() -> None:
    a = torch.zeros(2, 16)
    for bad in (0, 17, -1):
        with pytest.raises(ValueError, match=r"\[1, 16\]"):
            topk_intersection(a, a, bad)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            topk_intersection(a, a, bad)
    with pytest.raises(TypeError, match="k"):
        topk_intersection(a, a, True)
    with pytest.raises(TypeError, match="k"):
        topk_intersection(a, a, "10")  # type: ignore[arg-type]


# -------------------------------------------------------------------------- SSIM
def _skimage_ssim(a: torch.Tensor, b: torch.Tensor, win_size: int | None = None) -> np.ndarray:
    """Reference: DESIGN's preprocessing in numpy, then skimage."""

    def prep(m: np.ndarray) -> np.ndarray:
        m = np.abs(m).sum(axis=0)  # abs_sum over channels
        p = np.percentile(m, 99.0)
        return np.minimum(m / p, 1.0)

    out = []
    for i in range(a.shape[0]):
        out.append(
            structural_similarity(
                prep(a[i].double().numpy()),
                prep(b[i].double().numpy()),
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                win_size=win_size,
            )
        )
    return np.array(out)


def _structured_maps(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blobs_a, blobs_b = [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * size).tolist()
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.1 * size**2))
        blobs_a.append(torch.stack([blob, -0.5 * blob, 0.2 * blob]))
        shifted = torch.roll(blob, shifts=(1, 2), dims=(0, 1))
        blobs_b.append(torch.stack([shifted, shifted, shifted]) * 3.0)
    a = torch.stack(blobs_a) + 0.05 * torch.randn(n, 3, size, size, generator=g)
    b = torch.stack(blobs_b) + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return a, b


@pytest.mark.parametrize("size", [32, 11, 20])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_matches_skimage(size: int, kind: str) -> None:
    g = _gen(size)
    if kind == "random":
        a = torch.randn(3, 3, size, size, generator=g)
        b = a + torch.randn(3, 3, size, size, generator=g)
    else:
        a, b = _structured_maps(3, size, g)
    ref = _skimage_ssim(a, b)
    np.testing.assert_allclose(ssim(a, b).numpy(), ref, atol=1e-4)  # float32 path
    np.testing.assert_allclose(ssim(a.double(), b.double()).numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_small_images_need_win_size(kind: str) -> None:
    g = _gen(8)
    if kind == "random":
        a, b = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    else:
        a, b = _structured_maps(3, 8, g)
    # skimage refuses 8x8 with its 11-pixel window; so do we, with a pointer to win_size
    with pytest.raises(ValueError, match="win_size exceeds"):
        _skimage_ssim(a, b)
    with pytest.raises(ValueError, match=r"smaller than the SSIM window \(11\)"):
        ssim(a, b)
    for win in (7, 5, 3, 1):
        ref = _skimage_ssim(a, b, win_size=win)
        np.testing.assert_allclose(ssim(a, b, win_size=win).numpy(), ref, atol=1e-4)


def test_ssim_properties_and_options() -> None:
    g = _gen(9)
    a = torch.rand(2, 1, 16, 24, generator=g)  # non-square
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    # scale invariance comes from the percentile scaling
    b = torch.rand(2, 1, 16, 24, generator=g)
    torch.testing.assert_close(ssim(a * 7.0, b), ssim(a, b))
    # 3-D input = already reduced maps; |.| is taken
    torch.testing.assert_close(ssim(a[:, 0], -b[:, 0]), ssim(a, b))
    # percentile=None: maps used as given (here already in [0, 1])
    ref = [
        structural_similarity(
            a[i, 0].double().numpy(),
            b[i, 0].double().numpy(),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(ssim(a, b, percentile=None).numpy(), ref, atol=1e-5)
    # two all-zero maps are no evidence of agreement: NaN, not the SSIM 1 they used to get
    z = torch.zeros(1, 3, 12, 12)
    assert torch.isnan(ssim(z, z)).all()
    with pytest.raises(ValueError, match="odd"):
        ssim(a, b, win_size=4)
    with pytest.raises(ValueError, match="percentile"):
        ssim(a, b, percentile=0.0)
    with pytest.raises(ValueError, match="channel_reduction"):
        ssim(a, b, channel_reduction=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got shape"):
        ssim(torch.zeros(2, 16), torch.zeros(2, 16))


# ------------------------------------------------------------ sparseness / complexity
def test_sparseness_gini() -> None:
    n = 16
    one_hot = torch.zeros(1, 1, 4, 4)
    one_hot[0, 0, 2, 1] = -3.0
    assert sparseness(one_hot).item() == pytest.approx((n - 1) / n)
    assert sparseness(torch.full((1, 3, 4, 4), 2.0)).item() == pytest.approx(0.0, abs=1e-7)
    assert sparseness(torch.zeros(1, 3, 4, 4)).item() == 0.0  # zero map counts as all-equal
    # random maps vs. the formula in numpy
    x = torch.randn(4, 3, 6, 6, generator=_gen(10))
    got = sparseness(x)
    for i in range(4):
        v = np.sort(np.abs(x[i].numpy()).sum(axis=0).ravel()).astype(np.float64)
        m = v.size
        idx = np.arange(1, m + 1)
        ref = np.sum((2 * idx - m - 1) * v) / (m * v.sum())
        assert got[i].item() == pytest.approx(ref, abs=1e-6)
    # no channel reduction: per element of the full map
    y = torch.tensor([[0.0, 0.0, 1.0, -1.0]])
    assert sparseness(y, channel_reduction=None).item() == pytest.approx(0.5)


def test_complexity_entropy() -> None:
    n = 25
    assert complexity(torch.ones(2, 1, 5, 5)).tolist() == pytest.approx([math.log(n)] * 2)
    one_hot = torch.zeros(1, 3, 5, 5)
    one_hot[0, 1, 0, 3] = 2.0
    assert complexity(one_hot).item() == 0.0
    assert complexity(torch.zeros(1, 3, 5, 5)).item() == pytest.approx(math.log(n))
    x = torch.randn(4, 3, 6, 6, generator=_gen(11))
    got = complexity(x)
    ref = [entropy(np.abs(x[i].numpy()).sum(axis=0).ravel()) for i in range(4)]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    got_flat = complexity(x, channel_reduction=None)
    ref_flat = [entropy(np.abs(x[i].numpy()).ravel()) for i in range(4)]
    np.testing.assert_allclose(got_flat.numpy(), ref_flat, atol=1e-5)


# ------------------------------------------------------------- prediction agreement
def test_prediction_agreement() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])
    assert prediction_agreement(logits, labels).item() == 0.5
    assert prediction_agreement(labels, logits).item() == 0.5
    assert prediction_agreement(logits, logits * 2).item() == 1.0
    assert prediction_agreement(labels, labels).dim() == 0
    with pytest.raises(ValueError, match="different numbers"):
        prediction_agreement(logits, labels[:3])
    with pytest.raises(TypeError, match="integer class labels"):
        prediction_agreement(labels.float(), labels)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        prediction_agreement(torch.zeros(2, 2, 2), labels)


# --------------------------------------------------------------------- MeGe / ReCo
def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # K=3 models, N=2 samples, 2-element maps; scales must not matter (normalized)
    maps = torch.tensor(
        [
            [[3.0, 0.0], [1.0, 0.0]],  # model 0
            [[1.0, 0.0], [0.0, 2.0]],  # model 1
            [[0.0, 0.5], [-4.0, 0.0]],  # model 2
        ]
    )
    preds = torch.tensor([[0, 1], [0, 1], [1, 1]])
    labels = torch.tensor([0, 1])
    seen = torch.tensor([[True, False], [False, True], [False, False]])
    return maps, preds, labels, seen


def test_mege_reco_hand_case_all_pairs() -> None:
    maps, preds, labels, _ = _hand_case()
    # sample 0: (0,1) d=0 same-correct; (0,2), (1,2) d=sqrt2 one-correct
    # sample 1: all same-correct: (0,1) sqrt2, (0,2) 2, (1,2) sqrt2
    mege, reco = mege_reco(maps, preds, labels)
    assert mege.dim() == 0 and reco.dim() == 0
    assert mege.item() == pytest.approx(1.0 / (1.0 + (0 + SQRT2 + 2 + SQRT2) / 4))
    # thresholds: t=0 -> TPR 1, TNR 1/4; t=sqrt2 -> TPR 0, TNR 3/4; t=2 -> 0, 1
    assert reco.item() == pytest.approx(0.25)
    # logits are accepted for preds
    logits = torch.nn.functional.one_hot(preds, 2).float()
    m2, r2 = mege_reco(maps, logits, labels)
    assert (m2.item(), r2.item()) == (mege.item(), reco.item())


def test_mege_reco_hand_case_one_seen() -> None:
    maps, preds, labels, seen = _hand_case()
    # kept: sample 0 (seen by model 0): (0,1) d=0 same, (0,2) sqrt2 one;
    #       sample 1 (seen by model 1): (0,1) sqrt2 same, (1,2) sqrt2 same
    mege, reco = mege_reco(maps, preds, labels, seen, pairs="one_seen")
    assert mege.item() == pytest.approx(1.0 / (1.0 + 2 * SQRT2 / 3))
    assert reco.item() == pytest.approx(1.0 / 3.0)  # t=0: TPR 1, TNR 1/3


def test_mege_reco_nan_cases() -> None:
    maps, _, labels, seen = _hand_case()
    all_wrong = torch.tensor([[1, 0], [1, 0], [1, 0]])
    mege, reco = mege_reco(maps, all_wrong, labels)
    assert torch.isnan(mege) and torch.isnan(reco)
    all_right = torch.tensor([[0, 1], [0, 1], [0, 1]])
    mege, reco = mege_reco(maps, all_right, labels)
    assert not torch.isnan(mege) and torch.isnan(reco)  # no one-correct pairs
    # held-out probes: nobody saw them, so "one_seen" keeps nothing
    mege, reco = mege_reco(maps, all_right, labels, torch.zeros_like(seen), pairs="one_seen")
    assert torch.isnan(mege) and torch.isnan(reco)


def test_mege_reco_matches_sklearn_roc() -> None:
    g = _gen(12)
    k, n = 4, 30
    maps = torch.randn(k, n, 2, 5, 5, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    preds = torch.where(torch.rand(k, n, generator=g) < 0.6, labels, (labels + 1) % 3)
    mege, reco = mege_reco(maps, preds, labels)
    dists, pos, neg = [], [], []
    for i in range(k):
        for j in range(i + 1, k):
            for s in range(n):
                ci, cj = bool(preds[i, s] == labels[s]), bool(preds[j, s] == labels[s])
                if not (ci or cj):
                    continue
                a = maps[i, s].flatten().double()
                b = maps[j, s].flatten().double()
                dists.append((a / a.norm() - b / b.norm()).norm().item())
                pos.append(ci != cj)
                neg.append(ci and cj)
    d = np.array(dists)
    y = np.array(pos, dtype=int)
    assert mege.item() == pytest.approx(1.0 / (1.0 + d[np.array(neg)].mean()), rel=1e-5)
    fpr, tpr, _ = roc_curve(y, d, drop_intermediate=False)
    assert reco.item() == pytest.approx(np.max(tpr - fpr), abs=1e-6)


def test_mege_reco_bad_input() -> None:
    maps, preds, labels, seen = _hand_case()
    with pytest.raises(ValueError, match="K >= 2"):
        mege_reco(maps[:1], preds[:1], labels)
    with pytest.raises(ValueError, match="seen"):
        mege_reco(maps, preds, labels, pairs="one_seen")
    with pytest.raises(TypeError, match="bool"):
        mege_reco(maps, preds, labels, seen.long(), pairs="one_seen")
    with pytest.raises(ValueError, match="preds"):
        mege_reco(maps, preds[:, :1], labels)
    with pytest.raises(ValueError, match="labels"):
        mege_reco(maps, preds, labels[:1])
    with pytest.raises(ValueError, match="pairs"):
        mege_reco(maps, preds, labels, pairs="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(K, N, \.\.\.\)"):
        mege_reco(maps[0], preds, labels)


# -------------------------------------------------------------------- muFidelity
class _Recorder(nn.Module):
    """Linear model f(x) = W x + b that records every batch it sees."""

    def __init__(self, in_features: int, num_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(in_features, num_classes)
        self.dropout = nn.Dropout(0.5)  # must be disabled (eval mode) during mu_fidelity
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.linear(self.dropout(x.flatten(1)))


def test_mu_fidelity_linear_model_is_one() -> None:
    n, c, h, w = 4, 2, 6, 6
    model = _Recorder(c * h * w)
    x = torch.randn(n, c, h, w, generator=_gen(13))
    target = torch.tensor([0, 2, 1, 2])
    weights = model.linear.weight.detach()[target].view(n, c, h, w)
    maps = weights * x  # grad_x_input of a linear model
    r = mu_fidelity(model, x, maps, target, num_subsets=16, generator=_gen(1))
    torch.testing.assert_close(r, torch.ones(n), atol=1e-5, rtol=0)
    # reduced (N, H, W) maps give the same sums
    r2 = mu_fidelity(model, x, maps.sum(1), target, num_subsets=16, generator=_gen(1))
    torch.testing.assert_close(r2, torch.ones(n), atol=1e-5, rtol=0)
    # a non-zero per-channel baseline b: drop = sum_S w (x - b)
    base = torch.tensor([0.3, -0.7]).view(c, 1, 1)
    r3 = mu_fidelity(model, x, weights * (x - base), target, baseline=base, generator=_gen(2))
    torch.testing.assert_close(r3, torch.ones(n), atol=1e-5, rtol=0)
    # a map unrelated to the model is not perfectly correlated
    r4 = mu_fidelity(model, x, torch.randn(n, c, h, w, generator=_gen(3)), target)
    assert torch.all(r4 < 0.99)


def test_mu_fidelity_subsets_rng_and_modes() -> None:
    n, c, h, w = 3, 3, 5, 5
    model = _Recorder(c * h * w)
    model.train()
    model.linear.eval()  # a mixed state that must be restored as is
    x = torch.ones(n, c, h, w)
    maps = torch.randn(n, c, h, w, generator=_gen(4))
    rng_before = torch.get_rng_state()
    r_a = mu_fidelity(model, x, maps, 1, num_subsets=5, subset_fraction=0.2, generator=_gen(7))
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert model.training and model.dropout.training and not model.linear.training
    # subset size: round(0.2 * 25) = 5 pixels, the same in every channel, at the baseline
    masked = torch.cat(model.seen[1:])  # first call is the unmasked forward
    assert masked.shape == (n * 5, c, h, w)
    zeros = masked == 0
    assert torch.all(zeros.flatten(2).sum(2) == 5)
    assert torch.all(zeros == zeros[:, :1])
    # reproducible from the generator, independent of chunking; another seed differs
    model.seen.clear()
    r_b = mu_fidelity(model, x, maps, 1, num_subsets=5, generator=_gen(7), batch_size=2)
    assert max(len(t) for t in model.seen[1:]) == 2
    torch.testing.assert_close(r_a, r_b)
    r_c = mu_fidelity(model, x, maps, 1, num_subsets=5, generator=_gen(8))
    assert not torch.allclose(r_a, r_c)


def test_mu_fidelity_bad_input() -> None:
    model = _Recorder(2 * 4 * 4)
    x = torch.randn(2, 2, 4, 4, generator=_gen(5))
    with pytest.raises(ValueError, match="maps"):
        mu_fidelity(model, x, torch.zeros(2, 3, 4, 4), 0)
    with pytest.raises(ValueError, match="x"):
        mu_fidelity(model, x.flatten(1), x.flatten(1), 0)
    with pytest.raises(ValueError, match="num_subsets"):
        mu_fidelity(model, x, x, 0, num_subsets=1)
    with pytest.raises(ValueError, match="subset_fraction"):
        mu_fidelity(model, x, x, 0, subset_fraction=0.0)
    with pytest.raises(ValueError, match="target"):
        mu_fidelity(model, x, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):  # a mask is not a class index
        mu_fidelity(model, x, x, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="baseline"):
        mu_fidelity(model, x, x, 0, baseline=torch.zeros(3, 1, 1))
    with pytest.raises(ValueError, match="batch_size"):
        mu_fidelity(model, x, x, 0, batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu() -> None:
    g = _gen(14)
    a = torch.randn(4, 3, 16, 16, generator=g)
    b = a + torch.randn(4, 3, 16, 16, generator=g)
    for fn in (spearman, topk_intersection, ssim, l2_distance, sparseness, complexity):
        args = (a, b) if fn not in (sparseness, complexity) else (a,)
        cpu = fn(*args)
        gpu = fn(*(t.cuda() for t in args))
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
    maps = torch.randn(3, 4, 2, 8, generator=g)
    preds = torch.randint(0, 2, (3, 4), generator=g)
    labels = torch.randint(0, 2, (4,), generator=g)
    cpu = mege_reco(maps, preds, labels)
    gpu = mege_reco(maps.cuda(), preds.cuda(), labels.cuda())
    for c_, g_ in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(g_.cpu(), c_, equal_nan=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    r_cpu = mu_fidelity(model, a, b, 1, generator=_gen(0))
    r_gpu = mu_fidelity(model.cuda(), a.cuda(), b.cuda(), 1, generator=_gen(0))
    torch.testing.assert_close(r_gpu.cpu(), r_cpu, atol=1e-4, rtol=1e-4)

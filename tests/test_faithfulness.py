"""Deletion/insertion curves and muFidelity against Quantus, hand-computed cases and properties.

Quantus 0.6.0 (numpy 2.4, torch 2.14) is the reference where it has the metric:

* deletion = ``quantus.PixelFlipping`` with the same baseline (0.0), the same order (our
  channel-summed ``|map|`` given as its attribution, C = 3 channels broadcast from one) and
  the same number of steps (``features_in_step = C * pixels per step``, so each of its steps
  removes whole pixels). Quantus' curve has no point for the unperturbed image and its AUC
  (``np.trapz`` with dx = 1) fails on NumPy >= 2.4, where ``np.trapz`` is gone: we compare the
  curves point by point and integrate Quantus' curve, with f(x) prepended, by
  ``np.trapezoid`` over the fractions;
* insertion = the same ``PixelFlipping`` loop started from the baseline image with a
  perturbation that puts the probe's pixels back;
* muFidelity = ``quantus.FaithfulnessCorrelation`` (logits, Pearson, baseline 0.0) fed our
  random subsets in place of its ``np.random.choice`` draws (C = 1: its features are pixels).

Tolerance: 1e-6 on probabilities, AUCs and correlations (both compute in float32).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_saliency.metrics import (
    curve_auc,
    mu_fidelity,
    perturbation_curves,
    perturbation_ranks,
)

quantus = pytest.importorskip("quantus")

TOL = 1e-6


def _cnn(channels: int, side: int, classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * side * side, classes),
    ).eval()  # fmt: skip


def _data(n: int, c: int, side: int, classes: int = 5) -> tuple:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, side, side, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y, torch.randn(n, c, side, side, generator=g)


def _pixel_flipping(model: nn.Module, x: np.ndarray, y: np.ndarray, rel: np.ndarray,
                    step: int, **kw: object) -> np.ndarray:  # fmt: skip
    metric = quantus.PixelFlipping(features_in_step=step, normalise=False, abs=False,
                                   disable_warnings=True, **kw)  # fmt: skip
    return np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=rel, channel_first=True,
                             device="cpu", batch_size=len(x)))  # fmt: skip


def test_deletion_and_insertion_match_quantus_pixel_flipping() -> None:
    n, c, side, steps = 6, 3, 6, 9  # 36 pixels, 4 per step; Quantus flips 12 features a step
    model = _cnn(c, side)
    x, y, maps = _data(n, c, side)
    ours = perturbation_curves(model, x, maps, y, steps=steps)
    rel = maps.abs().sum(1, keepdim=True).numpy()
    deletion = _pixel_flipping(model, x.numpy(), y.numpy(), rel, c * 4, perturb_baseline=0.0)
    flat = x.numpy().reshape(n, -1)

    def put_back(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
        out, rows = arr.copy(), np.arange(len(arr))[:, None]
        out[rows, indices] = flat[rows, indices]
        return out

    insertion = _pixel_flipping(model, np.zeros_like(x.numpy()), y.numpy(), rel, c * 4,
                                perturb_func=put_back)  # fmt: skip
    assert deletion.shape == insertion.shape == (n, steps)
    np.testing.assert_allclose(ours.deletion[:, 1:].numpy(), deletion, atol=TOL)
    np.testing.assert_allclose(ours.insertion[:, 1:].numpy(), insertion, atol=TOL)
    p_x = torch.softmax(model(x), -1)[torch.arange(n), y].detach().numpy()
    p_0 = torch.softmax(model(torch.zeros_like(x)), -1)[torch.arange(n), y].detach().numpy()
    frac = np.linspace(0, 1, steps + 1)
    del_auc = np.trapezoid(np.concatenate([p_x[:, None], deletion], 1), frac, axis=1)
    ins_auc = np.trapezoid(np.concatenate([p_0[:, None], insertion], 1), frac, axis=1)
    np.testing.assert_allclose(ours.deletion_auc.numpy(), del_auc, atol=TOL)
    np.testing.assert_allclose(ours.insertion_auc.numpy(), ins_auc, atol=TOL)


def test_mu_fidelity_matches_quantus_faithfulness_correlation(monkeypatch) -> None:
    n, side, subsets, fraction = 5, 6, 16, 0.25
    model = _cnn(1, side)
    x, y, maps = _data(n, 1, side)
    ours = mu_fidelity(model, x, maps, y, num_subsets=subsets, subset_fraction=fraction,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
    size = round(fraction * side * side)
    # the subsets mu_fidelity drew (its documented draw: top-m of uniform scores per subset)
    scores = torch.rand((n, subsets, side * side), generator=torch.Generator().manual_seed(3))
    idx = torch.topk(scores, size, dim=-1).indices.numpy()
    draws = iter([idx[b, i] for i in range(subsets) for b in range(n)])  # Quantus' loop order

    def choice(a: int, size_: int, replace: bool = True) -> np.ndarray:
        assert (a, size_, replace) == (side * side, size, False)
        return next(draws)

    metric = quantus.FaithfulnessCorrelation(
        nr_runs=subsets, subset_size=size, perturb_baseline=0.0, normalise=False, abs=False,
        return_aggregate=False, disable_warnings=True,
    )  # fmt: skip
    monkeypatch.setattr(np.random, "choice", choice)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps.numpy(),
                    channel_first=True, device="cpu", batch_size=n)  # fmt: skip
    monkeypatch.undo()
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), atol=TOL)


def _two_class_linear(w: list[float]) -> nn.Module:
    """logits = (0, w . x): the target-1 probability is sigmoid(w . x)."""
    lin = nn.Linear(len(w), 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1] = torch.tensor(w)
    return nn.Sequential(nn.Flatten(), lin)


def test_hand_computed_linear_curves() -> None:
    model = _two_class_linear([4.0, 3.0, 2.0, 1.0])
    x = torch.ones(1, 1, 2, 2)
    maps = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 2, 2)  # gradient x input
    c = perturbation_curves(model, x, maps, 1, steps=4)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want_del = [sig(s) for s in (10, 6, 3, 1, 0)]
    want_ins = [sig(s) for s in (0, 4, 7, 9, 10)]
    torch.testing.assert_close(c.deletion[0], torch.tensor(want_del), atol=TOL, rtol=0)
    torch.testing.assert_close(c.insertion[0], torch.tensor(want_ins), atol=TOL, rtol=0)
    trap = lambda v: sum((a + b) / 2 * 0.25 for a, b in itertools.pairwise(v))  # noqa: E731
    assert c.deletion_auc.item() == pytest.approx(trap(want_del), abs=TOL)
    assert c.insertion_auc.item() == pytest.approx(trap(want_ins), abs=TOL)
    # two pixels per step (steps=2) and a signed ranking that puts the negative pixel last
    signed = perturbation_curves(_two_class_linear([4.0, -3.0, 2.0, 1.0]), x,
                                 torch.tensor([4.0, -3.0, 2.0, 1.0]).view(1, 1, 2, 2), 1,
                                 steps=2, relevance="sum")  # fmt: skip
    torch.testing.assert_close(signed.deletion[0], torch.tensor([sig(4), sig(-2), sig(0)]))


def test_ties_are_broken_by_pixel_index_and_constant_maps_are_nan() -> None:
    assert perturbation_ranks(torch.tensor([[1.0, 2.0, 2.0, 1.0]])).tolist() == [[2, 0, 1, 3]]
    model = _two_class_linear([1.0, 2.0, 3.0, 4.0])
    x = torch.ones(2, 1, 2, 2)
    maps = torch.stack([torch.zeros(1, 2, 2), torch.tensor([1.0, 2.0, 2.0, 1.0]).view(1, 2, 2)])
    c = perturbation_curves(model, x, maps, 1, steps=4)
    assert torch.isnan(c.deletion[0]).all() and torch.isnan(c.insertion_auc[0])  # no order
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731  # removes pixels 1, 2, 0, 3
    torch.testing.assert_close(c.deletion[1], torch.tensor([sig(s) for s in (10, 8, 5, 4, 0)]))


def test_exact_attributions_of_a_linear_model_beat_random_maps() -> None:
    """For logits (0, w . x) and baseline 0, inserting pixels by their signed gradient x input
    maximizes the partial sum at every step: its insertion curve is pointwise the highest,
    its deletion curve pointwise the lowest of any order."""
    torch.manual_seed(0)
    model = _two_class_linear(torch.randn(64).tolist())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 1, 8, 8, generator=g)
    gxi = x * model[1].weight[1].detach().view(1, 1, 8, 8)
    rand = torch.randn(16, 1, 8, 8, generator=g)
    best = perturbation_curves(model, x, gxi, 1, steps=16, relevance="sum")
    other = perturbation_curves(model, x, rand, 1, steps=16, relevance="sum")
    assert (best.insertion >= other.insertion - TOL).all()
    assert (best.deletion <= other.deletion + TOL).all()
    # the default |map| order on a 10-class linear model, for its predicted classes: better on
    # average, by a margin
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight.normal_(generator=g)
        y = net(x).argmax(-1)
    gxi = x * net[1].weight[y].detach().view(16, 1, 8, 8)
    good, bad = perturbation_curves(net, x, gxi, y), perturbation_curves(net, x, rand, y)
    assert good.insertion_auc.mean() > bad.insertion_auc.mean() + 0.05
    assert good.deletion_auc.mean() < bad.deletion_auc.mean() - 0.05


def test_chunks_shapes_baseline_and_module_state() -> None:
    model = _cnn(3, 6)
    model.train()
    model[0].eval()  # a mixed state is restored as it was
    x, y, maps = _data(5, 3, 6)
    rng = torch.get_rng_state()
    base = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)  # per channel
    ref = perturbation_curves(model, x, maps, y, steps=6, baseline=base)
    one = perturbation_curves(model, x, maps.abs().sum(1), y, steps=6, batch_size=1, baseline=base)
    torch.testing.assert_close(ref.deletion, one.deletion)
    torch.testing.assert_close(ref.insertion, one.insertion)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and not model[0].training and model[1].training
    with torch.inference_mode():  # works where the callback's validate/test hooks run
        inf = perturbation_curves(model, x, maps, y, steps=6, baseline=base)
    torch.testing.assert_close(inf.deletion, ref.deletion)


def test_nonfinite_maps_are_nan_rows_and_bad_arguments_are_refused() -> None:
    model = _cnn(1, 4)
    x, y, maps = _data(3, 1, 4)
    maps[1, 0, 0, 0] = math.nan
    c = perturbation_curves(model, x, maps, y, steps=4)
    assert torch.isnan(c.deletion[1]).all() and torch.isfinite(c.deletion[[0, 2]]).all()
    with pytest.raises(ValueError, match="steps"):
        perturbation_curves(model, x, maps, y, steps=17)
    with pytest.raises(ValueError, match="relevance"):
        perturbation_curves(model, x, maps, y, relevance="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maps"):
        perturbation_curves(model, x, maps[:, :, :2], y)
    assert curve_auc(torch.ones(1, 3), torch.tensor([0.0, 0.5, 1.0])).item() == 1.0

"""Smooth MPRT and Efficient MPRT (Binder et al. 2023) against Quantus 0.6 on the same maps.

Both sides randomize the same weights: our cascade gets Quantus' own re-initialization
(``torch.manual_seed(seed + 1)`` then ``reset_parameters()``) through ``reinit``, and Quantus
randomizes top down (``layer_order="top_down"``), so level ``top<k>`` is Quantus' k-th layer.

* Efficient MPRT is deterministic: per-probe scores are compared at 1e-6.
* Smooth MPRT's noise is Quantus' global NumPy RNG, drawn afresh for every model; ours is a
  seeded torch generator, the same draws for the model and its copies. Without noise
  (``noise_magnitude=0``) the whole pipeline (the clean last draw, the average, the layer
  order, the re-initialization, ``|map|``, Spearman) is compared at 1e-6; with noise, the
  averaging itself is checked exactly against a hand-made average of the same draws, and the
  Quantus scores agree with ours within 0.05 per level (mean over 16 probes; 64 samples per
  average, noise 0.1: the level means of three of our noise seeds spread by up to 0.02). That
  last test checks consistency only: on this small CNN the smoothed and plain scores differ
  by less than 0.02, so it could not tell them apart; the exact tests check the smoothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from lightning_saliency.attribution import compute_attribution, resolve_method, simple_grad
from lightning_saliency.generalization import (
    MetricKey,
    ProbeLayout,
    compute_maps,
    discrete_entropy,
    estimate_all,
    randomization_metric,
    randomization_statistics,
    randomization_values,
    smooth_randomization_values,
    smoothed_maps,
)

TOL = 1e-6
LEVELS = ("top1", "top2", "top3", "all")


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 5),
    ).eval()  # fmt: skip


def _probes(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _like_quantus(module: nn.Module, generator: torch.Generator) -> None:
    torch.manual_seed(42 + 1)
    module.reset_parameters()  # type: ignore[operator]


def _explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
    maps = compute_attribution("simple_grad", model, torch.as_tensor(inputs),
                               torch.as_tensor(targets))  # fmt: skip
    return maps.abs().sum(1, keepdim=True).numpy()


def _identity(module: nn.Module, generator: torch.Generator) -> None:
    """Keeps the weights: the copy is the model."""


def test_discrete_entropy_is_scipy_of_numpy_histogram() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(12, 3, 9, 9, generator=g)
    maps[1] = 0.0  # one value: numpy's [a - 0.5, a + 0.5] range, entropy 0
    maps[2] = torch.round(maps[2] * 2) / 2  # many values on bin edges
    for bins in (2, 7, 100):
        ref = [scipy.stats.entropy(np.histogram(m.abs().sum(0).double().numpy(), bins)[0])
               for m in maps]  # fmt: skip
        np.testing.assert_allclose(discrete_entropy(maps, bins).numpy(), ref, atol=1e-12)
    maps[3, 0, 0, 0] = float("nan")
    assert torch.isnan(discrete_entropy(maps)[3]) and torch.isfinite(discrete_entropy(maps)[4])


def test_efficient_mprt_matches_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    model = _cnn(0)
    x, y = _probes(6)
    original = compute_attribution("simple_grad", model, x, y)
    with torch.random.fork_rng():
        ours = randomization_values(model, x, y, "simple_grad", original, cascade=("all",),
                                    metrics=("entropy_rise",), reinit=_like_quantus)  # fmt: skip
    emprt = quantus.EfficientMPRT(layer_order="top_down", seed=42, skip_layers=True, abs=True,
                                  normalise=False, complexity_func_kwargs={"n_bins": 100},
                                  disable_warnings=True)  # fmt: skip
    with torch.random.fork_rng():
        theirs = emprt(model=model, x_batch=x.numpy(), y_batch=y.numpy(), explain_func=_explain,
                       a_batch=None, channel_first=True, device="cpu", batch_size=len(x))  # fmt: skip
    got = ours["all"]["entropy_rise"].numpy()
    assert np.all(np.isfinite(got)) and np.ptp(got) > 0
    np.testing.assert_allclose(got, theirs, atol=TOL)


def _quantus_smooth(quantus, model, x, y, samples: int, noise: float) -> dict:  # type: ignore[no-untyped-def]
    smprt = quantus.SmoothMPRT(layer_order="top_down", seed=42, nr_samples=samples,
                               noise_magnitude=noise, abs=True, normalise=False,
                               disable_warnings=True)  # fmt: skip
    state = np.random.get_state()  # noqa: NPY002  (Quantus draws from the global RNG)
    np.random.seed(0)  # noqa: NPY002
    try:
        with torch.random.fork_rng():
            return smprt(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                         explain_func=_explain, explain_func_kwargs={"method": "Gradient"},
                         channel_first=True, device="cpu", batch_size=len(x))  # fmt: skip
    finally:
        np.random.set_state(state)  # noqa: NPY002


def test_smooth_mprt_without_noise_matches_quantus_exactly() -> None:
    quantus = pytest.importorskip("quantus")
    model = _cnn(0)
    x, y = _probes(6)
    with torch.random.fork_rng():
        ours = smooth_randomization_values(model, x, y, "simple_grad", cascade=LEVELS,
                                           samples=3, noise_level=0.0, reinit=_like_quantus,
                                           metrics=("smooth_spearman",))  # fmt: skip
    theirs = _quantus_smooth(quantus, model, x, y, samples=3, noise=0.0)
    layers = [k for k in theirs if k != "original"]
    assert layers == ["7", "5", "2", "0"]
    for level, layer in zip(LEVELS, layers, strict=True):
        np.testing.assert_allclose(ours[level]["smooth_spearman"].numpy(), theirs[layer],
                                   atol=TOL)  # fmt: skip


def test_smoothed_maps_average_the_stated_draws() -> None:
    model = _cnn(1)
    x, y = _probes(5)
    n, level = 4, 0.2
    got = smoothed_maps(model, x, y, "simple_grad", samples=n, noise_level=level, noise_seed=3)
    gen = torch.Generator().manual_seed(3)
    std = level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    total = simple_grad(model, x, y).double()  # the clean input is one of the n
    for _ in range(n - 1):
        z = torch.randn(x.shape, generator=gen) * std.view(-1, 1, 1, 1)
        total += simple_grad(model, x + z, y).double()
    torch.testing.assert_close(got, (total / n).float(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got, simple_grad(model, x, y), atol=1e-4)


def test_smooth_mprt_with_noise_agrees_with_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    model = _cnn(0)
    x, y = _probes(16)
    with torch.random.fork_rng():
        ours = smooth_randomization_values(model, x, y, "simple_grad", cascade=LEVELS,
                                           samples=64, noise_level=0.1, reinit=_like_quantus,
                                           metrics=("smooth_spearman",))  # fmt: skip
    theirs = _quantus_smooth(quantus, model, x, y, samples=64, noise=0.1)
    layers = [k for k in theirs if k != "original"]
    for level, layer in zip(LEVELS, layers, strict=True):
        diff = ours[level]["smooth_spearman"].numpy() - np.asarray(theirs[layer])
        assert abs(diff.mean()) < 0.05, (level, diff)


def test_variants_through_randomization_statistics() -> None:
    models = [_cnn(0), _cnn(1)]
    layout = ProbeLayout.from_sizes([2, 2], 5)
    x, y = _probes(9)
    spec = resolve_method("simple_grad")
    maps = compute_maps(models, x, y, [spec], seed=5)[spec.label]
    metrics = ("spearman", "smooth_spearman", "smooth_ssim", "entropy_rise")
    kw = dict(seed=5, cascade=("top1", "all"), metrics=metrics, smooth_samples=3)
    same = estimate_all(randomization_statistics(models, x, y, spec, maps, layout,
                                                 reinit=_identity, **kw))  # fmt: skip
    key = lambda m, lv: MetricKey(spec.label, "mean", "test", randomization_metric(m, lv))  # noqa: E731
    assert set(same) == {key(m, lv) for m in metrics for lv in ("top1", "all")}
    for m, target in (("smooth_spearman", 1.0), ("smooth_ssim", 1.0), ("entropy_rise", 0.0)):
        assert same[key(m, "all")].value == pytest.approx(target, abs=1e-5)
        assert same[key(m, "all")].n == 5
    rand = estimate_all(randomization_statistics(models, x, y, spec, maps, layout, **kw))
    assert rand[key("smooth_spearman", "all")].value < 0.6
    only = randomization_statistics(models, x, y, spec, maps, layout, seed=5, cascade=("all",),
                                    metrics=("smooth_spearman",), smooth_samples=3)  # fmt: skip
    assert set(only) == {key("smooth_spearman", "all")}
    with pytest.raises(ValueError, match="unknown randomization metrics"):
        randomization_statistics(models, x, y, spec, maps, layout, metrics=("smooth_l1",))


def test_family_statistics_passes_the_variants_on() -> None:
    from lightning_saliency.generalization import family_statistics

    model = _cnn(0)
    layout = ProbeLayout.from_sizes([2], 4)
    x, y = _probes(6)
    spec = resolve_method("simple_grad")
    maps = compute_maps([model], x, y, [spec])
    stats = family_statistics([model], x, y, maps, layout, [spec], families=["randomization"],
                              randomization_metrics=("entropy_rise",))  # fmt: skip
    assert {k.metric for k in stats} == {
        randomization_metric("entropy_rise", lv) for lv in ("top1", "half", "all")
    }

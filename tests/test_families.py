"""The faithfulness and randomization families: statistics, Quantus' MPRT, controls, safety.

Randomization reference: ``quantus.MPRT`` (0.6.0; cascading, ``layer_order="top_down"``,
Spearman of ``|map|``) on the same maps. Quantus re-initializes each layer with its own
``reset_parameters()`` after ``torch.manual_seed(seed + 1)`` (the global RNG); the test hands
our cascade the same re-initialization through ``reinit`` so both randomize the same weights,
and compares the per-probe similarity at every layer (tolerance 1e-6). Our default
re-initialization (a dedicated generator) is tested on its own.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lightning_saliency.attribution import compute_attribution, resolve_method
from lightning_saliency.generalization import (
    MetricKey,
    ProbeLayout,
    cascade_depths,
    compute_maps,
    estimate_all,
    faithfulness_statistics,
    randomization_layers,
    randomization_metric,
    randomization_statistics,
    randomization_values,
    randomized_copies,
)
from lightning_saliency.models.spectral import apply_spectral_norm, spectral_norms

TOL = 1e-6


def _cnn(seed: int, c: int = 1, side: int = 8, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * side * side, 16), nn.ReLU(), nn.Linear(16, classes),
    )  # fmt: skip


def _probes(n: int, c: int = 1, side: int = 8, classes: int = 5) -> tuple:
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, c, side, side, generator=g), torch.randint(0, classes, (n,), generator=g)


def _identity(module: nn.Module, generator: torch.Generator) -> None:
    """A re-initialization that keeps the weights: the copy is the model (positive control)."""


# ----------------------------------------------------------------------------- faithfulness
def _slow_deletion_auc(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, y: int,
                       steps: int) -> float:  # fmt: skip
    """A loop over steps: remove the top pixels of sum_c |map| (stable order), softmax, trapz."""
    rel = maps.abs().sum(0).flatten().numpy()
    order = np.argsort(-rel, kind="stable")
    p = rel.size
    probs, fracs = [], []
    for t in range(steps + 1):
        k = t * p // steps
        xi = x.clone().view(x.shape[0], -1)
        xi[:, order[:k]] = 0.0
        with torch.no_grad():
            probs.append(torch.softmax(model(xi.view(1, *x.shape)), -1)[0, y].item())
        fracs.append(k / p)
    return float(np.trapezoid(probs, fracs))


def test_faithfulness_statistics_by_probe_group() -> None:
    models = [_cnn(0).eval(), _cnn(1).eval()]
    layout = ProbeLayout.from_sizes([3, 3], 4)
    x, y = _probes(10)
    maps = torch.randn(3, 10, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # + a ref
    stats = faithfulness_statistics(models, x, y, maps, layout, method_label="m", steps=8,
                                    num_subsets=8)  # fmt: skip
    splits = ("train", "test", "gap")
    assert set(stats) == {MetricKey("m", "mean", s, f) for s in splits
                          for f in ("mu_fidelity", "deletion_auc", "insertion_auc")}  # fmt: skip
    slow = [[_slow_deletion_auc(models[k], x[n], maps[k, n], int(y[n]), 8) for n in range(10)]
            for k in range(2)]  # fmt: skip
    est = estimate_all(stats)
    train = np.mean([np.mean(slow[k][3 * k : 3 * k + 3]) for k in range(2)])
    test = np.mean([slow[k][6:] for k in range(2)])
    value = lambda split: est[MetricKey("m", "mean", split, "deletion_auc")].value  # noqa: E731
    assert value("train") == pytest.approx(train, abs=TOL)
    assert value("test") == pytest.approx(test, abs=TOL)
    gap = est[MetricKey("m", "mean", "gap", "deletion_auc")]
    assert gap.value == pytest.approx(test - train, abs=TOL) and gap.n == 10


def test_mu_fidelity_subsets_are_shared_by_models_on_test_probes() -> None:
    model = _cnn(0).eval()
    x, y = _probes(7)
    maps = torch.randn(1, 7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = {"method_label": "m", "metrics": ("mu_fidelity",), "num_subsets": 8, "seed": 3}
    one = faithfulness_statistics([model], x, y, maps, ProbeLayout.from_sizes([3], 4), **kw)
    two = faithfulness_statistics([model, copy.deepcopy(model)], x[[0, 1, 2, 0, 1, 2, 3, 4, 5, 6]],
                                  y[[0, 1, 2, 0, 1, 2, 3, 4, 5, 6]],
                                  maps[:, [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]].expand(2, -1, -1, -1, -1),
                                  ProbeLayout.from_sizes([3, 3], 4), **kw)  # fmt: skip
    key = MetricKey("m", "mean", "test", "mu_fidelity")
    torch.testing.assert_close(one[key].terms["test"], two[key].terms["test"])
    assert torch.isfinite(one[key].terms["test"]).all()


def test_family_keys_make_plain_tags() -> None:
    assert MetricKey("L", "mean", "train", "deletion_auc").tag == "interp/L/train/deletion_auc"
    assert MetricKey("L", "mean", "gap", "insertion_auc").tag == "interp/L/insertion_auc_gap"
    key = MetricKey("L", "mean", "test", randomization_metric("spearman", "top1"))
    assert key.tag == "interp/L/test/randomization_spearman_top1"


# ---------------------------------------------------------------------------- randomization
def test_cascade_matches_quantus_mprt() -> None:
    quantus = pytest.importorskip("quantus")
    model = _cnn(0).eval()
    x, y = _probes(6)
    spec = resolve_method("simple_grad")
    original = compute_attribution(spec, model, x, y)

    def like_quantus(module: nn.Module, generator: torch.Generator) -> None:
        torch.manual_seed(42 + 1)
        module.reset_parameters()  # type: ignore[operator]

    with torch.random.fork_rng():
        ours = randomization_values(
            model, x, y, spec, original, metrics=("spearman",),
            cascade=("top1", "top2", "top3", "all"), reinit=like_quantus,
        )  # fmt: skip

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray,
                **_: object) -> np.ndarray:  # fmt: skip
        maps = compute_attribution(spec, model, torch.as_tensor(inputs), torch.as_tensor(targets))
        return maps.abs().sum(1, keepdim=True).numpy()

    mprt = quantus.MPRT(layer_order="top_down", seed=42, normalise=False, abs=True,
                        disable_warnings=True)  # fmt: skip
    with torch.random.fork_rng():
        theirs = mprt(model=model, x_batch=x.numpy(), y_batch=y.numpy(), explain_func=explain,
                      a_batch=original.abs().sum(1, keepdim=True).numpy(), channel_first=True,
                      device="cpu", batch_size=len(x))  # fmt: skip
    layers = [k for k in theirs if k != "original"]
    assert layers == ["7", "5", "2", "0"]  # top down; our "all" is the 4th layer
    for level, layer in zip(("top1", "top2", "top3", "all"), layers, strict=True):
        np.testing.assert_allclose(ours[level]["spearman"].numpy(), theirs[layer], atol=TOL)


@pytest.mark.parametrize(
    "method", ["simple_grad", {"method": "smooth_grad", "sigma": 0.5, "samples": 4}]
)
def test_identical_copy_is_fully_similar_and_random_weights_are_not(method: object) -> None:
    models = [_cnn(0).eval(), _cnn(1).eval()]
    layout = ProbeLayout.from_sizes([2, 2], 6)
    x, y = _probes(10)
    spec = resolve_method(method)
    maps = compute_maps(models, x, y, [spec], seed=5)[spec.label]
    same = estimate_all(randomization_statistics(models, x, y, spec, maps, layout, seed=5,
                                                 reinit=_identity))  # fmt: skip
    assert len(same) == 6 and all(e.value == pytest.approx(1.0, abs=1e-5) for e in same.values())
    rand = estimate_all(randomization_statistics(models, x, y, spec, maps, layout, seed=5))
    key = MetricKey(spec.label, "mean", "test", randomization_metric("spearman", "all"))
    assert rand[key].value < 0.5 and rand[key].n == 6


def test_superpixel_spec_uses_the_segments() -> None:
    model = _cnn(0).eval()
    layout = ProbeLayout.from_sizes([2], 3)
    x, y = _probes(5)
    seg = (torch.arange(64).view(8, 8) // 16).expand(5, 8, 8).contiguous()  # 4 bands
    spec = resolve_method({"method": "simple_grad", "superpixel": "slic"})
    maps = compute_maps([model], x, y, [spec], segments={spec.label: seg})[spec.label]
    stats = randomization_statistics([model], x, y, spec, maps, layout, segments=seg,
                                     reinit=_identity, cascade=("all",))  # fmt: skip
    assert all(e.value == pytest.approx(1.0, abs=1e-5) for e in estimate_all(stats).values())


def test_the_monitored_model_is_never_changed() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(16, 5))  # fmt: skip
    model.train()
    model[4].eval()
    before = copy.deepcopy(model.state_dict())
    x, y = _probes(4)
    rng = torch.get_rng_state()
    spec = resolve_method("simple_grad")
    for level, twin in randomized_copies(model, x, ("top1", "half", "all"), seed=0):
        assert twin is not model and not twin.training
        if level == "all":  # the norm layer kept its statistics, every other layer is new
            assert torch.equal(twin[2].running_mean, model[2].running_mean)
            assert not torch.equal(twin[1].weight, model[1].weight)
    randomization_values(model, x, y, spec, compute_attribution(spec, model, x, y))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and not model[4].training and model[1].training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


class _HeadFirst(nn.Module):
    """Registers its output layer before its input layer."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.body, self.norm = nn.Linear(8, 3), nn.Linear(4, 8), nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.body(x))))


def test_layers_follow_the_forward_and_levels_are_checked() -> None:
    assert [n for n, _ in randomization_layers(_HeadFirst(), torch.zeros(1, 4))] == ["body", "head"]
    assert cascade_depths(("top2", "half", "all", "top1"), 3) == [2, 2, 3, 1]
    for bad in (("top0",), ("top4",), ("bottom1",), ("all", "all"), ()):
        with pytest.raises(ValueError):
            cascade_depths(bad, 3)
    def top_weights(cascade: tuple) -> list:
        copies = randomized_copies(_HeadFirst(), torch.zeros(1, 4), cascade, seed=0)
        return [c.head.weight.clone() for _, c in copies]

    a, b = top_weights(("top1",)), top_weights(("top1", "all"))
    assert torch.equal(a[0], b[0])  # same seed, same top layer whatever the levels


def test_spectral_norm_is_kept_on_randomized_layers() -> None:
    torch.manual_seed(0)
    model = apply_spectral_norm(_cnn(0), 0.5).eval()
    x, _ = _probes(2)
    for _, twin in randomized_copies(model, x, ("all",), seed=0):
        norms = spectral_norms(twin)
        assert len(norms) == 4 and all(v == pytest.approx(0.5, rel=1e-4) for v in norms.values())
        new = twin[7].parametrizations.weight.original
        assert not torch.equal(new, model[7].parametrizations.weight.original)
    assert all(v == pytest.approx(0.5, rel=1e-4) for v in spectral_norms(model).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_families_on_cuda_equal_cpu() -> None:
    """The batched passes on the card give the CPU's numbers (fp32, TF32 off; muFidelity's
    subsets come from a CUDA generator there, so it is left out)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        models = [_cnn(0).eval(), _cnn(1).eval()]
        layout = ProbeLayout.from_sizes([3, 3], 4)
        x, y = _probes(10)
        spec = resolve_method("simple_grad")
        out = []
        for dev in ("cpu", "cuda"):
            ms = [copy.deepcopy(m).to(dev) for m in models]
            maps = compute_maps(ms, x.to(dev), y.to(dev), [spec])[spec.label]
            stats = faithfulness_statistics(ms, x.to(dev), y.to(dev), maps, layout,
                                            method_label="m",
                                            metrics=("deletion_auc", "insertion_auc"))  # fmt: skip
            stats.update(randomization_statistics(ms, x.to(dev), y.to(dev), spec, maps, layout))
            out.append({k: e.value for k, e in estimate_all(stats).items()})
        assert out[0].keys() == out[1].keys()
        for k, v in out[0].items():
            assert out[1][k] == pytest.approx(v, abs=1e-4), k
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.slow
def test_cost_benchmark_quick_run() -> None:
    """benchmarks/families_cost.py runs end to end (a smoke run; its timings are no claim)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "families_cost.py"
    spec = importlib.util.spec_from_file_location("families_cost", path)
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    threads = torch.get_num_threads()
    try:
        res = bench.run(repeats=1, epochs=1, probes=4, quick=True)
    finally:
        torch.set_num_threads(threads)
    assert set(res["timing"]) == {"monitor", "faithfulness_all", "faithfulness_simple",
                                  "randomization_all", "randomization_simple"}  # fmt: skip
    assert len(res["values"]) == 2 and "insertion_auc" in res["values"]["simple_grad"]

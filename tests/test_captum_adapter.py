"""The Captum adapter: maps equal Captum's own, under the built-ins' guarantees."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")

from lightning_saliency.attribution import (  # noqa: E402
    compute_attribution,
    method_is_stochastic,
    method_needs_input_range,
    resolve_method,
)
from lightning_saliency.generalization import compute_maps  # noqa: E402


class SmallCNN(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.relu(self.conv(x))).flatten(1)))


@pytest.fixture(autouse=True)
def _nondeterministic_references() -> Iterator[None]:
    """Captum's own DeepLift (the reference) fails under the deterministic mode an earlier
    ``Trainer(deterministic=True)`` in this process leaves on."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.fixture(scope="module")
def data() -> tuple[nn.Module, Tensor, Tensor]:
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return SmallCNN(0).eval(), x, torch.tensor([0, 1, 2, 3, 1])


def _captum(name: str, model: nn.Module, x: Tensor, t: Tensor, **kwargs: object) -> Tensor:
    return getattr(captum_attr, name)(model).attribute(x.clone(), target=t, **kwargs).detach()


@pytest.mark.parametrize(
    ("entry", "name", "kwargs"),
    [
        ({"attribution": "DeepLift"}, "DeepLift", {}),
        ({"attribution": "DeepLift", "attribute_args": {"baselines": 0.5}}, "DeepLift",
         {"baselines": 0.5}),
        ({"attribution": "Saliency"}, "Saliency", {}),
        ({"attribution": "Saliency", "attribute_args": {"abs": False}}, "Saliency",
         {"abs": False}),
        ({"attribution": "IntegratedGradients", "attribute_args": {"n_steps": 8}},
         "IntegratedGradients", {"n_steps": 8}),
        ({"attribution": "IntegratedGradients",
          "attribute_args": {"n_steps": 8, "baselines": "min"}, "input_range": [-1.5, 2.0]},
         "IntegratedGradients", {"n_steps": 8, "baselines": -1.5}),
        ({"attribution": "GuidedBackprop"}, "GuidedBackprop", {}),
    ],
)  # fmt: skip
def test_deterministic_maps_equal_captum(data: tuple, entry: dict, name: str, kwargs: dict) -> None:
    model, x, t = data
    spec = resolve_method({"method": "captum", **entry})
    expected = _captum(name, model, x, t, **kwargs)
    for batch_size in (None, 16):  # one call, and chunks of 2 probes for IG (16 // 8)
        got = compute_attribution(spec, model, x, t, batch_size=batch_size)
        assert got.dtype == torch.float32 and got.shape == x.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_gradient_shap_equals_captum_under_the_same_rng_state(data: tuple) -> None:
    model, x, t = data
    spec = resolve_method(
        {"method": "captum", "attribution": "GradientShap",
         "attribute_args": {"baselines": [0.0, 0.5], "n_samples": 4, "stdevs": 0.1}}
    )  # fmt: skip
    assert method_is_stochastic(spec)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    got = compute_attribution(spec, model, x, t, generator=torch.Generator().manual_seed(3))
    # the global RNGs are left as they were
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # noqa: NPY002
    # the documented contract: the global RNGs seeded from one draw of the generator
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)))
    baselines = torch.stack([torch.zeros_like(x[0]), torch.full_like(x[0], 0.5)])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        expected = _captum("GradientShap", model, x, t, baselines=baselines, n_samples=4,
                           stdevs=0.1)  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    again = compute_attribution(spec, model, x, t, generator=torch.Generator().manual_seed(3))
    other = compute_attribution(spec, model, x, t, generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, again) and not torch.allclose(got, other)


def test_state_is_restored_and_inference_mode_works(data: tuple) -> None:
    _, x, t = data
    model = SmallCNN(1).train()
    model.drop.eval()  # a mixed state must come back as it was
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    spec = {"method": "captum", "attribution": "DeepLift"}
    with torch.inference_mode():
        got = compute_attribution(spec, model, x.clone(), t)
    assert model.training and model.conv.training and not model.drop.training
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    # dropout off during the attribution: equal to Captum on the eval-mode model
    torch.testing.assert_close(got, _captum("DeepLift", model.eval(), x, t), rtol=1e-5, atol=1e-6)


def test_deterministic_mode_warns_instead_of_failing(data: tuple) -> None:
    """``Trainer(deterministic=True)`` turns deterministic algorithms on for the process."""
    model, x, t = data
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        got = compute_attribution({"method": "captum", "attribution": "DeepLift"}, model, x, t)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
    torch.testing.assert_close(got, _captum("DeepLift", model, x, t), rtol=1e-5, atol=1e-6)


def test_compute_maps_of_two_models_equal_captum(data: tuple) -> None:
    """What the callback runs: every model's maps of a Captum spec, keyed by its label."""
    _, x, t = data
    models = [SmallCNN(2).eval(), SmallCNN(3).eval()]
    spec = resolve_method({"method": "captum", "attribution": "DeepLift"})
    out = compute_maps(models, x, t, [spec])
    expected = torch.stack([_captum("DeepLift", m, x, t) for m in models])
    torch.testing.assert_close(out[spec.label].maps, expected, rtol=1e-5, atol=1e-6)


def test_spec_is_canonical_and_round_trips_through_json() -> None:
    spec = resolve_method(
        {"method": "captum", "attribution": "NoiseTunnel",
         "init_args": {"attribution_method": "IntegratedGradients"},
         "attribute_args": {"nt_type": "smoothgrad_sq", "nt_samples": 4, "stdevs": 0.2,
                            "n_steps": 50, "baselines": [0.0]}}
    )  # fmt: skip
    assert spec.label == (
        "captum_NoiseTunnel_nt_samples-4_nt_type-smoothgrad.sq_stdevs-0.2"
        "_init.attribution_method-IntegratedGradients"
    )
    # Captum's defaults (n_steps=50, a zero baseline) are dropped
    assert set(spec.params["attribute_args"]) == {"nt_samples", "nt_type", "stdevs"}
    again = resolve_method(json.loads(json.dumps(spec.to_config())))
    assert again == spec and hash(again) == hash(spec) and again.label == spec.label
    assert again.noise_seed(0) == spec.noise_seed(0) and method_is_stochastic(spec)
    a = resolve_method({"method": "captum", "attribution": "IntegratedGradients"})
    b = resolve_method({"method": "captum", "attribution": "IntegratedGradients",
                        "attribute_args": {"n_steps": 50, "method": "gausslegendre",
                                           "baselines": [0]},
                        "init_args": {"multiply_by_inputs": True}})  # fmt: skip
    assert a == b and a.label == "captum_IntegratedGradients"
    assert not method_is_stochastic(a) and not method_needs_input_range(a)
    assert method_needs_input_range(
        {"method": "captum", "attribution": "DeepLift", "attribute_args": {"baselines": "max"}}
    )


@pytest.mark.parametrize(
    ("entry", "err", "match"),
    [
        ({"attribution": "DeepLiftt"}, ValueError, "unknown Captum attribution 'DeepLiftt'.*known"),
        ({"attribution": "LayerGradCam"}, ValueError, "layer and neuron"),
        ({"attribution": "Saliency", "attribute_args": {"n_steps": 3}}, ValueError,
         "unknown attribute_args 'n_steps'"),
        ({"attribution": "Saliency", "attribute_args": {"target": 1}}, ValueError,
         "set by lightning_saliency"),
        ({"attribution": "GradientShap"}, ValueError, r"needs attribute_args \['baselines'\]"),
        ({"attribution": "DeepLift", "attribute_args": {"baselines": "grey"}}, ValueError,
         "baselines"),
        ({"attribution": "DeepLift", "init_args": [1]}, TypeError, "mapping"),
        ({"attribution": "DeepLift", "init_args": {"eps": torch.ones(1)}}, TypeError, "JSON-like"),
    ],
)  # fmt: skip
def test_bad_captum_specs(entry: dict, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        resolve_method({"method": "captum", **entry})


def test_clear_error_without_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match="pip install captum"):
        resolve_method({"method": "captum", "attribution": "DeepLift"})

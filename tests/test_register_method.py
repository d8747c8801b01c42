"""register_method: a user's own method works end to end like a built-in."""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Iterator
from importlib import metadata

import pytest
import torch
from torch import Tensor, nn

from lightning_saliency.attribution import (
    _method_registry,
    available_methods,
    compute_attribution,
    method_info,
    method_is_stochastic,
    method_needs_input_range,
    register_method,
    resolve_method,
    unregister_method,
)
from lightning_saliency.generalization import compute_maps
from lightning_saliency.generalization.studies import noise_samples


def _logit_grad(model: nn.Module, x: Tensor, target: Tensor | int) -> Tensor:
    x = x.detach().requires_grad_()
    t = torch.as_tensor(target).expand(len(x))
    return torch.autograd.grad(model(x).gather(1, t.view(-1, 1)).sum(), x)[0]


@pytest.fixture
def registered() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        unregister_method(name)


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 3))


def test_user_method_end_to_end(registered: list[str]) -> None:
    seen: dict[str, object] = {}

    @register_method
    def user_noisy(
        model: nn.Module,
        x: Tensor,
        target: Tensor | int,
        *,
        scale: float = 1.0,
        samples: int = 4,
        mode: str = "gauss_plain",
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> Tensor:
        seen.update(training=model.training, batch_size=batch_size, generator=generator)
        noise = torch.randn((samples, *x.shape), generator=generator).mean(0)
        return scale * _logit_grad(model, x + noise, target) + noise

    registered.append("user_noisy")
    info = method_info("user_noisy")
    assert info.defaults == {"scale": 1.0, "samples": 4, "mode": "gauss_plain"}
    assert info.takes_generator and info.options == {"batch_size"}
    spec = resolve_method({"method": "user_noisy", "scale": 3, "samples": 4, "mode": "a_b"})
    assert dict(spec.params) == {"scale": 3.0, "mode": "a_b"}  # the default samples dropped
    assert spec.label == "user_noisy_mode-a.b_scale-3"
    assert spec.seed_key == spec.label and noise_samples(spec) == 4 and method_is_stochastic(spec)
    assert spec.noise_seed(0) == zlib.crc32(b"user_noisy_mode-a.b_scale-3")
    config = json.loads(json.dumps(spec.to_config()))
    assert config == {"method": "user_noisy", "scale": 3.0, "mode": "a_b", "label": spec.label}
    assert resolve_method(config) == spec
    model, x = _linear().train(), torch.randn(4, 2, 2, 2)
    gen = torch.Generator().manual_seed(123)
    got = compute_attribution(spec, model, x, 1, generator=gen, batch_size=7)
    assert seen == {"training": False, "batch_size": 7, "generator": gen} and model.training

    def expected(seed: int) -> Tensor:  # a linear model: the gradient is the weight row
        noise = torch.randn((4, *x.shape), generator=torch.Generator().manual_seed(seed)).mean(0)
        return 3 * model[1].weight[1].detach().view(2, 2, 2) + noise

    torch.testing.assert_close(got, expected(123))
    # what the callback runs: the same draws for every model (common random numbers)
    out = compute_maps([model, model], x, torch.ones(4, dtype=torch.long), [spec], seed=5)
    maps = out[spec.label].maps
    assert maps.shape == (2, *x.shape)
    torch.testing.assert_close(maps, torch.stack([expected(spec.noise_seed(5))] * 2))


def test_guard_restores_training_flags_and_parameter_grads(registered: list[str]) -> None:
    @register_method(name="user_backward")
    def _fn(model: nn.Module, x: Tensor, target: Tensor | int) -> Tensor:
        x = x.detach().requires_grad_()
        model(x)[:, 0].sum().backward()  # a careless method: writes parameter .grad
        return x.grad.double()

    registered.append("user_backward")
    model = _linear().train()
    model[1].weight.grad = torch.full_like(model[1].weight, 7.0)
    with torch.inference_mode():
        x = torch.randn(2, 2, 2, 2)
        maps = compute_attribution("user_backward", model, x, 0)
    assert maps.dtype == torch.float32 and maps.shape == x.shape
    assert model.training and torch.equal(model[1].weight.grad, torch.full((3, 8), 7.0))
    assert model[1].bias.grad is None


def test_required_params_range_predicate_and_output_checks(registered: list[str]) -> None:
    @register_method(needs_input_range=lambda p: p["where"] == "edge")
    def user_shift(
        model: nn.Module,
        x: Tensor,
        target: Tensor | int,
        *,
        where: str,
        input_range: tuple[float, float] | None = None,
    ) -> Tensor:
        lo = 0.0 if input_range is None else input_range[0]
        return _logit_grad(model, x, target) + lo

    registered.append("user_shift")
    with pytest.raises(ValueError, match=r"needs parameter\(s\) \['where'\]"):
        resolve_method("user_shift")
    spec = resolve_method({"method": "user_shift", "where": "edge"})
    assert spec.label == "user_shift_where-edge" and method_needs_input_range(spec)
    assert not method_needs_input_range({"method": "user_shift", "where": "mid"})
    model, x = _linear(), torch.randn(2, 2, 2, 2)
    with pytest.raises(ValueError, match="needs input_range"):
        compute_attribution(spec, model, x, 0)
    got = compute_attribution(spec, model, x, 0, input_range=(-2.0, 2.0))
    torch.testing.assert_close(got, _logit_grad(model, x, 0) - 2.0)
    stored = resolve_method({"method": "user_shift", "where": "edge", "input_range": [-1, 1]})
    assert stored.label == "user_shift_input_range--1to1_where-edge"
    assert not method_needs_input_range(stored)

    register_method(lambda m, x, t: x[:, :1], name="user_bad_shape")
    registered.append("user_bad_shape")
    with pytest.raises(ValueError, match="shaped like the input"):
        compute_attribution("user_bad_shape", model, x, 0)


def test_generic_labels_are_distinct_and_round_trip(registered: list[str]) -> None:
    @register_method
    def user_grid(
        model: nn.Module,
        x: Tensor,
        target: Tensor | int,
        *,
        a: str = "x",
        n_a: int = 1,
        size: tuple[int, int] | None = None,
        on: bool = False,
        w: float | None = 0.5,
    ) -> Tensor:
        return _logit_grad(model, x, target)

    registered.append("user_grid")
    values = {
        "a": ["x", "x_n", "y.z", "true", "h0123abcd", "1"],
        "n_a": [1, 2],
        "size": [None, [3, 3], [3], [1, 2, 3]],
        "on": [False, True],
        "w": [0.5, None, -1e-05, 2],
    }
    entries = [
        {"method": "user_grid", **dict(zip(values, combo, strict=True))}
        for combo in itertools.product(*values.values())
    ]
    specs = [resolve_method(e) for e in entries]
    labels = [s.label for s in specs]
    assert len(set(specs)) == len(specs) and len(set(labels)) == len(labels)
    assert [resolve_method(json.loads(json.dumps(s.to_config()))) for s in specs] == specs
    assert resolve_method({"method": "user_grid", "a": "x_n", "w": None}).label == (
        "user_grid_a-x.n_w-none"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "smooth_grad"}, "already registered"),
        ({"name": "smooth_grad_x"}, "labels could collide"),
        ({"name": "grad"}, "labels could collide"),
        ({"name": "9lives"}, "method name"),
        ({"name": "ok_name", "normalizers": {"nope": abs}}, "unknown parameter"),
    ],
)
def test_bad_registrations(kwargs: dict, match: str) -> None:
    def fn(model: nn.Module, x: Tensor, target: Tensor, *, k: int = 1) -> Tensor:
        return x

    with pytest.raises(ValueError, match=match):
        register_method(fn, **kwargs)
    with pytest.raises(ValueError, match="reserved"):
        register_method(lambda model, x, target, label="a": x, name="user_reserved")
    with pytest.raises(TypeError, match="positional"):
        register_method(lambda model, x: x, name="user_two")
    with pytest.raises(ValueError, match="cannot be unregistered"):
        unregister_method("captum")


def test_entry_point_registers_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = metadata.EntryPoint(
        name="user_plugin_grad", value="user_plugin:plugin_grad", group=_method_registry.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(_method_registry, "_entry_points", lambda: [ep])
    assert "user_plugin_grad" in available_methods()
    try:
        spec = resolve_method({"method": "user_plugin_grad"})
        model, x = _linear(), torch.randn(2, 2, 2, 2)
        torch.testing.assert_close(compute_attribution(spec, model, x, 2), _logit_grad(model, x, 2))
    finally:
        unregister_method("user_plugin_grad")

"""The method registry: canonical specs, labels, config resolution and compute_attribution."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
import torch
from torch import Tensor, nn

from lightning_saliency.attribution import (
    MethodSpec,
    adapt_grad,
    adaptgrad_paper_specs,
    available_methods,
    compute_attribution,
    grad_cam,
    integrated_gradients,
    method_is_stochastic,
    method_needs_input_range,
    resolve_method,
    segmenter_args,
    simple_grad,
    smooth_grad,
    var_grad,
)

LABEL_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return TinyCNN().eval(), x, torch.tensor([0, 2])


def test_available_methods() -> None:
    builtins = {
        "simple_grad",
        "grad_x_input",
        "integrated_gradients",
        "smooth_grad",
        "var_grad",
        "adapt_grad",
        "grad_cam",
        "captum",
    }
    names = available_methods()
    assert names == sorted(names) and builtins <= set(names)


@pytest.mark.parametrize(
    ("entry", "label"),
    [
        ("simple_grad", "simple_grad"),
        ({"method": "smooth_grad", "sigma": 0.2}, "smooth_grad_s0.2"),
        ({"method": "smooth_grad", "sigma": 0.2, "superpixel": "slic"}, "smooth_grad_s0.2_sp-slic"),
        ("adapt_grad", "adapt_grad_c0.95"),
        ({"method": "smooth_grad", "sigma": 0.1, "base": "grad_x_input"}, "smooth_grad_s0.1_gxi"),
        (
            {"method": "adapt_grad", "base": "integrated_gradients", "baseline": "max"},
            "adapt_grad_c0.95_ig_bmax",
        ),
        (
            {"method": "smooth_grad", "noise_level": 0.15, "samples": 32, "squared": True},
            "smooth_grad_nl0.15_sq_n32",
        ),
        (
            {"method": "integrated_gradients", "steps": 32, "rule": "gauss_legendre"},
            "integrated_gradients_st32_gl",
        ),
        (
            {"method": "integrated_gradients", "baseline": -0.5, "input_range": [-2, 2.5]},
            "integrated_gradients_b-0.5_r-2to2.5",
        ),
        ({"method": "var_grad", "sigma": 1, "output": "log_softmax"}, "var_grad_s1_lsm"),
        ({"method": "grad_cam", "layer": "model.layer4"}, "grad_cam_at-model.layer4"),
        ({"method": "smooth_grad", "sigma": 1e-5}, "smooth_grad_s1e-05"),
        ({"method": "smooth_grad", "sigma": 1e20}, "smooth_grad_s1e20"),
        (
            {
                "method": "simple_grad",
                "superpixel": {
                    "algorithm": "slic",
                    "n_segments": 40,
                    "reduction": "mean",
                    "compactness": 5.0,
                },
            },
            "simple_grad_sp-slic-mean-compactness5-n_segments40",
        ),
        (
            {
                "method": "smooth_grad",
                "noise_level": 0.2,
                "superpixel": {"algorithm": "watershed", "reduction": "abs_sum"},
            },
            "smooth_grad_nl0.2_sp-watershed-abs_sum",
        ),
        (
            {
                "method": "simple_grad",
                "superpixel": {"algorithm": "slic", "reduction": "abs_mean", "n_segments": 40},
            },
            "simple_grad_sp-slic-abs_mean-n_segments40",
        ),
        ({"method": "smooth_grad", "sigma": 0.2, "label": "my-sg.0"}, "my-sg.0"),
    ],
)
def test_labels(entry: object, label: str) -> None:
    spec = resolve_method(entry)  # type: ignore[arg-type]
    assert spec.label == label
    assert LABEL_RE.match(spec.label)


def test_canonical_specs_are_equal_and_hashable() -> None:
    a = resolve_method({"method": "smooth_grad", "sigma": 1})
    b = resolve_method(
        {"method": "smooth_grad", "params": {"sigma": 1.0, "samples": 16, "base": "grad"}}
    )
    c = MethodSpec("smooth_grad", {"sigma": 1.0})
    assert a == b == c and hash(a) == hash(b) == hash(c) and a.label == b.label
    assert dict(a.params) == {"sigma": 1.0}
    assert {a: 1}[c] == 1
    assert resolve_method(a) is a
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.method = "simple_grad"  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.params["sigma"] = 2.0  # type: ignore[index]
    sp = resolve_method({"method": "simple_grad", "superpixel": "slic"})
    assert sp == resolve_method(
        {"method": "simple_grad", "superpixel": {"algorithm": "slic", "reduction": "sum"}}
    )
    assert sp != resolve_method("simple_grad")


def test_labels_unique_across_distinct_configurations() -> None:
    entries: list[dict] = [
        {"method": m} for m in ("simple_grad", "grad_x_input", "adapt_grad", "grad_cam")
    ]
    for sigma, base, squared, samples in itertools.product(
        (0.0, 0.1, 0.2, 1.0),
        ("grad", "grad_x_input", "integrated_gradients"),
        (False, True),
        (8, 16),
    ):
        entries.append(
            {
                "method": "smooth_grad",
                "sigma": sigma,
                "base": base,
                "squared": squared,
                "samples": samples,
            }
        )
    for level in (0.1, 0.2):
        entries.append({"method": "smooth_grad", "noise_level": level})
        entries.append({"method": "var_grad", "noise_level": level})
        entries.append({"method": "var_grad", "sigma": level})
    for c, base in itertools.product(
        (0.9, 0.99, 0.995), ("grad", "grad_x_input", "integrated_gradients")
    ):
        entries.append({"method": "adapt_grad", "confidence": c, "base": base})
    for steps, rule, baseline in itertools.product(
        (8, 16), ("riemann", "gauss_legendre"), (None, 0.5, "min", "max")
    ):
        entries.append(
            {"method": "integrated_gradients", "steps": steps, "rule": rule, "baseline": baseline}
        )
    for out in ("logit", "log_softmax"):
        entries.append({"method": "simple_grad", "output": out, "superpixel": "felzenszwalb"})
        entries.append(
            {
                "method": "simple_grad",
                "output": out,
                "superpixel": {"algorithm": "slic", "reduction": "mean"},
            }
        )
        entries.append(
            {
                "method": "simple_grad",
                "output": out,
                "superpixel": {"algorithm": "slic", "n_segments": 20},
            }
        )
    entries += [
        {"method": "grad_cam", "layer": "layer3"},
        {"method": "grad_cam", "layer": "layer4"},
    ]
    specs = [resolve_method(e) for e in entries]
    assert len(set(specs)) == len(specs)
    labels = [s.label for s in specs]
    assert len(set(labels)) == len(labels)
    assert all(LABEL_RE.match(label) for label in labels)
    # stable: same entry, same label; and a round trip through a plain config
    assert [resolve_method(e).label for e in entries] == labels
    assert [resolve_method(s.to_config()) for s in specs] == specs


@pytest.mark.parametrize(
    ("entry", "err", "match"),
    [
        ("saliency_x", ValueError, "known: adapt_grad, captum, grad_cam, grad_x_input"),
        ({"sigma": 0.2}, ValueError, "'method' key"),
        (3, TypeError, "name, a mapping"),
        ({"method": "smooth_grad", "sigma": -0.2}, ValueError, "sigma"),
        ({"method": "smooth_grad", "noise_level": -1}, ValueError, "noise_level"),
        ({"method": "smooth_grad"}, ValueError, "exactly one of sigma"),
        ({"method": "smooth_grad", "sigma": 0.1, "noise_level": 0.1}, ValueError, "exactly one"),
        ({"method": "smooth_grad", "sigma": 0.1, "samples": 0}, ValueError, "samples"),
        (
            {"method": "smooth_grad", "sigma": 0.1, "steps": 4},
            ValueError,
            "base='integrated_gradients'",
        ),
        ({"method": "smooth_grad", "sigma": 0.1, "base": "sg"}, ValueError, "base"),
        ({"method": "smooth_grad", "sigma": 0.1, "squared": 1}, TypeError, "squared"),
        ({"method": "smooth_grad", "sigma": 0.1, "seed": 1}, ValueError, "unknown parameter"),
        ({"method": "adapt_grad", "confidence": 1.0}, ValueError, "between 0 and 1"),
        ({"method": "adapt_grad", "input_range": [1, 1]}, ValueError, "x_min < x_max"),
        ({"method": "integrated_gradients", "steps": 0}, ValueError, "steps"),
        (
            {"method": "integrated_gradients", "baseline": torch.zeros(1)},
            TypeError,
            "tensor baseline",
        ),
        ({"method": "integrated_gradients", "baseline": "grey"}, ValueError, "baseline"),
        ({"method": "simple_grad", "output": "softmax"}, ValueError, "output"),
        ({"method": "simple_grad", "sigma": 0.1}, ValueError, "unknown parameter"),
        ({"method": "grad_cam", "layer": "a b"}, ValueError, "layer"),
        ({"method": "simple_grad", "superpixel": "grid"}, ValueError, "super-pixel algorithm"),
        (
            {"method": "simple_grad", "superpixel": {"algorithm": "slic", "reduction": "max"}},
            ValueError,
            "reduction",
        ),
        (
            {"method": "simple_grad", "superpixel": {"algorithm": "slic", "scale": 3}},
            ValueError,
            "unknown parameter",
        ),
        ({"method": "simple_grad", "label": "bad label!"}, ValueError, "label"),
        (
            {"method": "simple_grad", "params": {"output": "logit"}, "output": "logit"},
            ValueError,
            "both",
        ),
    ],
)
def test_bad_specs(entry: object, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        resolve_method(entry)  # type: ignore[arg-type]


def test_spec_queries() -> None:
    assert segmenter_args("simple_grad") is None
    assert segmenter_args(
        {"method": "simple_grad", "superpixel": {"algorithm": "felzenszwalb", "scale": 50}}
    ) == {
        "algorithm": "felzenszwalb",
        "scale": 50,
    }
    assert method_needs_input_range("adapt_grad")
    assert method_needs_input_range({"method": "smooth_grad", "noise_level": 0.2})
    assert method_needs_input_range({"method": "integrated_gradients", "baseline": "min"})
    assert not method_needs_input_range({"method": "smooth_grad", "sigma": 0.2})
    assert not method_needs_input_range({"method": "adapt_grad", "input_range": (0, 1)})
    assert method_is_stochastic({"method": "smooth_grad", "sigma": 0.2})
    assert method_is_stochastic({"method": "var_grad", "noise_level": 0.2})
    assert method_is_stochastic("adapt_grad")
    assert not method_is_stochastic({"method": "smooth_grad", "sigma": 0})
    assert not method_is_stochastic("integrated_gradients")
    assert not method_is_stochastic("grad_cam")


def test_compute_attribution_matches_direct_calls(setup: tuple) -> None:
    model, x, t = setup
    rng = (-2.0, 3.0)
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    cases = [
        ("simple_grad", simple_grad(model, x, t)),
        (
            {"method": "integrated_gradients", "steps": 4, "baseline": "min"},
            integrated_gradients(model, x, t, steps=4, baseline=-2.0),
        ),
        (
            {"method": "smooth_grad", "noise_level": 0.1, "samples": 3},
            smooth_grad(model, x, t, sigma=0.5, samples=3, seed=11),
        ),
        (
            {"method": "var_grad", "sigma": 0.3, "samples": 3},
            var_grad(model, x, t, sigma=0.3, samples=3, seed=11),
        ),
        (
            {"method": "adapt_grad", "base": "grad_x_input", "samples": 3},
            adapt_grad(model, x, t, input_range=rng, base="grad_x_input", samples=3, seed=11),
        ),
        ({"method": "grad_cam", "layer": "conv"}, grad_cam(model, x, t, layer=model.conv)),
    ]
    for entry, expected in cases:
        got = compute_attribution(
            entry, model, x, t, generator=gen(), input_range=rng, batch_size=5
        )
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    # a range stored in the spec wins over the call's
    spec = {"method": "adapt_grad", "input_range": (-1.0, 1.0), "samples": 2}
    torch.testing.assert_close(
        compute_attribution(spec, model, x, t, input_range=rng),
        adapt_grad(model, x, t, input_range=(-1.0, 1.0), samples=2),
    )
    with pytest.raises(ValueError, match="needs input_range"):
        compute_attribution("adapt_grad", model, x, t)
    with pytest.raises(ValueError, match="needs input_range"):
        compute_attribution({"method": "smooth_grad", "noise_level": 0.1}, model, x, t)


def test_compute_attribution_groups_by_segments(setup: tuple) -> None:
    model, x, t = setup
    segments = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 2, 3]])
    segments = torch.stack([segments, segments.T])
    spec = {"method": "simple_grad", "superpixel": "slic"}
    with pytest.raises(ValueError, match="pass segments"):
        compute_attribution(spec, model, x, t)
    maps = simple_grad(model, x, t)
    for reduction in ("sum", "mean", "abs_sum", "abs_mean"):
        entry = {
            "method": "simple_grad",
            "superpixel": {"algorithm": "slic", "reduction": reduction},
        }
        got = compute_attribution(entry, model, x, t, segments=segments)
        expected = torch.empty_like(maps)
        for n in range(2):
            for s in segments[n].unique():
                mask = segments[n] == s
                values = maps[n][:, mask]
                score = (values.abs() if reduction.startswith("abs_") else values).sum()
                if reduction.endswith("mean"):
                    score = score / (maps.shape[1] * mask.sum())
                expected[n][:, mask] = score
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_adaptgrad_paper_specs(setup: tuple) -> None:
    specs = adaptgrad_paper_specs()
    labels = [s.label for s in specs]
    assert len(specs) == 12 and len(set(labels)) == 12
    assert labels[3:6] == ["grad_x_input", "smooth_grad_nl0.2_gxi", "adapt_grad_c0.95_gxi"]
    assert labels[6:9] == [
        "integrated_gradients_bmin",
        "smooth_grad_nl0.2_ig_bmin",
        "adapt_grad_c0.95_ig_bmin",
    ]
    model, x, t = setup
    got = compute_attribution(specs[8], model, x, t, input_range=(-3.0, 3.0))
    ref = adapt_grad(
        model, x, t, input_range=(-3.0, 3.0), base="integrated_gradients", baseline=-3.0
    )
    torch.testing.assert_close(got, ref)


# Literal values computed from the code of version 0.1 before the registry opened: the
# noise seed of every existing spec fixes its noise draws, so it must never change.
_SEED_TABLE: list[tuple[object, str, int, int]] = [
    ("simple_grad", "simple_grad", 1226322310, 1233322331),
    ("grad_x_input", "grad_x_input", 245897202, 252897223),
    ("integrated_gradients", "integrated_gradients", 1259777833, 1266777854),
    ("adapt_grad", "adapt_grad_c0.95", 3819939733, 3826939754),
    ("grad_cam", "grad_cam", 4261123893, 4268123914),
    ({"method": "smooth_grad", "sigma": 0.2}, "smooth_grad_s0.2", 2651505951, 2658505972),
    (
        {"method": "smooth_grad", "noise_level": 0.15, "samples": 32, "squared": True},
        "smooth_grad_nl0.15_sq_n32",
        2852637706,
        2859637727,
    ),
    (
        {"method": "smooth_grad", "sigma": 0.1, "base": "grad_x_input"},
        "smooth_grad_s0.1_gxi",
        433850420,
        440850441,
    ),
    (
        {"method": "adapt_grad", "base": "integrated_gradients", "baseline": "max"},
        "adapt_grad_c0.95_ig_bmax",
        3388136863,
        3395136884,
    ),
    (
        {"method": "integrated_gradients", "steps": 32, "rule": "gauss_legendre"},
        "integrated_gradients_st32_gl",
        3164250788,
        3171250809,
    ),
    (
        {"method": "integrated_gradients", "baseline": -0.5, "input_range": [-2, 2.5]},
        "integrated_gradients_b-0.5_r-2to2.5",
        3625403441,
        3632403462,
    ),
    (
        {"method": "var_grad", "sigma": 1, "output": "log_softmax"},
        "var_grad_s1_lsm",
        3285381003,
        3292381024,
    ),
    (
        {"method": "grad_cam", "layer": "model.layer4"},
        "grad_cam_at-model.layer4",
        728943461,
        735943482,
    ),
    (
        {"method": "smooth_grad", "noise_level": 0.2, "superpixel": "slic", "label": "x"},
        "smooth_grad_nl0.2",
        2116520243,
        2123520264,
    ),
    ({"method": "smooth_grad", "sigma": 1e-5}, "smooth_grad_s1e-05", 2289521733, 2296521754),
    (
        {"method": "adapt_grad", "confidence": 0.99, "base": "grad_x_input", "samples": 8},
        "adapt_grad_c0.99_gxi_n8",
        3203102316,
        3210102337,
    ),
]


@pytest.mark.parametrize(("entry", "key", "seed0", "seed7"), _SEED_TABLE)
def test_noise_seeds_of_builtin_specs_never_change(
    entry: object, key: str, seed0: int, seed7: int
) -> None:
    spec = resolve_method(entry)  # type: ignore[arg-type]
    assert spec.seed_key == key
    assert (spec.noise_seed(0), spec.noise_seed(7)) == (seed0, seed7)

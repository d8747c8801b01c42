"""The studies layer: how the live figures, the report's studies and verdicts classify specs."""

from __future__ import annotations

from lightning_saliency.attribution import MethodSpec, adaptgrad_paper_specs, resolve_method
from lightning_saliency.attribution._gradient_methods import BASES
from lightning_saliency.generalization import studies


def _specs(*configs: object) -> dict[str, MethodSpec]:
    return {s.label: s for s in map(resolve_method, configs)}  # type: ignore[arg-type]


def test_method_spec_is_a_plain_value_again() -> None:
    for name in ("is_plain_baseline", "gradient_base", "smoothgrad_curve", "noise", "samples"):
        assert not hasattr(MethodSpec, name), name


def test_plain_baseline_is_the_logit_gradient_on_pixels_only() -> None:
    assert studies.is_plain_baseline(MethodSpec("simple_grad"))
    for spec in (MethodSpec("simple_grad", {"output": "log_softmax"}),
                 MethodSpec("simple_grad", superpixel="slic"), MethodSpec("grad_x_input")):  # fmt: skip
        assert not studies.is_plain_baseline(spec)
    specs = _specs("grad_x_input", "simple_grad", {"method": "simple_grad", "label": "again"})
    assert studies.plain_baseline(specs.values()) == MethodSpec("simple_grad")


def test_smoothgrad_curves_split_by_noise_kind_and_draws_with_the_baseline_at_zero() -> None:
    specs = _specs(
        "simple_grad",
        {"method": "smooth_grad", "noise_level": 0.2},
        {"method": "smooth_grad", "noise_level": 0.1},
        {"method": "smooth_grad", "noise_level": 0.2, "samples": 4},
        {"method": "smooth_grad", "sigma": 0.3},
        {"method": "smooth_grad", "sigma": 0.3, "base": "grad_x_input"},  # not a sweep point
        {"method": "smooth_grad", "sigma": 0.3, "superpixel": "slic"},  # nor this
    )
    curves = studies.smoothgrad_curves(specs)
    assert curves == {
        ("noise_level", 16): [(0.0, "simple_grad"), (0.1, "smooth_grad_nl0.1"), (0.2, "smooth_grad_nl0.2")],
        ("noise_level", 4): [(0.0, "simple_grad"), (0.2, "smooth_grad_nl0.2_n4")],
        ("sigma", 16): [(0.0, "simple_grad"), (0.3, "smooth_grad_s0.3")],
    }  # fmt: skip
    no_base = {lb: s for lb, s in specs.items() if lb != "simple_grad"}
    assert set(studies.smoothgrad_curves(no_base, min_points=2)) == {("noise_level", 16)}


def test_superpixel_pairs_need_the_pixel_twin() -> None:
    specs = _specs("simple_grad", {"method": "simple_grad", "superpixel": "slic"},
                   {"method": "smooth_grad", "sigma": 0.2, "superpixel": "slic"})  # fmt: skip
    assert [(p, s) for p, s, _ in studies.superpixel_pairs(specs)] == [
        ("simple_grad", "simple_grad_sp-slic")]  # fmt: skip


def test_adaptgrad_groups_the_paper_specs_by_gradient_base() -> None:
    specs = {s.label: s for s in adaptgrad_paper_specs()}
    specs.update(_specs({"method": "grad_x_input", "label": "lonely"}, {"method": "var_grad", "sigma": 0.1}))
    groups = studies.adaptgrad_groups(specs)
    bases = [studies.gradient_base(s) for _, s, _ in groups]
    assert sorted(set(bases)) == ["grad", "grad_x_input", "integrated_gradients_bmax",
                                  "integrated_gradients_bmin"]  # fmt: skip
    assert [v for _, _, v in groups][:3] == ["plain", "smooth", "adapt"]
    assert "lonely" in [lb for lb, _, _ in groups]  # a plain grad_x_input: its base has AdaptGrad
    assert studies.variant(MethodSpec("var_grad", {"sigma": 0.1})) is None
    assert set(studies.PLAIN_BASES.values()) == set(BASES)  # every base a smoothing method takes

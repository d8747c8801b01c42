"""The metric registry: a user's agreement metric works end to end like a built-in.

Adding a metric is one registration (here, in this test module): the result schema's
names, its chance levels, the sign of its excess over chance, the TensorBoard charts and
the docs table follow from the declaration. No package module names ``cosine``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_saliency.attribution import resolve_method
from lightning_saliency.callbacks._tensorboard_layout import custom_scalars_layout
from lightning_saliency.generalization import (
    MetricKey,
    ProbeLayout,
    agreement_values,
    compute_maps,
    evaluate_epoch,
    model_logits,
    pairwise_agreement,
    predictions,
)
from lightning_saliency.metrics import (
    get_metric,
    higher_is_better,
    metric_names,
    metric_table,
    register_metric,
    topk_intersection,
    unregister_metric,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def _cosine(a: Tensor, b: Tensor, *, eps: float = 1e-12) -> Tensor:
    """cosine similarity of the flattened maps"""
    a, b = a.flatten(1), b.flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)


@pytest.fixture
def cosine() -> Iterator[None]:
    register_metric(_cosine, name="cosine", higher_is_better=True, bounds=(-1.0, 1.0))
    register_metric(lambda a, b: 1 - _cosine(a, b), name="cosine_distance",
                    higher_is_better=False, bounds=(0.0, 2.0))  # fmt: skip
    yield
    unregister_metric("cosine")
    unregister_metric("cosine_distance")


def test_registered_metric_values_match_torch_and_a_hand_computation(cosine: None) -> None:
    a = torch.tensor([[[[3.0, 4.0]]], [[[1.0, 0.0]]]])
    b = torch.tensor([[[[4.0, 3.0]]], [[[0.0, 2.0]]]])
    v = agreement_values(a, b)
    assert v["cosine"].tolist() == pytest.approx([24 / 25, 0.0])
    x, y = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    want = F.cosine_similarity(x.flatten(1), y.flatten(1), dim=1)
    torch.testing.assert_close(agreement_values(x, y, ["cosine"])["cosine"], want)
    assert set(v) == {"l2", "spearman", "topk", "ssim", "cosine", "cosine_distance"}


def _epoch(**kw: object):  # two linear models, 6 + 6 train and 8 test probes
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(16, 3)) for _ in range(2)]
    layout = ProbeLayout.from_sizes([6, 6], 8)
    x, y = torch.randn(20, 1, 4, 4), torch.randint(0, 3, (20,))
    specs = [resolve_method("simple_grad")]
    maps = compute_maps(models, x, y, specs)
    preds = predictions(model_logits(models, x))
    return evaluate_epoch(maps, layout, specs, labels=y, preds=preds, **kw)  # type: ignore[arg-type]


def test_registered_metric_appears_in_the_evaluation_with_its_direction(cosine: None) -> None:
    est = _epoch().estimates
    key = lambda m: MetricKey("simple_grad", "pairs", "test", m)  # noqa: E731
    value, chance = est[key("cosine")].value, est[key("cosine_chance")].value
    above = est[key("cosine_above_chance")]
    assert math.isfinite(value) and math.isfinite(chance)
    assert above.value == pytest.approx(value - chance, abs=1e-6)  # higher is better
    dist_above = est[key("cosine_distance_above_chance")].value
    chance_d, value_d = est[key("cosine_distance_chance")].value, est[key("cosine_distance")].value
    assert dist_above == pytest.approx(chance_d - value_d, abs=1e-6)  # lower is better
    assert dist_above == pytest.approx(above.value, abs=1e-6)  # 1 - cos: the same excess
    assert higher_is_better("cosine") is True and higher_is_better("cosine_distance") is False
    assert higher_is_better("cosine_distance_above_chance") is True


def test_registered_metric_gets_its_tensorboard_charts_and_docs_row(cosine: None) -> None:
    charts = custom_scalars_layout(["m"], scalars="all")["m"]
    assert charts["test cosine and its chance level"] == [
        "Multiline", ["^(interp/m/test/cosine|interp/m/test/cosine_chance)$"]]  # fmt: skip
    assert "test cosine above chance, 95% interval" not in charts  # not a headline metric
    assert "| agreement | `cosine` | `eps=1e-12` | higher | [-1, 1] | other_probes |" in metric_table()


def test_adding_a_metric_touches_no_package_module() -> None:
    """The cosine metric exists only through its registration in this test module: no
    module that computes, names, logs or reports metrics mentions it."""
    package = Path(__file__).resolve().parents[1] / "lightning_saliency"
    modules = [p for sub in ("metrics", "generalization", "callbacks", "report")
               for p in (package / sub).rglob("*.py")]  # fmt: skip
    assert len(modules) > 30
    assert not [p.name for p in modules if "cosine" in p.read_text()]


def test_builtin_agreement_metrics_are_unchanged_by_default() -> None:
    assert metric_names("agreement") == ("l2", "spearman", "topk", "ssim")
    assert [m for m in metric_names() if get_metric(m).headline] == ["spearman", "ssim"]
    assert "cosine" not in agreement_values(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3))


def test_docs_table_is_the_registry() -> None:
    text = DOCS.read_text()
    table = re.search(r"<!-- metric-registry:start -->\n(.*?)\n<!-- metric-registry:end -->", text, re.S)
    assert table is not None, "docs/metrics.md lost its metric-registry markers"
    assert table.group(1) == metric_table(), "regenerate the table with metric_table()"


def test_topk_parameter_travels_in_the_spec_and_the_keyword_fills_it() -> None:
    a, b = torch.randn(4, 1, 6, 6), torch.randn(4, 1, 6, 6)
    want = topk_intersection(a, b, k=0.5)
    spec = {"metric": "topk", "k": 0.5}
    torch.testing.assert_close(agreement_values(a, b, [spec])["topk"], want)
    torch.testing.assert_close(agreement_values(a, b, ["topk"], topk=0.5)["topk"], want)
    torch.testing.assert_close(agreement_values(a, b, [spec], topk=0.2)["topk"], want)  # spec wins
    torch.testing.assert_close(agreement_values(a, b, ["topk"])["topk"], topk_intersection(a, b))
    layout = ProbeLayout.from_sizes([1, 1], 4)
    stats = pairwise_agreement(torch.randn(2, 6, 1, 6, 6), layout, "test", metrics=[spec], chance=False)
    assert sorted(stats) == ["topk"]


def test_topk_keyword_of_evaluate_epoch_changes_only_topk() -> None:
    base, wide = _epoch().estimates, _epoch(topk=0.5).estimates
    key = lambda m: MetricKey("simple_grad", "pairs", "test", m)  # noqa: E731
    assert base[key("spearman")] == wide[key("spearman")]
    assert base[key("topk")].value != wide[key("topk")].value
    assert _epoch(metrics=[{"metric": "topk", "k": 0.5}]).estimates[key("topk")] == wide[key("topk")]


def test_every_family_has_a_direction() -> None:
    for metric, want in [("l2", False), ("spearman_above_chance", True), ("sparseness", True),
                         ("complexity", False), ("mu_fidelity", True), ("deletion_auc", False),
                         ("insertion_auc", True), ("randomization_spearman_half", False),
                         ("gap_reduction", True), ("mege", True), ("loss", False),
                         ("gap", None), ("spearman_chance", None), ("nonfinite_maps", None)]:  # fmt: skip
        assert higher_is_better(metric) is want, metric


def test_registration_errors() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_metric(_cosine, name="spearman", higher_is_better=True)
    for taken in ("sparseness", "mege", "gap", "x_chance", "x_above_chance", "prediction_kappa"):
        with pytest.raises(ValueError, match=r"already a|reserved"):  # one key, two numbers
            register_metric(_cosine, name=taken, higher_is_better=True)
    register_metric(lambda m: m.flatten(1).abs().amax(1), name="peak", family="quality",
                    higher_is_better=None)  # fmt: skip
    assert get_metric("peak", "quality").chance is None
    unregister_metric("peak", "quality")
    with pytest.raises(ValueError, match="needs a direction"):
        register_metric(_cosine, name="undirected", higher_is_better=None)
    with pytest.raises(ValueError, match="unknown parameter"):
        agreement_values(torch.ones(1, 4), torch.ones(1, 4), [{"metric": "topk", "q": 1}])
    with pytest.raises(ValueError, match="unknown agreement metric"):
        agreement_values(torch.ones(1, 4), torch.ones(1, 4), ["nope"])
    assert get_metric("spearman").clip(1.5) == 1.0

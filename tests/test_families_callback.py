"""The opt-in faithfulness and randomization families in the callback (issue 16).

Their values are checked against Quantus in tests/test_families.py; here: they run only when
named, on the epochs ``families_every_n_epochs`` says, reach the CSV and TensorBoard, equal
the public functions on the same maps, and the randomization check can fail and pass."""

from __future__ import annotations

import pytest
import torch
from _tiny import callback as _callback
from _tiny import data as _data
from _tiny import ensemble as _ensemble
from _tiny import read_csv as _read_csv
from _tiny import tb_scalars as _tb_scalars
from _tiny import trainer as _trainer
from torch import nn

from lightning_saliency.attribution import resolve_method
from lightning_saliency.generalization import (
    FAITHFULNESS_METRICS,
    MetricKey,
    ProbeLayout,
    compute_maps,
    estimate_all,
    family_statistics,
    randomization_metric,
)

FAMILIES = ["gap", "faithfulness", "randomization"]


@pytest.mark.slow
def test_opt_in_families_run_when_named_and_on_schedule(tmp_path) -> None:
    cb = _callback(methods=["simple_grad"], metrics=FAMILIES, families_every_n_epochs=2,
                   log_images_every_n_epochs=0)  # fmt: skip
    trainer = _trainer(tmp_path, [cb], max_epochs=4)
    trainer.fit(_ensemble(), _data())
    rows = _read_csv(tmp_path / "tb" / "version_0" / "interpretation_metrics.csv")
    by_epoch: dict[int, set[str]] = {}
    for r in rows:
        if r["method"] == "simple_grad":
            by_epoch.setdefault(int(r["epoch"]), set()).add(r["metric"])
    # monitored epochs 0..3: the opt-in families on the 1st and 3rd monitored and the last
    faith = {e for e, ms in by_epoch.items() if "mu_fidelity" in ms}
    rand = {e for e, ms in by_epoch.items() if randomization_metric("spearman", "all") in ms}
    assert faith == rand == {0, 2, 3}
    assert all("gap" in ms for ms in by_epoch.values())
    for r in rows:
        if r["metric"] in ("deletion_auc", "insertion_auc") and r["split"] != "gap":
            assert 0.0 <= float(r["value"]) <= 1.0, r
    tags = _tb_scalars(tmp_path / "tb" / "version_0")
    assert "interp/simple_grad/test/mu_fidelity" in tags
    assert "interp/simple_grad/deletion_auc_gap" in tags
    assert "interp/simple_grad/train/mu_fidelity" not in tags  # train values: the CSV
    gap_steps = [step for step, _ in tags["interp/simple_grad/gap"]]  # epochs 0..3
    rand_steps = [step for step, _ in tags["interp/simple_grad/test/randomization_ssim_top1"]]
    assert rand_steps == [gap_steps[0], gap_steps[2], gap_steps[3]]


def test_default_families_leave_the_opt_in_ones_out(tmp_path) -> None:
    cb = _callback(methods=["simple_grad"], log_images_every_n_epochs=0)
    _trainer(tmp_path, [cb], max_epochs=1).fit(_ensemble(), _data())
    assert "faithfulness" not in cb.families and "randomization" not in cb.families
    rows = _read_csv(tmp_path / "tb" / "version_0" / "interpretation_metrics.csv")
    assert not [r for r in rows if r["metric"] in FAITHFULNESS_METRICS]


@pytest.mark.slow
def test_callback_numbers_equal_the_public_function(tmp_path) -> None:
    cb = _callback(methods=["simple_grad"], metrics=FAMILIES, fold_batchnorm=False,
                   log_images_every_n_epochs=0)  # fmt: skip
    model = _ensemble()
    _trainer(tmp_path, [cb], max_epochs=1).fit(model, _data())
    got = cb.evaluate(model)
    spec = resolve_method("simple_grad")
    x, y = cb.probes.x, cb.probes.y
    maps = compute_maps(list(model.models), x, y, [spec], seed=cb.seed)
    want = estimate_all(family_statistics(list(model.models), x, y, maps, cb.probes.layout,
                                          [spec], seed=cb.seed))  # fmt: skip
    for key, est in want.items():
        assert torch.isclose(torch.tensor(got.estimates[key].value), torch.tensor(est.value),
                             atol=1e-6), key  # fmt: skip


class _BiasOnly(nn.Module):
    """A classifier whose only weights are a bias: the input gradient of ``x . w + b``
    (``w`` a fixed buffer) does not depend on them. The control that makes the
    randomization check fail: re-initializing every layer leaves the maps as they were."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(64, 2, generator=torch.Generator().manual_seed(1)))
        self.b = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b


def test_randomization_tells_a_weight_blind_model_from_one_that_uses_its_weights() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 2, (8,))
    layout = ProbeLayout.from_sizes([4], 4)
    spec = resolve_method("simple_grad")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))
    key = MetricKey("simple_grad", "mean", "test", randomization_metric("spearman", "all"))
    sims = {}
    for name, model in (("blind", _BiasOnly()), ("net", net)):
        maps = compute_maps([model], x, y, [spec])
        stats = family_statistics([model], x, y, maps, layout, [spec], families=["randomization"])
        sims[name] = estimate_all(stats)[key]
    assert sims["blind"].value == 1.0  # the maps did not change: the check fails, as it must
    assert sims["net"].hi < 0.5  # re-initialized weights: the maps changed


def test_the_layout_charts_only_the_families_that_run() -> None:
    from lightning_saliency.callbacks._tensorboard_layout import custom_scalars_layout

    default = custom_scalars_layout(["m"], scalars="all")["m"]
    assert "MeGe and ReCo (train probes)" in default
    assert not any("mu_fidelity" in t or "randomized" in t for t in default)
    layout = custom_scalars_layout(["m"], families=["gap", "faithfulness", "randomization"], scalars="all")
    chosen = layout["m"]
    assert "MeGe and ReCo (train probes)" not in chosen
    assert "test sparseness and its gap" not in chosen
    assert "test spearman and its chance level" not in chosen
    assert {"gap of each model", "test mu_fidelity and its gap",
            "spearman to randomized copies, by cascade level"} <= set(chosen)  # fmt: skip
    # the gap's interval chart is a headline chart; no agreement family: no agreement category
    assert list(layout)[:1] == ["gap (test - train loss), 95% interval"]
    assert not any("above chance" in c or "prediction" in c for c in layout)
    # the headline set keeps the opt-in families' charts (the run named them)
    assert set(custom_scalars_layout(["m"], families=["gap", "faithfulness"], scalars="headline")["m"]) == {
        f"test {m} and its gap" for m in ("mu_fidelity", "deletion_auc", "insertion_auc")}  # fmt: skip

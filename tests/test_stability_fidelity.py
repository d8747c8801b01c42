"""The stability-fidelity pairing: the distance to the plain gradient, its points and figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_saliency.attribution import resolve_method
from lightning_saliency.generalization import (
    Estimate,
    MetricKey,
    ProbeLayout,
    compute_maps,
    estimate_all,
    evaluate_epoch,
)
from lightning_saliency.generalization.stability_fidelity import (
    FIDELITY_METRIC,
    fidelity_statistics,
    loglog_slope,
    smoothing_curves,
    stability_fidelity_points,
)
from lightning_saliency.report.runs import Run
from lightning_saliency.report.stability_fidelity import (
    STUDY,
    slopes,
    stability_fidelity_figure,
)

SPECS = [
    resolve_method(m)
    for m in (
        "simple_grad",
        {"method": "smooth_grad", "sigma": 0.1, "samples": 4},
        {"method": "smooth_grad", "sigma": 1.0, "samples": 4},
        {"method": "adapt_grad", "samples": 4},
        {"method": "simple_grad", "superpixel": "slic"},  # not a smoothing method
    )
]


def _unit_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)))


def test_curves_group_smoothgrad_by_noise_kind_and_adaptgrad_apart() -> None:
    curves = smoothing_curves(SPECS)
    assert curves == {
        "smooth_grad sigma, n=4": [(0.0, "simple_grad"), (0.1, "smooth_grad_s0.1_n4"),
                                   (1.0, "smooth_grad_s1_n4")],
        "adapt_grad, n=4": [(0.95, "adapt_grad_c0.95_n4")],
    }  # fmt: skip
    clean = resolve_method({"method": "adapt_grad", "include_clean": True})
    assert list(smoothing_curves([clean])) == ["adapt_grad+clean, n=16"]


def test_fidelity_is_the_normalized_l2_to_the_same_models_plain_map() -> None:
    g = torch.Generator().manual_seed(0)
    layout = ProbeLayout.from_sizes([2, 2], 5)
    n = layout.num_probes
    maps = {s.label: torch.randn(3, n, 1, 4, 4, generator=g) for s in SPECS}  # M = K + 1
    stats = fidelity_statistics(maps, SPECS, layout, stage="fit")
    assert {k.method for k in stats} == {"simple_grad", "smooth_grad_s0.1_n4",
                                         "smooth_grad_s1_n4", "adapt_grad_c0.95_n4"}  # fmt: skip
    est = estimate_all(stats)
    t = range(layout.test.start, layout.test.stop)
    for label in ("smooth_grad_s1_n4", "adapt_grad_c0.95_n4"):
        per_probe = [np.mean([_unit_l2(maps[label][k, i].numpy(), maps["simple_grad"][k, i].numpy())
                              for k in range(2)]) for i in t]  # fmt: skip
        e = est[MetricKey(label, "mean", "test", FIDELITY_METRIC)]
        assert e.value == pytest.approx(np.mean(per_probe), abs=1e-6)
        assert e.n == 5 and e.lo < e.value < e.hi
        sd = np.std(per_probe, ddof=1) / math.sqrt(5)
        assert e.se == pytest.approx(sd, rel=1e-4)
    assert est[MetricKey("simple_grad", "mean", "test", FIDELITY_METRIC)].value == 0.0
    assert fidelity_statistics(maps, SPECS[1:], layout) == {}  # no plain gradient


def test_loglog_slope_recovers_power_laws() -> None:
    xs = [0.05, 0.1, 0.2, 0.5, 1.0]
    assert loglog_slope(xs, [3 * x for x in xs]) == pytest.approx(1.0)
    assert loglog_slope(xs, [0.2 / x for x in xs]) == pytest.approx(-1.0)
    assert math.isnan(loglog_slope([0.1, 0.2], [1.0, math.nan]))


def _evaluation() -> tuple[dict, list]:
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                            nn.Linear(4 * 8 * 8, 3)).eval() for _ in range(2)]  # fmt: skip
    layout = ProbeLayout.from_sizes([4, 4], 8)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(layout.num_probes, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (layout.num_probes,), generator=g)
    specs = SPECS[:4]
    maps = compute_maps(models, x, y, specs, input_range=(0.0, 1.0))
    ev = evaluate_epoch(maps, layout, specs, labels=y, preds=y.expand(2, -1))
    ev.extend(fidelity_statistics(maps, specs, layout))
    return ev.estimates, specs


def test_points_and_figure_from_an_evaluation(tmp_path: Path) -> None:
    estimates, specs = _evaluation()
    points = stability_fidelity_points(estimates, specs)
    assert [p.label for p in points] == [s.label for s in specs[:3]] + [specs[3].label]
    assert all(p.fidelity is not None and p.above_chance is not None and p.gap is not None
               and p.instability is not None for p in points)  # fmt: skip
    fid = {p.label: p.fidelity.value for p in points}  # type: ignore[union-attr]
    # more noise, further from the plain gradient
    assert fid["simple_grad"] == 0.0 < fid["smooth_grad_s0.1_n4"] < fid["smooth_grad_s1_n4"]
    fig = stability_fidelity_figure(estimates, specs, epoch=3)
    assert fig is not None and len(fig.axes) == 3
    fig.savefig(tmp_path / "sf.png")
    no_fid = {k: v for k, v in estimates.items() if k.metric != FIDELITY_METRIC}
    assert stability_fidelity_figure(no_fid, specs) is None
    (a, b), = slopes(points).values()  # fmt: skip
    assert math.isfinite(a) and b > 0


def test_report_study_from_run_estimates(tmp_path: Path) -> None:
    estimates, specs = _evaluation()
    run = Run("r", tmp_path, 3, (3,), "fit", estimates, {s.label: s for s in specs})
    table = STUDY.build([run])
    assert len(table.rows) == 4
    assert isinstance(table.rows[1]["fidelity"], Estimate)
    STUDY.plot(table, tmp_path / "sf.png")
    assert (tmp_path / "sf.png").stat().st_size > 0
    (line,) = STUDY.summary(table)
    assert line.startswith("smooth_grad sigma, n=4: distance between models ~ noise^")


def test_sweep_config_instantiates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from lightning_saliency.callbacks import InterpretationGeneralization
    from lightning_saliency.cli import cli_main

    path = Path(__file__).resolve().parents[1] / "configs/experiments/stability_fidelity.yaml"
    monkeypatch.setattr(sys, "argv", ["lightning-saliency"])
    cli = cli_main(["--config", str(path), "--trainer.logger.init_args.save_dir",
                    str(tmp_path / "runs")], run=False)  # fmt: skip
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, InterpretationGeneralization)]
    assert cli.trainer.max_epochs % cb.every_n_epochs == 0  # the last epoch is monitored
    curves = smoothing_curves(cb.specs)
    assert [n for n, _ in curves["smooth_grad noise_level, n=16"]] == [0, 0.05, 0.1, 0.2, 0.5, 1]
    assert set(curves) == {"smooth_grad noise_level, n=16", "adapt_grad, n=16",
                           "adapt_grad+clean, n=16"}  # fmt: skip

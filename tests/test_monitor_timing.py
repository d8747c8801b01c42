"""Issue 21: where the monitor's time goes (per-stage timers, the ``profile`` option) and
the batched agreement path (each map's features once for every pair and chance draw)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from _tiny import callback, data, ensemble, trainer

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.generalization import MetricKey, ProbeLayout, evaluate_epoch
from lightning_saliency.generalization._pair_features import PairFeatures
from lightning_saliency.generalization._timing import StageTimes, stage
from lightning_saliency.generalization.chance import ChancePairing
from lightning_saliency.generalization.core import MapStack, pairwise_agreement
from lightning_saliency.metrics import agreement_specs


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_nested_stages_charge_each_second_once() -> None:
    times = StageTimes()
    with times.active():
        with stage("statistics"):
            _busy(0.02)
            with stage("agreement"):
                _busy(0.05)
        _busy(0.01)  # outside every stage: "other"
    assert times.cpu["agreement"] >= 0.05
    assert 0.02 <= times.cpu["statistics"] < 0.05  # the nested agreement is not in it
    assert sum(times.cpu.values()) <= times.total_cpu
    assert sum(times.wall.values()) <= times.total_wall
    assert times.count == {"statistics": 1, "agreement": 1}


def test_stage_without_an_active_timer_times_nothing() -> None:
    times = StageTimes()
    with stage("attribution"):
        _busy(0.001)
    assert times.cpu == {} and times.total_cpu == 0.0


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_profile_option_is_validated(value: object) -> None:
    with pytest.raises(ValueError, match="profile must be True or False"):
        InterpretationGeneralization(profile=value)  # type: ignore[arg-type]


def test_profiled_fit_reports_every_stage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cb = callback(profile=True)
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, [cb], max_epochs=2).fit(ensemble(), data())
    times = cb.run.times
    for name in ("models", "attribution", "segmentation", "reference", "agreement",
                 "statistics", "logging", "images"):  # fmt: skip
        assert times.cpu[name] >= 0 and times.count[name] >= 2, name  # every monitored epoch
    assert sum(times.cpu.values()) <= times.total_cpu + 1e-9
    assert sum(times.wall.values()) <= times.total_wall + 1e-9
    assert 0 < times.floor_cpu < times.total_cpu
    assert "monitor profile, per monitored epoch (2 epochs)" in caplog.text
    assert "floor (attribution alone)" in caplog.text


def test_unprofiled_fit_times_nothing(tmp_path: Path) -> None:
    cb = callback(methods=["simple_grad"])
    trainer(tmp_path, [cb], max_epochs=1).fit(ensemble(), data())
    assert cb.run.times.cpu == {} and cb.run.times.total_cpu == 0.0


def _maps_with_degenerate_rows(m: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(m, n, 1, 12, 12, generator=g)
    maps[0, 1] = 0.0  # an all-zero map
    maps[1, 2] = (maps[1, 2] * 2).round()  # many ties
    maps[0, 3, 0, 0, 0] = float("nan")
    return maps


def test_batched_pairs_and_draws_equal_each_pair_computed_alone() -> None:
    """Features computed once and gathered give the numbers of calling every metric on the
    gathered maps of each pair and each chance draw (bit for bit, NaN where undefined)."""
    maps = _maps_with_degenerate_rows(3, 10)
    specs = agreement_specs(["l2", "spearman", {"metric": "topk", "k": 7}, "ssim"])
    pf = PairFeatures(MapStack(maps), specs)
    rows = torch.tensor([4, 5, 6, 7, 8, 9, 0, 1, 2, 3])
    partners = torch.tensor([5, 6, 7, 8, 9, 0, 1, 2, 3, 4])
    for i, j in ((0, 1), (1, 2), (0, 2)):
        got = pf.values(i, j, rows, partners)
        for spec in specs:
            want = spec(maps[i, rows], maps[j, partners])
            torch.testing.assert_close(got[spec.name], want, rtol=0, atol=0, equal_nan=True)


def test_superpixel_chance_pairs_group_by_the_first_probes_segments() -> None:
    from lightning_saliency.attribution import group_by_segments

    pixel = _maps_with_degenerate_rows(2, 6)
    seg = torch.arange(144).view(12, 12).div(36, rounding_mode="floor").expand(6, 12, 12)
    seg = (seg + torch.arange(6).view(6, 1, 1)) % 4
    grouped = torch.stack([group_by_segments(p, seg) for p in pixel])
    stack = MapStack(grouped, pixel, seg, "sum")
    specs = agreement_specs(["spearman", "ssim"])
    rows, partners = torch.arange(6), torch.tensor([1, 2, 3, 4, 5, 0])
    got = PairFeatures(stack, specs).values(0, 1, rows, partners, chance=True)
    other = group_by_segments(pixel[1, partners], seg[rows])
    for spec in specs:
        torch.testing.assert_close(got[spec.name], spec(grouped[0, rows], other), rtol=0,
                                   atol=0, equal_nan=True)  # fmt: skip


def test_shared_features_across_splits_give_the_same_statistics() -> None:
    maps = _maps_with_degenerate_rows(2, 12)
    layout = ProbeLayout.from_sizes([4, 4], 4)
    pairing = ChancePairing(labels=torch.tensor([0, 1, 0, 1] * 3), draws=3)
    specs = agreement_specs(None)
    shared = PairFeatures(MapStack(maps), specs)
    for split in ("train", "test"):
        alone = pairwise_agreement(maps, layout, split, pairing=pairing)
        both = pairwise_agreement(maps, layout, split, pairing=pairing, features=shared)
        assert sorted(alone) == sorted(both)
        for name, stat in alone.items():
            for g, v in stat.terms.items():
                torch.testing.assert_close(both[name].terms[g], v, rtol=0, atol=0, equal_nan=True)


def test_evaluate_epoch_spearman_chance_is_a_mean_over_derangements() -> None:
    """An independent reference: the class-blind chance level of Spearman on the test
    probes is the mean over the pairing's derangements of scipy's Spearman."""
    from scipy.stats import spearmanr

    from lightning_saliency.attribution import resolve_method

    g = torch.Generator().manual_seed(5)
    maps = torch.rand(2, 12, 1, 6, 6, generator=g)
    layout = ProbeLayout.from_sizes([4, 4], 4)
    labels = torch.tensor([0, 1, 2] * 4)
    spec = resolve_method("simple_grad")
    res = evaluate_epoch({spec.label: maps}, layout, [spec], labels=labels,
                         preds=torch.zeros(2, 12, dtype=torch.long), metrics=["spearman"],
                         families=["agreement"], chance_draws=3)  # fmt: skip
    rows = torch.arange(8, 12)
    perms = ChancePairing(labels=labels, draws=3).derangements(rows)
    a = maps[0].flatten(1).numpy()
    b = maps[1].flatten(1).numpy()
    want = sum(spearmanr(a[r], b[p]).statistic for perm in perms
               for r, p in zip(rows.tolist(), perm.tolist(), strict=True)) / (3 * 4)  # fmt: skip
    got = res.estimates[MetricKey(spec.label, "pairs", "test", "spearman_chance")].value
    assert got == pytest.approx(want, abs=1e-6)


def test_features_of_other_maps_are_refused() -> None:
    maps = torch.rand(2, 12, 1, 6, 6)
    other = PairFeatures(MapStack(maps.clone()), agreement_specs(["l2"]))
    with pytest.raises(ValueError, match="other maps"):
        pairwise_agreement(MapStack(maps), ProbeLayout.from_sizes([4, 4], 4), "test",
                           metrics=["l2"], features=other)  # fmt: skip

"""The public generalization core: hand-computed values, interval coverage, no Lightning."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from lightning_saliency.generalization import (
    Estimate,
    ProbeLayout,
    ProbeStatistic,
    Transformed,
    bootstrap_counts,
    estimate,
    estimate_all,
    gap_reduction,
    interpretation_gap,
    interpretation_loss,
    leave_one_out_reference,
    mege_reco_statistics,
    pairwise_agreement,
    prediction_agreement,
    t_quantile,
)
from lightning_saliency.metrics import mege_reco


@pytest.mark.slow
def test_imports_without_lightning() -> None:
    code = (
        "import sys; import lightning_saliency.generalization as g; "
        "bad = [m for m in sys.modules if m == 'lightning' or m.startswith(('lightning.', "
        "'pytorch_lightning', 'lightning_fabric'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_leave_one_out_gap_equals_a_hand_computation() -> None:
    rng = np.random.default_rng(0)
    k, sizes, n_test = 3, [2, 3, 2], 4
    layout = ProbeLayout.from_sizes(sizes, n_test)
    maps = rng.normal(size=(k, layout.num_probes, 6))
    loss = interpretation_loss(
        torch.tensor(maps), leave_one_out_reference(torch.tensor(maps))
    ).numpy()
    gaps = []
    for m in range(k):
        ref = _unit(np.mean([_unit(maps[j]) for j in range(k) if j != m], axis=0))
        dist = np.linalg.norm(_unit(maps[m]) - ref, axis=1)
        np.testing.assert_allclose(loss[m], dist, rtol=1e-12)
        tr = dist[layout.train[m]].mean()
        te = dist[layout.test].mean()
        gaps.append(te - tr)
        got = estimate(interpretation_gap(torch.tensor(loss), layout, model=m))
        assert got.value == pytest.approx(te - tr, abs=1e-12)
        # a difference of two independent means: Welch's standard error
        se = math.sqrt(dist[layout.test].var(ddof=1) / n_test
                       + dist[layout.train[m]].var(ddof=1) / sizes[m])  # fmt: skip
        assert got.se == pytest.approx(se, rel=1e-9)
    mean = estimate(interpretation_gap(torch.tensor(loss), layout))
    assert mean.value == pytest.approx(np.mean(gaps), abs=1e-12)
    assert mean.n == layout.num_probes and mean.nonfinite == 0


def test_one_model_against_a_reference_model() -> None:
    maps = torch.randn(2, 5, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    loss = interpretation_loss(maps[:1], maps[1:])
    want = torch.linalg.vector_norm(
        torch.nn.functional.normalize(maps[0].flatten(1), dim=1)
        - torch.nn.functional.normalize(maps[1].flatten(1), dim=1),
        dim=1,
    )
    torch.testing.assert_close(loss[0], want)


def test_pairwise_agreement_with_three_models_is_the_mean_over_pairs() -> None:
    """Per split: the mean over model pairs of each pair's mean over its probes (train: both
    models' own probes), and the chance level pairs a probe with other probes (derangements)."""
    g = torch.Generator().manual_seed(2)
    layout = ProbeLayout.from_sizes([3, 3, 3], 4)
    maps = torch.randn(3, layout.num_probes, 1, 4, 4, generator=g)
    from lightning_saliency.generalization import ChancePairing

    pairing = ChancePairing(seed=3, draws=2)
    stats = pairwise_agreement(maps, layout, "train", metrics=["l2"], pairing=pairing)
    pair_means, chance_means = [], []
    for i, j in itertools.combinations(range(3), 2):
        rows = torch.cat([torch.arange(p.start, p.stop) for p in (layout.train[i], layout.train[j])])
        a, b = maps[i, rows].flatten(1), maps[j, rows].flatten(1)
        unit = torch.nn.functional.normalize
        pair_means.append((unit(a, dim=1) - unit(b, dim=1)).norm(dim=1).mean())
        for perm in pairing.derangements(rows):
            other = maps[j, perm].flatten(1)
            chance_means.append((unit(a, dim=1) - unit(other, dim=1)).norm(dim=1).mean() / 2)
    got = estimate_all(stats)
    assert got["l2"].value == pytest.approx(float(torch.stack(pair_means).mean()), abs=1e-6)
    want_chance = float(torch.stack(chance_means).sum() / 3)  # 2 draws (/2 above), 3 pairs
    assert got["l2_chance"].value == pytest.approx(want_chance, abs=1e-6)
    assert got["l2_above_chance"].value == pytest.approx(
        got["l2_chance"].value - got["l2"].value, abs=1e-6  # float32 per-probe values
    )


def test_chance_level_with_a_single_probe_is_undefined() -> None:
    layout = ProbeLayout.from_sizes([2, 2], 1)
    maps = torch.randn(2, 5, 1, 4, 4)
    got = estimate_all(pairwise_agreement(maps, layout, "test", metrics=["ssim"]))
    assert got["ssim"].is_finite and not got["ssim_chance"].is_finite
    assert got["ssim_chance"].nonfinite == 1


def test_non_finite_probe_values_give_nan_with_a_count() -> None:
    v = torch.tensor([0.1, float("nan"), 0.3, float("inf")])
    e = estimate(ProbeStatistic({"test": v}))
    assert math.isnan(e.value) and math.isnan(e.lo) and e.nonfinite == 2 and e.n == 4
    assert "2 non-finite" in str(e)


def test_paired_terms_need_the_same_probes() -> None:
    a = ProbeStatistic({"test": torch.ones(3)})
    with pytest.raises(ValueError, match="paired terms need the same probes"):
        _ = a - ProbeStatistic({"test": torch.ones(4)})


def test_t_quantile_and_wilson_match_tables() -> None:
    assert float(t_quantile(10.0)) == pytest.approx(2.228139, abs=1e-6)
    assert float(t_quantile(1.0)) == pytest.approx(12.706205, abs=1e-6)
    assert float(t_quantile(math.inf)) == pytest.approx(1.959964, abs=1e-6)
    # Wilson score interval for 0 of 32 and 16 of 32 (hand formula; e.g. statsmodels)
    layout = ProbeLayout.from_sizes([1, 1], 32)
    preds = torch.zeros(2, 34, dtype=torch.long)
    preds[1] = 1
    e = estimate(prediction_agreement(preds, layout, "test"))
    assert (e.value, e.lo) == (0.0, 0.0) and e.hi == pytest.approx(0.10718, abs=1e-5)
    preds[1, 2:18] = 0
    e = estimate(prediction_agreement(preds, layout, "test"))
    # z^2 = 3.841459: centre (0.5 + z^2/64) / (1 + z^2/32) = 0.5,
    # half-width z sqrt(0.25/32 + z^2/4096) / (1 + z^2/32) = 0.1636912
    assert e.value == 0.5 and (e.lo, e.hi) == pytest.approx((0.3363088, 0.6636912), abs=1e-6)


@pytest.mark.parametrize("dist", ["normal", "exponential"])
def test_linear_intervals_cover_the_true_value_95_percent(dist: str) -> None:
    """A gap-like statistic (mean of 32 test values minus mean of 20 + 12 train values of
    two groups, unequal variances) over 1,000 synthetic data sets with a known value."""
    rng = np.random.default_rng(3)
    sizes = {"test": 32, "train_0": 20, "train_1": 12}
    scales = {"test": 1.0, "train_0": 0.5, "train_1": 2.0}

    def draw(g: str) -> np.ndarray:
        n = (1000, sizes[g])
        if dist == "normal":
            return rng.normal(1.0, scales[g], size=n)
        return rng.exponential(scales[g], size=n)  # skewed, mean = scale

    data = {g: torch.tensor(draw(g)) for g in sizes}
    mean = {g: 1.0 if dist == "normal" else scales[g] for g in sizes}
    truth = mean["test"] - (mean["train_0"] + mean["train_1"]) / 2
    stats = {
        t: ProbeStatistic({"test": data["test"][t]})
        - ProbeStatistic({"train_0": data["train_0"][t] / 2, "train_1": data["train_1"][t] / 2})
        for t in range(1000)
    }
    est = estimate_all(stats)
    coverage = np.mean([e.lo <= truth <= e.hi for e in est.values()])
    assert 0.92 <= coverage <= 0.98, coverage


def test_bootstrap_interval_covers_a_nonlinear_statistic() -> None:
    """|mean(a)| - |mean(b)| (the gap reduction's form) by the percentile bootstrap."""
    rng = np.random.default_rng(4)
    hits = []
    for t in range(400):
        a = ProbeStatistic({"test": torch.tensor(rng.normal(-0.3, 1.0, 40))})
        b = ProbeStatistic({"test": torch.tensor(rng.normal(0.1, 1.0, 40))})
        counts = bootstrap_counts({"test": 40}, torch.Generator().manual_seed(t), 500)
        e = estimate(gap_reduction(a, b), counts)
        assert e.method == "bootstrap"
        hits.append(e.lo <= 0.2 <= e.hi)
    assert 0.915 <= np.mean(hits) <= 0.985, np.mean(hits)


def test_shared_resamples_pair_two_methods() -> None:
    """With the same bootstrap counts, a statistic minus itself has a zero-width interval."""
    a = ProbeStatistic({"test": torch.randn(30)})
    counts = bootstrap_counts({"test": 30}, torch.Generator().manual_seed(0), 200)
    e = estimate(Transformed(lambda x, y: x - y, a, a), counts)
    assert (e.value, e.lo, e.hi) == (0.0, 0.0, 0.0)


def test_mege_reco_bootstrap_weights_reproduce_the_metric() -> None:
    """Unit weights give exactly metrics.mege_reco, the one definition."""
    g = torch.Generator().manual_seed(5)
    layout = ProbeLayout.from_sizes([6, 6, 6], 4)
    maps = torch.randn(3, layout.num_probes, 1, 4, 4, generator=g)
    labels = torch.randint(0, 3, (layout.num_probes,), generator=g)
    preds = torch.where(torch.rand(3, layout.num_probes, generator=g) < 0.6, labels, (labels + 1) % 3)
    stats = mege_reco_statistics(maps, preds, labels, layout)
    rows = layout.train_rows
    mege, reco = mege_reco(maps[:, rows], preds[:, rows], labels[rows],
                           layout.seen()[:, rows], pairs="one_seen")  # fmt: skip
    ones = {f"train_{k}": torch.ones(1, 6, dtype=torch.float64) for k in range(3)}
    # float64 re-weighting of the metric's float32 distances
    assert float(stats["mege"].bootstrap(ones)[0]) == pytest.approx(float(mege), abs=1e-6)
    assert float(stats["reco"].bootstrap(ones)[0]) == pytest.approx(float(reco), abs=1e-6)
    counts = bootstrap_counts({f"train_{k}": 6 for k in range(3)} | {"test": 4},
                              torch.Generator().manual_seed(0))  # fmt: skip
    e = estimate_all(stats, counts)
    assert e["mege"].lo <= e["mege"].value <= e["mege"].hi
    assert e["mege"].value == pytest.approx(float(mege), abs=1e-7)


def test_estimate_reads_as_a_finding_only_when_the_interval_excludes_zero() -> None:
    assert Estimate(0.1, 0.01, 0.08, 0.12, 8).excludes_zero
    assert not Estimate(0.1, 0.1, -0.1, 0.3, 8).excludes_zero
    assert not Estimate.nan(8).excludes_zero

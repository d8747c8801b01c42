"""compute_maps + evaluate_epoch (the core the callback calls): super-pixel specs reuse their
pixel twin's maps; chance levels; every number has its interval."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from lightning_saliency.attribution import (
    group_by_segments,
    resolve_method,
    segment,
    segmenter_args,
    smooth_grad,
)
from lightning_saliency.callbacks._probes import ProbeSet
from lightning_saliency.generalization import compute_maps, evaluate_epoch, model_logits


class Counting(nn.Module):
    """A small CNN that counts the input rows it sees."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
        )
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.net(x)


def _probes() -> tuple[ProbeSet, Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(9, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (9,), generator=g)
    x = (images - 0.5) / 0.25
    probes = ProbeSet.build([(x[:3], y[:3]), (x[3:6], y[3:6])], (x[6:], y[6:]))
    probes.images = images
    return probes, images


PIXEL = {"method": "smooth_grad", "noise_level": 0.2, "samples": 4}
GROUPED = {**PIXEL, "superpixel": "slic"}
GROUPED_ABS = {**PIXEL, "superpixel": {"algorithm": "slic", "reduction": "abs_sum"}}


def compute_epoch(models, probes, specs, *, segments=None, input_range=None, batch_size=None,
                  seed=0):  # fmt: skip
    """What the callback does each epoch: logits, maps, then every number."""
    maps = compute_maps(models, probes.x, probes.y, specs, seed=seed, segments=segments,
                        input_range=input_range, batch_size=batch_size)  # fmt: skip
    preds = model_logits(models, probes.x).argmax(-1)
    return evaluate_epoch(maps, probes.layout, specs, labels=probes.y, preds=preds)


def _run(specs: list, models: list[nn.Module]):
    probes, images = _probes()
    resolved = [resolve_method(s) for s in specs]
    segments = {
        s.label: segment(images, **segmenter_args(s)) for s in resolved if s.superpixel is not None
    }
    result = compute_epoch(
        models,
        probes,
        resolved,
        segments=segments,
        input_range=(-2.0, 2.0),
        batch_size=64,  # no memory measurement: the row counts are the attribution passes
        seed=3,
    )
    return result, probes, segments, resolved


def test_superpixel_spec_is_the_grouping_of_its_pixel_twin() -> None:
    models = [Counting(0), Counting(1)]
    result, probes, segments, (pixel, grouped) = _run([PIXEL, GROUPED], models)
    px, sp = result.maps[pixel.label], result.maps[grouped.label]
    seg = segments[grouped.label]
    for k in range(2):
        torch.testing.assert_close(sp[k], group_by_segments(px[k], seg), rtol=0, atol=0)
    # the pixel maps themselves are SmoothGrad with the method's own seed, for each model
    for k, model in enumerate(models):
        gen = torch.Generator().manual_seed(pixel.noise_seed(3))
        want = smooth_grad(model, probes.x, probes.y, noise_level=0.2, samples=4,
                           input_range=(-2.0, 2.0), generator=gen)  # fmt: skip
        torch.testing.assert_close(px[k], want)


def test_magnitude_grouping_groups_the_twins_absolute_maps() -> None:
    models = [Counting(0), Counting(1)]
    result, _, segments, (pixel, signed, mass) = _run([PIXEL, GROUPED, GROUPED_ABS], models)
    alone = [Counting(0), Counting(1)]
    _run([PIXEL], alone)
    assert [m.rows for m in models] == [m.rows for m in alone]  # no extra pass
    assert mass.label == "smooth_grad_nl0.2_n4_sp-slic-abs_sum"
    px, sp = result.maps[pixel.label], result.maps[mass.label]
    for k in range(2):
        want = group_by_segments(px[k].abs(), segments[mass.label])
        torch.testing.assert_close(sp[k], want, rtol=0, atol=0)
    assert not torch.equal(sp, result.maps[signed.label])


def test_the_grouped_twin_costs_no_second_attribution_pass() -> None:
    alone = [Counting(0), Counting(1)]
    _run([PIXEL], alone)
    both = [Counting(0), Counting(1)]
    _run([PIXEL, GROUPED], both)
    assert [m.rows for m in both] == [m.rows for m in alone]
    # and a grouped spec without its pixel twin in the list costs one pass, not zero
    only = [Counting(0), Counting(1)]
    result, *_ = _run([GROUPED], only)
    assert [m.rows for m in only] == [m.rows for m in alone]
    assert set(result.maps) == {resolve_method(GROUPED).label}


def test_missing_segmentation_is_a_clear_error() -> None:
    probes, _ = _probes()
    with pytest.raises(ValueError, match="no segmentation of the probes"):
        compute_epoch(
            [Counting(0), Counting(1)], probes, [resolve_method(GROUPED)], input_range=(-2.0, 2.0)
        )


def test_small_maps_get_a_fitting_ssim_window() -> None:
    # 8x8 maps are smaller than SSIM's 11-pixel window: the largest odd window (7) is used
    from lightning_saliency.metrics import ssim

    result, probes, _, (pixel,) = _run([PIXEL], [Counting(0), Counting(1)])
    maps = result.maps[pixel.label]
    test = probes.part("test")
    want = float(ssim(maps[0, test], maps[1, test], win_size=7).mean())
    assert _record(result, f"interp/{pixel.label}/test/ssim") == pytest.approx(want, abs=1e-6)


def _record(result, tag: str) -> float:
    (value,) = [e.value for k, e in result.estimates.items() if k.tag == tag]
    return value


def test_chance_level_averages_random_derangements_of_the_probes() -> None:
    """``{metric}_chance``: model 0's map of probe n against model 1's map of another probe,
    over the pairing's derangements (no probe with itself); a grouped spec groups the
    partner's pixel map by probe n's segments; the same pairs for every method."""
    from lightning_saliency.generalization import ChancePairing
    from lightning_saliency.metrics import l2_distance, ssim

    result, probes, segments, (pixel, grouped) = _run([PIXEL, GROUPED_ABS], [Counting(0), Counting(1)])
    pairing = ChancePairing(labels=probes.y, seed=0)  # evaluate_epoch's default seed
    test = torch.arange(6, 9)
    perms = pairing.derangements(test)
    assert perms.shape == (4, 3) and bool((perms != test).all())
    px = result.maps[pixel.label]
    want = float(torch.stack([l2_distance(px[0, test], px[1, p]) for p in perms]).mean())
    assert _record(result, f"interp/{pixel.label}/test/l2_chance") == pytest.approx(want, abs=1e-6)
    assert _record(result, f"interp/{pixel.label}/test/l2") == pytest.approx(
        float(l2_distance(px[0, test], px[1, test]).mean()), abs=1e-6
    )
    seg = segments[grouped.label][test]
    a = result.maps[grouped.label][0, test]
    vals = [ssim(a, group_by_segments(px[1, p].abs(), seg), win_size=7) for p in perms]
    assert _record(result, f"interp/{grouped.label}/test/ssim_chance") == pytest.approx(
        float(torch.stack(vals).mean()), abs=1e-6
    )
    # train split: the two models' own probes (rows 0-5) deranged together
    tr = torch.arange(0, 6)
    want = float(torch.stack([l2_distance(px[0, tr], px[1, p])
                              for p in pairing.derangements(tr)]).mean())  # fmt: skip
    assert _record(result, f"interp/{pixel.label}/train/l2_chance") == pytest.approx(want, abs=1e-6)


def test_class_blind_chance_on_a_class_sorted_probe_set() -> None:
    """Probes sorted by class whose maps are the same within a class (a map per class): the
    same-class chance level is the agreement itself, the class-blind one is far below it
    (the version 0.1 chance, each probe against its neighbour, was same-class for 15 of 20
    probes here and read as 0.8)."""
    from lightning_saliency.generalization import (
        ChancePairing,
        ProbeLayout,
        estimate_all,
        pairwise_agreement,
    )

    g = torch.Generator().manual_seed(0)
    classes = torch.arange(5).repeat_interleave(4)  # 5 classes x 4 probes, sorted
    per_class = torch.randn(5, 1, 8, 8, generator=g)  # both models' map of a probe: its class's
    layout = ProbeLayout.from_sizes([1, 1], 18)
    labels = torch.cat([torch.tensor([0, 1]), classes[:18]])
    maps = torch.cat([per_class[labels].unsqueeze(0)] * 2)
    e = estimate_all(pairwise_agreement(maps, layout, "test", metrics=["spearman"],
                                        pairing=ChancePairing(labels=labels, draws=8)))  # fmt: skip
    assert e["spearman"].value == pytest.approx(1.0)
    assert e["spearman_chance_same_class"].value == pytest.approx(1.0)
    assert e["spearman_chance"].value < 0.3
    assert e["spearman_above_chance"].lo > 0.6


def test_prediction_chance_and_kappa_equal_scikit_learn() -> None:
    from sklearn.metrics import cohen_kappa_score

    from lightning_saliency.generalization import ProbeLayout

    g = torch.Generator().manual_seed(1)
    layout = ProbeLayout.from_sizes([5, 5], 40)
    preds = torch.randint(0, 4, (2, 50), generator=g)
    preds[1, 10:30] = preds[0, 10:30]  # the models agree more than chance on half the probes
    labels = torch.zeros(50, dtype=torch.long)
    result = evaluate_epoch({"m": torch.randn(2, 50, 1, 2, 2)}, layout, [], labels=labels,
                            preds=preds)  # fmt: skip
    from lightning_saliency.generalization import MetricKey

    test = slice(10, 50)
    kappa = result.estimates[MetricKey("-", "pairs", "test", "prediction_kappa")]
    assert kappa.value == pytest.approx(cohen_kappa_score(preds[0, test], preds[1, test]), abs=1e-9)
    p0 = torch.bincount(preds[0, test], minlength=4).double() / 40
    p1 = torch.bincount(preds[1, test], minlength=4).double() / 40
    pe = result.estimates[MetricKey("-", "pairs", "test", "prediction_agreement_chance")]
    assert pe.value == pytest.approx(float((p0.double() * p1.double()).sum()), abs=1e-12)
    assert kappa.method == "bootstrap" and kappa.lo < kappa.value < kappa.hi


def test_chance_level_is_nan_with_a_single_probe() -> None:
    """One test probe has no other probe to pair with: its chance level is NaN, not a
    self-pairing (which would read as perfect agreement for identical models)."""
    probes, _ = _probes()
    x, y = probes.x, probes.y
    one = ProbeSet.build([(x[:3], y[:3]), (x[3:6], y[3:6])], (x[6:7], y[6:7]))
    spec = resolve_method("simple_grad")
    result = compute_epoch([Counting(0), Counting(0)], one, [spec], batch_size=64)
    assert math.isnan(_record(result, "interp/simple_grad/test/ssim_chance"))
    assert _record(result, "interp/simple_grad/test/ssim") == pytest.approx(1.0)
    assert _record(result, "interp/simple_grad/train/ssim_chance") < 0.9  # 6 train probes


def test_identical_models_agree_fully_but_not_by_chance() -> None:
    twins = [Counting(0), Counting(0)]
    result, *_, (pixel,) = _run([PIXEL], twins)
    for split in ("train", "test"):
        assert _record(result, f"interp/{pixel.label}/{split}/ssim") == pytest.approx(1.0)
        assert _record(result, f"interp/{pixel.label}/{split}/l2") == pytest.approx(0.0, abs=1e-6)
        assert _record(result, f"interp/{pixel.label}/{split}/ssim_chance") < 0.9
        assert _record(result, f"interp/{pixel.label}/{split}/l2_chance") > 0.1


def test_smoothgrad_sweep_figure_has_one_curve_per_draw_count() -> None:
    """The sweep figure groups points by draw count (and noise kind): two counts at the
    same sigmas give two monotone curves, not one line that zig-zags between them."""
    from lightning_saliency.callbacks._tensorboard import close, figures
    from lightning_saliency.generalization import Estimate, MetricKey

    specs = [resolve_method("simple_grad")] + [
        resolve_method({"method": "smooth_grad", "sigma": s, "samples": n})
        for s in (0.5, 0.1)
        for n in (4, 16)
    ]
    estimates = {}
    for i, spec in enumerate(specs):
        key = MetricKey(spec.label, "mean", "gap", "gap")
        estimates[key] = Estimate(0.01 * i, 0.01, 0.01 * i - 0.02, 0.01 * i + 0.02, 8)
        for metric in ("spearman", "ssim"):
            for name, value in ((metric, 0.5 + i / 10), (f"{metric}_chance", 0.2 + i / 100)):
                k = MetricKey(spec.label, "pairs", "test", name)
                estimates[k] = Estimate(value, 0.01, value - 0.02, value + 0.02, 8)
    fig = figures(estimates, specs)["smoothgrad_sweep"]
    curves = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}  # error-bar lines
    assert sorted(curves) == ["sigma, n=16", "sigma, n=4"]
    for line in curves.values():  # simple_grad is every curve's noise 0; x sorted
        assert list(line.get_xdata()) == [0.0, 0.1, 0.5]
    # n=4 points are specs 3 (sigma 0.1) and 1 (sigma 0.5): gap 0.01 * index
    assert list(curves["sigma, n=4"].get_ydata()) == pytest.approx([0.0, 0.03, 0.01])
    chance = [ln for ln in fig.axes[1].get_lines() if "chance" in ln.get_label()]
    assert len(chance) == 4  # spearman and ssim chance for each of the two curves
    close(fig)

"""Issue 23: a report that answers first (verdict per method, tables by meaning, no empty
sections, one column where two are the same number at K = 2) and the SmoothGrad noise curve
with seed-level intervals, on small run folders written with the real CSV writer."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from scipy import stats
from test_report import assert_png, make_run

from lightning_saliency.generalization import (
    ProbeLayout,
    interpretation_loss,
    leave_one_out_reference,
    pairwise_agreement,
)
from lightning_saliency.generalization.input_bounds import SHARE_AT_BOUNDS, share_at_input_bounds
from lightning_saliency.metrics import l2_distance
from lightning_saliency.report import build_studies, load_runs, main
from lightning_saliency.report.answer import generalization_verdict

REPO = Path(__file__).resolve().parents[1]
Z = 1.96  # make_run writes value -/+ 1.96 se

SIMPLE = "simple_grad"
SG = {"method": "smooth_grad", "noise_level": 0.2, "samples": 16}
IG = {"method": "integrated_gradients", "steps": 16, "baseline": "min"}
ADAPT = {"method": "adapt_grad", "samples": 16}


def _md(out: Path) -> str:
    return (out / "report.md").read_text()


def _set_seed(folder: Path, seed: int, num_models: int = 2) -> None:
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg["seed_everything"] = seed
    cfg["data"]["init_args"]["num_models"] = num_models
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


# --------------------------------------------------------------------------- 1. the answer
def test_the_report_opens_with_a_verdict_per_method_from_one_run(tmp_path: Path) -> None:
    # (gap, se), (Spearman above chance, se) per method: hand-chosen for each verdict
    numbers = {
        "simple_grad": ((0.004, 0.006), (0.04, 0.005)),  # gap covers 0, agree > 0: generalize
        "smooth_grad_nl0.2": ((0.001, 0.004), (0.01, 0.008)),  # agreement covers 0: cannot tell
        "integrated_gradients_bmin": ((0.03, 0.005), (0.2, 0.01)),  # gap > 0: do not generalize
        "adapt_grad_c0.95": ((-0.002, 0.003), (0.05, 0.01)),
    }
    rows: list[tuple[Any, ...]] = [(0, "-", "mean", "test", SHARE_AT_BOUNDS, 0.7, 0.01)]
    for label, ((g, gse), (a, ase)) in numbers.items():
        rows += [(0, label, "mean", "gap", "gap", g, gse),
                 (0, label, "pairs", "test", "spearman_above_chance", a, ase)]  # fmt: skip
    make_run(tmp_path / "runs" / "one", rows, methods=[IG, SG, ADAPT, SIMPLE])
    out = tmp_path / "out"
    main([str(tmp_path / "runs" / "one"), "--out", str(out)])
    md = _md(out)
    # the answer comes first, before the runs table and every study
    assert md.index("## Do the maps generalize?") < md.index("## Runs") < md.index("## (")
    answer = md[md.index("## Do the maps generalize?"):md.index("## Runs")]
    assert "one run: intervals over its probes cover probe noise only, not training noise" in answer
    lines = [ln for ln in answer.splitlines() if ln.startswith("- maps of")]
    # plain baseline first, then SmoothGrad, AdaptGrad, then integrated gradients
    assert [ln.split("`")[1] for ln in lines] == list(
        ["simple_grad", "smooth_grad_nl0.2", "adapt_grad_c0.95", "integrated_gradients_bmin"])
    assert lines[0] == ("- maps of `simple_grad` **generalize**: gap 0.0040 [-0.0078, 0.0158]; "
                        "models agree above chance (Spearman, test) 0.0400 [0.0302, 0.0498]")  # fmt: skip
    assert lines[1].startswith("- maps of `smooth_grad_nl0.2`: **cannot tell**: gap 0.0010")
    assert "0.0100 [-0.0057, 0.0257]" in lines[1]
    assert lines[3].startswith("- maps of `integrated_gradients_bmin` **do not generalize** "
                               "(gap 0.0300 [0.0202, 0.0398])")  # fmt: skip
    # the probes' share at the input bounds, where logged, is printed beside AdaptGrad only
    assert "share of pixels at the input bounds" in lines[2] and "0.7000 [0.6804, 0.7196]" in lines[2]
    assert all("input bounds" not in ln for ln in (lines[0], lines[1], lines[3]))
    # an interval that contains 0 is never called a finding
    assert "is not a finding that the gap is 0" in answer


def test_the_answer_of_seed_replicates_uses_student_t_over_seeds(tmp_path: Path) -> None:
    gaps, above = [0.01, -0.02, 0.005], [0.05, 0.07, 0.06]
    for seed, (g, a) in enumerate(zip(gaps, above, strict=True)):
        folder = make_run(tmp_path / "runs" / f"s{seed}", [
            (0, SIMPLE, "mean", "gap", "gap", g, 0.001),
            (0, SIMPLE, "pairs", "test", "spearman_above_chance", a, 0.001),
        ], methods=[SIMPLE])  # fmt: skip
        _set_seed(folder, seed)
    out = tmp_path / "out"
    main([str(tmp_path / "runs"), "--out", str(out)])
    answer = _md(out).split("## Runs")[0]
    assert "intervals over 3 seeds (training noise)" in answer
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(gaps), scale=stats.sem(gaps))
    alo, ahi = stats.t.interval(0.95, 2, loc=np.mean(above), scale=stats.sem(above))
    expected = (f"- maps of `simple_grad` **generalize**: gap {np.mean(gaps):.4f} [{lo:.4f}, "
                f"{hi:.4f}]; models agree above chance (Spearman, test) {np.mean(above):.4f} "
                f"[{alo:.4f}, {ahi:.4f}]")  # fmt: skip
    assert expected in answer


def test_the_verdict_rule() -> None:
    from lightning_saliency.generalization import Estimate

    def e(v: float, lo: float, hi: float) -> Estimate:
        return Estimate(v, 0.01, lo, hi, 32)

    assert generalization_verdict(e(0.0, -0.01, 0.01), e(0.1, 0.05, 0.15)) == "generalize"
    assert generalization_verdict(e(-0.03, -0.05, -0.01), e(0.1, 0.05, 0.15)) == "do not generalize"
    assert generalization_verdict(e(0.03, 0.01, 0.05), None) == "do not generalize"
    assert generalization_verdict(e(0.0, -0.01, 0.01), e(-0.1, -0.15, -0.05)) == "cannot tell"
    assert generalization_verdict(None, e(0.1, 0.05, 0.15)) == "cannot tell"
    assert generalization_verdict(Estimate.nan(32, 3), e(0.1, 0.05, 0.15)) == "cannot tell"


# --------------------------------------------------------------------------- 2. tables, sections
def test_tables_list_methods_by_meaning_not_alphabet(tmp_path: Path) -> None:
    methods = [IG, {"method": "smooth_grad", "noise_level": 0.5, "samples": 16}, SIMPLE,
               {"method": "smooth_grad", "noise_level": 0.1, "samples": 16}, "grad_x_input"]  # fmt: skip
    labels = ["integrated_gradients_bmin", "smooth_grad_nl0.5", "simple_grad",
              "smooth_grad_nl0.1", "grad_x_input"]  # fmt: skip
    rows = [(0, lb, "pairs", "test", "spearman", 0.1 * i) for i, lb in enumerate(labels)]
    make_run(tmp_path / "runs" / "sf2", rows, methods=methods)
    table = build_studies(load_runs(tmp_path / "runs"))["split_factor"]
    assert [r["method"] for r in table.rows] == [
        "simple_grad", "smooth_grad_nl0.1", "smooth_grad_nl0.5", "grad_x_input",
        "integrated_gradients_bmin"]  # fmt: skip


def test_an_empty_study_prints_nothing(tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "r", [(0, SIMPLE, "pairs", "test", "spearman", 0.3, 0.01)],
             methods=[SIMPLE])  # fmt: skip
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    md = _md(tmp_path / "out")
    assert "no runs for this study" not in md
    assert "## (a)" in md
    for key in ("(b)", "(c)", "(d)", "(e)", "(f)", "Stability"):
        assert f"## {key}" not in md
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["split_factor.png"]


def test_at_k2_the_test_loss_is_the_test_l2_and_is_shown_once(tmp_path: Path) -> None:
    # the code's definitions: at K = 2, loss of model k (leave-one-out reference) = pair L2
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 6, 1, 5, 5, generator=g)
    loss = interpretation_loss(maps, leave_one_out_reference(maps))
    pair = l2_distance(maps[0], maps[1])
    assert torch.allclose(loss[0], pair, atol=1e-6) and torch.allclose(loss[1], pair, atol=1e-6)
    layout = ProbeLayout.from_sizes([2, 2], 2)
    test_l2 = pairwise_agreement(maps, layout, "test", metrics=["l2"])["l2"].point()
    assert math.isclose(float(test_l2), float(loss[:, layout.test].mean()), rel_tol=1e-6)
    # the report: K = 2 drops the "test loss" column with a note; K = 3 keeps it
    methods = [SIMPLE, {"method": "smooth_grad", "noise_level": 0.2, "samples": 16}]
    rows = [(0, lb, "pairs", "test", "l2", v, 0.01) for lb, v in (("simple_grad", 1.3), ("smooth_grad_nl0.2", 1.0))]
    rows += [(0, lb, "mean", "test", "loss", v, 0.01) for lb, v in (("simple_grad", 1.3), ("smooth_grad_nl0.2", 1.0))]
    for k in (2, 3):
        folder = make_run(tmp_path / f"k{k}" / "r", rows, methods=methods)
        _set_seed(folder, 0, num_models=k)
        main([str(tmp_path / f"k{k}"), "--out", str(tmp_path / f"out{k}")])
    b2, b3 = (_md(tmp_path / f"out{k}").split("## (b)")[1].split("\n## ")[0] for k in (2, 3))
    assert "test loss" not in b2.split("![")[0].replace("test interpretation loss", "")
    assert "equals the test L2 distance" in b2
    assert "| test loss |" in b3 and "equals the test L2 distance" not in b3


# --------------------------------------------------------------------------- 4. noise curve
def test_smoothgrad_noise_curve_with_seed_level_intervals(tmp_path: Path) -> None:
    levels = (0.05, 0.1, 0.2, 0.5, 1.0)
    methods = [SIMPLE, *({"method": "smooth_grad", "noise_level": a, "samples": 16} for a in levels)]
    labels = ["simple_grad", *(f"smooth_grad_nl{a:g}" for a in levels)]
    l2 = {s: [1.3 - 0.1 * i + 0.01 * s for i in range(6)] for s in range(3)}
    sp = {s: [0.04 + 0.02 * i - 0.005 * s for i in range(6)] for s in range(3)}
    for s in range(3):
        rows: list[tuple[Any, ...]] = []
        for i, lb in enumerate(labels):
            rows += [(0, lb, "pairs", "test", "l2", l2[s][i], 0.01),
                     (0, lb, "pairs", "test", "spearman_above_chance", sp[s][i], 0.01),
                     (0, lb, "mean", "gap", "gap", 0.001 * i, 0.01)]  # fmt: skip
        _set_seed(make_run(tmp_path / "runs" / f"seed{s}", rows, methods=methods), s)
    out = tmp_path / "out"
    main([str(tmp_path / "runs"), "--out", str(out)])
    b = _md(out).split("## (b)")[1].split("\n## ")[0]
    seeds_part = b.split("Per run")[0]
    for i, (lb, a) in enumerate(zip(labels, (0, *levels), strict=True)):
        v = [l2[s][i] for s in range(3)]
        lo, hi = stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
        w = [sp[s][i] for s in range(3)]
        wlo, whi = stats.t.interval(0.95, 2, loc=np.mean(w), scale=stats.sem(w))
        line = next(ln for ln in seeds_part.splitlines() if f"| {lb} |" in ln)
        assert f"| {a:g} | 16 | {lb} | {np.mean(v):.4f} [{lo:.4f}, {hi:.4f}] |" in line
        assert f"| {np.mean(w):.4f} [{wlo:.4f}, {whi:.4f}] |" in line
    assert_png(out / "smoothgrad.png")


def test_smoothgrad_curve_config_instantiates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_saliency.callbacks import InterpretationGeneralization
    from lightning_saliency.cli import cli_main

    path = REPO / "configs" / "experiments" / "smoothgrad_curve.yaml"
    monkeypatch.setattr(sys, "argv", ["lightning-saliency"])
    cli = cli_main(["--config", str(path), "--trainer.logger.init_args.save_dir",
                    str(tmp_path / "runs")], run=False)  # fmt: skip
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, InterpretationGeneralization)]
    assert [s.label for s in cb.specs] == [
        "simple_grad", "smooth_grad_nl0.05", "smooth_grad_nl0.1", "smooth_grad_nl0.2",
        "smooth_grad_nl0.5", "smooth_grad_nl1", "adapt_grad_c0.95", "integrated_gradients_bmin"]  # fmt: skip
    assert all(s.params.get("samples", 16) == 16 for s in cb.specs if "samples" in s.params)
    assert cli.model.num_models == 2 and cli.trainer.max_epochs % cb.every_n_epochs == 0


def test_share_at_input_bounds_by_hand() -> None:
    x = torch.tensor([[[[-0.5, -0.5], [1.5, 0.2]]], [[[0.0, 0.3], [1.5 - 1e-9, -0.4999]]]])
    got = share_at_input_bounds(x, (-0.5, 1.5), atol=1e-6).tolist()
    assert got == pytest.approx([3 / 4, 1 / 4])  # -0.4999 is 1e-4 from the bound: not at it
    assert share_at_input_bounds(x, (-0.5, 1.5), atol=0.01).tolist() == pytest.approx([0.75, 0.5])
    assert share_at_input_bounds(torch.tensor([[float("nan"), 1.0]]), (0.0, 1.0)).tolist() == [0.5]
    with pytest.raises(ValueError, match="x_min < x_max"):
        share_at_input_bounds(x, (1.0, 0.0))
    with pytest.raises(ValueError, match="atol"):
        share_at_input_bounds(x, (0.0, 1.0), atol=-1.0)


def test_a_one_run_setting_beside_seed_replicates_stays_in_the_seed_table_and_plot(tmp_path: Path) -> None:
    """Three seeds without spectral norm and one run with it: the seed-level table of study
    (d) keeps the one run's row (it used to vanish, and the plot then failed on a log axis
    with no point)."""
    for seed, loss in enumerate((1.0, 1.1, 0.9)):
        folder = make_run(tmp_path / "runs" / f"plain{seed}", [
            (0, SIMPLE, "mean", "test", "loss", loss, 0.01)], methods=[SIMPLE])  # fmt: skip
        _set_seed(folder, seed)
    make_run(tmp_path / "runs" / "sn1", [(0, SIMPLE, "mean", "test", "loss", 0.7, 0.01)],
             methods=[SIMPLE], spectral_norm_factor=1.0)  # fmt: skip
    out = tmp_path / "out"
    main([str(tmp_path / "runs"), "--out", str(out)])
    d = _md(out).split("## (d)")[1].split("Per run")[0]
    lo, hi = stats.t.interval(0.95, 2, loc=1.0, scale=stats.sem([1.0, 1.1, 0.9]))
    assert f"| none | 3 seeds: plain0, plain1, plain2 | simple_grad | 1.0000 [{lo:.4f}, {hi:.4f}] |" in d
    assert "| 1 | sn1 | simple_grad | 0.7000 [0.6804, 0.7196] |" in d
    assert_png(out / "spectral_norm.png")

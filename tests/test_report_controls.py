"""Issue 20: the positive controls as a report study (planted kind read from each run's saved
config, seed-level Student-t intervals, verdict words), and benchmarks/controls_report.py
printing the same study (one owner of the numbers)."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats
from test_report import assert_png, make_run

from lightning_saliency.data import DigitsDataModule
from lightning_saliency.generalization.controls import OWN_EXCESS
from lightning_saliency.report import build_studies, load_runs, main
from lightning_saliency.report.runs import CONTROL_OPTIONS

REPO = Path(__file__).resolve().parents[1]
IG = {"method": "integrated_gradients", "steps": 16, "baseline": "min"}
IG_LABEL = "integrated_gradients_bmin"
METHODS = [IG, "simple_grad"]
# per arm and seed: model 0's (own-train excess, gap) of integrated gradients
IG_NUMBERS = {
    "clean": {0: (0.004, 0.002), 1: (-0.006, -0.001), 2: (0.001, 0.003)},
    "shortcut": {0: (0.050, -0.020), 1: (0.062, -0.031), 2: (0.044, -0.018)},
    "memorize": {0: (0.030, 0.010)},  # one seed only
}
PLANT = {"clean": None, "shortcut": {"split": 0}, "memorize": {"split": 0, "fraction": 0.5}}


def _controls_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "controls"
    for arm, seeds in IG_NUMBERS.items():
        for seed, (excess, gap) in seeds.items():
            rows: list[tuple[Any, ...]] = []
            for label, scale in ((IG_LABEL, 1.0), ("simple_grad", 0.1)):
                rows += [
                    (4, label, "model_0", "train", OWN_EXCESS, excess * scale, 0.004),
                    (4, label, "model_1", "train", OWN_EXCESS, -excess * scale, 0.004),
                    (4, label, "model_0", "gap", "gap", gap * scale, 0.005),
                    (4, label, "mean", "gap", "gap", gap * scale / 2, 0.005),
                ]
            folder = make_run(root / "digits" / f"{arm}-seed{seed}", rows, methods=METHODS)
            cfg = yaml.safe_load((folder / "config.yaml").read_text())
            cfg["seed_everything"] = seed
            if PLANT[arm] is not None:
                cfg["data"]["init_args"][arm] = PLANT[arm]
            else:  # a clean run written by a version that records the option as null
                cfg["data"]["init_args"]["shortcut"] = None
            (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _t(values: list[float]) -> tuple[float, float, float]:
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return float(np.mean(values)), float(lo), float(hi)


def _fmt(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"


def test_the_planted_kind_is_read_from_the_saved_config(tmp_path: Path) -> None:
    runs = {r.name: r for r in load_runs(_controls_root(tmp_path))}
    assert runs["shortcut-seed1"].control == "shortcut"
    assert runs["memorize-seed0"].control == "memorize"
    assert runs["shortcut-seed1"].control_split == 0
    assert runs["clean-seed0"].control is None
    twins = {r.twin_signature for r in runs.values()}
    assert len(twins) == 1  # the planted runs and their clean twins: one config without the plant
    assert runs["clean-seed0"].signature != runs["shortcut-seed0"].signature
    # the names the report reads are the data modules' own arguments
    assert set(CONTROL_OPTIONS) <= set(inspect.signature(DigitsDataModule.__init__).parameters)


def test_controls_study_seed_level_numbers_and_verdicts(tmp_path: Path) -> None:
    root = _controls_root(tmp_path)
    table = build_studies(load_runs(root))["controls"]
    rows = {(r["kind"], r["arm"], r["method"]): r for r in table.rows}
    # by meaning: the plain baseline before integrated gradients, planted arm before its twin
    assert [(r["method"], r["arm"]) for r in table.rows if r["kind"] == "shortcut"] == [
        ("simple_grad", "planted"), ("simple_grad", "clean twin"),
        (IG_LABEL, "planted"), (IG_LABEL, "clean twin")]  # fmt: skip
    sc = rows[("shortcut", "planted", IG_LABEL)]
    cl = rows[("shortcut", "clean twin", IG_LABEL)]
    ex_p = [IG_NUMBERS["shortcut"][s][0] for s in range(3)]
    ex_c = [IG_NUMBERS["clean"][s][0] for s in range(3)]
    gap_p = [IG_NUMBERS["shortcut"][s][1] for s in range(3)]
    for cell, ref in ((sc["excess"], _t(ex_p)), (cl["excess"], _t(ex_c)), (sc["gap"], _t(gap_p))):
        assert (round(cell.value, 12), round(cell.lo, 12), round(cell.hi, 12)) == tuple(
            round(v, 12) for v in ref)
    # planted minus clean, paired by seed: a t-interval of the per-seed differences
    diff = _t([a - b for a, b in zip(ex_p, ex_c, strict=True)])
    assert abs(sc["excess_diff"].lo - diff[1]) < 1e-12 and abs(sc["excess_diff"].hi - diff[2]) < 1e-12
    assert sc["excess_verdict"] == "detected"  # above 0
    assert sc["gap_verdict"] == "detected"  # below 0, the expected side for the gap
    assert cl["excess_verdict"] == "quiet"
    assert sc.run == "3 seeds: shortcut-seed0, shortcut-seed1, shortcut-seed2"
    # one seed: the run's own (probe) interval, value 0.03 -/+ 1.96 * 0.004
    mem = rows[("memorize", "planted", IG_LABEL)]
    assert mem.run == "memorize-seed0" and mem["excess"].lo == 0.03 - 1.96 * 0.004
    assert mem["excess_verdict"] == "detected" and mem["gap_verdict"] == "opposite"


def test_controls_study_in_the_report_and_the_benchmark_prints_the_same(tmp_path: Path) -> None:
    root = _controls_root(tmp_path)
    out = tmp_path / "out"
    main([str(root), "--out", str(out)])
    md = (out / "report.md").read_text()
    f = md.split("## (f)")[1].split("\n## ")[0]
    ex_p = _fmt(*_t([IG_NUMBERS["shortcut"][s][0] for s in range(3)]))
    ex_c = _fmt(*_t([IG_NUMBERS["clean"][s][0] for s in range(3)]))
    deciding = (f"- shortcut: model 0's own-train excess of `{IG_LABEL}` {ex_p} over 3 seeds: "
                f"shortcut-seed0, shortcut-seed1, shortcut-seed2: "
                f"**detected**; clean twin {ex_c}: **quiet**.")  # fmt: skip
    assert deciding in f
    assert "probe noise, not training noise" in f  # the one-seed memorize arm says so
    assert_png(out / "controls.png")
    spec = importlib.util.spec_from_file_location("controls_report", REPO / "benchmarks" / "controls_report.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = bench.table(root)
    assert deciding in text and ex_p in text

"""Tests of ``lightning-saliency report`` on small synthetic run folders, and of the
experiment configs in ``configs/experiments``."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from lightning_saliency.attribution import MethodSpec, resolve_method
from lightning_saliency.generalization import (
    CSV_FIELDS,
    CSV_NAME,
    METHODS_NAME,
    Estimate,
    MetricKey,
    csv_row,
)
from lightning_saliency.report import (
    LEGACY_CSV_FIELDS,
    REPORT_FIELDS,
    build_studies,
    load_runs,
    main,
    write_report,
)
from lightning_saliency.report.studies import ALL_STUDIES

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "configs" / "experiments"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- helpers
def make_run(
    folder: Path,
    rows: list[tuple[Any, ...]],
    *,
    methods: list[Any] | None,
    split_factor: int = 2,
    spectral_norm_factor: float | None = None,
    write_config: bool = True,
    legacy: bool = False,
    methods_json: bool = False,
) -> Path:
    """A run folder like LightningCLI + TensorBoardLogger leave it (config.yaml, CSV).

    ``rows`` are ``(epoch, method, aggregate, split, metric, value[, se])``; ``split`` may
    carry the stage as ``"validate:test"``. Without ``se`` a row has no interval (its cells
    print the bare value, as version 0.1's rows); with it, a normal 95% interval.
    ``legacy`` writes version 0.1's CSV (header ``model``, stage inside ``split``);
    ``methods_json`` writes the callback's ``methods.json`` instead of relying on the config.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if write_config:
        config = {
            "seed_everything": 0,
            "trainer": {
                "max_epochs": 2,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "x", "version": None},
                },
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"save_last": True},
                    },
                    {
                        "class_path": "lightning_saliency.callbacks.InterpretationGeneralization",
                        "init_args": {"methods": methods, "num_train_probes": 8, "seed": 0},
                    },
                ],
            },
            "model": {"backbone": "resnet18", "spectral_norm_factor": spectral_norm_factor},
            "data": {
                "class_path": "lightning_saliency.data.ImageFolderDataModule",
                "init_args": {
                    "root": "data/cifar10",
                    "split_factor": split_factor,
                    "num_models": 2,
                },
            },
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if methods_json:
        specs = [resolve_method(m).to_config() for m in methods or []]
        (folder / METHODS_NAME).write_text(json.dumps({"methods": specs}))
    with (folder / CSV_NAME).open("w", newline="") as fh:
        if legacy:
            writer = csv.writer(fh)
            writer.writerow(LEGACY_CSV_FIELDS)
            for epoch, method, model, split, metric, value, *_ in rows:
                writer.writerow([epoch, 10 * (epoch + 1), method, model, split, metric, value])
            return folder
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for epoch, method, aggregate, split, metric, value, *se in rows:
            stage, _, split = split.rpartition(":")
            key = MetricKey(method, aggregate, split, metric, stage or "fit")
            nan = math.nan
            est = (Estimate(value, se[0], value - 1.96 * se[0], value + 1.96 * se[0], 32)
                   if se else Estimate(value, nan, nan, nan, 32))  # fmt: skip
            writer.writerow(csv_row(key, est, epoch, 10 * (epoch + 1)))
    return folder


def read_report_csv(out: Path) -> list[dict[str, str]]:
    with (out / "report.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == REPORT_FIELDS
        return list(reader)


def section(md: str, key: str) -> str:
    """The text of the report section whose title starts with ``(key)``."""
    start = md.index(f"## ({key})")
    nxt = md.find("\n## ", start + 1)
    return md[start : nxt if nxt != -1 else None]


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


# values of study (a): split factor -> (spearman, topk, prediction agreement)
SF_VALUES = {2: (0.4, 0.3, 0.9), 4: (0.3, 0.25, 0.85), 8: (0.2, 0.2, 0.8), 16: (0.1, 0.15, 0.75)}


@pytest.fixture()
def split_factor_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "split_factor"
    for sf, (sp, tk, pa) in SF_VALUES.items():
        rows: list[tuple[Any, ...]] = []
        for epoch, shift in ((0, 0.05), (1, 0.0)):  # epoch 1 is the last, read by default
            rows += [
                (epoch, "-", "pairs", "train", "prediction_agreement", 1.0),
                (epoch, "-", "pairs", "test", "prediction_agreement", pa - shift),
                (epoch, "simple_grad", "pairs", "test", "spearman", sp - shift),
                (epoch, "simple_grad", "pairs", "test", "topk", tk - shift),
                (epoch, "simple_grad", "pairs", "train", "spearman", 0.99),
                (epoch, "simple_grad", "mean", "test", "loss", 1.0),
            ]
        # validate-stage rows of the same metric must be ignored
        rows.append((1, "simple_grad", "pairs", "validate:test", "spearman", -1.0))
        make_run(root / f"sf{sf}", rows, methods=["simple_grad"], split_factor=sf)
    return root


# --------------------------------------------------------------------------- study (a)
def test_split_factor_study_tables_csv_and_plot(split_factor_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    main([str(split_factor_runs), "--out", str(out)])
    md = (out / "report.md").read_text()
    a = section(md, "a")
    for sf, (sp, tk, pa) in SF_VALUES.items():
        assert f"| {sf} | sf{sf} | simple_grad | {sp:.4f} | {tk:.4f} | {pa:.4f} |" in a
    assert "-1.0000" not in md  # the validate:test row is not a fit-stage value
    # rows sorted by split factor; the trend line with the relative drops
    assert a.index("| 2 | sf2") < a.index("| 4 | sf4") < a.index("| 8 | sf8") < a.index("| 16 |")
    assert "test prediction agreement 0.9000 -> 0.7500 (change -0.1500)." in a  # no intervals
    assert "`simple_grad` test spearman: 0.4000 -> 0.1000 (change -0.3000)" in a
    assert "![split_factor](split_factor.png)" in a
    assert_png(out / "split_factor.png")
    # studies without data print nothing and draw nothing (issue 23: no empty sections)
    for key, name in (
        ("b", "smoothgrad"),
        ("c", "superpixel"),
        ("d", "spectral_norm"),
        ("e", "adaptgrad"),
        ("f", "controls"),
    ):
        assert f"## ({key})" not in md
        assert not (out / f"{name}.png").exists()
    # the runs table: last epoch of 0-1 read from each run
    assert "| sf16 | 1 | 0-1 (2) | resnet18 | 2 | 16 | none | 0 | 1 |" in md  # seed_everything 0

    rows = read_report_csv(out)
    assert {r["study"] for r in rows} == {"split_factor"}
    got = {(r["run"], r["method"], r["metric"]): float(r["value"]) for r in rows}
    assert len(rows) == len(got) == 4 * 3  # prediction agreement once per run, not per method
    for sf, (sp, tk, pa) in SF_VALUES.items():
        assert got[(f"sf{sf}", "simple_grad", "spearman_test")] == sp
        assert got[(f"sf{sf}", "simple_grad", "topk_test")] == tk
        assert got[(f"sf{sf}", "-", "prediction_agreement_test")] == pa
    assert {r["x"] for r in rows if r["run"] == "sf8"} == {"8"}


def test_split_factor_study_shows_chance_levels_when_logged(tmp_path: Path) -> None:
    rows = [
        (0, "-", "pairs", "test", "prediction_agreement", 0.8),
        (0, "simple_grad", "pairs", "test", "spearman", 0.6),
        (0, "simple_grad", "pairs", "test", "topk", 0.4),
        (0, "simple_grad", "pairs", "test", "spearman_chance", 0.45),
        (0, "simple_grad", "pairs", "test", "topk_chance", 0.3),
    ]
    make_run(tmp_path / "sf2", rows, methods=["simple_grad"], split_factor=2)
    out = tmp_path / "out"
    main([str(tmp_path / "sf2"), "--out", str(out)])
    a = section((out / "report.md").read_text(), "a")
    assert "| 2 | sf2 | simple_grad | 0.6000 | 0.4000 | 0.8000 | 0.4500 | 0.3000 |" in a
    got = {r["metric"]: float(r["value"]) for r in read_report_csv(out)}
    assert got["spearman_chance_test"] == 0.45 and got["topk_chance_test"] == 0.3


def test_epoch_option_reads_that_epoch(split_factor_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report0"
    main(
        [
            str(split_factor_runs / "sf2"),
            str(split_factor_runs / "sf16"),
            "--out",
            str(out),
            "--epoch",
            "0",
        ]
    )
    a = section((out / "report.md").read_text(), "a")
    assert "| 2 | sf2 | simple_grad | 0.3500 | 0.2500 | 0.8500 |" in a
    assert "| 16 | sf16 | simple_grad | 0.0500 | 0.1000 | 0.7000 |" in a
    assert "sf4" not in a

    runs = load_runs([split_factor_runs], epoch=None)
    # folder names in natural order (numbers compared as numbers): not sf16, sf2, sf4, sf8
    assert [r.name for r in runs] == ["sf2", "sf4", "sf8", "sf16"]
    assert {r.epoch for r in runs} == {1} and runs[0].epochs == (0, 1)
    assert runs[0].get("simple_grad", "pairs", "test", "spearman").value == 0.4  # sf2
    assert runs[0].specs["simple_grad"] == resolve_method("simple_grad")


# --------------------------------------------------------------------------- study (b)
def test_smoothgrad_study(tmp_path: Path) -> None:
    methods = ["simple_grad"] + [
        {"method": "smooth_grad", "sigma": s, "samples": n} for n in (1, 16) for s in (0.1, 0.5)
    ]
    labels = [resolve_method(m).label for m in methods]
    assert labels == [
        "simple_grad",
        "smooth_grad_s0.1_n1",
        "smooth_grad_s0.5_n1",
        "smooth_grad_s0.1",
        "smooth_grad_s0.5",
    ]
    # l2 falls with sigma and with the draw count; gap = l2 / 10
    l2 = dict(zip(labels, (0.9, 0.8, 0.6, 0.7, 0.5), strict=True))
    rows: list[tuple[Any, ...]] = []
    for lb, v in l2.items():
        rows += [
            (0, lb, "pairs", "test", "l2", v),
            (0, lb, "mean", "gap", "gap", v / 10),
            (0, lb, "mean", "test", "loss", v + 0.01),
        ]
    make_run(tmp_path / "sg" / "version_0", rows, methods=methods)
    out = tmp_path / "out"
    main([str(tmp_path / "sg"), "--out", str(out)])
    b = section((out / "report.md").read_text(), "b")
    # simple_grad is sigma 0 of both curves
    assert "| version_0 | sigma | 0 | 1 | simple_grad | 0.9000 | n/a | n/a | 0.0900 |" in b
    assert "| version_0 | sigma | 0 | 16 | simple_grad | 0.9000 | n/a | n/a | 0.0900 |" in b
    assert "| version_0 | sigma | 0.1 | 1 | smooth_grad_s0.1_n1 | 0.8000 | n/a | n/a | 0.0800 |" in b
    assert "| version_0 | sigma | 0.5 | 1 | smooth_grad_s0.5_n1 | 0.6000 | n/a | n/a | 0.0600 |" in b
    assert "| version_0 | sigma | 0.1 | 16 | smooth_grad_s0.1 | 0.7000 | n/a | n/a | 0.0700 |" in b
    assert "| version_0 | sigma | 0.5 | 16 | smooth_grad_s0.5 | 0.5000 | n/a | n/a | 0.0500 |" in b
    assert_png(out / "smoothgrad.png")
    rows_out = [r for r in read_report_csv(out) if r["study"] == "smoothgrad"]
    assert len(rows_out) == 6 * 2  # l2 and gap (at K = 2 the test loss is the test L2)
    got = {(r["method"], r["group"], r["metric"]): float(r["value"]) for r in rows_out}
    assert got[("smooth_grad_s0.5", "samples=16", "l2_test")] == 0.5
    assert got[("simple_grad", "samples=1", "gap")] == pytest.approx(0.09, abs=1e-15)
    assert {r["x_name"] for r in rows_out} == {"sigma"}


# --------------------------------------------------------------------------- study (c)
def test_superpixel_study_pairs_each_method_with_its_pixel_twin(tmp_path: Path) -> None:
    methods = [
        "simple_grad",
        {"method": "simple_grad", "superpixel": "slic"},
        {"method": "simple_grad", "superpixel": "watershed"},
        {"method": "smooth_grad", "noise_level": 0.2},
        {"method": "smooth_grad", "noise_level": 0.2, "superpixel": "slic"},
        {"method": "adapt_grad", "superpixel": "slic"},  # no pixel twin: left out
    ]
    vals = {  # label -> (test ssim, mege)
        "simple_grad": (0.1, 0.4),
        "simple_grad_sp-slic": (0.35, 0.5),
        "simple_grad_sp-watershed": (0.25, float("nan")),
        "smooth_grad_nl0.2": (0.2, 0.45),
        "smooth_grad_nl0.2_sp-slic": (0.5, 0.6),
        "adapt_grad_c0.95_sp-slic": (0.9, 0.9),
    }
    rows: list[tuple[Any, ...]] = []
    for lb, (ssim, mege) in vals.items():
        rows += [
            (3, lb, "pairs", "test", "ssim", ssim),
            (3, lb, "pairs", "train", "mege", mege),
            (3, lb, "pairs", "train", "ssim", 0.0),
        ]
    # chance levels for simple_grad and its slic grouping only: above chance the grouped
    # map gains (0.35 - 0.2) - (0.1 - 0.05) = 0.1, less than its raw 0.25
    rows += [
        (3, "simple_grad", "pairs", "test", "ssim_chance", 0.05),
        (3, "simple_grad_sp-slic", "pairs", "test", "ssim_chance", 0.2),
    ]
    make_run(tmp_path / "sp", rows, methods=methods)
    out = tmp_path / "out"
    main([str(tmp_path / "sp"), "--out", str(out)])
    c = section((out / "report.md").read_text(), "c")
    assert (
        "| sp | simple_grad | slic | 0.1000 | 0.3500 | 0.2500 | 0.0500 | 0.2000 | 0.1000 "
        "| 0.4000 | 0.5000 | 0.1000 | n/a | n/a |"
    ) in c
    assert (
        "| sp | simple_grad | watershed | 0.1000 | 0.2500 | 0.1500 | 0.0500 | n/a | n/a "
        "| 0.4000 | nan | nan |"
    ) in c
    assert (
        "| sp | smooth_grad_nl0.2 | slic | 0.2000 | 0.5000 | 0.3000 | n/a | n/a | n/a "
        "| 0.4500 | 0.6000 |"
    ) in c
    assert "adapt_grad" not in c
    assert_png(out / "superpixel.png")
    got = {
        (r["method"], r["x"], r["group"], r["metric"]): r["value"]
        for r in read_report_csv(out)
        if r["study"] == "superpixel"
    }
    assert float(got[("simple_grad_sp-slic", "slic", "superpixel", "ssim_test")]) == 0.35
    assert float(got[("simple_grad_sp-slic", "slic", "superpixel", "ssim_chance")]) == 0.2
    assert ("smooth_grad_nl0.2", "slic", "pixel", "ssim_chance") not in got  # not logged
    assert float(got[("simple_grad", "watershed", "pixel", "mege")]) == 0.4
    assert math.isnan(float(got[("simple_grad_sp-watershed", "watershed", "superpixel", "mege")]))


# --------------------------------------------------------------------------- study (d)
def test_spectral_norm_study_with_unnormalized_baseline(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "spectral_norm"
    losses = {None: 0.9, 0.5: 0.3, 1.0: 0.5, 4.0: 0.8}
    for c, loss in losses.items():
        rows = [
            (4, "simple_grad", "mean", "test", "loss", loss),
            (4, "simple_grad", "mean", "train", "loss", loss - 0.1),
            (4, "simple_grad", "mean", "gap", "gap", 0.1),
        ]
        name = "unnormalized" if c is None else f"c{c}"
        make_run(root / name, rows, methods=["simple_grad"], spectral_norm_factor=c)
    out = tmp_path / "out"
    main([str(root), "--out", str(out)])
    d = section((out / "report.md").read_text(), "d")
    lines = [ln for ln in d.splitlines() if ln.startswith("| ") and "simple_grad" in ln]
    assert lines == [
        "| 0.5 | c0.5 | simple_grad | 0.3000 | 0.2000 | 0.1000 |",
        "| 1 | c1.0 | simple_grad | 0.5000 | 0.4000 | 0.1000 |",
        "| 4 | c4.0 | simple_grad | 0.8000 | 0.7000 | 0.1000 |",
        "| none | unnormalized | simple_grad | 0.9000 | 0.8000 | 0.1000 |",
    ]
    assert_png(out / "spectral_norm.png")
    got = {
        r["x"]: float(r["value"])
        for r in read_report_csv(out)
        if r["study"] == "spectral_norm" and r["metric"] == "test_loss"
    }
    assert got == {"0.5": 0.3, "1": 0.5, "4": 0.8, "none": 0.9}


def test_spectral_norm_study_needs_a_normalized_run(split_factor_runs: Path) -> None:
    studies = build_studies(load_runs(split_factor_runs))
    assert studies["spectral_norm"].rows == []
    assert len(studies["split_factor"].rows) == 4


# --------------------------------------------------------------------------- study (e)
def test_adaptgrad_study_groups_by_base(tmp_path: Path) -> None:
    methods = [
        "simple_grad",
        {"method": "smooth_grad", "noise_level": 0.2},
        {"method": "adapt_grad", "confidence": 0.95},
        "grad_x_input",
        {"method": "smooth_grad", "noise_level": 0.2, "base": "grad_x_input"},
        {"method": "adapt_grad", "base": "grad_x_input"},
        "integrated_gradients",  # no AdaptGrad on this base: left out
    ]
    gini = {
        "simple_grad": 0.54,
        "smooth_grad_nl0.2": 0.53,
        "adapt_grad_c0.95": 0.56,
        "grad_x_input": 0.62,
        "smooth_grad_nl0.2_gxi": 0.61,
        "adapt_grad_c0.95_gxi": 0.65,
        "integrated_gradients": 0.7,
    }
    rows: list[tuple[Any, ...]] = []
    for lb, g in gini.items():
        rows += [
            (0, lb, "mean", "test", "sparseness", g),
            (0, lb, "mean", "train", "sparseness", 0.0),
            (0, lb, "mean", "test", "complexity", 5.0),
        ]
    make_run(tmp_path / "ag", rows, methods=methods)
    out = tmp_path / "out"
    main([str(tmp_path / "ag"), "--out", str(out)])
    e = section((out / "report.md").read_text(), "e")
    table = [ln for ln in e.splitlines() if ln.startswith("| ag ")]
    assert table == [
        "| ag | grad | plain | simple_grad | 0.5400 | 5.0000 | n/a |",
        "| ag | grad | smooth | smooth_grad_nl0.2 | 0.5300 | 5.0000 | n/a |",
        "| ag | grad | adapt | adapt_grad_c0.95 | 0.5600 | 5.0000 | n/a |",
        "| ag | grad_x_input | plain | grad_x_input | 0.6200 | 5.0000 | n/a |",
        "| ag | grad_x_input | smooth | smooth_grad_nl0.2_gxi | 0.6100 | 5.0000 | n/a |",
        "| ag | grad_x_input | adapt | adapt_grad_c0.95_gxi | 0.6500 | 5.0000 | n/a |",
    ]
    assert "- ag, base grad: Gini `simple_grad` 0.5400, `smooth_grad_nl0.2` 0.5300" in e
    assert_png(out / "adaptgrad.png")
    rows_out = [r for r in read_report_csv(out) if r["study"] == "adaptgrad"]
    assert len(rows_out) == 6 * 2  # sparseness and complexity per row (gap missing)
    # the smoothgrad study also sees the plain-gradient SmoothGrad of this run
    assert "| ag | noise_level | 0.2 | 16 | smooth_grad_nl0.2 |" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- no config.yaml
#: Label forms a label parser could not read back (version 0.1): the specs travel in
#: methods.json instead.
HARD_LABELS = [
    {"method": "integrated_gradients", "steps": 32, "rule": "gauss_legendre"},
    {"method": "smooth_grad", "noise_level": 0.2, "base": "integrated_gradients", "baseline": "min"},
    {"method": "simple_grad", "superpixel": {"algorithm": "slic", "n_segments": 40}},
    {"method": "grad_cam", "layer": "layer4"},
    {"method": "simple_grad", "output": "log_softmax"},
]


def test_run_without_config_reads_specs_from_methods_json(tmp_path: Path) -> None:
    """A plain-Trainer run (no config.yaml): the specs come from the callback's methods.json,
    facts from hparams.yaml; every label form is reported with its spec."""
    methods = [
        "simple_grad",
        {"method": "smooth_grad", "noise_level": 0.2, "samples": 32},
        {"method": "simple_grad", "superpixel": "slic"},
        {"method": "smooth_grad", "sigma": 1.0, "superpixel": {"algorithm": "slic", "reduction": "mean"}},
        {"method": "simple_grad", "superpixel": {"algorithm": "slic", "reduction": "abs_sum"}},
        {"method": "adapt_grad", "confidence": 0.99, "base": "grad_x_input", "samples": 8},
        *HARD_LABELS,
        {"method": "smooth_grad", "sigma": 0.3, "label": "my_smoothgrad"},
    ]  # fmt: skip
    specs = [resolve_method(m) for m in methods]
    assert [s.label for s in specs[6:11]] == [
        "integrated_gradients_st32_gl", "smooth_grad_nl0.2_ig_bmin",
        "simple_grad_sp-slic-n_segments40", "grad_cam_at-layer4", "simple_grad_lsm",
    ]  # fmt: skip
    rows = [(0, s.label, "pairs", "test", "ssim", 0.5) for s in specs]
    rows += [(0, s.label, "mean", "gap", "gap", 0.01) for s in specs]
    folder = make_run(tmp_path / "plain", rows, methods=methods, write_config=False,
                      methods_json=True)  # fmt: skip
    (folder / "hparams.yaml").write_text(
        yaml.safe_dump({"split_factor": 4, "spectral_norm_factor": 2.0, "num_models": 3})
    )
    (run,) = load_runs(folder)
    assert run.split_factor == 4 and run.spectral_norm_factor == 2.0
    assert run.num_models == 3 and run.backbone is None
    assert run.specs == {s.label: s for s in specs} and run.labels == [s.label for s in specs]
    c = build_studies([run])["superpixel"].rows
    # the three groupings of simple_grad (signed, magnitude, 40 segments) are rows of study (c)
    assert [(r["method"], r["segmenter"]) for r in c] == [
        ("simple_grad", "slic"), ("simple_grad", "slic-abs_sum"),
        ("simple_grad", "slic-n_segments40"),
    ]  # fmt: skip
    # the explicit label is a SmoothGrad point of study (b); log-softmax is not its baseline
    b = build_studies([run])["smoothgrad"].rows
    assert ("my_smoothgrad", 0.3) in [(r["method"], r["value"]) for r in b]
    assert "simple_grad_lsm" not in {r["method"] for r in b}
    main([str(folder), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| plain | 0 | 0-0 (1) | n/a | 3 | 4 | 2 | n/a | 12 |" in md


def test_run_without_specs_lists_its_labels_but_never_parses_them(tmp_path: Path) -> None:
    rows = [(0, "smooth_grad_s0.2_sp-slic", "pairs", "test", "ssim", 0.5)]
    folder = make_run(tmp_path / "bare", rows, methods=None, write_config=False)
    (run,) = load_runs(folder)
    assert run.specs == {} and run.labels == ["smooth_grad_s0.2_sp-slic"]
    assert build_studies([run])["superpixel"].rows == []  # needs the spec of a grouping


def test_config_with_default_methods(tmp_path: Path) -> None:
    from lightning_saliency.callbacks import DEFAULT_METHODS

    label = resolve_method(DEFAULT_METHODS[1]).label
    folder = make_run(tmp_path / "d", [(0, label, "mean", "test", "loss", 0.5)], methods=None)
    (run,) = load_runs(folder)
    assert set(run.specs) == {resolve_method(m).label for m in DEFAULT_METHODS}
    assert isinstance(run.specs[label], MethodSpec)


# --------------------------------------------------------------------------- bad input
def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert "does not exist" in _error(capsys, [str(missing), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="does not exist"):
        load_runs([missing])
    assert not (tmp_path / "o").exists()


def test_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("hello")
    err = _error(capsys, [str(empty), "--out", str(tmp_path / "o")])
    assert "is not a run folder" in err
    with pytest.raises(ValueError, match="not a run folder"):
        load_runs(empty)
    with pytest.raises(ValueError, match="is a file"):
        load_runs(empty / "notes.txt")


def test_run_without_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "runs" / "x" / "version_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"backbone": "resnet18"}}))
    err = _error(capsys, [str(run), "--out", str(tmp_path / "o")])
    assert "has no interpretation_metrics.csv" in err
    # inside a parent folder with no complete run, the folder is reported too
    with pytest.warns(UserWarning, match="skipping 1 run folder"):
        with pytest.raises(ValueError, match="not a run folder"):
            load_runs(tmp_path / "runs")
    # beside a complete run it is skipped with a warning
    make_run(
        tmp_path / "runs" / "x" / "version_1",
        [(0, "simple_grad", "mean", "test", "loss", 0.5)],
        methods=["simple_grad"],
    )
    with pytest.warns(UserWarning, match="version_0"):
        runs = load_runs(tmp_path / "runs")
    assert [r.name for r in runs] == ["version_1"]


def test_csv_with_wrong_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "r", [], methods=["simple_grad"])
    (run / "interpretation_metrics.csv").write_text("epoch,method,value\n0,simple_grad,1.0\n")
    err = _error(capsys, [str(run), "--out", str(tmp_path / "o")])
    assert "header" in err and ",".join(CSV_FIELDS) in err
    with pytest.raises(ValueError, match="header"):
        load_runs(run)


def test_bad_rows_and_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(
        tmp_path / "r", [(0, "simple_grad", "mean", "test", "loss", 0.5)], methods=["simple_grad"]
    )
    err = _error(capsys, [str(run), "--out", str(tmp_path / "o"), "--epoch", "7"])
    assert "no epoch 7" in err and "[0]" in err
    with (run / "interpretation_metrics.csv").open("a") as fh:
        fh.write("1,11,fit,simple_grad,mean,test,loss,not-a-number,nan,nan,nan,32,0\n")
    with pytest.raises(ValueError, match="line 3: could not convert"):
        load_runs(run)
    empty = make_run(tmp_path / "e", [], methods=["simple_grad"])
    with pytest.raises(ValueError, match="no fit-stage rows"):
        load_runs(empty)


def test_stage_reads_validate_rows_of_a_checkpoint_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `validate --ckpt_path` run has only ``validate:``-prefixed rows: the default (fit)
    report refuses it and names the stage to ask for; ``--stage validate`` reads exactly
    those rows, with the prefix stripped, and ignores the fit rows beside them."""
    rows = [
        (3, "-", "pairs", "validate:test", "prediction_agreement", 0.8),
        (3, "simple_grad", "pairs", "validate:test", "spearman", 0.3125),
        (3, "simple_grad", "pairs", "validate:test", "topk", 0.25),
        (3, "simple_grad", "pairs", "test:test", "spearman", 0.9),
    ]
    run = make_run(tmp_path / "runs" / "sf2", rows, methods=["simple_grad"])
    err = _error(capsys, [str(run), "--out", str(tmp_path / "o")])
    assert "no fit-stage rows" in err and "test, validate-stage rows (--stage test)" in err
    main([str(run), "--out", str(tmp_path / "o"), "--stage", "validate"])
    md = (tmp_path / "o" / "report.md").read_text()
    assert "Rows of the validate stage" in md
    assert "| 2 | sf2 | simple_grad | 0.3125 | 0.2500 | 0.8000 |" in section(md, "a")
    (test_run,) = load_runs(run, stage="test")
    spearman = MetricKey("simple_grad", "pairs", "test", "spearman", "test")
    assert {k: e.value for k, e in test_run.estimates.items()} == {spearman: 0.9}
    assert test_run.epochs == (3,) and test_run.stage == "test"
    # fit rows are not read under --stage validate
    mixed = make_run(
        tmp_path / "m", [*rows, (3, "simple_grad", "pairs", "test", "spearman", 0.5)],
        methods=["simple_grad"],
    )  # fmt: skip
    (fit_run,) = load_runs(mixed)
    assert {k: e.value for k, e in fit_run.estimates.items()} == {spearman.at("fit"): 0.5}
    with pytest.raises(ValueError, match="stage must be one of fit, validate, test"):
        load_runs(mixed, stage="predict")  # type: ignore[arg-type]


def test_write_report_with_no_runs_and_output_file(tmp_path: Path) -> None:
    report = write_report([], tmp_path / "out")
    md = report.read_text()
    assert len(ALL_STUDIES) == 7
    assert "## (" not in md and "no runs for this study" not in md  # an empty study prints nothing
    assert read_report_csv(tmp_path / "out") == []
    with pytest.raises(ValueError, match="is a file"):
        write_report([], report)


# --------------------------------------------------------------------------- experiment configs
@pytest.fixture(scope="module")
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / part / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(root / part / cls / f"{i}.jpg")
    return root


@pytest.mark.parametrize(
    "name", ["split_factor", "smoothgrad", "superpixel", "spectral_norm", "adaptgrad"]
)
def test_experiment_config_instantiates(
    name: str, tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_saliency.callbacks import InterpretationGeneralization
    from lightning_saliency.cli import cli_main
    from lightning_saliency.data import ImageFolderDataModule
    from lightning_saliency.models import DisjointEnsemble

    path = EXPERIMENTS / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["model"]["backbone"] == "cifar:resnet18"  # ResNet-18 with the CIFAR stem
    assert raw["data"]["init_args"]["root"] == "data/cifar10"
    assert not {"num_models", "num_classes", "in_chans", "image_size"} & set(raw["model"])
    assert raw["trainer"]["logger"]["init_args"] == {
        "save_dir": "runs", "name": name, "default_hp_metric": False
    }
    monkeypatch.setattr(sys, "argv", ["lightning-saliency"])  # pytest's own args are not ours
    cli = cli_main(
        [
            "--config",
            str(path),
            "--data.init_args.root",
            str(tiny_image_folder),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ],
        run=False,
    )
    assert isinstance(cli.model, DisjointEnsemble) and cli.model.num_models == 2
    assert all(isinstance(m.maxpool, torch.nn.Identity) for m in cli.model.models)
    assert isinstance(cli.datamodule, ImageFolderDataModule)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, InterpretationGeneralization)]
    assert cli.trainer.max_epochs % cb.every_n_epochs == 0  # the last epoch is monitored
    labels = [s.label for s in cb.specs]
    assert "simple_grad" in labels
    expected = {
        "split_factor": 3,
        "smoothgrad": 1 + 6 * 4,
        "superpixel": 2 + 2 * 4 * 2,  # 2 methods x 4 segmenters, signed and abs_sum
        "spectral_norm": 3,
        "adaptgrad": 12,
    }
    assert len(labels) == expected[name]
    if name == "superpixel":
        assert {"simple_grad_sp-slic", "simple_grad_sp-slic-abs_sum"} <= set(labels)
    assert Path(cli.trainer.logger.log_dir).parent == tmp_path / "runs" / name


# --------------------------------------------------------------------------- a real run
def test_plain_trainer_run_is_reported_with_every_method(tmp_path: Path) -> None:
    """A run made from Python with a plain Trainer and logger=False (no config.yaml): the
    callback's methods.json carries every spec, the five hard label forms included."""
    import lightning as L

    from lightning_saliency.callbacks import InterpretationGeneralization

    class Module(L.LightningModule):
        """A tiny classifier with a submodule named ``layer4`` (for ``grad_cam_at-layer4``)."""

        def __init__(self) -> None:
            super().__init__()
            self.layer4 = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.head = torch.nn.Sequential(
                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                torch.nn.Linear(4, 3),
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.layer4(x))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 1, 12, 12, generator=g), torch.randint(0, 3, (24,), generator=g)
    reference = Module()
    methods = ["simple_grad", *HARD_LABELS]
    cb = InterpretationGeneralization(
        methods=methods, num_train_probes=6, num_test_probes=6, train_probes=(x[:12], y[:12]),
        test_probes=(x[12:], y[12:]), reference=reference, log_images_every_n_epochs=0,
        input_range=(0.0, 1.0),
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(max_epochs=1, callbacks=[cb], logger=False, default_root_dir=str(tmp_path),
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(Module(), loader)
    assert not (tmp_path / "config.yaml").exists() and (tmp_path / METHODS_NAME).is_file()
    (run,) = load_runs(tmp_path)
    want = [resolve_method(m) for m in methods]
    assert run.specs == {s.label: s for s in want}
    assert run.labels == [s.label for s in want]
    for s in want:
        assert run.get(s.label, "mean", "gap", "gap") is not None, s.label
    rows = build_studies([run])["superpixel"].rows
    assert [(r["method"], r["segmenter"]) for r in rows] == [("simple_grad", "slic-n_segments40")]
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    assert "slic-n_segments40" in (tmp_path / "report" / "report.md").read_text()


# --------------------------------------------------------------------------- hostile CSVs
def _header_and_row(epoch: int = 0, value: str = "0.5", method: str = "simple_grad") -> str:
    return ",".join(CSV_FIELDS) + f"\n{epoch},1,fit,{method},pairs,test,spearman,{value},nan,nan,nan,32,0\n"


def test_hostile_csvs_give_one_line_errors_naming_file_and_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", [], methods=["simple_grad"])
    csv_path = run / CSV_NAME
    csv_path.write_text(_header_and_row(method="x" * 200_000))  # a 200 kB field
    with pytest.raises(ValueError, match=r"line 2: field larger than field limit"):
        load_runs(run)
    csv_path.write_text(_header_and_row(epoch=10**9))
    with pytest.raises(ValueError, match=r"line 2: epoch 1000000000 is out of range"):
        load_runs(run)
    csv_path.write_text(_header_and_row(epoch=-1))
    with pytest.raises(ValueError, match=r"line 2: epoch -1 is out of range"):
        load_runs(run)
    csv_path.write_text(_header_and_row() + _header_and_row().splitlines()[1] + "\n")
    with pytest.raises(ValueError, match=r"line 3: a second row .* mixes two runs"):
        load_runs(run)


def test_a_utf8_bom_header_is_read(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", [], methods=["simple_grad"])
    (run / CSV_NAME).write_bytes("\ufeff".encode() + _header_and_row(value="0.25").encode())
    (loaded,) = load_runs(run)
    assert loaded.get("simple_grad", "pairs", "test", "spearman").value == 0.25


def test_an_epoch_cut_short_is_skipped_or_refused(tmp_path: Path) -> None:
    from lightning_saliency.generalization import epoch_rows

    est = Estimate(0.5, 0.01, 0.48, 0.52, 32)
    keys = [MetricKey("simple_grad", "pairs", "test", m) for m in ("spearman", "topk", "ssim")]
    run = make_run(tmp_path / "r", [], methods=["simple_grad"])
    with (run / CSV_NAME).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(epoch_rows(dict.fromkeys(keys, est), 0, 9))
        writer.writerows(epoch_rows(dict.fromkeys(keys, est), 1, 19)[:2])  # killed mid-write
    with pytest.warns(UserWarning, match=r"skipping incomplete epoch 1 \(no closing row\)"):
        (loaded,) = load_runs(run)
    assert loaded.epoch == 0 and loaded.epochs == (0, 1)
    with pytest.raises(ValueError, match=r"epoch 1 is incomplete"):
        load_runs(run, epoch=1)


def test_an_all_nan_study_is_reported_not_crashed(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for sf in (2, 4):
        rows = [(0, "simple_grad", "pairs", "test", m, float("nan"), 0.1) for m in ("spearman", "topk")]
        rows.append((0, "-", "pairs", "test", "prediction_agreement", float("nan"), 0.1))
        make_run(root / f"sf{sf}", rows, methods=["simple_grad"], split_factor=sf)
    main([str(root), "--out", str(tmp_path / "out")])
    a = section((tmp_path / "out" / "report.md").read_text(), "a")
    assert "| 2 | sf2 | simple_grad | nan |" in a
    assert_png(tmp_path / "out" / "split_factor.png")


def test_a_method_not_registered_here_is_listed_with_a_warning(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "u", [(0, "simple_grad", "pairs", "test", "ssim", 0.5),
                                       (0, "my_method", "pairs", "test", "ssim", 0.4)],
                      methods=["simple_grad"], write_config=False, methods_json=True)  # fmt: skip
    saved = json.loads((folder / METHODS_NAME).read_text())
    saved["methods"].append({"method": "my_method", "label": "my_method"})
    (folder / METHODS_NAME).write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="'my_method' cannot be resolved here"):
        (run,) = load_runs(folder)
    assert run.labels == ["simple_grad", "my_method"] and "my_method" not in run.specs


# --------------------------------------------------------------------------- seeds, verdicts
def _seed_run(root: Path, sf: int, seed: int, spearman_above: float, ssim: tuple[float, float]) -> None:
    rows = [
        (0, "simple_grad", "pairs", "test", "spearman", spearman_above + 0.2, 0.01),
        (0, "simple_grad", "pairs", "test", "spearman_above_chance", spearman_above, 0.01),
        (0, "simple_grad", "pairs", "test", "ssim_above_chance", ssim[0], 0.01),
        (0, "simple_grad_sp-slic", "pairs", "test", "ssim_above_chance", ssim[1], 0.01),
        (0, "-", "pairs", "test", "prediction_kappa", 0.8 - 0.1 * (sf == 16), 0.01),
    ]
    folder = make_run(root / f"sf{sf}_seed{seed}", rows, split_factor=sf,
                      methods=["simple_grad", {"method": "simple_grad", "superpixel": "slic"}])  # fmt: skip
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg["seed_everything"] = seed
    cfg["trainer"]["logger"]["init_args"]["version"] = f"sf{sf}_seed{seed}"
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_seed_replicates_are_aggregated_and_the_verdicts_follow_the_protocol(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, noise in enumerate((0.0, 0.02, -0.02)):
        _seed_run(root, 2, seed, 0.30 + noise, (0.10, 0.20 + noise))
        _seed_run(root, 16, seed, 0.10 + noise, (0.10, 0.10 - noise))
    runs = load_runs(root)
    assert len({r.signature for r in runs if r.split_factor == 2}) == 1  # seeds differ only
    main([str(root), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "report.md").read_text()
    a = section(md, "a")
    assert "Seed level" in a and "3 seeds: sf2_seed0, sf2_seed1, sf2_seed2" in a
    # a correlation's seed-level interval is a t-interval on Fisher's z scale (issue 19)
    assert "| 2 | 3 seeds: sf2_seed0, sf2_seed1, sf2_seed2 | simple_grad | 0.5000 [0.4489, 0.5482] |" in a
    verdicts = md[md.index("## Verdicts"):md.index("## (a)")]
    # (a): 0.10 - 0.30 per seed, every seed alike: an interval below 0
    assert "| a | map agreement falls" in verdicts and "-0.2000 [" in verdicts
    line_a = next(ln for ln in verdicts.splitlines() if ln.startswith("| a |"))
    assert line_a.endswith("| 0, 1, 2 | **reproduces** |")
    # (c): SSIM above chance, grouped minus pixel: 0.10 + noise, interval above 0
    line_c = next(ln for ln in verdicts.splitlines() if ln.startswith("| c |"))
    assert line_c.endswith("**reproduces** |")
    assert "| d |" not in verdicts  # no spectral-norm runs: not listed


def test_split_factor_plot_takes_seed_replicates_at_one_split_factor(tmp_path: Path) -> None:
    """Two seeds of one split factor share an x; their cells (Estimates) must never be compared."""
    from lightning_saliency.generalization import Estimate
    from lightning_saliency.report.studies import split_factor
    from lightning_saliency.report.table import Row, Table

    def row(run: str, sf: int, v: float) -> Row:
        e = Estimate(v, 0.01, v - 0.02, v + 0.02, 64)
        cells = {"split_factor": sf, "method": "simple_grad", "spearman": e, "topk": e,
                 "prediction_agreement": e, "spearman_chance": e, "topk_chance": e}  # fmt: skip
        return Row(run, cells)

    rows = [row("s0", 2, 0.6), row("s1", 2, 0.5), row("s0", 16, 0.4)]
    table = Table("split_factor", (), rows, x="split_factor", x_name="split_factor")
    split_factor.plot(table, tmp_path / "sf.png")
    assert (tmp_path / "sf.png").stat().st_size > 1000


def test_an_option_added_as_null_does_not_split_seed_replicates(tmp_path: Path) -> None:
    """A run written before an option existed and one written after (``shortcut: null``, its
    default) are seed replicates of one setting; a real difference still splits them."""
    root = tmp_path / "runs"
    _seed_run(root, 2, 0, 0.30, (0.10, 0.20))
    _seed_run(root, 2, 1, 0.32, (0.10, 0.22))
    cfg1 = root / "sf2_seed1" / "config.yaml"
    cfg = yaml.safe_load(cfg1.read_text())
    cfg["data"]["init_args"]["shortcut"] = None
    cfg1.write_text(yaml.safe_dump(cfg))
    assert len({r.signature for r in load_runs(root)}) == 1
    cfg["data"]["init_args"]["shortcut"] = {"split": 0}
    cfg1.write_text(yaml.safe_dump(cfg))
    assert len({r.signature for r in load_runs(root)}) == 2

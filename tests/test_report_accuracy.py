"""The report's accuracy bar (``--min-accuracy``): protocol version 2 excludes a run whose
models miss 85% test accuracy at split factor 2 from the verdicts; the report applies it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_report import _seed_run, section
from torch.utils.tensorboard import SummaryWriter

from lightning_saliency.report import AccuracyBar, load_runs, main
from lightning_saliency.report.accuracy import read_accuracies
from lightning_saliency.report.replicates import select_replicates


def write_events(folder: Path, per_epoch: dict[int, list[float]], steps_per_epoch: int = 10) -> None:
    """TensorBoard scalars as Lightning logs them: ``epoch`` and ``val/model_<k>/acc`` at the
    epoch's last step."""
    with SummaryWriter(str(folder)) as writer:
        for epoch, accs in per_epoch.items():
            step = steps_per_epoch * (epoch + 1)
            writer.add_scalar("epoch", float(epoch), step)
            for k, acc in enumerate(accs):
                writer.add_scalar(f"val/model_{k}/acc", acc, step)


@pytest.mark.parametrize(("text", "bar"), [
    ("0.85", AccuracyBar(0.85, None)), ("0.85@sf2", AccuracyBar(0.85, 2)), (" 1@sf16", AccuracyBar(1.0, 16)),
])  # fmt: skip
def test_a_bar_parses(text: str, bar: AccuracyBar) -> None:
    assert AccuracyBar.parse(text) == bar


@pytest.mark.parametrize("text", ["85", "0", "-0.5", "x", "0.85@foo", "0.85@sf", "", "0.8.5", "nan"])
def test_a_bad_bar_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\].*0\.85@sf2"):
        AccuracyBar.parse(text)


def test_accuracies_are_read_at_the_epoch_from_events_and_metrics_csv(tmp_path: Path) -> None:
    write_events(tmp_path / "tb", {0: [0.5, 0.6], 3: [0.851, 0.849]})
    assert read_accuracies(tmp_path / "tb", 3) == pytest.approx({0: 0.851, 1: 0.849})
    assert read_accuracies(tmp_path / "tb", 0) == pytest.approx({0: 0.5, 1: 0.6})
    assert read_accuracies(tmp_path / "tb", 1) == {}  # nothing logged at that epoch
    (tmp_path / "csvlog").mkdir()
    with (tmp_path / "csvlog" / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)  # Lightning's CSVLogger: one row per log call, blanks elsewhere
        w.writerows([["epoch", "step", "train/loss", "val/model_0/acc", "val/model_1/acc"],
                     ["0", "9", "1.2", "", ""], ["0", "9", "", "0.7", "0.72"],
                     ["1", "19", "", "0.9", "0.88"]])  # fmt: skip
    assert read_accuracies(tmp_path / "csvlog", 1) == pytest.approx({0: 0.9, 1: 0.88})
    assert read_accuracies(tmp_path / "csvlog", 0) == pytest.approx({0: 0.7, 1: 0.72})
    assert read_accuracies(tmp_path / "empty", 0) == {}


def _runs(tmp_path: Path) -> Path:
    """Seeds 0-2 at sf 2 (with accuracies; seed 1's model 1 at 84.9%) and at sf 16 (none)."""
    root = tmp_path / "runs"
    for seed, noise in enumerate((0.0, 0.02, -0.02)):
        _seed_run(root, 2, seed, 0.30 + noise, (0.10, 0.20 + noise))
        _seed_run(root, 16, seed, 0.10 + noise, (0.10, 0.10 - noise))
    write_events(root / "sf2_seed0", {0: [0.86, 0.87]})
    write_events(root / "sf2_seed1", {0: [0.86, 0.849]})
    write_events(root / "sf2_seed2", {0: [0.85, 0.90]})  # exactly at the bar: kept
    return root


def test_a_run_below_the_bar_is_set_apart_and_others_are_not_held(tmp_path: Path) -> None:
    runs = load_runs(_runs(tmp_path))
    kept, apart = select_replicates(runs, [AccuracyBar.parse("0.85@sf2")])
    assert sorted(r.name for r in kept) == ["sf16_seed0", "sf16_seed1", "sf16_seed2",
                                            "sf2_seed0", "sf2_seed2"]  # fmt: skip
    ((run, why),) = apart
    assert run.name == "sf2_seed1"
    assert why.startswith("below the accuracy bar at epoch 0: model 1 84.90% (test accuracy >= 85.00%")
    # held to a bar without accuracies: refused, never taken as passed
    kept, apart = select_replicates(runs, [AccuracyBar.parse("0.8")])
    assert sorted(r.name for r, _ in apart) == ["sf16_seed0", "sf16_seed1", "sf16_seed2"]
    assert all("cannot be checked" in why for _, why in apart)
    assert select_replicates(runs)[1] == []  # no bar: nothing set apart


def test_a_spectral_norm_run_at_the_split_factor_is_not_held_to_the_plain_bar(tmp_path: Path) -> None:
    root = _runs(tmp_path)
    cfg = root / "sf2_seed0" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("spectral_norm_factor: null", "spectral_norm_factor: 1.0"))
    write_events(root / "sf2_seed0", {0: [0.5, 0.5]})
    (run,) = [r for r in load_runs(root) if r.name == "sf2_seed0"]
    assert run.spectral_norm_factor == 1.0
    assert AccuracyBar.parse("0.85@sf2").failure(run) is None
    assert "model 0 " in (AccuracyBar.parse("0.85").failure(run) or "")


def test_a_model_without_its_accuracy_fails_the_bar(tmp_path: Path) -> None:
    root = _runs(tmp_path)
    (run,) = [r for r in load_runs(root) if r.name == "sf2_seed2"]
    for f in run.path.glob("events.out.tfevents.*"):
        f.unlink()
    write_events(run.path, {0: [0.99]})  # model 1's accuracy missing
    assert "logged for 1 of 2 models" in (AccuracyBar(0.85, 2).failure(run) or "")


def test_the_report_leaves_a_run_below_the_bar_out_of_the_verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _runs(tmp_path)
    with pytest.warns(UserWarning, match="sf2_seed1 is set apart: below the accuracy bar"):
        main([str(root), "--out", str(tmp_path / "out"), "--min-accuracy", "0.85@sf2"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Accuracy bar: test accuracy >= 85.00% for every model (runs at split factor 2" in md
    assert "| sf2_seed1 | below the accuracy bar at epoch 0: model 1 84.90%" in md
    verdicts = md[md.index("## Verdicts"):md.index("## (a)")]
    line_a = next(ln for ln in verdicts.splitlines() if ln.startswith("| a |"))
    assert line_a.endswith("| 0, 2 | **reproduces** |")  # seed 1 left out
    assert "2 seeds: sf2_seed0, sf2_seed2" in section(md, "a")
    with pytest.raises(SystemExit):
        main([str(root), "--out", str(tmp_path / "bad"), "--min-accuracy", "85"])
    assert "--min-accuracy takes a fraction in (0, 1]" in capsys.readouterr().err

"""The command line: every shipped config parses; the default run logs what it should."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lightning_saliency.cli import cli_main, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "cifar10_resnet18.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config), "--print_config"])
    assert exc.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "class_path: lightning_saliency.data." in printed
    assert "InterpretationGeneralization" in printed


def test_paper_overrides_parse(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(ROOT / "configs" / "cifar10_resnet18.yaml")
    for extra in (["--data.init_args.split_factor", "16"], ["--model.spectral_norm_factor", "2.0"]):
        with pytest.raises(SystemExit):
            main(["fit", "--config", cfg, *extra, "--print_config"])
        out = capsys.readouterr().out
        assert (
            ("split_factor: 16" in out) if "16" in extra else ("spectral_norm_factor: 2.0" in out)
        )


def test_default_run_leaves_every_tag_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "default.yaml"),
            "--trainer.max_epochs",
            "2",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    run = Path(cli.trainer.logger.log_dir).resolve()
    assert run.is_relative_to((tmp_path / "runs" / "default").resolve())
    for name in ("config.yaml", "splits.json", "interpretation_metrics.csv", "methods.json"):
        assert (run / name).is_file(), name
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for k in (0, 1):
        for t in (
            f"train/model_{k}/loss",
            f"train/model_{k}/acc",
            f"val/model_{k}/loss",
            f"val/model_{k}/acc",
        ):
            assert t in tags, t
    assert "val/prediction_agreement" in tags
    assert any(t.startswith("spectral/") for t in tags)
    cb = next(c for c in cli.trainer.callbacks if hasattr(c, "specs"))
    labels = [s.label for s in cb.specs]
    assert len(labels) >= 6
    for lb in labels:
        for suffix in (
            "train_loss",
            "test_loss",
            "gap",
            "gap_lo",
            "mege",
            "reco",
            "test/sparseness",
            "test/complexity",
            "drift",
            "model_0/gap",
            "train/spearman",
            "test/ssim",
            "test/topk",
            "test/l2",
            "test/spearman_above_chance_hi",
        ):
            assert f"interp/{lb}/{suffix}" in tags, f"interp/{lb}/{suffix}"
        assert (f"interp/{lb}/gap_reduction" in tags) == (lb != "simple_grad"), lb
    assert {"interp/prediction_agreement/train", "interp/prediction_agreement/test"} <= tags
    assert {f"interp_images/{lb}" for lb in labels} <= set(acc.Tags()["images"])
    # the ensemble learns the digits well above chance (0.1) in two epochs
    assert acc.Scalars("val/acc")[-1].value > 0.6
    with (run / "interpretation_metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["epoch"]) for r in rows} == {0, 1}
    assert {r["method"] for r in rows} == {*labels, "-"}

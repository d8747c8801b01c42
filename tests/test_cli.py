"""The command line: every shipped config parses; the default run logs what it should."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from lightning_saliency.cli import cli_main, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "cifar10_resnet18.yaml"} <= names


CPU = ROOT / "configs" / "experiments" / "cpu"
#: a training recipe without a monitor, and the monitor that goes after it
RECIPE, OVERLAY = CPU / "fast_cifar10.yaml", CPU / "cifar_studies.yaml"
CONTROLS, CONTROLS_CIFAR = ROOT / "configs" / "experiments" / "controls.yaml", CPU / "controls_cifar10.yaml"
#: the template for a user's own module (names my_models.TwinNets): tests/test_own_model_docs.py
OWN_MODEL = ROOT / "configs" / "own_model.yaml"
RUNS = [[c] for c in CONFIGS if c not in (OVERLAY, CONTROLS_CIFAR, OWN_MODEL)] + [
    [RECIPE, OVERLAY],
    [CONTROLS, CONTROLS_CIFAR],
]


@pytest.mark.parametrize(
    "configs", RUNS, ids=lambda cs: "+".join(str(c.relative_to(ROOT)) for c in cs)
)
def test_every_shipped_config_parses(configs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for c in configs for a in ("--config", str(c))]
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args, "--print_config"])
    assert exc.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "class_path: lightning_saliency.data." in printed
    assert ("InterpretationGeneralization" in printed) == (configs != [RECIPE])


def test_paper_overrides_parse(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(ROOT / "configs" / "cifar10_resnet18.yaml")
    for extra in (["--data.init_args.split_factor", "16"], ["--model.spectral_norm_factor", "2.0"]):
        with pytest.raises(SystemExit):
            main(["fit", "--config", cfg, *extra, "--print_config"])
        out = capsys.readouterr().out
        assert (
            ("split_factor: 16" in out) if "16" in extra else ("spectral_norm_factor: 2.0" in out)
        )


@pytest.mark.slow
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
            # every number to TensorBoard (the default is the headline: tests/test_default_run.py)
            "--trainer.callbacks.init_args.tensorboard_scalars",
            "all",
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
            "mege",
            "reco",
            "test/sparseness",
            "test/complexity",
            "drift",
            "model_0/gap",
            "test/ssim",
            "test/topk",
        ):
            assert f"interp/{lb}/{suffix}" in tags, f"interp/{lb}/{suffix}"
        assert {f"interval/{lb}/gap_lo", f"interval/{lb}/test/spearman_above_chance_hi"} <= tags
        assert (f"interp/{lb}/gap_reduction" in tags) == (lb != "simple_grad"), lb
        # train-probe agreement is left to the CSV (schema.MetricKey.in_tensorboard)
        assert f"interp/{lb}/train/spearman" not in tags
        # with K = 2 the test L2 distance is the test loss: logged once, as test_loss
        assert f"interp/{lb}/test/l2" not in tags
    assert {"interp/prediction_agreement/train", "interp/prediction_agreement/test"} <= tags
    assert {f"interp_images/{lb}" for lb in labels} <= set(acc.Tags()["images"])
    # the ensemble learns the digits well above chance (0.1) in two epochs
    assert acc.Scalars("val/acc")[-1].value > 0.6
    with (run / "interpretation_metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["epoch"]) for r in rows} == {0, 1}
    assert {r["method"] for r in rows} == {*labels, "-"}
    assert any(r["split"] == "train" and r["metric"] == "spearman" for r in rows)


# --------------------------------------------------------------------------- any module
_TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.image_size", "16",
]  # fmt: skip


_USER_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  deterministic: true
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {save_dir: runs, name: user}
  callbacks:
    - class_path: lightning_saliency.callbacks.InterpretationGeneralization
      init_args:
        methods:
          - simple_grad
          - {method: user_cli_grad, scale: 2.0}
          - {method: captum, attribution: DeepLift}
        num_train_probes: 8
        num_test_probes: 8
        log_images_every_n_epochs: 0
model:
  class_path: user_plugin.TinyUserModule
data:
  class_path: lightning_saliency.data.DigitsDataModule
  init_args: {split_factor: 2, num_models: 2, batch_size: 32}
"""


def _gap_rows(run: Path, label: str) -> list[dict[str, str]]:
    with (run / "interpretation_metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == label and r["metric"] == "gap"]
    assert rows, f"no gap rows for {label}"
    assert all(math.isfinite(float(r["value"])) and r["nonfinite"] == "0" for r in rows), rows
    return rows


def test_help_lists_report_beside_the_trainer_subcommands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("fit", "validate", "test", "report"):
        assert re.search(rf"^\s+{word}\s", out, re.M), word
    with pytest.raises(ValueError, match="not a training subcommand"):
        cli_main(["report", "runs"])


def test_a_model_class_starts_from_its_own_defaults(tmp_path: Path) -> None:
    """Not the DisjointEnsemble's: its lr=0.1 and num_models=2 must not leak in."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "data:\n  class_path: lightning_saliency.data.DigitsDataModule\n"
        "  init_args: {split_factor: 4, num_models: 4}\n"
    )
    cli = cli_main(["--config", str(cfg), "--model", "user_plugin.TinyUserModule"], run=False)
    assert type(cli.model).__name__ == "TinyUserModule"
    # the user's own default; the linked facts of the data (4 models, 10 classes, 1 channel)
    hparams = {k: v for k, v in cli.model.hparams.items() if not k.startswith("_")}
    assert hparams == {"num_models": 4, "num_classes": 10, "in_chans": 1, "lr": 0.01}
    assert cli.config.model.init_args.num_classes == 10  # what config.yaml records
    classifier = cli_main(["--config", str(cfg), "--model", "Classifier"], run=False).model
    assert classifier.hparams["lr"] == 0.1 and "num_models" not in classifier.hparams
    with pytest.raises(ValueError, match="contradicts the data module's num_classes=10"):
        cli_main(
            ["--config", str(cfg), "--model", "user_plugin.TinyUserModule",
             "--model.init_args.num_classes", "5"],
            run=False,
        )  # fmt: skip


@pytest.mark.slow
def test_user_lightning_module_trained_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's module by class path, with a user-registered method and a Captum one."""
    pytest.importorskip("captum")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user.yaml").write_text(_USER_CONFIG)
    cli = cli_main(["fit", "--config", "user.yaml", *_TINY])
    run = Path(cli.trainer.logger.log_dir)
    labels = ["simple_grad", "user_cli_grad_scale-2", "captum_DeepLift"]
    methods_json = json.loads((run / "methods.json").read_text())["methods"]
    assert [m["label"] for m in methods_json] == labels
    for label in labels:
        assert len(_gap_rows(run, label)) == 3  # model_0, model_1, mean
    assert "user_plugin.TinyUserModule" in (run / "config.yaml").read_text()
    # its checkpoint loads back (no linked argument the class does not take, e.g. image_size)
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    model = type(cli.model).load_from_checkpoint(ckpt)
    assert len(model.models) == 2 and model.hparams["num_classes"] == 10


@pytest.mark.slow
def test_classifier_and_reference_from_the_shipped_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two steps of configs/single_model_reference.yaml's header, tiny."""
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "configs" / "single_model_reference.yaml")
    cli_main(
        ["fit", "--config", config, *_TINY, "--data.init_args.split_factor", "1",
         "--trainer.logger.init_args.name", "reference",
         "--trainer.callbacks=ModelCheckpoint", "--trainer.callbacks.dirpath=runs/reference",
         "--trainer.callbacks.filename=reference",
         "--trainer.callbacks.enable_version_counter=false"]
    )  # fmt: skip
    assert (tmp_path / "runs" / "reference" / "reference.ckpt").is_file()
    cli = cli_main(
        ["fit", "--config", config, *_TINY,
         "--trainer.callbacks.init_args.methods", "[simple_grad]",
         "--trainer.callbacks.init_args.num_train_probes", "8",
         "--trainer.callbacks.init_args.num_test_probes", "8",
         "--trainer.callbacks.init_args.log_images_every_n_epochs", "0"]
    )  # fmt: skip
    assert type(cli.model).__name__ == "Classifier"
    cb = next(c for c in cli.trainer.callbacks if hasattr(c, "specs"))
    assert cb.reference == "runs/reference/reference.ckpt"
    run = Path(cli.trainer.logger.log_dir)
    assert {r["aggregate"] for r in _gap_rows(run, "simple_grad")} == {"model_0", "mean"}

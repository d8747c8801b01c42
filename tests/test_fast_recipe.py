"""configs/experiments/cpu/fast_cifar10.yaml builds what it says and trains, on a tiny tree;
benchmarks/train_recipe.py writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "experiments" / "cpu" / "fast_cifar10.yaml"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        for cls in ("a", "b"):
            (root / part / cls).mkdir(parents=True)
            for i in range(4):
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / part / cls / f"{i}.jpg")


def _args(tmp_path: Path) -> list[str]:
    return [
        "--config", str(CONFIG),
        "--data.init_args.root", str(tmp_path / "tree"),
        "--data.init_args.cache_dir", str(tmp_path / "cache"),
        "--data.init_args.batch_size", "2",
        "--trainer.max_epochs", "1",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ]  # fmt: skip


@pytest.mark.slow
def test_fast_recipe_config_builds_and_trains(tmp_path: Path, monkeypatch) -> None:
    from lightning_saliency.cli import cli_main
    from lightning_saliency.data import ImageFolderDataModule
    from lightning_saliency.models import AirbenchCNN

    _tree(tmp_path / "tree")
    monkeypatch.setattr(sys, "argv", ["lightning-saliency"])
    cli = cli_main(_args(tmp_path), run=False)
    dm, model = cli.datamodule, cli.model
    assert isinstance(dm, ImageFolderDataModule) and dm.in_memory
    assert dm.augment == ("crop", "flip") and dm.crop_mode == "reflect"
    assert dm.hparams["mean"] == "auto" and len(dm.mean) == 3
    assert model.hparams.label_smoothing == 0.2 and model.hparams.scheduler == "triangle"
    assert all(isinstance(m, AirbenchCNN) and m.needs_data_init for m in model.models)
    cli.trainer.fit(model, datamodule=dm)
    assert all(bool(m.whitened) for m in model.models)
    assert 0.0 <= float(cli.trainer.callback_metrics["val/model_1/acc"]) <= 1.0


@pytest.mark.slow
def test_train_recipe_benchmark_writes_json(tmp_path: Path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location(
        "train_recipe", REPO / "benchmarks" / "train_recipe.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _tree(tmp_path / "tree")
    monkeypatch.setattr(sys, "argv", ["lightning-saliency"])
    out = tmp_path / "r.json"
    bench.main(["--out", str(out), "--", *_args(tmp_path)])
    saved = json.loads(out.read_text())
    assert (
        saved["train_images_per_model"] == 4 and saved["macs_per_image"] == 33_066_272 - 128 * 8
    )  # 2 classes, not 10
    assert len(saved["final_test_acc"]) == 2 and saved["fit"]["cpu_s"] > 0

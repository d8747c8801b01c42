"""Images and figures reach W&B (offline) and MLflow (file store), and the callback's own
record lands in each run's own folder (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tiny import callback, data, ensemble, trainer

from lightning_saliency.generalization import CSV_NAME, METHODS_NAME

pytestmark = pytest.mark.slow  # offline W&B and MLflow runs: seconds each

METHODS = ["simple_grad", {"method": "smooth_grad", "sigma": 0.3, "samples": 2},
           {"method": "simple_grad", "superpixel": "slic"}]  # fmt: skip


def _fit(tmp_path: Path, logger) -> object:
    t = trainer(tmp_path, [callback(methods=METHODS)], logger=logger, max_epochs=1)
    t.fit(ensemble(), data())
    return t


def test_wandb_offline_receives_images_and_figures(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="ls", save_dir=str(tmp_path), offline=True)
    t = _fit(tmp_path, logger)
    logger.experiment.finish()
    media = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("media/images/**/*.png")]
    assert any("interp_images/simple_grad" in p for p in media), media
    assert any("interp_figures/pixel_vs_superpixel" in p for p in media), media
    run_dir = Path(tmp_path) / "ls" / str(logger.version)
    assert (run_dir / CSV_NAME).is_file() and (run_dir / METHODS_NAME).is_file()
    assert t.callback_metrics["interp/simple_grad/gap"].isfinite()


def test_mlflow_file_store_receives_images_and_figures(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 deprecates the file store

    logger = MLFlowLogger(experiment_name="ls", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    _fit(tmp_path, logger)
    artifacts = Path(tmp_path / "mlruns" / logger.experiment_id / logger.run_id / "artifacts")
    pngs = [p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*.png")]
    assert any(p.startswith("interp_images/simple_grad/") for p in pngs), pngs
    assert any(p.startswith("interp_figures/smoothgrad_sweep/") for p in pngs), pngs
    run_dir = Path(tmp_path / "mlruns" / logger.experiment_id / logger.run_id)
    assert (run_dir / CSV_NAME).is_file() and (run_dir / METHODS_NAME).is_file()
    metrics = {p.name for p in (run_dir / "metrics" / "interp").rglob("*")}
    assert "gap" in metrics  # scalars arrive too

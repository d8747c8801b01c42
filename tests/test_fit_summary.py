"""The closing summary (issue 23): where each logger shows the run, the schedule's skipped
epochs with the reason and the setting to change, the footnote only under a star."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tiny import callback, data, ensemble, trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_saliency.callbacks._logging import schedule_note, summary_text, where_to_look
from lightning_saliency.generalization import CSV_NAME, Estimate, MetricKey
from lightning_saliency.generalization.summary import FOOTNOTE, format_headline, headline


def _estimates(gap: tuple[float, float, float]) -> dict[MetricKey, Estimate]:
    value, lo, hi = gap
    return {MetricKey("simple_grad", "mean", "gap", "gap"): Estimate(value, 0.01, lo, hi, 32)}


def test_the_footnote_is_printed_only_under_a_star() -> None:
    no_star = format_headline(headline(_estimates((0.01, -0.01, 0.03)), ["simple_grad"]))
    assert "*" not in no_star and FOOTNOTE not in no_star
    star = format_headline(headline(_estimates((0.02, 0.01, 0.03)), ["simple_grad"]))
    assert "0.0300] *" in star.splitlines()[1] and star.splitlines()[-1] == FOOTNOTE
    # a method with nothing logged has no star either
    assert FOOTNOTE not in format_headline(headline({}, ["simple_grad"]))


def test_no_logger_names_the_csv_and_no_tensorboard(tmp_path: Path) -> None:
    text = summary_text(_estimates((0.01, -0.01, 0.03)), ["simple_grad"], tmp_path, [])
    assert f"values: {tmp_path / CSV_NAME}" in text
    assert "tensorboard" not in text
    assert f"lightning-saliency report {tmp_path}" in text


def test_a_csv_logger_gets_its_metrics_file_and_no_tensorboard(tmp_path: Path) -> None:
    logger = CSVLogger(str(tmp_path), name="csv", version=3)
    lines = where_to_look([logger])
    assert lines == [f"CSVLogger's metrics: {tmp_path / 'csv' / 'version_3' / 'metrics.csv'}"]
    text = summary_text({}, ["simple_grad"], logger.log_dir, [logger])
    assert "tensorboard" not in text and f"values: {Path(logger.log_dir) / CSV_NAME}" in text


def test_tensorboard_gets_the_command_on_its_own_folder(tmp_path: Path) -> None:
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=1)
    csv = CSVLogger(str(tmp_path), name="csv", version=0)
    assert where_to_look([tb, csv])[0] == f"tensorboard --logdir {tmp_path / 'tb' / 'version_1'}"


def test_mlflow_names_its_tracking_uri_and_run_id(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(experiment_name="ls", tracking_uri=uri)
    (line,) = where_to_look([logger])
    assert logger.run_id in line and uri in line and f"mlflow ui --backend-store-uri {uri}" in line
    assert "tensorboard" not in summary_text({}, ["simple_grad"], tmp_path, [logger])


def test_the_schedule_note_names_the_skipped_epochs_and_the_setting() -> None:
    assert schedule_note([0, 1, 2], [], None) == "monitored epochs: 0, 1, 2"
    note = schedule_note([0, 3], [[1, "over budget: x"], [2, "spread over the fit: y"]], 0.1)
    first, second = note.splitlines()
    assert first == "monitored epochs: 0, 3"
    assert second.startswith("epochs 1, 2 skipped: monitoring them would exceed max_overhead=0.1")
    assert "(epoch 1: over budget: x)" in second
    assert "max_overhead: null" in second and "every_n_epochs" in second
    # an epoch skipped before a resume and monitored after it is not listed
    assert schedule_note([0, 1], [[1, "over budget: x"]], 0.1) == "monitored epochs: 0, 1"


def test_a_tight_budget_fit_with_a_csv_logger_ends_with_the_reason(tmp_path: Path, caplog) -> None:
    cb = callback(methods=["simple_grad"], max_overhead=1e-6)
    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    t = trainer(tmp_path, [cb], logger=logger, max_epochs=4)
    with caplog.at_level("INFO"):
        t.fit(ensemble(), data())
    assert cb.logged_epochs == [0, 3]
    text = caplog.text
    assert "monitored epochs: 0, 3" in text
    assert "epochs 1, 2 skipped: monitoring them would exceed max_overhead=1e-06" in text
    assert "tensorboard --logdir" not in text
    assert f"values: {Path(logger.log_dir) / CSV_NAME}" in text
    assert (Path(logger.log_dir) / CSV_NAME).is_file()


def test_wandb_gets_its_url_or_its_offline_folder(tmp_path: Path) -> None:
    """W&B's run as Lightning's WandbLogger exposes it (``experiment.url``, ``.dir``); a stand-in
    keeps this test offline and fast (tests/test_loggers.py runs the real one)."""

    class Run:
        def __init__(self, url: str | None) -> None:
            self.url, self.dir = url, str(tmp_path / "wandb" / "offline-run-1" / "files")

    class WandbLogger:  # the name is what the summary dispatches on
        def __init__(self, url: str | None) -> None:
            self.experiment = Run(url)

    assert where_to_look([WandbLogger("https://wandb.ai/me/ls/runs/abc")]) == [
        "W&B run: https://wandb.ai/me/ls/runs/abc"]  # fmt: skip
    folder = tmp_path / "wandb" / "offline-run-1"
    assert where_to_look([WandbLogger(None)]) == [
        f"W&B offline run: {folder} (upload it with: wandb sync {folder})"]  # fmt: skip


@pytest.mark.slow  # starts an offline W&B run
def test_a_real_offline_wandb_run_gets_its_folder_and_the_sync_command(tmp_path: Path,
                                                                     monkeypatch) -> None:  # fmt: skip
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="ls", save_dir=str(tmp_path), offline=True)
    try:
        (line,) = where_to_look([logger])
        folder = Path(logger.experiment.dir).parent
    finally:
        logger.experiment.finish()
    assert line == f"W&B offline run: {folder} (upload it with: wandb sync {folder})"
    assert folder.is_dir() and folder.name.startswith("offline-run-")

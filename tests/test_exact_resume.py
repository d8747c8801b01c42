"""A run of ``configs/default.yaml`` killed after epoch e and resumed from its checkpoint ends
exactly where the uninterrupted run ends: the same weights (bit for bit) and the same CSV
rows (issue 12). The time budget is off (``max_overhead null``): with it, which epochs are
monitored depends on measured times, in an uninterrupted run as much as in a resumed one."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_saliency.cli import cli_main

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
METHODS = "[simple_grad, {method: smooth_grad, noise_level: 0.2, samples: 4}]"


class _Killed(Exception):
    pass


class _Kill(L.Callback):
    """Kills the fit as the given epoch starts (a crash: nothing after it runs)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise _Killed


def _fit(root: Path, monkeypatch: pytest.MonkeyPatch, ckpt_path: Path | None = None,
         kill_at: int | None = None):  # fmt: skip
    monkeypatch.setattr("sys.argv", ["lightning-saliency"])
    root.mkdir(exist_ok=True)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli = cli_main(["--config", str(CONFIG),
                        "--trainer.callbacks.init_args.methods", METHODS,
                        "--trainer.callbacks.init_args.max_overhead", "null",
                        "--trainer.logger.init_args.version", "0",
                        "--trainer.enable_progress_bar", "false",
                        "--trainer.enable_model_summary", "false"], run=False)  # fmt: skip
        trainer = cli.trainer
        trainer.callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1))
        if kill_at is not None:
            trainer.callbacks.append(_Kill(kill_at))
        trainer.fit(
            cli.model, cli.datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path)
        )
        return cli.model, Path(trainer.logger.log_dir).resolve()
    finally:
        os.chdir(cwd)


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "interpretation_metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_a_resumed_default_run_equals_the_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, full_run = _fit(tmp_path / "full", monkeypatch)
    killed = tmp_path / "killed"
    with pytest.raises(_Killed):
        _fit(killed, monkeypatch, kill_at=2)  # epochs 0 and 1 ran, were monitored and checkpointed
    (ckpt,) = (killed / "ckpt").glob("epoch=1-*.ckpt")
    resumed, resumed_run = _fit(killed, monkeypatch, ckpt_path=ckpt)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows_full, rows_resumed = _rows(full_run), _rows(resumed_run)
    assert {r["epoch"] for r in rows_full} == {"0", "1", "2", "3"}
    assert rows_resumed == rows_full  # every epoch once, every value and interval equal

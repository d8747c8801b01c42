"""A run killed after epoch e and resumed from its checkpoint ends exactly where the
uninterrupted run ends: the same weights (bit for bit) and the same CSV rows (issue 12)."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.data import DigitsDataModule
from lightning_saliency.models import DisjointEnsemble

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
METHODS = ["simple_grad", {"method": "smooth_grad", "noise_level": 0.2, "samples": 4}]


class _Kill(L.Callback):
    """Kills the fit as the given epoch starts (a crash: the process is gone)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise _Killed


class _Killed(Exception):
    pass


def _fit(root: Path, ckpt_path: Path | None = None, kill_at: int | None = None):
    L.seed_everything(0)
    model = DisjointEnsemble(backbone="small_cnn", num_classes=10, in_chans=1, image_size=16,
                             optimizer="adamw", lr=3e-3, scheduler="cosine")  # fmt: skip
    cb = InterpretationGeneralization(methods=METHODS, num_train_probes=8, num_test_probes=8,
                                      max_overhead=None, log_images_every_n_epochs=0)  # fmt: skip
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    kill = [] if kill_at is None else [_Kill(kill_at)]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, deterministic=True,
                        logger=CSVLogger(str(root), name="run", version=0),
                        callbacks=[cb, ckpt, *kill], enable_progress_bar=False,
                        enable_model_summary=False, limit_train_batches=4)  # fmt: skip
    trainer.fit(model, DigitsDataModule(image_size=16, batch_size=32),
                ckpt_path=None if ckpt_path is None else str(ckpt_path))  # fmt: skip
    return model, root / "run" / "version_0"


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "interpretation_metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    full, full_run = _fit(tmp_path / "full")
    killed = tmp_path / "killed"
    with pytest.raises(_Killed):
        _fit(killed, kill_at=2)  # epochs 0 and 1 ran, were monitored and checkpointed
    (ckpt,) = (killed / "ckpt").glob("epoch=1-*.ckpt")
    resumed, resumed_run = _fit(killed, ckpt_path=ckpt)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows_full, rows_resumed = _rows(full_run), _rows(resumed_run)
    assert {r["epoch"] for r in rows_full} == {"0", "1", "2"}
    assert rows_resumed == rows_full  # every epoch once, every value and interval equal

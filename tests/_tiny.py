"""Tiny data, models, callbacks and trainers shared by the callback tests."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.data import DigitsDataModule
from lightning_saliency.models import DisjointEnsemble

METHODS = [
    "simple_grad",
    {"method": "smooth_grad", "sigma": 0.3, "samples": 4},
    {"method": "simple_grad", "superpixel": "slic"},
]


def data(**kw: Any) -> DigitsDataModule:
    kw.setdefault("batch_size", 64)
    return DigitsDataModule(image_size=16, split_factor=2, num_models=2, **kw)


def ensemble(**kw: Any) -> DisjointEnsemble:
    kw.setdefault("num_models", 2)
    return DisjointEnsemble(backbone="small_cnn", num_classes=10, in_chans=1, image_size=16,
                            optimizer="adamw", lr=3e-3, **kw)  # fmt: skip


def callback(**kw: Any) -> InterpretationGeneralization:
    kw.setdefault("methods", METHODS)
    kw.setdefault("num_train_probes", 6)
    kw.setdefault("num_test_probes", 6)
    kw.setdefault("log_images_every_n_epochs", 1)
    kw.setdefault("max_overhead", None)  # every epoch, whatever it costs (tests time nothing)
    return InterpretationGeneralization(**kw)


def trainer(tmp_path: Path, callbacks: Any = (), logger: Any = None, **kw: Any) -> L.Trainer:
    kw.setdefault("max_epochs", 2)
    kw.setdefault("limit_train_batches", 3)
    kw.setdefault("limit_val_batches", 1)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        callbacks=list(callbacks),
        logger=logger if logger is not None else TensorBoardLogger(str(tmp_path), name="tb"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        deterministic=True,
        **kw,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


class Plain(L.LightningModule):
    """A one-model classifier for 1-channel 16x16 images."""

    def __init__(self, classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, classes))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def plain_loader(n: int = 32, chans: int = 1, size: int = 16) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, chans, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    return loader, (x, y)

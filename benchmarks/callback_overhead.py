"""Epoch wall time with and without InterpretationGeneralization (issue 4).

The setup of paper 000: ResNet-18 with the CIFAR stem (``cifar:resnet18``, the model of
``configs/cifar10_resnet18.yaml`` and the studies), K=2 models on disjoint halves of
CIFAR-10 (the JPEG ImageFolder tree), split factor 2, the callback at its defaults. Both
runs train the same models from the same seed in one process; the figure is the ratio of
median epoch times (the first epoch is a warm-up and is left out). ``--attr-precision
bf16 --channels-last`` measures the callback with bf16 attribution passes instead of its
default fp32 ones.

GPU (the lent H100)::

    python benchmarks/callback_overhead.py --data data/cifar10 --device cuda --epochs 4 \\
        --out overhead.json

CPU smoke run (digits, small CNN; not a performance claim)::

    python benchmarks/callback_overhead.py --quick --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DigitsDataModule,
    ImageFolderDataModule,
)
from lightning_saliency.models import DisjointEnsemble


class EpochTimer(Callback):
    """Wall time from each train epoch's start to the end of its last epoch-end hook.

    Put it after the monitored callbacks: Lightning calls callbacks in list order, so
    its ``on_train_epoch_end`` runs after theirs and the epoch time includes them.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)


def _setup(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    if args.quick:
        data = DigitsDataModule(split_factor=2, num_models=2, batch_size=64)
        model_kw = {"backbone": "small_cnn", "optimizer": "adamw", "lr": 3e-3}
    else:
        if args.data is None:
            raise SystemExit(
                "--data (the CIFAR-10 ImageFolder root, e.g. data/cifar10) is required"
            )
        data = ImageFolderDataModule(
            root=args.data,
            split_factor=2,
            num_models=2,
            batch_size=128,
            num_workers=args.workers,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            augment=True,
            pin_memory=args.device == "cuda",
        )
        model_kw = {"backbone": args.backbone, "optimizer": "sgd", "lr": 0.1}
    return data, model_kw


def _run(args: argparse.Namespace, with_callback: bool) -> list[float]:
    L.seed_everything(0, workers=True)
    data, model_kw = _setup(args)
    data.setup("fit")
    model = DisjointEnsemble(
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        image_size=data.image_size,
        num_models=2,
        **model_kw,
    )
    timer = EpochTimer()
    callbacks: list[Callback] = []
    if with_callback:
        callbacks.append(
            InterpretationGeneralization(
                log_images_every_n_epochs=1,
                precision=args.attr_precision,
                channels_last=args.channels_last,
            )
        )
    callbacks.append(timer)
    trainer = L.Trainer(
        accelerator=args.device if args.device != "cuda" else "gpu",
        devices=1,
        max_epochs=args.epochs,
        precision=args.precision,
        callbacks=callbacks,
        logger=TensorBoardLogger(args.log_dir, name=f"overhead_{with_callback}"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=args.limit_train_batches,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
    return timer.times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=None, help="CIFAR-10 ImageFolder root (train/ and test/)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--precision", default="32-true", help="Trainer precision, e.g. bf16-mixed")
    parser.add_argument("--backbone", default="cifar:resnet18", help="backbone (not --quick)")
    parser.add_argument(
        "--attr-precision", default="32", choices=["32", "bf16"], help="the callback's precision"
    )
    parser.add_argument("--channels-last", action="store_true", help="the callback's channels_last")
    parser.add_argument("--limit-train-batches", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="digits + small CNN smoke run")
    parser.add_argument("--log-dir", default="runs/benchmarks")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is a warm-up)")

    without = _run(args, with_callback=False)
    with_cb = _run(args, with_callback=True)
    base = statistics.median(without[1:])
    monitored = statistics.median(with_cb[1:])
    result = {
        "setup": "digits small_cnn (quick)"
        if args.quick
        else f"CIFAR-10 JPEG {args.backbone} K=2 sf=2",
        "trainer_precision": args.precision,
        "callback_precision": args.attr_precision,
        "callback_channels_last": args.channels_last,
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "epochs": args.epochs,
        "epoch_s_without": without,
        "epoch_s_with": with_cb,
        "median_epoch_s_without": base,
        "median_epoch_s_with": monitored,
        "overhead_ratio": monitored / base,
    }
    print("| setup | device | trainer | callback | epoch s without | epoch s with | overhead |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    cb = args.attr_precision + (" + channels_last" if args.channels_last else "")
    print(
        f"| {result['setup']} | {result['device']} | {args.precision} | {cb} | {base:.2f} "
        f"| {monitored:.2f} | {100 * (monitored / base - 1):+.1f}% |"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

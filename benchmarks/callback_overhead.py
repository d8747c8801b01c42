"""What InterpretationGeneralization costs per epoch, measured inside one fit (issues 4, 14).

The setup of paper 000: ResNet-18 with the CIFAR stem (``cifar:resnet18``, the model of
``configs/cifar10_resnet18.yaml`` and the studies), K=2 models on disjoint halves of
CIFAR-10 (the JPEG ImageFolder tree), split factor 2, the callback at its defaults.

Every hook of the monitor is timed where it runs (CUDA synchronized before and after), so
one fit gives, for each epoch, the monitor's own seconds and the rest of the epoch (training
and validation without the monitor): the two arms are interleaved by construction, epoch by
epoch, on the same models. The figure is the median over monitored epochs of monitor seconds
over the median of the epochs' other seconds; the first epoch is a warm-up and is left out.
``--baseline`` also runs a separate fit without the monitor, from the same seed, as an
end-to-end check. ``--attr-precision bf16 --channels-last`` measures bf16 attribution passes.
TF32 is set explicitly (``--tf32``, default off) and recorded.

GPU (the lent machine)::

    python benchmarks/callback_overhead.py --data data/cifar10 --device cuda --epochs 3 \\
        --out overhead.json

CPU smoke run (digits, small CNN, 8 + 8 probes; not a performance claim)::

    python benchmarks/callback_overhead.py --quick --device cpu
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
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

#: Hooks of a Callback that run during fit (state_dict & co. are not timed).
HOOKS = tuple(
    name
    for name in dir(Callback)
    if (name.startswith("on_") or name in ("setup", "teardown"))
    and name not in ("on_save_checkpoint", "on_load_checkpoint", "on_exception")
)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_hooks(callback: Callback, device: str) -> list[tuple[str, float, float]]:
    """Wrap every hook of ``callback`` (on the instance); returns the (hook, start, end) log."""
    log: list[tuple[str, float, float]] = []
    for name in HOOKS:
        inner = getattr(callback, name)

        @functools.wraps(inner)
        def timed(*args: Any, _inner: Callable = inner, _name: str = name, **kw: Any) -> Any:
            _sync(device)
            start = time.perf_counter()
            try:
                return _inner(*args, **kw)
            finally:
                _sync(device)
                log.append((_name, start, time.perf_counter()))

        setattr(callback, name, timed)
    return log


class EpochTimer(Callback):
    """Wall-clock span of each train epoch, from its start to the end of its last epoch-end
    hook (put it last: Lightning calls callbacks in list order)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.spans: list[tuple[float, float]] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(self.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(self.device)
        self.spans.append((self._start, time.perf_counter()))


def _setup(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    if args.quick:
        data = DigitsDataModule(split_factor=2, num_models=2, batch_size=64)
        return data, {"backbone": "small_cnn", "optimizer": "adamw", "lr": 3e-3}
    if args.data is None:
        raise SystemExit("--data (the CIFAR-10 ImageFolder root, e.g. data/cifar10) is required")
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
    return data, {"backbone": args.backbone, "optimizer": "sgd", "lr": 0.1}


def _fit(args: argparse.Namespace, monitor: bool) -> dict[str, Any]:
    """One fit; per epoch: its seconds, the monitor's seconds inside it, the rest."""
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
    timer = EpochTimer(args.device)
    callbacks: list[Callback] = []
    log: list[tuple[str, float, float]] = []
    if monitor:
        probes = args.probes or (8 if args.quick else None)
        small = {"num_train_probes": probes, "num_test_probes": probes} if probes else {}
        cb = InterpretationGeneralization(
            **small,
            every_n_epochs=args.every_n_epochs,
            log_images_every_n_epochs=1,
            precision=args.attr_precision,
            channels_last=args.channels_last,
            max_overhead=args.max_overhead,
            profile=args.profile,
        )
        log = time_hooks(cb, args.device)
        callbacks.append(cb)
    callbacks.append(timer)
    trainer = L.Trainer(
        accelerator=args.device if args.device != "cuda" else "gpu",
        devices=1,
        max_epochs=args.epochs,
        precision=args.precision,
        callbacks=callbacks,
        logger=TensorBoardLogger(args.log_dir, name=f"overhead_{monitor}"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=args.limit_train_batches,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
    if monitor and args.save_checkpoint:
        trainer.save_checkpoint(args.save_checkpoint)
    epochs = [b - a for a, b in timer.spans]
    inside = [sum(e - s for _, s, e in log if a <= s and e <= b) for a, b in timer.spans]
    monitored = list(callbacks[0].logged_epochs) if monitor else []  # type: ignore[attr-defined]
    stages = {}
    if monitor and args.profile:  # per monitored epoch, CPU and wall seconds per stage
        times, n = callbacks[0].run.times, max(len(monitored), 1)  # type: ignore[attr-defined]
        stages = {k: [times.cpu[k] / n, times.wall[k] / n] for k in times.cpu}
    return {
        "stages": stages,
        "monitored_epochs": monitored,
        "fit_share": sum(inside) / sum(epochs),
        "epoch_s": epochs,
        "monitor_s": inside,
        "rest_s": [t - m for t, m in zip(epochs, inside, strict=True)],
        "monitor_outside_epochs_s": sum(e - s for _, s, e in log) - sum(inside),
    }


def summarize(fit: dict[str, Any], every_n: int) -> dict[str, float]:
    """Medians over the epochs after the first: monitor seconds (monitored epochs only),
    the rest of the epoch, and their ratio."""
    epochs = range(1, len(fit["epoch_s"]))
    monitored = [fit["monitor_s"][i] for i in epochs if i in fit["monitored_epochs"]]
    rest = statistics.median(fit["rest_s"][i] for i in epochs)
    mon = statistics.median(monitored) if monitored else float("nan")
    return {"median_monitor_s": mon, "median_rest_s": rest, "overhead_ratio": mon / rest}


def _tf32(mode: str) -> dict[str, bool]:
    on = mode == "on"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")
    return {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="CIFAR-10 ImageFolder root (train/ and test/)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--every-n-epochs", type=int, default=1, help="the monitor's every_n_epochs")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--precision", default="32-true", help="Trainer precision, e.g. bf16-mixed")
    p.add_argument("--tf32", choices=["off", "on"], default="off")
    p.add_argument("--backbone", default="cifar:resnet18", help="backbone (not --quick)")
    p.add_argument("--attr-precision", default="32", choices=["32", "bf16"])
    p.add_argument("--channels-last", action="store_true", help="the callback's channels_last")
    p.add_argument("--limit-train-batches", type=float, default=1.0)
    p.add_argument(
        "--probes",
        type=int,
        default=None,
        help="train and test probes (default: the callback's own; 8 with --quick)",
    )
    p.add_argument(
        "--max-overhead",
        type=lambda v: None if v == "none" else float(v),
        default=None,
        help="the callback's budget (default none: every epoch; 0.1 is the callback's default)",
    )
    p.add_argument("--baseline", action="store_true", help="also a fit without the monitor")
    p.add_argument("--profile", action="store_true", help="the callback's per-stage timers")
    p.add_argument("--save-checkpoint", default=None, help="save the monitored fit's models")
    p.add_argument("--quick", action="store_true", help="digits + small CNN smoke run")
    p.add_argument("--log-dir", default="runs/benchmarks")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is a warm-up)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    tf32 = _tf32(args.tf32)
    fit = _fit(args, monitor=True)
    result: dict[str, Any] = {
        "setup": "digits small_cnn (quick)"
        if args.quick
        else f"CIFAR-10 JPEG {args.backbone} K=2 sf=2",
        "trainer_precision": args.precision,
        "callback_precision": args.attr_precision,
        "callback_channels_last": args.channels_last,
        "tf32": tf32,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "epochs": args.epochs,
        "every_n_epochs": args.every_n_epochs,
        "max_overhead": args.max_overhead,
        **fit,
        **summarize(fit, args.every_n_epochs),
    }
    if args.baseline:
        base = _fit(args, monitor=False)["epoch_s"]
        result["baseline_epoch_s"] = base
        result["end_to_end_ratio"] = statistics.median(fit["epoch_s"][1:]) / statistics.median(
            base[1:]
        )
    print(
        "| setup | device | trainer | callback | TF32 | epoch s without monitor | monitor s "
        "| monitor / rest of epoch |"
    )
    print("| --- | --- | --- | --- | --- | ---: | ---: | ---: |")
    cb = args.attr_precision + (" + channels_last" if args.channels_last else "")
    print(
        f"| {result['setup']} | {result['device']} | {args.precision} | {cb} | {args.tf32} "
        f"| {result['median_rest_s']:.2f} | {result['median_monitor_s']:.2f} "
        f"| {100 * result['overhead_ratio']:.1f}% |"
    )
    print(f"monitored epochs {fit['monitored_epochs']}; monitor share of the fit "
          f"{100 * fit['fit_share']:.1f}% (max_overhead {args.max_overhead})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

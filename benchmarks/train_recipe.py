"""Time and accuracy of one training recipe: ``lightning-saliency fit`` on a config, measured.

Runs the CLI in this process (``cli_main(..., run=False)`` then ``trainer.fit``) and writes a
JSON with the wall time and the process CPU time (all threads) of the setup (building the CLI
objects, decoding, statistics) and of the fit, per-epoch times and held-out accuracies of every model, the
multiply-accumulates per image of the backbone, and the machine. The held-out set of the
CIFAR-10 tree is its test split, so ``val/model_k/acc`` of the last epoch is model k's test
accuracy. Extra arguments go to the CLI::

    nice -n 10 python benchmarks/train_recipe.py --out recipe_sf2.json -- \\
        --config configs/experiments/cpu/fast_cifar10.yaml --data.init_args.split_factor 2

Times on a shared machine: read ``cpu_s`` beside ``wall_s`` (CPU time is what the process got;
wall time also counts the other jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_saliency.cli import cli_main
from lightning_saliency.models import count_macs


class _EpochLog(L.Callback):
    """Wall/CPU time at the end of every validation epoch, with the models' accuracies."""

    def __init__(self, t0: float, c0: float) -> None:
        self.t0, self.c0 = t0, c0
        self.rows: list[dict[str, Any]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        accs = [float(metrics[f"val/model_{k}/acc"]) for k in range(pl_module.num_models)]
        row = {
            "epoch": trainer.current_epoch,
            "wall_s": round(time.perf_counter() - self.t0, 1),
            "cpu_s": round(time.process_time() - self.c0, 1),
            "val_acc": [round(a, 4) for a in accs],
            "val_ensemble_acc": round(float(metrics["val/ensemble_acc"]), 4),
        }
        self.rows.append(row)
        print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then CLI arguments")
    args = parser.parse_args(argv)
    cli_args = [a for a in args.cli_args if a != "--"]
    t0, c0 = time.perf_counter(), time.process_time()
    cli = cli_main(cli_args, run=False)  # links image_size etc.: may decode the data already
    dm, model, trainer = cli.datamodule, cli.model, cli.trainer
    dm.setup("fit")  # decode / statistics (fit's own setup then finds them done)
    setup = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    log = _EpochLog(time.perf_counter(), time.process_time())
    trainer.callbacks.append(log)
    t1, c1 = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    fit = {"wall_s": time.perf_counter() - t1, "cpu_s": time.process_time() - c1}
    x = torch.zeros(1, dm.in_chans, dm.image_size, dm.image_size)
    result = {
        "cli_args": cli_args,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_avg_at_end": os.getloadavg(),
        },
        "macs_per_image": count_macs(model.models[0], x),
        "train_images_per_model": len(dm.split_dataset(0)),
        "setup": setup,
        "fit": fit,
        "epochs": log.rows,
        "final_test_acc": log.rows[-1]["val_acc"] if log.rows else None,
        "normalization": {"mean": dm.mean, "std": dm.std},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("setup", "fit", "final_test_acc")}), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

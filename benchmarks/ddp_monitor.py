"""The monitor's own time under DDP: 1 process against 2 (gloo, CPU), the same numbers.

Issue 14's target: with 2 CPU processes the monitor takes <= 0.6x the time of one (each
process explains its share of the models; the maps are gathered). Every process runs one
thread (``OMP_NUM_THREADS=1``), arms are interleaved (1, 2, 1, 2, ...), and the figure is the
ratio of the median monitored-epoch times, measured by the callback itself (its schedule's
``monitor_seconds``), beside process CPU time of rank 0.

    OMP_NUM_THREADS=1 python benchmarks/ddp_monitor.py --rounds 2 --out /tmp/ddp.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time, torch, lightning as L
from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.data import DigitsDataModule
from lightning_saliency.models import DisjointEnsemble


class Report(L.Callback):
    # a module-level class holding the monitor: the spawn launcher pickles both
    def __init__(self, cb, out):
        self.cb, self.out = cb, out

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            s = self.cb._schedule
            json.dump({"monitor_seconds": s.monitor_seconds, "runs": s.monitor_runs,
                       "cpu": time.process_time(),
                       "gap": self.cb.final_values["interp/simple_grad/gap"]}, open(self.out, "w"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    devices, out, methods = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    cb = InterpretationGeneralization(methods=methods, num_train_probes=64, num_test_probes=64,
                                      max_overhead=None, log_images_every_n_epochs=0)
    L.seed_everything(0)
    trainer = L.Trainer(accelerator="cpu", devices=devices,
                        strategy="ddp_spawn" if devices > 1 else "auto", max_epochs=2,
                        limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb, Report(cb, out)],
                        default_root_dir=os.path.dirname(out))
    # lr 1e-30 (steps below float32 resolution: the weights do not change; lr 0 is refused)
    # and BatchNorm momentum 0: the models stay at their seeded initialization whatever the
    # ranks' batches, so both arms explain identical models and must give identical numbers
    model = DisjointEnsemble(backbone="small_cnn", num_classes=10, in_chans=1, image_size=32,
                             lr=1e-30)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    trainer.fit(model, DigitsDataModule(batch_size=64))
"""
METHODS = ["simple_grad", {"method": "smooth_grad", "noise_level": 0.2, "samples": 16},
           {"method": "integrated_gradients", "steps": 16}]  # fmt: skip


def run(devices: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        script = Path(tmp) / "child.py"  # a file, not -c: spawned ranks re-import it
        script.write_text(CHILD)
        proc = subprocess.run([sys.executable, str(script), str(devices), str(out),
                               json.dumps(METHODS)], env=env, capture_output=True, text=True,
                              timeout=1800)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{devices}-process run failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for devices in (1, 2):  # interleaved
            results[devices].append(run(devices))
    per_epoch = {d: [r["monitor_seconds"] / r["runs"] for r in rs] for d, rs in results.items()}
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "methods": METHODS,
        "monitor_seconds_per_epoch": {d: {"min": min(v), "median": statistics.median(v)}
                                      for d, v in per_epoch.items()},
        "ratio_2_over_1_median": statistics.median(per_epoch[2]) / statistics.median(per_epoch[1]),
        "gap_equal": all(abs(a["gap"] - b["gap"]) < 1e-5 for a, b in zip(results[1], results[2], strict=True)),
        "raw": results,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""The monitor's cost per monitored epoch against the rest of the epoch, before and after a
change, side by side in one run (issue 21).

Two arms: ``before``, the package as it was at a git commit (``--before``, exported to a
temporary folder), and ``after``, this working tree. Each run of an arm is a fresh process
(one thread) that fits the models for ``--epochs`` epochs with the callback monitoring every
epoch; every hook of the callback is timed (process CPU and wall seconds), so each epoch
splits into the monitor's seconds and the rest (training and validation). The arms are
interleaved A B A B ... (``--rounds`` of each); a run's figure is the median over its epochs
after the first (a warm-up); the table shows the min and median over runs.

Within the monitor the same stage wrappers are put on both arms (attribution passes,
predictions and folded copies, super-pixel grouping, the reference/gap statistics, pairwise
agreement, the other statistics, logging, images), so where the time goes is comparable; the
attribution stage alone is the floor.

    OMP_NUM_THREADS=1 python benchmarks/monitor_cost.py --setup mlp --rounds 3 --epochs 4
    OMP_NUM_THREADS=1 python benchmarks/monitor_cost.py --setup small_cnn_cifar \\
        --data data/cifar10 --rounds 2 --epochs 3
    # against whole training epochs (the "<= 25% of a training epoch" target):
    OMP_NUM_THREADS=1 python benchmarks/monitor_cost.py --setup small_cnn_cifar \\
        --data data/cifar10 --rounds 1 --epochs 3 --train-batches 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import contextlib, functools, json, logging, sys, tempfile, time, warnings
import lightning as L, torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
torch.set_num_threads(1)
setup, epochs, data_root, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
train_batches = int(sys.argv[5])  # 0: whole epochs
import lightning_saliency.callbacks._epoch as E
import lightning_saliency.callbacks._logging as LG
import lightning_saliency.generalization.epoch as GE
from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.data import DigitsDataModule, ImageFolderDataModule, CIFAR10_MEAN, CIFAR10_STD
from lightning_saliency.models import DisjointEnsemble

STAGE = {}   # stage -> [cpu, wall]
STACK = []
def staged(name, fn):
    @functools.wraps(fn)
    def inner(*a, **k):
        c0, w0 = time.process_time(), time.perf_counter()
        STACK.append([0.0, 0.0])
        try:
            return fn(*a, **k)
        finally:
            c, w = time.process_time() - c0, time.perf_counter() - w0
            ic, iw = STACK.pop()
            s = STAGE.setdefault(name, [0.0, 0.0]); s[0] += c - ic; s[1] += w - iw
            if STACK: STACK[-1][0] += c; STACK[-1][1] += w
    return inner
for mod, attr, name in [(E, "model_logits", "models"), (E, "attribution_sources", "models"),
                        (E, "sharded_pixel_maps", "attribution"), (E, "group_maps", "segmentation"),
                        (E, "evaluate_epoch", "statistics"), (E, "fidelity_statistics", "statistics"),
                        (GE, "leave_one_out_reference", "reference"), (GE, "interpretation_loss", "reference"),
                        (GE, "pairwise_agreement", "agreement"),
                        (LG, "log_scalars", "logging"), (LG, "warn_nonfinite", "logging"),
                        (E if hasattr(E, "log_run_media") else LG, "log_run_media", "images")]:
    setattr(mod, attr, staged(name, getattr(mod, attr)))
E.epoch_rows = staged("logging", E.epoch_rows)

HOOKS = [n for n in dir(Callback) if (n.startswith("on_") or n in ("setup", "teardown"))
         and n not in ("on_save_checkpoint", "on_load_checkpoint", "on_exception")]
def time_hooks(cb, log):
    for name in HOOKS:
        inner = getattr(cb, name)
        def timed(*a, _inner=inner, **k):
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return _inner(*a, **k)
            finally:
                log.append((c0, w0, time.process_time(), time.perf_counter()))
        setattr(cb, name, timed)

class EpochTimer(Callback):
    def __init__(self): self.spans, self.start = [], None
    def on_train_epoch_start(self, t, m): self.start = (time.process_time(), time.perf_counter())
    def on_train_epoch_end(self, t, m):
        self.spans.append((*self.start, time.process_time(), time.perf_counter()))

L.seed_everything(0)
if setup == "mlp":
    data = DigitsDataModule()
    model = DisjointEnsemble(backbone="mlp", num_classes=10, in_chans=1, optimizer="adamw", lr=3e-3)
    probes = 32
else:
    data = ImageFolderDataModule(root=data_root, split_factor=2, num_models=2, batch_size=128,
                                 num_workers=0, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    data.setup("fit")
    model = DisjointEnsemble(backbone="small_cnn", num_classes=10, in_chans=3,
                             image_size=data.image_size, optimizer="adamw", lr=3e-3)
    probes = 64
cb = InterpretationGeneralization(num_train_probes=probes, num_test_probes=probes,
                                  max_overhead=None, log_images_every_n_epochs=0)
log, timer = [], EpochTimer()
time_hooks(cb, log)
kw = {} if setup == "mlp" else {"limit_val_batches": 0}
if train_batches:
    kw["limit_train_batches"] = train_batches
tmp = tempfile.mkdtemp()
trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, callbacks=[cb, timer],
                    logger=TensorBoardLogger(tmp, name="cost"), enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, default_root_dir=tmp, **kw)
STAGE.clear()
trainer.fit(model, data)
rows = []
for c0, w0, c1, w1 in timer.spans:
    inside = [(b - a, d - c) for a, c, b, d in log if w0 <= c and d <= w1]
    mc, mw = sum(x for x, _ in inside), sum(y for _, y in inside)
    rows.append({"monitor_cpu": mc, "monitor_wall": mw, "rest_cpu": c1 - c0 - mc,
                 "rest_wall": w1 - w0 - mw})
json.dump({"epochs": rows, "stages": STAGE, "monitored": len(cb.logged_epochs)}, open(out, "w"))
'''


def _export(commit: str, dest: Path) -> Path:
    """The package as it was at ``commit``, in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", commit, "lightning_saliency"],
                       stdout=f, check=True)  # fmt: skip
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    return dest


def _run(path: Path, args: argparse.Namespace, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
    batches = args.train_batches if args.train_batches is not None else (
        0 if args.setup == "mlp" else 20)  # fmt: skip
    cmd = [sys.executable, "-c", CHILD, args.setup, str(args.epochs), args.data or "", str(out),
           str(batches)]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, cwd=tempfile.gettempdir())
    res = json.loads(out.read_text())
    later = res["epochs"][1:]  # the first epoch is a warm-up
    fig = {k: statistics.median(e[k] for e in later) for k in later[0]}
    fig["ratio_cpu"] = fig["monitor_cpu"] / fig["rest_cpu"]
    fig["ratio_wall"] = fig["monitor_wall"] / fig["rest_wall"]
    fig["stages"] = {k: [v / res["monitored"] for v in s] for k, s in res["stages"].items()}
    return fig


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--setup", choices=["mlp", "small_cnn_cifar"], default="mlp")
    p.add_argument("--data", default=None, help="CIFAR-10 ImageFolder root (small_cnn_cifar)")
    p.add_argument("--before", default="024b59c", help="the commit of the 'before' arm")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", default=None)
    p.add_argument("--train-batches", type=int, default=None,
                   help="training batches per epoch (0: whole epochs; default: all for mlp, "
                        "20 for small_cnn_cifar)")  # fmt: skip
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    arms = {"before": _export(args.before, tmp / "before"), "after": ROOT}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(args.rounds):  # A B A B ...
        for arm, path in arms.items():
            runs[arm].append(_run(path, args, tmp / f"{arm}_{r}.json"))
            f = runs[arm][-1]
            print(f"round {r} {arm}: monitor {f['monitor_cpu']:.3f} s cpu, rest "
                  f"{f['rest_cpu']:.3f} s cpu, ratio {f['ratio_cpu']:.1f}x", flush=True)
    _table(runs)
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=2))
    return runs


def _table(runs: dict[str, list[dict]]) -> None:
    print("| arm | monitor cpu s (min / median) | monitor wall s | rest cpu s | rest wall s "
          "| ratio cpu (min / median) | ratio wall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arm, figs in runs.items():
        def mm(key: str, figs: list[dict] = figs) -> str:
            v = sorted(f[key] for f in figs)
            return f"{v[0]:.3f} / {statistics.median(v):.3f}"

        print(f"| {arm} | {mm('monitor_cpu')} | {mm('monitor_wall')} | {mm('rest_cpu')} "
              f"| {mm('rest_wall')} | {mm('ratio_cpu')} | {mm('ratio_wall')} |")
    print("\nper monitored epoch, per stage (median over runs): cpu s / wall s")
    names = sorted({k for figs in runs.values() for f in figs for k in f["stages"]})
    print("| stage | " + " | ".join(runs) + " |")
    print("| --- |" + " ---: |" * len(runs))
    for name in names:
        cells = []
        for figs in runs.values():
            c = statistics.median(f["stages"].get(name, [0.0, 0.0])[0] for f in figs)
            w = statistics.median(f["stages"].get(name, [0.0, 0.0])[1] for f in figs)
            cells.append(f"{c:.3f} / {w:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

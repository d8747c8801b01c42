"""The SmoothGrad curve on the CIFAR-10 studies' own airbench models (docs/results_protocol.md,
"The SmoothGrad curve on the studies' models").

For each finished run of ``runs/cifar-v2/sf2`` given (the verdict's seeds 0, 1, 4): its
last-epoch checkpoint, its own data module (rebuilt from its ``config.yaml``: the same split,
normalization and held-out set), the power study's test probes (the first 1,024 held-out
images of a permutation seeded 0) and the per-probe numbers of ``benchmarks/power_study.py``
for ``simple_grad`` and SmoothGrad (16 draws) at each noise level. Resumable: a run whose
``runs/cifar-v2-curve/<setting>-<seed>.json`` exists is skipped.

    OMP_NUM_THREADS=1 python benchmarks/airbench_curve.py run runs/cifar-v2/sf2/seed{0,1,4}
    python benchmarks/airbench_curve.py table     # the curve, seed-level, as in results.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from power_study import accuracy, maps_of, per_probe, saturation, test_probes
from power_tables import NOISE_LEVELS, curve_rows

from lightning_saliency.data import ImageFolderDataModule
from lightning_saliency.models import DisjointEnsemble

ROOT = Path("runs/cifar-v2-curve")
METHODS = {
    "simple_grad": {"method": "simple_grad"},
    **{f"sg{a}": {"method": "smooth_grad", "noise_level": a, "samples": 16} for a in NOISE_LEVELS},
}


def last_checkpoint(run: Path) -> Path:
    """The run's checkpoint of its last epoch (refused when there is none)."""
    found = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found or not (run / ".finished").exists():
        raise SystemExit(f"{run}: not a finished run with a checkpoint")
    return found[-1]


def data_of(run: Path) -> ImageFolderDataModule:
    """The run's data module, rebuilt from its config (same split, normalization, held-out)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())["data"]
    if not str(cfg["class_path"]).endswith("ImageFolderDataModule"):
        raise SystemExit(f"{run}: expected an ImageFolderDataModule run")
    args = {k: v for k, v in cfg["init_args"].items() if v is not None}
    dm = ImageFolderDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def run_one(run: Path, probes: int | None) -> None:
    out = ROOT / f"{run.parent.name}-{run.name}.json"
    if out.exists() and probes is None:
        print(f"skip {out} (done)")
        return
    t0, c0 = time.time(), time.process_time()
    dm = data_of(run)
    ckpt = last_checkpoint(run)
    model = DisjointEnsemble.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    model.eval()
    x, y = test_probes(dm)
    x, y = (x[:probes], y[:probes]) if probes else (x, y)
    values = per_probe(maps_of(model, x, y, dm.input_range, METHODS))
    record = {
        "run": str(run), "checkpoint": ckpt.name, "seed": int(dm.split_seed),
        "num_probes": len(y), "saturation": saturation(dm, x),
        "accuracy": accuracy(model, dm), "wall_s": time.time() - t0,
        "cpu_s": time.process_time() - c0, "torch": torch.__version__, "values": values,
    }  # fmt: skip
    if probes is None:  # a trial with fewer probes is printed, never written
        ROOT.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record))
    acc = "/".join(f"{a:.2%}" for a in record["accuracy"])
    print(f"{run}: test accuracy {acc}; {len(y)} probes, {record['cpu_s']:.0f} CPU s, "
          f"{record['wall_s']:.0f} s wall; simple_grad L2 {_mean(values['simple_grad/l2']):.4f}")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def table() -> None:
    recs = {i: json.loads(p.read_text()) for i, p in enumerate(sorted(ROOT.glob("*.json")))}
    print("runs: " + ", ".join(r["run"] for r in recs.values()))
    print("\n| noise level | test L2, SmoothGrad - simple_grad | "
          "test Spearman above chance, SmoothGrad - simple_grad |")  # fmt: skip
    print("|---|---|---|")
    print("\n".join(curve_rows(recs)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["run", "table"])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--probes", type=int, default=None, help="a trial on fewer probes (not kept)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.what == "run":
        for r in args.runs:
            run_one(r, args.probes)
    else:
        table()

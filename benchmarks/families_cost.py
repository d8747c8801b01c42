"""Cost of the faithfulness and randomization families against the monitor (issue 16).

The default config's setup (``configs/default.yaml``): K = 2 small CNNs trained on disjoint
halves of the 32x32 digits (``--epochs``, default 4, as the config), 32 train probes per
model and 32 test probes, the callback's ``DEFAULT_METHODS`` (8 specs, 6 attribution
passes). Arms, timed in interleaved rounds (ABCDE ABCDE ...) on one thread:

* ``monitor``: ``compute_maps`` + ``evaluate_epoch`` at the callback's defaults (one monitored
  epoch without logging);
* ``faithfulness_all`` / ``faithfulness_simple``: ``faithfulness_statistics`` on the maps the
  monitor computed, for every spec / for ``simple_grad`` alone;
* ``randomization_all`` / ``randomization_simple``: ``randomization_statistics`` at the
  default cascade (top1, half, all), for every spec / for ``simple_grad`` alone.

It prints process CPU time and wall time (min and median over ``--repeats`` rounds), the
ratio of each arm to the monitor, and the families' values on the trained models.

    OMP_NUM_THREADS=1 python benchmarks/families_cost.py --repeats 3 --out families_cost.json
    python benchmarks/families_cost.py --quick   # smoke run (tests/test_families.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import lightning as L
import torch

from lightning_saliency.attribution import resolve_method
from lightning_saliency.callbacks._setup import probe_images, segment_probes
from lightning_saliency.callbacks.interpretation import DEFAULT_METHODS
from lightning_saliency.data import DigitsDataModule
from lightning_saliency.generalization import (
    ProbeLayout,
    compute_maps,
    estimate_all,
    evaluate_epoch,
    faithfulness_statistics,
    model_logits,
    predictions,
    randomization_metric,
    randomization_statistics,
)
from lightning_saliency.models import DisjointEnsemble

#: The smoke run's methods: a deterministic one and a stochastic super-pixel one.
QUICK_METHODS = ("simple_grad",
                 {"method": "smooth_grad", "noise_level": 0.2, "samples": 2, "superpixel": "slic"})


def setup(epochs: int, probes: int, batches: int | None = None,
          methods: tuple = DEFAULT_METHODS) -> dict[str, Any]:  # fmt: skip
    """Train the default config's models and draw its probes (as the callback would)."""
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(split_factor=2, num_models=2, split_seed=0, batch_size=64)
    module = DisjointEnsemble(backbone="small_cnn", optimizer="adamw", lr=0.003,
                              weight_decay=0.0005, scheduler="cosine", init_seed=0)  # fmt: skip
    with tempfile.TemporaryDirectory() as root:  # the data module writes its splits.json there
        L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, default_root_dir=root,
                  enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_train_batches=batches,
                  limit_val_batches=batches).fit(module, dm)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    sets = [dm.split_dataset(k) for k in range(2)] + [dm.heldout_dataset()]
    items = [[s[int(i)] for i in torch.randperm(len(s), generator=g)[:probes]] for s in sets]
    x = torch.stack([it[0] for part in items for it in part])
    y = torch.tensor([int(it[1]) for part in items for it in part])
    specs = [resolve_method(m) for m in methods]
    models = [m.eval() for m in module.models]
    return {"models": models, "x": x, "y": y, "specs": specs,
            "layout": ProbeLayout.from_sizes([probes, probes], probes),
            "segments": segment_probes(specs, probe_images(x, dm.unnormalize)),
            "range": dm.input_range}  # fmt: skip


def monitor(s: dict[str, Any]) -> dict[str, Any]:
    logits = model_logits(s["models"], s["x"])
    maps = compute_maps(s["models"], s["x"], s["y"], s["specs"], seed=0,
                        segments=s["segments"], input_range=s["range"])  # fmt: skip
    evaluate_epoch(maps, s["layout"], s["specs"], labels=s["y"], preds=predictions(logits))
    return maps


def faithfulness(s: dict[str, Any], maps: dict[str, Any], specs: list) -> dict:
    out = {}
    for spec in specs:
        out.update(faithfulness_statistics(s["models"], s["x"], s["y"], maps[spec.label],
                                           s["layout"], method_label=spec.label))  # fmt: skip
    return out


def randomization(s: dict[str, Any], maps: dict[str, Any], specs: list) -> dict:
    out = {}
    for spec in specs:
        out.update(randomization_statistics(
            s["models"], s["x"], s["y"], spec, maps[spec.label], s["layout"], seed=0,
            segments=s["segments"].get(spec.label), input_range=s["range"],
        ))  # fmt: skip
    return out


def _timed(fn: Any) -> tuple[float, float, Any]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


def run(repeats: int, epochs: int, probes: int, quick: bool = False) -> dict[str, Any]:
    """Time every arm; ``quick``: two training batches and two methods, a smoke run."""
    torch.set_num_threads(1)
    s = setup(epochs, probes, 2, QUICK_METHODS) if quick else setup(epochs, probes)
    maps = monitor(s)
    simple = [sp for sp in s["specs"] if sp.label == "simple_grad"]
    arms = {
        "monitor": lambda: monitor(s),
        "faithfulness_all": lambda: faithfulness(s, maps, s["specs"]),
        "faithfulness_simple": lambda: faithfulness(s, maps, simple),
        "randomization_all": lambda: randomization(s, maps, s["specs"]),
        "randomization_simple": lambda: randomization(s, maps, simple),
    }
    times: dict[str, list[tuple[float, float]]] = {a: [] for a in arms}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in arms.items():
            cpu, wall, out = _timed(fn)
            times[name].append((cpu, wall))
            results[name] = out
    base = statistics.median(c for c, _ in times["monitor"])
    summary = {}
    for name, t in times.items():
        cpu = [c for c, _ in t]
        summary[name] = {"cpu_min": min(cpu), "cpu_median": statistics.median(cpu),
                         "wall_median": statistics.median(w for _, w in t),
                         "cpu_ratio_to_monitor": statistics.median(cpu) / base}  # fmt: skip
    values = _values(results)
    return {"machine": platform.processor() or platform.machine(), "threads": 1,
            "torch": torch.__version__, "repeats": repeats, "train_epochs": epochs,
            "probes": probes, "timing": summary, "values": values}  # fmt: skip


def _values(results: dict[str, Any]) -> dict[str, dict[str, str]]:
    est = estimate_all({**results["faithfulness_all"], **results["randomization_all"]})
    out: dict[str, dict[str, str]] = {}
    metrics = [("test", m) for m in ("mu_fidelity", "deletion_auc", "insertion_auc")] + [
        ("test", randomization_metric(m, lv)) for m in ("spearman", "ssim")
        for lv in ("top1", "half", "all")]  # fmt: skip
    for key, e in est.items():
        if (key.split, key.metric) in metrics:
            out.setdefault(key.method, {})[key.metric] = str(e)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--probes", type=int, default=32)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="1 round, 1 short epoch, 4 probes")
    a = p.parse_args()
    if a.quick:
        a.repeats, a.epochs, a.probes = 1, 1, 4
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for one-thread timings")
    res = run(a.repeats, a.epochs, a.probes, a.quick)
    for name, t in res["timing"].items():
        print(f"{name:22s} cpu min {t['cpu_min']:7.2f}s  median {t['cpu_median']:7.2f}s  "
              f"wall median {t['wall_median']:7.2f}s  x monitor {t['cpu_ratio_to_monitor']:.2f}")
    for method, vals in res["values"].items():
        print(method, json.dumps(vals, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

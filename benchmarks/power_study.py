"""The power study and the SmoothGrad curve of docs/results_protocol.md (version 2).

Per dataset and seed: K = 2 small CNNs trained through the library's Lightning modules, then
per-probe values on up to 1,024 fixed test probes (probe seed 0) from the library's pure
functions. Resumable: a seed whose ``runs/power/<dataset>/seed<s>.json`` exists is skipped;
trained weights are kept beside it (``seed<s>.pt``), so an interrupted evaluation does not
retrain.

    OMP_NUM_THREADS=1 python benchmarks/power_study.py run --dataset digits --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 python benchmarks/power_study.py run --dataset cifar10 --seeds 0 1 2 3 4
    python benchmarks/power_study.py table            # the half-width and curve tables

About 15 CPU-s per digits fit and 4-5 CPU-min per CIFAR-10 fit, plus about a minute of
attribution per CIFAR-10 seed (one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_saliency.attribution import compute_attribution
from lightning_saliency.data import DigitsDataModule, ImageFolderDataModule
from lightning_saliency.generalization.chance import ChancePairing
from lightning_saliency.generalization.input_bounds import share_at_input_bounds
from lightning_saliency.metrics import l2_distance, sparseness, spearman
from lightning_saliency.models import DisjointEnsemble

ROOT = Path("runs/power")
MAX_PROBES = 1024
COUNTS = (64, 256, 1024)
NOISE_LEVELS = (0.05, 0.1, 0.2, 0.5, 1.0)
METHODS: dict[str, dict[str, Any]] = {
    "simple_grad": {"method": "simple_grad"},
    "ig": {"method": "integrated_gradients", "steps": 16, "baseline": "min"},
    **{f"sg{a}": {"method": "smooth_grad", "noise_level": a, "samples": 16} for a in NOISE_LEVELS},
    "sg0.2_n1": {"method": "smooth_grad", "noise_level": 0.2, "samples": 1},
    "adapt": {"method": "adapt_grad", "confidence": 0.95, "samples": 16},
}
# dataset -> (data module factory, model kwargs, epochs)
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 5, "model": {"optimizer": "adamw", "lr": 3e-3, "image_size": 16}},
    "cifar10": {"epochs": 6, "model": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-4,
                                       "scheduler": "cosine", "image_size": 32}},
}  # fmt: skip


def data_module(dataset: str, seed: int) -> L.LightningDataModule:
    """The data of configs/experiments/controls.yaml (digits) or cpu/controls_cifar10.yaml."""
    if dataset == "digits":
        return DigitsDataModule(image_size=16, batch_size=64, split_seed=seed)
    return ImageFolderDataModule(
        "data/cifar10", in_memory=True, cache_dir=str(ROOT / "cache"), image_size=32,
        batch_size=128, split_seed=seed, num_workers=0, mean="auto", std="auto",
    )  # fmt: skip


def train(dataset: str, seed: int, dm: L.LightningDataModule) -> DisjointEnsemble:
    """K = 2 models on disjoint halves (weights cached in ``seed<s>.pt``)."""
    cfg = SETTINGS[dataset]
    L.seed_everything(seed)
    model = DisjointEnsemble(backbone="small_cnn", num_classes=dm.num_classes,
                             in_chans=dm.in_chans, init_seed=seed, **cfg["model"])  # fmt: skip
    weights = ROOT / dataset / f"seed{seed}.pt"
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model.eval()
    # default_root_dir: the data module records its splits there (splits.json)
    trainer = L.Trainer(max_epochs=cfg["epochs"], accelerator="cpu", devices=1, logger=False,
                        default_root_dir=str(ROOT / dataset / f"seed{seed}-fit"),
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, deterministic="warn")  # fmt: skip
    trainer.fit(model, dm)
    torch.save(model.state_dict(), weights)
    return model.eval()


def test_probes(dm: Any) -> tuple[Tensor, Tensor]:
    """The first min(1024, N) held-out images of a permutation seeded 0 (probe seed 0)."""
    held = dm.heldout_dataset()
    idx = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))[:MAX_PROBES]
    xs, ys = zip(*(held[i] for i in idx.tolist()), strict=True)
    return torch.stack(xs).float(), torch.as_tensor(ys).long()


def accuracy(model: DisjointEnsemble, dm: Any) -> list[float]:
    """Each model's accuracy on the whole held-out set."""
    loader = torch.utils.data.DataLoader(dm.heldout_dataset(), batch_size=512)
    hits, n = torch.zeros(len(model.models)), 0
    with torch.no_grad():
        for x, y in loader:
            hits += (model.model_logits(x).argmax(-1) == y).float().sum(1)
            n += len(y)
    return (hits / n).tolist()


def saturation(dm: Any, x: Tensor) -> dict[str, float]:
    """Share of probe pixel values at the image bounds (0 or 1 within 1/255) and at the
    global input-range bounds AdaptGrad uses (within 1e-3 after normalization)."""
    img = dm.unnormalize(x)
    lo, hi = dm.input_range
    return {
        "image_bounds": float(((img <= 1 / 255) | (img >= 1 - 1 / 255)).float().mean()),
        "input_range_bounds": float(share_at_input_bounds(x, (lo, hi), atol=1e-3).mean()),
        "x_min": lo, "x_max": hi, "probe_std": float(x.std()),
    }  # fmt: skip


def maps_of(model: DisjointEnsemble, x: Tensor, y: Tensor, rng: tuple[float, float],
            methods: dict[str, dict[str, Any]] = METHODS) -> dict:  # fmt: skip
    """``{method: (K, N, C, H, W)}`` maps of every model (noise generator seeded 0)."""
    out = {}
    for name, spec in methods.items():
        out[name] = torch.stack([
            compute_attribution(spec, m, x, y, input_range=rng,
                                generator=torch.Generator().manual_seed(0))
            for m in model.models
        ])  # fmt: skip
    return out


def per_probe(maps: dict[str, Tensor]) -> dict[str, list[float]]:
    """Per-probe L2 between the models, Spearman and its class-blind chance, mean Gini."""
    n = next(iter(maps.values())).shape[1]
    perms = ChancePairing(seed=0, draws=4).derangements(torch.arange(n))
    out: dict[str, list[float]] = {}
    for name, m in maps.items():
        a, b = m[0], m[1]
        chance = torch.stack([spearman(a, b[p]) for p in perms]).mean(0)
        out[f"{name}/l2"] = l2_distance(a, b).tolist()
        out[f"{name}/spearman"] = spearman(a, b).tolist()
        out[f"{name}/spearman_chance"] = chance.tolist()
        out[f"{name}/gini"] = ((sparseness(a) + sparseness(b)) / 2).tolist()
    return out


def run_seed(dataset: str, seed: int) -> None:
    """Train (or load) seed s, evaluate, write ``seed<s>.json``."""
    out = ROOT / dataset / f"seed{seed}.json"
    if out.exists():
        print(f"skip {out} (done)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.time(), time.process_time()
    dm = data_module(dataset, seed)
    dm.prepare_data()
    dm.setup("fit")
    model = train(dataset, seed, dm)
    t_fit = time.time() - t0
    x, y = test_probes(dm)
    values = per_probe(maps_of(model, x, y, dm.input_range))
    record = {
        "dataset": dataset, "seed": seed, "num_probes": len(y),
        "accuracy": accuracy(model, dm), "saturation": saturation(dm, x),
        "fit_wall_s": t_fit, "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0,
        "torch": torch.__version__, "values": values,
    }  # fmt: skip
    out.write_text(json.dumps(record))
    print(f"{dataset} seed{seed}: acc {record['accuracy']} wall {record['wall_s']:.0f}s")


if __name__ == "__main__":
    from power_tables import main_table  # benchmarks/ is on sys.path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["run", "table"])
    p.add_argument("--dataset", choices=sorted(SETTINGS), default="digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.what == "run":
        for s in args.seeds:
            run_seed(args.dataset, s)
    else:
        main_table(ROOT)

"""How much bf16 attribution moves the maps and the metrics, on *trained* models.

The throughput benchmark checks bf16 against fp32 on randomly initialized timm models
(no weights can be downloaded); this script does it on the K models of a trained
``DisjointEnsemble`` checkpoint, on held-out CIFAR-10 images. For each method it reports

* ``spearman_same`` / ``ssim_same``: mean over probes and models of the agreement between a
  model's bf16 map and its fp32 map (1 = identical);
* ``delta_spearman_pair`` / ``delta_ssim_pair``: how much the *between-model* mean
  Spearman / SSIM (what the callback logs) changes when both maps are computed in bf16
  (issue 3's target: at most 0.01).

The library's own path runs on CUDA and on CPU alike (``precision="bf16"`` autocasts the
forward on both; ``channels_last=True``), both arms on the same :func:`attribution_model`
copy of each model (channels-last, BatchNorm left unfolded), so precision is the only
difference between them; no model is converted in place. On a CPU without bf16 units
the bf16 kernels are emulated: the agreement figures hold, the speed does not.

    python benchmarks/bf16_map_agreement.py runs/cpu/split_factor_steps/sf2 \\
        --data data/cifar10/test --probes 256 --device cpu --out /tmp/bf16.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_saliency.attribution import attribution_model, compute_attribution, resolve_method
from lightning_saliency.data import CIFAR10_MEAN, CIFAR10_STD, ImageFolderDataModule
from lightning_saliency.metrics import spearman, ssim
from lightning_saliency.models import DisjointEnsemble

METHODS = (
    "simple_grad",
    {"method": "smooth_grad", "noise_level": 0.2, "samples": 16},
    {"method": "integrated_gradients", "steps": 16},
)


def load_probes(folder: str, n: int) -> tuple[Tensor, Tensor]:
    """The first images of each class of an ImageFolder split, interleaved, normalized."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    )
    ds = datasets.ImageFolder(folder, transform=tf)
    per_class: dict[int, list[int]] = {}
    for i, (_, c) in enumerate(ds.samples):
        per_class.setdefault(c, []).append(i)
    order = [idx for group in zip(*per_class.values(), strict=False) for idx in group][:n]
    xs, ys = zip(*(ds[i] for i in order), strict=True)
    return torch.stack(xs), torch.tensor(ys)


def find_checkpoint(run: Path) -> Path:
    if run.is_file():
        return run
    found = sorted(run.rglob("*.ckpt"))
    if not found:
        raise SystemExit(f"no .ckpt file in or below {run}")
    return found[-1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a DisjointEnsemble checkpoint, or a run folder holding one")
    parser.add_argument("--data", required=True, help="ImageFolder split, e.g. data/cifar10/test")
    parser.add_argument("--probes", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    ckpt = find_checkpoint(Path(args.run))
    ensemble = DisjointEnsemble.load_from_checkpoint(ckpt, map_location=device,
                                                    weights_only=True).eval()
    models = list(ensemble.models)
    x, y = load_probes(args.data, args.probes)
    x, y = x.to(device), y.to(device)
    # the input space's bounds, as the DataModule that trained the models derives them
    lo, hi = ImageFolderDataModule(
        root=str(Path(args.data).parent), mean=CIFAR10_MEAN, std=CIFAR10_STD
    ).input_range

    # both arms on one channels-last copy per model: precision is the only difference
    copies = [attribution_model(m, fold_batchnorm=False, channels_last=True) for m in models]

    def maps(spec: Any, k: int, bf16: bool) -> Tensor:
        kwargs: dict[str, Any] = {"input_range": (lo, hi), "channels_last": True}
        gen = torch.Generator(device=device).manual_seed(0)
        return compute_attribution(
            spec, copies[k], x, y, generator=gen, precision="bf16" if bf16 else "32", **kwargs
        )

    rows = []
    for entry in METHODS:
        spec = resolve_method(entry)
        fp32 = [maps(spec, k, False) for k in range(len(models))]
        bf16 = [maps(spec, k, True) for k in range(len(models))]
        same_sp = torch.stack([spearman(b, f) for b, f in zip(bf16, fp32, strict=True)])
        same_ss = torch.stack([ssim(b, f) for b, f in zip(bf16, fp32, strict=True)])
        pair_sp = [float(spearman(m[0], m[1]).mean()) for m in (fp32, bf16)]
        pair_ss = [float(ssim(m[0], m[1]).mean()) for m in (fp32, bf16)]
        rows.append(
            {
                "method": spec.label,
                "spearman_same": float(same_sp.mean()),
                "ssim_same": float(same_ss.mean()),
                "pair_spearman_fp32": pair_sp[0],
                "pair_spearman_bf16": pair_sp[1],
                "delta_spearman_pair": pair_sp[1] - pair_sp[0],
                "pair_ssim_fp32": pair_ss[0],
                "pair_ssim_bf16": pair_ss[1],
                "delta_ssim_pair": pair_ss[1] - pair_ss[0],
            }
        )
    result = {
        "checkpoint": str(ckpt),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "bf16_path": f"library on {device.type} (precision=bf16, channels_last copy)",
        "probes": int(x.shape[0]),
        "models": len(models),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(
        f"{result['checkpoint']} on {result['device']} ({result['bf16_path']}), {result['probes']} probes"
    )
    print(
        "| method | Spearman bf16 vs fp32 (same model) | SSIM bf16 vs fp32 | pair Spearman fp32 -> bf16 "
        "| delta | pair SSIM fp32 -> bf16 | delta |"
    )
    print("|---|---:|---:|---|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['spearman_same']:.4f} | {r['ssim_same']:.4f} "
            f"| {r['pair_spearman_fp32']:.4f} -> {r['pair_spearman_bf16']:.4f} "
            f"| {r['delta_spearman_pair']:+.4f} | {r['pair_ssim_fp32']:.4f} -> "
            f"{r['pair_ssim_bf16']:.4f} | {r['delta_ssim_pair']:+.4f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

"""How much of a gradient map cancels inside super-pixels, and what that does to SSIM.

Study (c) groups *signed* scores (the gradient along each segment's indicator, as in paper
003). This script takes a trained two-model ensemble checkpoint, computes ``simple_grad`` on
held-out images, and compares the two models' maps four ways: pixel maps, segment sums and
means of the signed map, and segment sums and means of ``|map|``; it also prints the median
over segments of ``|sum g| / sum |g|`` (1: no cancellation inside a segment; 0: complete).
The numbers are in docs/results.md (ResNet-18 on the CPU, study (c)).

    python benchmarks/superpixel_cancellation.py runs/cpu/resnet18_split_factor/sf2 \
        --data data/cifar10 --probes 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_saliency.attribution import group_by_segments, segment, simple_grad
from lightning_saliency.data import ImageFolderDataModule
from lightning_saliency.metrics import l2_distance, spearman, ssim
from lightning_saliency.models import DisjointEnsemble

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _checkpoint(run: Path) -> Path:
    if run.is_file():
        return run
    found = sorted((run / "checkpoints").glob("*.ckpt"))
    if not found:
        raise SystemExit(f"no checkpoint in {run / 'checkpoints'}")
    return found[-1]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run folder with checkpoints/, or a .ckpt file")
    p.add_argument("--data", default="data/cifar10", help="ImageFolder root with test/")
    p.add_argument("--probes", type=int, default=64, help="held-out images (default 64)")
    p.add_argument("--algorithm", default="slic", help="segmenter (default slic)")
    p.add_argument("--seed", type=int, default=1, help="seed of the probe draw")
    args = p.parse_args(argv)

    ens = DisjointEnsemble.load_from_checkpoint(_checkpoint(args.run), map_location="cpu")
    ens.eval()
    if len(ens.models) < 2:
        raise SystemExit("the checkpoint needs at least two models")
    dm = ImageFolderDataModule(root=args.data, mean=CIFAR_MEAN, std=CIFAR_STD)
    dm.setup("fit")
    held = dm.heldout_dataset()
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(held), generator=gen)[: args.probes].tolist()
    x = torch.stack([held[i][0] for i in idx])
    y = torch.tensor([int(held[i][1]) for i in idx])
    a, b = (simple_grad(m, x, y) for m in list(ens.models)[:2])
    seg = segment(dm.unnormalize(x).clamp(0, 1), args.algorithm)

    variants = {
        "pixel": (a, b),
        "segment sum, signed": tuple(group_by_segments(m, seg) for m in (a, b)),
        "segment mean, signed": tuple(group_by_segments(m, seg, "mean") for m in (a, b)),
        "segment sum of |map|": tuple(group_by_segments(m.abs(), seg) for m in (a, b)),
        "segment mean of |map|": tuple(group_by_segments(m.abs(), seg, "mean") for m in (a, b)),
    }
    out: dict[str, dict[str, float]] = {}
    print(f"{args.probes} held-out probes, {args.algorithm}, simple_grad, models 0 and 1")
    print(f"{'maps':24s} {'SSIM':>7s} {'L2':>7s} {'Spearman':>9s}")
    for name, (u, v) in variants.items():
        row = {
            "ssim": ssim(u, v).mean().item(),
            "l2": l2_distance(u, v).mean().item(),
            "spearman": spearman(u, v).mean().item(),
        }
        out[name] = row
        print(f"{name:24s} {row['ssim']:7.4f} {row['l2']:7.4f} {row['spearman']:9.4f}")
    kept = [
        (group_by_segments(m, seg).abs() / group_by_segments(m.abs(), seg).clamp_min(1e-12))
        .flatten()
        .median()
        .item()
        for m in (a, b)
    ]
    segments = sum(int(s.unique().numel()) for s in seg) / len(seg)
    print(f"median |sum g| / sum |g| per segment: {kept[0]:.3f} / {kept[1]:.3f} (models 0 / 1)")
    print(f"segments per image: {segments:.1f}")
    out["cancellation"] = {"model_0": kept[0], "model_1": kept[1], "segments": segments}
    return out


if __name__ == "__main__":
    main()

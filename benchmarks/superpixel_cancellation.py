"""How much of a gradient map cancels inside super-pixels, and what that does to SSIM.

Study (c) groups *signed* scores (the gradient along each segment's indicator, as in paper
003). This script takes a trained two-model ensemble checkpoint, computes ``simple_grad`` on
held-out images, and compares the two models' maps five ways: pixel maps, segment sums and
means of the signed map, and segment sums and means of ``|map|``; it also prints the median
over pixels of their segment's ``|sum g| / sum |g|`` (1: nothing cancels inside a segment;
0: everything does).

Every agreement comes with a chance level: the same metric between model 0's map of image i
and model 1's map of the *previous* image, both grouped by image i's segments. The pair shares
the segmentation, the maps' overall statistics and any spatial prior (say, a bias to the
centre), but nothing about image i; agreement above it is what the two models share about
the image. (Magnitude sums score a large segment high whatever the map: this is the
comparison that shows how much of their agreement that alone explains.)
The numbers are in docs/results.md (ResNet-18 on the CPU, study (c)).

    python benchmarks/superpixel_cancellation.py runs/cpu/resnet18_split_factor/sf2 \
        --data data/cifar10/test --probes 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bf16_map_agreement import find_checkpoint, load_probes
from torch import Tensor

from lightning_saliency.attribution import group_by_segments, segment, simple_grad
from lightning_saliency.attribution.superpixels import GroupReduction
from lightning_saliency.data import CIFAR10_MEAN, CIFAR10_STD, ImageFolderDataModule
from lightning_saliency.metrics import l2_distance, spearman, ssim
from lightning_saliency.models import DisjointEnsemble


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "run", type=Path, help="a DisjointEnsemble checkpoint, or a run folder holding one"
    )
    p.add_argument("--data", required=True, help="ImageFolder split, e.g. data/cifar10/test")
    p.add_argument("--probes", type=int, default=64, help="held-out images (default 64)")
    p.add_argument("--algorithm", default="slic", help="segmenter (default slic)")
    args = p.parse_args(argv)

    ens = DisjointEnsemble.load_from_checkpoint(find_checkpoint(args.run), map_location="cpu",
                                              weights_only=True)
    ens.eval()
    if len(ens.models) < 2:
        raise SystemExit("the checkpoint needs at least two models")
    x, y = load_probes(args.data, args.probes)
    dm = ImageFolderDataModule(root=str(Path(args.data).parent), mean=CIFAR10_MEAN, std=CIFAR10_STD)
    a, b = (simple_grad(m, x, y) for m in list(ens.models)[:2])
    seg = segment(dm.unnormalize(x).clamp(0, 1), args.algorithm)

    groupings: dict[str, GroupReduction | None] = {
        "pixel": None,
        "segment sum, signed": "sum",
        "segment mean, signed": "mean",
        "segment sum of |map|": "abs_sum",
        "segment mean of |map|": "abs_mean",
    }
    # model 1's map of the previous image: unrelated to image i, grouped by image i's segments
    b_other = b.roll(1, dims=0)
    out: dict[str, dict[str, float]] = {}
    print(f"{len(x)} held-out probes, {args.algorithm}, simple_grad, models 0 and 1")
    print(f"{'maps':24s} {'SSIM':>7s} {'chance':>7s} {'L2':>7s} {'chance':>7s} {'Spearman':>9s}")
    grouped: dict[str, tuple[Tensor, Tensor]] = {}
    for name, reduction in groupings.items():
        u, v, w = (
            m if reduction is None else group_by_segments(m, seg, reduction)
            for m in (a, b, b_other)
        )
        grouped[name] = (u, v)
        row = {
            "ssim": ssim(u, v).mean().item(),
            "ssim_chance": ssim(u, w).mean().item(),
            "l2": l2_distance(u, v).mean().item(),
            "l2_chance": l2_distance(u, w).mean().item(),
            "spearman": spearman(u, v).mean().item(),
        }
        out[name] = row
        print(
            f"{name:24s} {row['ssim']:7.4f} {row['ssim_chance']:7.4f} {row['l2']:7.4f} "
            f"{row['l2_chance']:7.4f} {row['spearman']:9.4f}"
        )
    # |sum g| / sum |g| of each pixel's segment (a median over pixels, so size-weighted)
    kept = [
        (signed.abs() / mag.clamp_min(1e-12)).flatten().median().item()
        for signed, mag in zip(
            grouped["segment sum, signed"], grouped["segment sum of |map|"], strict=True
        )
    ]
    segments = sum(int(s.unique().numel()) for s in seg) / len(seg)
    print(
        f"median over pixels of their segment's |sum g| / sum |g|: {kept[0]:.3f} / {kept[1]:.3f} (models 0 / 1)"
    )
    print(f"segments per image: {segments:.1f}")
    out["cancellation"] = {"model_0": kept[0], "model_1": kept[1], "segments": segments}
    return out


if __name__ == "__main__":
    main()

"""Agreement of two models' maps above its chance level, with its per-probe spread.

For each run (a two-model ``DisjointEnsemble`` checkpoint, or a folder holding one) this
computes one method's maps on held-out images and, per probe, the Spearman correlation of
the two models' maps and its chance level: model 0's map of image i against model 1's map of
image i-1 (cyclically). It prints the means, the mean of the per-probe difference (agreement
above chance), that difference's standard deviation over probes and its standard error. The
callback logs the same chance level (``interp/L/test/spearman_chance``) but only its mean;
this gives the spread needed to tell two runs apart. Figures in docs/results.md (ResNet-18,
study (a)).

    python benchmarks/agreement_above_chance.py runs/cpu/resnet18_split_factor/sf2 \
        runs/cpu/resnet18_split_factor/sf16 --data data/cifar10/test --probes 64
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bf16_map_agreement import find_checkpoint, load_probes

from lightning_saliency.attribution import compute_attribution
from lightning_saliency.metrics import spearman
from lightning_saliency.models import DisjointEnsemble


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="checkpoints or run folders holding one")
    p.add_argument("--data", required=True, help="ImageFolder split, e.g. data/cifar10/test")
    p.add_argument("--probes", type=int, default=64, help="held-out images (default 64)")
    p.add_argument("--method", default="simple_grad", help="a method name (default simple_grad)")
    args = p.parse_args(argv)
    if args.probes < 2:
        raise SystemExit("--probes must be at least 2: the chance level pairs different images")

    x, y = load_probes(args.data, args.probes)
    out: dict[str, dict[str, float]] = {}
    print(f"{len(x)} held-out probes, {args.method}, Spearman of models 0 and 1")
    print(f"{'run':40s} {'agreement':>9s} {'chance':>7s} {'above':>7s} {'sd':>7s} {'se':>7s}")
    for run in args.runs:
        ens = DisjointEnsemble.load_from_checkpoint(find_checkpoint(run), map_location="cpu",
                                                  weights_only=True)
        if len(ens.models) < 2:
            raise SystemExit(f"{run}: the checkpoint needs at least two models")
        a, b = (compute_attribution(args.method, m.eval(), x, y) for m in list(ens.models)[:2])
        agree = spearman(a, b).double()
        chance = spearman(a, b.roll(1, dims=0)).double()
        above = agree - chance
        row = {
            "agreement": agree.mean().item(),
            "chance": chance.mean().item(),
            "above": above.mean().item(),
            "sd": above.std().item(),
            "se": above.std().item() / math.sqrt(len(above)),
        }
        out[str(run)] = row
        values = " ".join(f"{row[k]:{w}.4f}" for k, w in zip(row, (9, 7, 7, 7, 7), strict=True))
        print(f"{run!s:40s} {values}")
    return out


if __name__ == "__main__":
    main()

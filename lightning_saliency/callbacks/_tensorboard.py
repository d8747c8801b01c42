"""TensorBoard media for the interpretation callback: layout, image grids, figures."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._compute import AGREEMENT_METRICS

__all__ = ["close", "custom_scalars_layout", "display_maps", "figures", "image_grid"]


def custom_scalars_layout(labels: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """Group the callback's tags into TensorBoard's custom-scalars dashboard.

    Example:
        >>> sorted(custom_scalars_layout(["simple_grad"]))
        ['interpretation agreement', 'interpretation gap', 'interpretation quality']
    """
    gap = {
        "gap (test - train loss)": ["Multiline", [f"interp/{lb}/gap" for lb in labels]],
        "train loss": ["Multiline", [f"interp/{lb}/train_loss" for lb in labels]],
        "test loss": ["Multiline", [f"interp/{lb}/test_loss" for lb in labels]],
        "gap reduction vs simple_grad": [
            "Multiline",
            [f"interp/{lb}/gap_reduction" for lb in labels],
        ],
    }
    # each agreement chart beside its chance level (the maps of mismatched probes)
    agreement = {
        f"{split} {metric}": [
            "Multiline",
            [f"interp/{lb}/{split}/{m}" for lb in labels for m in (metric, metric + "_chance")],
        ]
        for split in ("train", "test")
        for metric in AGREEMENT_METRICS
    }
    agreement["MeGe"] = ["Multiline", [f"interp/{lb}/mege" for lb in labels]]
    agreement["ReCo"] = ["Multiline", [f"interp/{lb}/reco" for lb in labels]]
    agreement["prediction agreement"] = [
        "Multiline",
        ["interp/prediction_agreement/train", "interp/prediction_agreement/test"],
    ]
    quality = {
        metric: ["Multiline", [f"interp/{lb}/{metric}" for lb in labels]]
        for metric in ("sparseness", "complexity", "drift")
    }
    return {
        "interpretation gap": gap,
        "interpretation agreement": agreement,
        "interpretation quality": quality,
    }


def display_maps(maps: Tensor) -> Tensor:
    """|maps| summed over channels, scaled to [0, 1] by each map's 99th percentile.

    Example:
        >>> display_maps(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 1, 4, 4])
    """
    a = maps.float().abs().sum(1, keepdim=True)
    a = torch.nan_to_num(a, nan=0.0)
    q = torch.quantile(a.flatten(1), 0.99, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (a / q).clamp(0, 1)


def image_grid(images: Tensor, maps: Tensor, num_models: int, min_size: int = 96) -> Tensor:
    """One row per probe: the input, each model's map, then the reference column.

    ``maps`` is (M, N, C, H, W) for M >= num_models map sources; the last column is
    the mean of the monitored models' unit-normalized maps (their consensus), or the
    reference model's map when M > num_models. Tiles smaller than ``min_size`` pixels
    are enlarged by an integer factor (nearest neighbour) so small images stay legible.

    Example:
        >>> image_grid(torch.rand(2, 1, 8, 8), torch.randn(2, 2, 1, 8, 8), 2).shape
        torch.Size([3, 198, 394])
    """
    from torchvision.utils import make_grid

    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    cols = [images[:, :3]]
    for m in range(num_models):
        cols.append(display_maps(maps[m]).expand(-1, 3, -1, -1))
    if maps.shape[0] > num_models:
        ref = maps[num_models]
    else:
        flat = maps[:num_models].flatten(2)
        unit = flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-12)
        ref = unit.mean(0).view_as(maps[0])
    cols.append(display_maps(ref).expand(-1, 3, -1, -1))
    tiles = torch.stack(cols, dim=1).flatten(0, 1)  # row-major: probe by probe
    factor = -(-min_size // tiles.shape[-1])  # ceil
    if factor > 1:
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=factor, mode="nearest")
    return make_grid(tiles, nrow=len(cols), padding=2, pad_value=1.0).clamp(0, 1)


_SIGMA = re.compile(r"_(?:s|nl)(\d+(?:\.\d+)?)")


def _sigma_of(label: str) -> float | None:
    m = _SIGMA.search(label)
    return float(m.group(1)) if m else None


def figures(records: Sequence[Any], specs: Sequence[Any]) -> dict[str, Any]:
    """Matplotlib figures: gap/agreement against SmoothGrad noise; pixel vs super-pixel.

    ``records`` are :class:`~lightning_saliency.callbacks._compute.Record` rows of one
    epoch. Returns ``{name: figure}`` (empty when there is nothing to plot).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    value = {r.tag: r.value for r in records}
    out: dict[str, Any] = {}

    # SmoothGrad noise sweep (pixel methods): simple_grad is noise 0.
    points = []
    for s in specs:
        if s.superpixel is not None:
            continue
        if s.method == "simple_grad":
            points.append((0.0, s.label))
        elif s.method == "smooth_grad":
            sig = s.params.get("noise_level", s.params.get("sigma"))
            if sig is not None and s.params.get("base", "grad") == "grad":
                points.append((float(sig), s.label))
    points.sort()
    if len(points) >= 2 and any(f"interp/{lb}/gap" in value for _, lb in points):
        fig, ax = plt.subplots(1, 2, figsize=(8, 3))
        xs = [p for p, _ in points]
        ax[0].plot(xs, [value.get(f"interp/{lb}/gap", float("nan")) for _, lb in points], "o-")
        ax[0].set_xlabel("SmoothGrad noise")
        ax[0].set_ylabel("interpretation gap")
        for metric in ("l2", "spearman", "ssim"):
            line = ax[1].plot(
                xs,
                [value.get(f"interp/{lb}/test/{metric}", float("nan")) for _, lb in points],
                "o-",
                label=metric,
            )[0]
            # its chance level (maps of different probes): heavy noise makes every map
            # generic, which raises agreement and chance alike
            chance = [value.get(f"interp/{lb}/test/{metric}_chance") for _, lb in points]
            if any(c is not None for c in chance):
                ax[1].plot(
                    xs,
                    [float("nan") if c is None else c for c in chance],
                    "--",
                    color=line.get_color(),
                    label=f"{metric} chance",
                )
        ax[1].set_xlabel("SmoothGrad noise")
        ax[1].set_ylabel("test agreement")
        ax[1].legend()
        fig.tight_layout()
        out["smoothgrad_sweep"] = fig

    # Pixel vs super-pixel: pair each grouped spec with its ungrouped twin.
    pairs = []
    by_key = {
        (s.method, tuple(sorted(s.params.items()))): s.label for s in specs if s.superpixel is None
    }
    for s in specs:
        if s.superpixel is not None:
            twin = by_key.get((s.method, tuple(sorted(s.params.items()))))
            if twin is not None:
                pairs.append((twin, s.label))
    if pairs:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        # the grouping is part of the name: one pixel method may have several groupings
        names = [f"{p}\n{q.split('_sp-', 1)[-1]}" for p, q in pairs]
        idx = [float(i) for i in range(len(pairs))]
        for ax, metric in zip(axes, ("gap", "test/ssim"), strict=True):
            ax.bar(
                [i - 0.2 for i in idx],
                [value.get(f"interp/{p}/{metric}", float("nan")) for p, _ in pairs],
                0.4,
                label="pixel",
            )
            ax.bar(
                [i + 0.2 for i in idx],
                [value.get(f"interp/{q}/{metric}", float("nan")) for _, q in pairs],
                0.4,
                label="super-pixel",
            )
            ax.set_xticks(idx, names, rotation=20, fontsize=7)
            ax.set_ylabel(metric)
        axes[0].legend()
        fig.tight_layout()
        out["pixel_vs_superpixel"] = fig
    return out


def close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)

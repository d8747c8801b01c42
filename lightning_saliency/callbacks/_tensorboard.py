"""TensorBoard media for the interpretation callback: image grids and figures."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_saliency.attribution import MethodSpec
from lightning_saliency.generalization import Estimate, MetricKey, chance

__all__ = ["close", "display_maps", "figures", "image_grid"]


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


def _value(estimates: Mapping[MetricKey, Estimate], key: MetricKey) -> tuple[float, float, float]:
    """(value, lower error, upper error) for an error bar; NaNs where not logged."""
    e = estimates.get(key)
    if e is None:
        return math.nan, math.nan, math.nan
    return e.value, e.value - e.lo, e.hi - e.value


def _errorbar(ax: Any, xs: list[float], estimates: Mapping, keys: list[MetricKey], **kw: Any) -> Any:
    vals = [_value(estimates, k) for k in keys]
    ys = [v for v, _, _ in vals]
    err = [[lo for _, lo, _ in vals], [hi for _, _, hi in vals]]
    if all(math.isnan(e) for row in err for e in row):
        err = None  # type: ignore[assignment]
    return ax.errorbar(xs, ys, yerr=err, capsize=3, **kw)


def _sweep_curves(specs: Sequence[MethodSpec]) -> dict[tuple[str, int], list[tuple[float, str]]]:
    """SmoothGrad curves (noise kind, draws) -> [(noise, label)], the plain gradient at 0."""
    base = next((s.label for s in specs if s.is_plain_baseline), None)
    curves: dict[tuple[str, int], list[tuple[float, str]]] = {}
    for s in specs:
        if s.smoothgrad_curve is not None:
            curves.setdefault(s.smoothgrad_curve, []).append((s.noise[1], s.label))  # type: ignore[index]
    for points in curves.values():
        if base is not None:
            points.append((0.0, base))
        points.sort()
    return {c: p for c, p in curves.items() if len(p) >= 2}


def _sweep_figure(estimates: Mapping[MetricKey, Estimate], specs: Sequence[MethodSpec], stage: str) -> Any:
    import matplotlib.pyplot as plt

    curves = _sweep_curves(specs)
    if not curves:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for (kind, samples), points in curves.items():
        xs = [p for p, _ in points]
        name = f"{kind}, n={samples}"
        _errorbar(ax[0], xs, estimates, [MetricKey(lb, "mean", "gap", "gap", stage) for _, lb in points],
                  marker="o", label=name)  # fmt: skip
        for metric in ("spearman", "ssim"):
            keys = [MetricKey(lb, "pairs", "test", metric, stage) for _, lb in points]
            line = _errorbar(ax[1], xs, estimates, keys, marker="o", label=f"{metric}, {name}")
            chance_keys = [MetricKey(lb, "pairs", "test", chance(metric), stage) for _, lb in points]
            ax[1].plot(xs, [_value(estimates, k)[0] for k in chance_keys], "--",
                       color=line[0].get_color(), label=f"{metric} chance, {name}")  # fmt: skip
    ax[0].set(xlabel="SmoothGrad noise (0 = simple gradient)", ylabel="gap (closer to 0 = better)")
    ax[1].set(xlabel="SmoothGrad noise (0 = simple gradient)", ylabel="test agreement (higher = more)")
    ax[0].axhline(0, color="k", lw=0.5)
    ax[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def _superpixel_figure(estimates: Mapping[MetricKey, Estimate], specs: Sequence[MethodSpec], stage: str) -> Any:
    import matplotlib.pyplot as plt

    pixel = {s.pixel_twin: s.label for s in specs if s.superpixel is None}
    pairs = [(pixel[s.pixel_twin], s) for s in specs if s.superpixel is not None and s.pixel_twin in pixel]
    if not pairs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    names = [f"{p}\n{s.label.split('_sp-', 1)[-1]}" for p, s in pairs]
    idx = list(range(len(pairs)))
    for ax, (split, metric, ylabel) in zip(
        axes, (("gap", "gap", "gap (closer to 0 = better)"), ("test", "ssim", "test SSIM (higher = more)")), strict=True
    ):
        for offset, kind in ((-0.2, "pixel"), (0.2, "super-pixel")):
            keys = [MetricKey(p if kind == "pixel" else s.label, "mean" if split == "gap" else "pairs",
                              split, metric, stage) for p, s in pairs]  # fmt: skip
            vals = [_value(estimates, k) for k in keys]
            ax.bar([i + offset for i in idx], [v for v, _, _ in vals], 0.4, label=kind,
                   yerr=[[lo for _, lo, _ in vals], [hi for _, _, hi in vals]], capsize=3)  # fmt: skip
        ax.set_xticks(idx, names, rotation=20, fontsize=7)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def figures(
    estimates: Mapping[MetricKey, Estimate], specs: Sequence[MethodSpec], stage: str = "fit"
) -> dict[str, Any]:
    """Matplotlib figures of one epoch: gap and agreement against SmoothGrad noise (one curve
    per noise kind and draw count, 95% intervals as error bars); pixel vs super-pixel.

    Returns ``{name: figure}`` (empty when there is nothing to plot).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    out = {}
    for name, make in (("smoothgrad_sweep", _sweep_figure), ("pixel_vs_superpixel", _superpixel_figure)):
        fig = make(estimates, specs, stage)
        if fig is not None:
            out[name] = fig
    return out


def close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)

"""The callback's media and TensorBoard policy: map grids, figures, tags and layout.

Map grids and figures (arrays, matplotlib figures) go to whichever loggers the trainer has
(TensorBoard, W&B, MLflow; :mod:`._logging` sends them). Which numbers TensorBoard gets
(:func:`in_tensorboard`, with interval tags :func:`has_interval_tags`) and its
custom-scalars layout (:mod:`._tensorboard_layout`) live in the callbacks too: the
``generalization`` package names every number (:class:`MetricKey`) and knows no logger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_saliency.attribution import MethodSpec
from lightning_saliency.generalization import (
    FAITHFULNESS_METRICS,
    NO_METHOD,
    Estimate,
    MetricKey,
    above_chance,
    chance,
    randomization_metric,
)
from lightning_saliency.generalization.studies import smoothgrad_curves, superpixel_pairs
from lightning_saliency.generalization.summary import HEADLINE_METRIC
from lightning_saliency.metrics import get_metric, metric_names
from lightning_saliency.report.stability_fidelity import stability_fidelity_figure

__all__ = [
    "INTERVAL_METRICS",
    "INTERVAL_PREFIX",
    "LOSS_METRIC",
    "SCALAR_SETS",
    "TENSORBOARD_PAGE",
    "close",
    "display_maps",
    "figure_array",
    "figures",
    "has_interval_tags",
    "headline_metrics",
    "in_tensorboard",
    "interval_tags",
    "is_headline_scalar",
    "key_scalars",
    "map_grid",
    "tensorboard_scalars",
]


def display_maps(maps: Tensor, signed: bool = False) -> Tensor:
    """Channel-summed maps scaled by each map's 99th percentile of |map|: ``(N, H, W)`` in
    [-1, 1] (``signed``) or [0, 1] (the magnitude, summed |map| over channels).

    Example:
        >>> display_maps(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 4, 4])
    """
    m = maps.float()
    a = m.sum(1) if signed else m.abs().sum(1)
    a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    q = torch.quantile(a.abs().flatten(1), 0.99, dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (a / q).clamp(-1 if signed else 0, 1)


def _tile(rgb: np.ndarray, factor: int) -> np.ndarray:
    return rgb.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else rgb


def _columns(images: Tensor, maps: Tensor, num_models: int, signed: bool) -> list[np.ndarray]:
    """Per column, ``(N, H, W, 3)`` floats: the input, then each map over the gray input."""
    from matplotlib import colormaps

    imgs = images.float().clamp(0, 1)
    rgb = (imgs.expand(-1, 3, -1, -1) if imgs.shape[1] == 1 else imgs[:, :3]).permute(0, 2, 3, 1)
    gray = imgs.mean(1, keepdim=True).permute(0, 2, 3, 1).numpy()
    if maps.shape[0] > num_models:
        sources = [*maps[:num_models], maps[num_models]]
    else:  # the consensus: the mean of the models' unit-normalized maps
        flat = maps[:num_models].flatten(2)
        unit = flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-12)
        sources = [*maps[:num_models], unit.mean(0).view_as(maps[0])]
    cmap = colormaps["RdBu_r" if signed else "inferno"]
    cols = [rgb.numpy()]
    for m in sources:
        v = display_maps(m, signed).numpy()
        color = cmap((v + 1) / 2 if signed else v)[..., :3]
        cols.append(0.35 * gray + 0.65 * color)
    return cols


def map_grid(
    images: Tensor, maps: Tensor, num_models: int, *, title: str = "", min_size: int = 96
) -> np.ndarray:
    """One row per probe: the input, each model's map over it, then the reference column
    (the reference model's map, or the consensus of the models' normalized maps), with the
    columns labelled. Signed maps use a diverging colour map (red +, blue -), magnitudes a
    sequential one. Returns an ``(H, W, 3)`` uint8 image.

    Example:
        >>> map_grid(torch.rand(2, 1, 8, 8), torch.randn(2, 2, 1, 8, 8), 2).shape
        (230, 392, 3)
    """
    from PIL import Image, ImageDraw

    font = _font(12)
    signed = bool((maps < 0).any())
    cols = _columns(images.cpu(), maps.cpu(), num_models, signed)
    factor = max(1, -(-min_size // images.shape[-1]))
    tiles = [_tile(c, factor) for c in cols]
    n, h, w, _ = tiles[0].shape
    pad, head = 2, 34
    out = np.ones((head + n * (h + pad), len(tiles) * (w + pad), 3))
    for j, col in enumerate(tiles):
        for i in range(n):
            out[head + i * (h + pad) : head + i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = col[i]
    canvas = Image.fromarray((out.clip(0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    ref = "reference" if maps.shape[0] > num_models else "consensus"
    names = ["input", *(f"model {k}" for k in range(num_models)), ref]
    for j, name in enumerate(names):
        draw.text((j * (w + pad) + 3, 18), name, fill=(0, 0, 0), font=font)
    scale = "red +, blue -" if signed else "bright = large |map|"
    draw.text((3, 2), f"{title}   ({scale})", fill=(70, 70, 70), font=font)
    return np.asarray(canvas)


def _font(size: int) -> Any:
    """matplotlib's DejaVu Sans (always installed with it), else PIL's default font."""
    from pathlib import Path

    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default()


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


def _sweep_figure(estimates: Mapping[MetricKey, Estimate], specs: Sequence[MethodSpec],
                  stage: str, epoch: int) -> Any:  # fmt: skip
    from matplotlib.figure import Figure

    curves = smoothgrad_curves({s.label: s for s in specs}, min_points=2)
    if not curves:
        return None
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax = fig.subplots(1, 2)
    for (kind, samples), points in curves.items():
        xs = [p for p, _ in points]
        name = f"{kind}, n={samples}"
        _errorbar(ax[0], xs, estimates, [MetricKey(lb, "mean", "gap", "gap", stage) for _, lb in points],
                  marker="o", label=name)  # fmt: skip
        for metric in headline_metrics():
            keys = [MetricKey(lb, "pairs", "test", metric, stage) for _, lb in points]
            line = _errorbar(ax[1], xs, estimates, keys, marker="o", label=f"{metric}, {name}")
            chance_keys = [MetricKey(lb, "pairs", "test", chance(metric), stage) for _, lb in points]
            ax[1].plot(xs, [_value(estimates, k)[0] for k in chance_keys], "--",
                       color=line[0].get_color(), label=f"{metric} chance level, {name}")  # fmt: skip
    noise = "SmoothGrad noise (0 = simple gradient)"
    ax[0].set(xlabel=noise, ylabel="gap: test - train loss (closer to 0 = better)",
              title=f"interpretation gap, epoch {epoch}, 95% intervals")  # fmt: skip
    ax[1].set(xlabel=noise, ylabel="test agreement between models (higher = more)",
              title=f"test agreement and chance level, epoch {epoch}")  # fmt: skip
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].legend(fontsize=7)
    fig.legend(*ax[1].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    return fig


def _superpixel_figure(estimates: Mapping[MetricKey, Estimate], specs: Sequence[MethodSpec],
                       stage: str, epoch: int) -> Any:  # fmt: skip
    from matplotlib.figure import Figure

    pairs = [(p, s) for p, _, s in superpixel_pairs({s.label: s for s in specs})]
    if not pairs:
        return None
    fig = Figure(figsize=(11, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    names = [f"{p}\n{s.label.split('_sp-', 1)[-1]}" for p, s in pairs]
    idx = list(range(len(pairs)))
    panels = (("gap", "gap", "gap: test - train loss (closer to 0 = better)"),
              ("test", "ssim", "test SSIM between models (higher = more)"))  # fmt: skip
    for ax, (split, metric, ylabel) in zip(axes, panels, strict=True):
        for offset, kind in ((-0.2, "pixel"), (0.2, "super-pixel")):
            agg = "mean" if split == "gap" else "pairs"
            keys = [MetricKey(p if kind == "pixel" else s.label, agg, split, metric, stage) for p, s in pairs]
            vals = [_value(estimates, k) for k in keys]
            ax.bar([i + offset for i in idx], [v for v, _, _ in vals], 0.4, label=kind,
                   yerr=[[lo for _, lo, _ in vals], [hi for _, _, hi in vals]], capsize=3)  # fmt: skip
            if metric == "ssim":
                ch = [_value(estimates, MetricKey(k.method, agg, split, chance(metric), stage))[0] for k in keys]
                ax.scatter([i + offset for i in idx], ch, marker="_", s=250, color="k", zorder=3,
                           label="chance level" if kind == "pixel" else None)  # fmt: skip
        ax.set_xticks(idx, names, rotation=20, fontsize=7)
        ax.set(ylabel=ylabel, title=f"{'gap' if split == 'gap' else 'test SSIM'}: pixel vs "
               f"super-pixel, epoch {epoch}, 95% intervals")  # fmt: skip
        ax.title.set_fontsize(9)
    fig.legend(*axes[1].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    return fig


def figures(
    estimates: Mapping[MetricKey, Estimate],
    specs: Sequence[MethodSpec],
    stage: str = "fit",
    epoch: int = 0,
) -> dict[str, Any]:
    """Matplotlib figures of one epoch: gap and agreement against SmoothGrad noise (one curve
    per noise kind and draw count, 95% intervals as error bars, chance levels dashed); pixel
    vs super-pixel (chance levels as black bars); stability (agreement above chance) against
    fidelity (distance to the plain gradient) per smoothing method.

    Returns ``{name: figure}`` (empty when there is nothing to plot).
    """
    out = {}
    makers = (("smoothgrad_sweep", _sweep_figure), ("pixel_vs_superpixel", _superpixel_figure),
              ("stability_fidelity", stability_fidelity_figure))  # fmt: skip
    for name, make in makers:
        fig = make(estimates, specs, stage, epoch)
        if fig is not None:
            out[name] = fig
    return out


def figure_array(fig: Any) -> np.ndarray:
    """A figure rendered to an ``(H, W, 3)`` uint8 image (as TensorBoard's add_figure does)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def close(fig: Any) -> None:
    """Release a figure (figures here are not in pyplot's registry)."""
    fig.clear()


# --------------------------------------------------------------------------- tags and layout
#: The agreement metric that *is* the interpretation loss between two map sources: with
#: K = 2 (or one model and its reference) its test value is the test loss, so it is not drawn.
LOSS_METRIC = "l2"
#: What the callback's ``tensorboard_scalars`` may be: ``"headline"``, the numbers of the
#: end-of-fit summary (:func:`is_headline_scalar`), or ``"all"`` (:func:`in_tensorboard`).
#: The CSV gets every number either way.
SCALAR_SETS: tuple[str, ...] = ("headline", "all")
#: Metrics whose interval TensorBoard gets (the CSV has every interval): the gap, the gap
#: reduction, and the headline agreements above chance.
INTERVAL_METRICS: frozenset[str] = frozenset({"gap", "gap_reduction"})
#: The prefix of the interval tags: apart from ``interp/``, so Time Series groups them in
#: their own section (or hides them: filter tags by ``^interp/``).
INTERVAL_PREFIX = "interval/"
#: TensorBoard's Custom Scalars page with smoothing 0 (its default, 0.6, bends curves of a
#: few points: one per monitored epoch); at its default address.
TENSORBOARD_PAGE = "http://localhost:6006/#custom_scalars&_smoothingWeight=0"


def headline_metrics() -> list[str]:
    """The registry's headline agreement metrics (their excess over chance gets an interval)."""
    return [m for m in metric_names("agreement") if get_metric(m).headline]


def _interval_metric(metric: str) -> bool:
    return metric in INTERVAL_METRICS or metric in {above_chance(m) for m in headline_metrics()}


#: The quality metrics TensorBoard gets on test probes and as a gap (train values: CSV).
_TB_QUALITY_SPLITS = ("test", "gap")


def has_interval_tags(key: MetricKey) -> bool:
    """Whether TensorBoard also gets this key's interval (:func:`interval_tags`)."""
    return _interval_metric(key.metric) and key.aggregate in ("mean", "pairs")


def interval_tags(key: MetricKey) -> tuple[str, str]:
    """The tags of a key's 95% interval: ``interp/`` becomes :data:`INTERVAL_PREFIX`
    (siblings ``_lo``, ``_hi``, not children: MLflow's file store cannot hold a tag that is
    also a folder).

    >>> interval_tags(MetricKey("m", "mean", "gap", "gap", "validate"))
    ('validate/interval/m/gap_lo', 'validate/interval/m/gap_hi')
    """
    head, _, rest = key.tag.partition("interp/")
    base = f"{head}{INTERVAL_PREFIX}{rest}"
    return f"{base}_lo", f"{base}_hi"


def is_headline_scalar(key: MetricKey) -> bool:
    """The headline: per method the gap and the test :data:`HEADLINE_METRIC` above chance
    (what the end-of-fit summary prints), and the test prediction agreement with its chance.

    >>> is_headline_scalar(MetricKey("m", "pairs", "test", "spearman_above_chance"))
    True
    >>> is_headline_scalar(MetricKey("m", "model_0", "gap", "gap"))
    False
    """
    if key.method == NO_METHOD:
        return key.split == "test" and key.metric in ("prediction_agreement", chance("prediction_agreement"))
    if key.aggregate not in ("mean", "pairs"):
        return False
    return (key.split, key.metric) in (("gap", "gap"), ("test", above_chance(HEADLINE_METRIC)))


def _opt_in(metric: str) -> bool:
    """Whether ``metric`` belongs to an opt-in family (a run computes it only when named)."""
    # every randomization similarity (MPRT variants too) is named by randomization_metric
    return metric in FAITHFULNESS_METRICS or metric.startswith(randomization_metric("", "")[:-1])


def in_tensorboard(key: MetricKey, num_sources: int, scalars: str) -> bool:
    """Whether TensorBoard (every logger: the callback logs through ``pl_module.log``) gets
    this number; the CSV gets all of them.

    ``scalars="headline"``: :func:`is_headline_scalar`, the opt-in families a run named
    (faithfulness, randomization), and, with one map source (one model, no reference:
    nothing to compare), every reference-free number. ``"all"`` leaves to the CSV per-model
    losses (the per-model gap stays), train-probe agreement, quality and faithfulness, and,
    with two map sources (K = 2, or one model and its reference), the test L2 distance,
    which then *is* the test loss.

    >>> in_tensorboard(MetricKey("m", "pairs", "test", "spearman"), 2, "all")
    True
    >>> in_tensorboard(MetricKey("m", "pairs", "test", "spearman"), 2, "headline")
    False
    """
    if key.is_epoch_marker:
        return False
    if scalars == "headline" and num_sources >= 2 and not _opt_in(key.metric):
        return is_headline_scalar(key)
    m, split = key.metric, key.split
    if key.aggregate.startswith("model_"):
        return m == "gap"
    if m.endswith("_chance_same_class"):
        return False
    if key.method == NO_METHOD:  # prediction agreement: its chance and kappa on test probes
        return m == "prediction_agreement" or split == "test"
    if key.aggregate == "pairs" and m not in ("mege", "reco"):
        return split == "test" and not (m == LOSS_METRIC and num_sources == 2)
    if m in metric_names("quality") or m in metric_names("faithfulness"):
        return split in _TB_QUALITY_SPLITS
    return True


def key_scalars(key: MetricKey, est: Estimate) -> dict[str, float]:
    """``{tag: value}`` for TensorBoard: the value and, where drawn, its interval.

    >>> key_scalars(MetricKey("m", "mean", "gap", "gap"), Estimate(0.1, 0.01, 0.08, 0.12, 8))
    {'interp/m/gap': 0.1, 'interval/m/gap_lo': 0.08, 'interval/m/gap_hi': 0.12}
    """
    out = {key.tag: est.value}
    if has_interval_tags(key):
        lo, hi = interval_tags(key)
        out[lo], out[hi] = est.lo, est.hi
    return out


def tensorboard_scalars(
    estimates: Mapping[MetricKey, Estimate], num_sources: int, scalars: str
) -> dict[str, float]:
    """Every ``{tag: value}`` the callback gives TensorBoard for one epoch.

    >>> e = Estimate(0.1, 0.01, 0.08, 0.12, 8)
    >>> est = {MetricKey("m", "pairs", "test", "l2"): e, MetricKey("m", "mean", "test", "loss"): e,
    ...        MetricKey("m", "mean", "gap", "gap"): e}
    >>> sorted(tensorboard_scalars(est, 2, "all"))
    ['interp/m/gap', 'interp/m/test_loss', 'interval/m/gap_hi', 'interval/m/gap_lo']
    >>> sorted(tensorboard_scalars(est, 2, "headline"))
    ['interp/m/gap', 'interval/m/gap_hi', 'interval/m/gap_lo']
    """
    out: dict[str, float] = {}
    for key, est in estimates.items():
        if in_tensorboard(key, num_sources, scalars):
            out.update(key_scalars(key, est))
    return out

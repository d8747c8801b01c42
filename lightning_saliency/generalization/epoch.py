"""One monitored epoch as two pure steps: explain the probes, then evaluate the maps.

:func:`compute_maps` runs every method for every model (and reference model) on the
probes; :func:`evaluate_epoch` turns the maps into every logged number, each an
:class:`~lightning_saliency.generalization.Estimate` under its
:class:`~lightning_saliency.generalization.MetricKey`. Neither knows about Lightning:
the callback decides when to call them and where the numbers go.

Example (no Lightning; two tiny models on random probes):
    >>> import torch
    >>> from torch import nn
    >>> from lightning_saliency.attribution import resolve_method
    >>> from lightning_saliency.generalization import MetricKey, ProbeLayout
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> models = [nn.Sequential(nn.Flatten(), nn.Linear(16, 3)) for _ in range(2)]
    >>> layout = ProbeLayout.from_sizes([4, 4], 4)
    >>> x, y = torch.randn(12, 1, 4, 4), torch.randint(0, 3, (12,))
    >>> specs = [resolve_method("simple_grad")]
    >>> maps = compute_maps(models, x, y, specs)
    >>> preds = predictions(model_logits(models, x))
    >>> result = evaluate_epoch(maps, layout, specs, labels=y, preds=preds)
    >>> gap = result.estimates[MetricKey("simple_grad", "mean", "gap", "gap")]
    >>> gap.n, gap.lo <= gap.value <= gap.hi
    (12, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode
from lightning_saliency.attribution import (
    MethodSpec,
    as_logits,
    compute_attribution,
    group_by_segments,
)
from lightning_saliency.metrics import agreement_specs, metric_names
from lightning_saliency.metrics._maps import informative_rows

from ._pair_features import PairFeatures
from ._timing import stage as _stage
from .chance import CHANCE_DRAWS, ChancePairing, PredictionChance
from .controls import OWN_EXCESS, own_train_excess
from .core import (
    MapStack,
    MetricArg,
    drift,
    gap_reduction,
    interpretation_loss,
    leave_one_out_reference,
    pairwise_agreement,
    prediction_agreement,
    quality,
    split_statistics,
)
from .layout import ProbeLayout
from .mege import mege_reco_statistics
from .schema import DEFAULT_FAMILIES, NO_METHOD, MetricKey
from .statistics import BOOTSTRAP_RESAMPLES, Estimate, Statistic, bootstrap_counts, estimate_all
from .studies import plain_baseline

__all__ = [
    "EpochEvaluation",
    "compute_maps",
    "compute_pixel_maps",
    "evaluate_epoch",
    "group_maps",
    "model_logits",
    "nonfinite_key",
    "predictions",
]

Stats = dict[MetricKey, Statistic]


@torch.no_grad()
def model_logits(
    models: Sequence[nn.Module],
    x: Tensor,
    batch_size: int = 256,
    output_transform: Callable[[Any], Tensor] = as_logits,
) -> Tensor:
    """``(M, N, classes)`` float logits of every model, in eval mode, in chunks; a model's
    output goes through ``output_transform`` (default: the library's convention,
    :func:`~lightning_saliency.attribution.as_logits`).

    >>> model_logits([nn.Flatten()], torch.ones(3, 1, 1, 2)).shape
    torch.Size([1, 3, 2])
    """
    out = []
    with eval_mode(*models):
        for model in models:
            parts = [output_transform(model(x[i : i + batch_size])).float()
                     for i in range(0, len(x), batch_size)]  # fmt: skip
            out.append(torch.cat(parts))
    return torch.stack(out)


def predictions(logits: Tensor) -> Tensor:
    """``(M, N)`` predicted classes of ``(M, N, classes)`` logits; -1 where a row of logits is
    not finite (its argmax would be an arbitrary class).

    >>> predictions(torch.tensor([[[0.0, 1.0], [float("nan"), 0.0]]])).tolist()
    [[1, -1]]
    """
    finite = torch.isfinite(logits).all(-1)
    return torch.where(finite, logits.argmax(-1), -1)


def compute_maps(
    models: Sequence[nn.Module],
    x: Tensor,
    target: Tensor,
    specs: Sequence[MethodSpec],
    *,
    seed: int = 0,
    segments: Mapping[str, Tensor] | None = None,
    input_range: tuple[float, float] | None = None,
    precision: str = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, MapStack]:
    """Every spec's maps ``(M, N, C, H, W)`` of every model, keyed by label.

    A super-pixel spec is the grouping of its pixel twin's maps (one attribution pass and
    the same noise draws for both; ``segments[label]`` is its ``(N, H, W)`` segmentation).
    Noise comes from a generator seeded by ``spec.noise_seed(seed)``, the same for every
    model (common random numbers). ``progress(label)`` is called after each attribution pass.
    """
    pixel = compute_pixel_maps(
        models, x, target, specs, seed=seed, input_range=input_range, precision=precision,
        channels_last=channels_last, batch_size=batch_size, progress=progress,
    )  # fmt: skip
    return group_maps(specs, pixel, segments)


def compute_pixel_maps(
    models: Sequence[nn.Module],
    x: Tensor,
    target: Tensor,
    specs: Sequence[MethodSpec],
    *,
    seed: int = 0,
    input_range: tuple[float, float] | None = None,
    precision: str = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[MethodSpec, Tensor]:
    """The pixel maps ``(M, N, C, H, W)`` of each distinct pixel twin of ``specs``.

    Each model's maps depend only on that model (its noise generator is the spec's), so
    the models can be split between processes and the maps gathered: the result is the same.
    """
    options = {"input_range": input_range, "precision": precision,
               "channels_last": channels_last, "batch_size": batch_size}  # fmt: skip
    pixel: dict[MethodSpec, Tensor] = {}
    for spec in specs:
        twin = spec.pixel_twin
        if twin not in pixel:
            maps = [_maps(twin, m, x, target, seed, options) for m in models]
            pixel[twin] = torch.stack(maps) if maps else x.new_zeros((0, *x.shape))
            if progress is not None:
                progress(twin.label)
    return pixel


def group_maps(
    specs: Sequence[MethodSpec],
    pixel: Mapping[MethodSpec, Tensor],
    segments: Mapping[str, Tensor] | None = None,
) -> dict[str, MapStack]:
    """Every spec's :class:`MapStack` from its pixel twin's maps (grouped by its segments)."""
    return {spec.label: _grouped(spec, pixel[spec.pixel_twin], segments) for spec in specs}


def _maps(spec: MethodSpec, model: nn.Module, x: Tensor, target: Tensor, seed: int,
          options: dict) -> Tensor:  # fmt: skip
    gen = torch.Generator(device=x.device).manual_seed(spec.noise_seed(seed))
    return compute_attribution(spec, model, x, target, generator=gen, **options)


def _grouped(spec: MethodSpec, pixel: Tensor, segments: Mapping[str, Tensor] | None) -> MapStack:
    if spec.superpixel is None:
        return MapStack(pixel)
    seg = None if segments is None else segments.get(spec.label)
    if seg is None:
        raise ValueError(
            f"spec {spec.label!r} groups by super-pixels but no segmentation of the probes "
            "was given for it"
        )
    reduction = spec.superpixel["reduction"]
    grouped = torch.stack([group_by_segments(m, seg, reduction=reduction) for m in pixel])
    return MapStack(grouped, pixel, seg, reduction)


@dataclass
class EpochEvaluation:
    """Every number of one epoch (``estimates``), the statistics they come from (per-probe
    values, ``statistics``), the maps (label -> ``(M, N, C, H, W)``) and the predictions."""

    estimates: dict[MetricKey, Estimate]
    statistics: Stats
    maps: dict[str, Tensor]
    preds: Tensor
    methods: list[str] = field(default_factory=list)

    def extend(self, stats: Mapping[MetricKey, Statistic]) -> None:
        """Add linear statistics computed outside :func:`evaluate_epoch` (the opt-in
        families of :func:`~lightning_saliency.generalization.family_statistics`)."""
        self.statistics.update(stats)
        self.estimates.update(estimate_all(stats))


def _gap_stats(label: str, loss: Tensor, layout: ProbeLayout, stage: str) -> Stats:
    out: Stats = {}
    for k in range(layout.num_models):
        for split, stat in split_statistics(loss, layout, k).items():
            metric = "gap" if split == "gap" else "loss"
            out[MetricKey(label, f"model_{k}", split, metric, stage)] = stat
    for split, stat in split_statistics(loss, layout).items():
        metric = "gap" if split == "gap" else "loss"
        out[MetricKey(label, "mean", split, metric, stage)] = stat
    if layout.num_models >= 2:  # the positive controls' statistic (docs/metrics.md)
        for k, stat in own_train_excess(loss, layout).items():
            out[MetricKey(label, f"model_{k}", "train", OWN_EXCESS, stage)] = stat
    return out


def _method_stats(
    spec: MethodSpec,
    stack: MapStack,
    layout: ProbeLayout,
    families: set[str],
    ctx: dict,
) -> Stats:
    """Every statistic of one method, in the order the CSV lists them."""
    label, stage, k = spec.label, ctx["stage"], layout.num_models
    maps, has_ref = stack.maps, stack.num_sources >= 2
    out: Stats = {}
    if "gap" in families and has_ref:
        with _stage("reference"):
            ref = leave_one_out_reference(maps[:k], normalize=ctx["normalize"]) if k >= 2 else maps[k:]
            loss = interpretation_loss(maps[:k], ref, normalize=ctx["normalize"])
            out.update(_gap_stats(label, loss, layout, stage))
    if "agreement" in families and has_ref:
        out.update(_agreement_stats(stack, layout, ctx, label))
    return out | _other_stats(spec, stack, layout, families, ctx)


def _agreement_stats(stack: MapStack, layout: ProbeLayout, ctx: dict, label: str) -> Stats:
    """Pairwise agreement and its chance levels on both splits; each map's features (ranks,
    top-k masks, scaled maps) are computed once for both splits and every draw."""
    out: Stats = {}
    with _stage("agreement"):
        specs = agreement_specs(ctx["metrics"], normalize=ctx["normalize"], topk=ctx["topk"])
        features = PairFeatures(stack, specs)
        for split in ("train", "test"):
            for metric, stat in pairwise_agreement(
                stack, layout, split, metrics=ctx["metrics"], pairing=ctx["pairing"],
                normalize=ctx["normalize"], topk=ctx["topk"], features=features,
            ).items():  # fmt: skip
                out[MetricKey(label, "pairs", split, metric, ctx["stage"])] = stat
    return out


def _other_stats(spec: MethodSpec, stack: MapStack, layout: ProbeLayout, families: set[str],
                 ctx: dict) -> Stats:  # fmt: skip
    """MeGe/ReCo, quality and drift of one method."""
    label, stage, k, maps = spec.label, ctx["stage"], layout.num_models, stack.maps
    out: Stats = {}
    if "mege_reco" in families and k >= 2:
        for metric, mege_stat in mege_reco_statistics(
            maps, ctx["preds"], ctx["labels"], layout
        ).items():
            out[MetricKey(label, "pairs", "train", metric, stage)] = mege_stat
    if "quality" in families:
        for metric in metric_names("quality"):
            for split, stat in quality(maps, layout, metric).items():
                out[MetricKey(label, "mean", split, metric, stage)] = stat
    previous = ctx["previous"]
    if "drift" in families and previous is not None and label in previous:
        stat = drift(maps, previous[label], layout, normalize=ctx["normalize"])
        out[MetricKey(label, "mean", "test", "drift", stage)] = stat
    return out


def evaluate_epoch(
    maps: Mapping[str, MapStack | Tensor],
    layout: ProbeLayout,
    specs: Sequence[MethodSpec],
    *,
    labels: Tensor,
    preds: Tensor,
    families: Sequence[str] = DEFAULT_FAMILIES,
    normalize: bool = True,
    metrics: Sequence[MetricArg] | None = None,
    topk: float | None = None,
    previous: Mapping[str, Tensor] | None = None,
    stage: str = "fit",
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    chance_draws: int = CHANCE_DRAWS,
) -> EpochEvaluation:
    """Every number of one monitored epoch, with its standard error and 95% interval.

    ``maps[label]`` holds the ``(M, N, C, H, W)`` maps of the K models of ``layout`` (and,
    with K = 1, a reference model as source M = 2); ``preds`` the ``(M, N)`` predicted
    classes (negative where the logits were not finite), ``labels`` the ``(N,)`` true ones;
    ``previous[label]`` the K models' test-probe maps of the previous monitored epoch
    (drift); ``metrics`` the agreement metrics (names or specs with their parameters;
    default: every registered one); ``topk`` fills top-k's ``k`` where the spec leaves it
    (the compatibility path of the callback's ``topk``). The intervals cover probe-to-probe
    noise; the bootstrap (nonlinear statistics) draws from a generator seeded by ``seed``.
    """
    fam = set(families)
    stacks = {lb: m if isinstance(m, MapStack) else MapStack(m) for lb, m in maps.items()}
    pairing = ChancePairing(labels=labels, seed=seed, draws=chance_draws)
    ctx = {"stage": stage, "normalize": normalize, "metrics": metrics, "topk": topk,
           "preds": preds, "labels": labels, "previous": previous, "pairing": pairing}  # fmt: skip
    stats: Stats = {}
    if "prediction_agreement" in fam and preds.shape[0] >= 2:
        stats.update(_prediction_stats(preds, layout, stage))
    for spec in specs:
        stats.update(_method_stats(spec, stacks[spec.label], layout, fam, ctx))
    stats.update(_gap_reductions(specs, stats, stage))
    gen = torch.Generator().manual_seed(int(seed))
    counts = bootstrap_counts(
        {g: layout.rows(g).stop - layout.rows(g).start for g in layout.groups}, gen, resamples
    )
    estimates = estimate_all(stats, counts)
    estimates.update(_nonfinite_counts(specs, stacks, stage))
    return EpochEvaluation(
        estimates=estimates,
        statistics=stats,
        maps={lb: s.maps for lb, s in stacks.items()},
        preds=preds,
        methods=[s.label for s in specs],
    )


def _prediction_stats(preds: Tensor, layout: ProbeLayout, stage: str) -> Stats:
    """Prediction agreement, its chance level (sum_c p_i(c) p_j(c)) and Cohen's kappa."""
    out: Stats = {}
    for split in ("train", "test"):
        out[MetricKey.prediction_agreement(split, stage)] = prediction_agreement(preds, layout, split)
        for which, metric in (("chance", "prediction_agreement_chance"), ("kappa", "prediction_kappa")):
            out[MetricKey(NO_METHOD, "pairs", split, metric, stage)] = PredictionChance(
                preds, layout, split, which
            )
    return out


def nonfinite_key(method: str, stage: str = "fit") -> MetricKey:
    """The key counting a method's probes whose maps (of any model) are not finite."""
    return MetricKey(method, "models", "all", "nonfinite_maps", stage)


def _nonfinite_counts(
    specs: Sequence[MethodSpec], stacks: Mapping[str, MapStack], stage: str
) -> dict[MetricKey, Estimate]:
    """Per method, how many probes have a NaN, infinite or constant (e.g. all-zero) map for
    some model: their agreement numbers are NaN."""
    if not specs:
        return {}
    bad = torch.stack([(~informative_rows(stacks[s.label].maps.flatten(0, 1)))
                       .view(stacks[s.label].maps.shape[:2]).any(0).sum() for s in specs])  # fmt: skip
    n = stacks[specs[0].label].maps.shape[1]
    return {nonfinite_key(s.label, stage): Estimate(float(c), 0.0, float(c), float(c), n, int(c))
            for s, c in zip(specs, bad.tolist(), strict=True)}  # fmt: skip


def _gap_reductions(specs: Sequence[MethodSpec], stats: Stats, stage: str) -> Stats:
    """``|gap(plain simple_grad)| - |gap(L)|`` of every other method (needs the baseline)."""
    base = plain_baseline(specs)
    if base is None:
        return {}
    base_gap = stats.get(MetricKey(base.label, "mean", "gap", "gap", stage))
    if base_gap is None:
        return {}
    out: Stats = {}
    for spec in specs:
        gap = stats.get(MetricKey(spec.label, "mean", "gap", "gap", stage))
        if spec is not base and gap is not None:
            key = MetricKey(spec.label, "mean", "gap", "gap_reduction", stage)
            out[key] = gap_reduction(base_gap, gap)  # type: ignore[arg-type]
    return out

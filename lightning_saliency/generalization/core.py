"""The paper's quantities as pure functions on stacks of maps, one value per probe.

A *map stack* is ``(M, N, C, H, W)``: the maps of M sources (the K monitored models,
then an optional reference model) of the N probes of a
:class:`~lightning_saliency.generalization.ProbeLayout`. Each function returns
per-probe values (tensors) or :class:`~lightning_saliency.generalization.ProbeStatistic`
objects built from them, which :func:`~lightning_saliency.generalization.estimate`
turns into a value with its standard error and interval.

Example (two models, hand-made maps):
    >>> import torch
    >>> from lightning_saliency.generalization import ProbeLayout, estimate
    >>> layout = ProbeLayout.from_sizes([2, 2], 2)
    >>> maps = torch.zeros(2, 6, 1, 1, 2)
    >>> maps[:, :, 0, 0, 0] = 1.0              # every map points along x ...
    >>> maps[1, 4:, 0, 0, :] = 1.0             # ... but model 1's test maps are diagonal
    >>> loss = interpretation_loss(maps, leave_one_out_reference(maps))
    >>> [round(v, 4) for v in loss[0].tolist()]
    [0.0, 0.0, 0.0, 0.0, 0.7654, 0.7654]
    >>> round(estimate(interpretation_gap(loss, layout)).value, 4)
    0.7654
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_saliency.attribution import group_by_segments
from lightning_saliency.attribution.superpixels import GroupReduction
from lightning_saliency.metrics import (
    MetricSpec,
    agreement_specs,
    get_metric,
    l2_distance,
    normalize_maps,
    ssim_window,
)

from ._pair_features import PairFeatures
from ._shapes import check_against_layout
from .chance import ChancePairing
from .layout import ProbeLayout
from .schema import above_chance, chance, chance_same_class
from .statistics import ProbeStatistic, Transformed

__all__ = [
    "MapStack",
    "agreement_values",
    "drift",
    "gap_reduction",
    "interpretation_gap",
    "interpretation_loss",
    "leave_one_out_reference",
    "pairwise_agreement",
    "prediction_agreement",
    "quality",
    "split_statistics",
    "ssim_window",
]


@dataclass(frozen=True)
class MapStack:
    """Maps of M sources of N probes, with what a chance level needs for super-pixels.

    ``maps`` is ``(M, N, C, H, W)``; for a super-pixel method it holds the grouped maps,
    ``pixel`` its pixel twin's maps and ``segments`` the ``(N, H, W)`` segmentation of the
    probes, so that a chance pair can be grouped by the first probe's segments.
    """

    maps: Tensor
    pixel: Tensor | None = None
    segments: Tensor | None = None
    reduction: GroupReduction = "sum"

    @property
    def num_sources(self) -> int:
        return self.maps.shape[0]

    def partner_maps(self, j: int, rows: Tensor, partners: Tensor) -> Tensor:
        """Source j's maps of ``partners``, grouped by the segments of ``rows`` if grouped."""
        if self.pixel is None or self.segments is None:
            return self.maps[j, partners]
        seg = self.segments[rows.to(self.segments.device)]
        return group_by_segments(self.pixel[j, partners], seg, reduction=self.reduction)


def leave_one_out_reference(maps: Tensor, *, normalize: bool = True) -> Tensor:
    """``(K, N, ...)`` -> ``(K, N, ...)``: the reference of model k, the mean of the other
    models' (unit-normalized) maps, which model k's training data never shaped.

    >>> m = torch.tensor([[[3.0, 4.0]], [[0.0, 2.0]], [[1.0, 0.0]]])  # K=3, N=1, D=2
    >>> leave_one_out_reference(m)[0].tolist()
    [[0.5, 0.5]]
    """
    k = maps.shape[0]
    if k < 2:
        raise ValueError(f"the leave-one-out reference needs K >= 2 models; got K={k}")
    unit = normalize_maps(maps.flatten(0, 1)).view_as(maps) if normalize else maps
    return torch.stack([unit[[j for j in range(k) if j != i]].mean(0) for i in range(k)])


def interpretation_loss(maps: Tensor, reference: Tensor, *, normalize: bool = True) -> Tensor:
    """``(K, N)``: ``|| n(I_k(x)) - n(ref_k(x)) ||_2`` per model and probe (n = unit norm).

    ``reference`` is ``(K, N, ...)`` (e.g. :func:`leave_one_out_reference`) or ``(1, N, ...)``
    (one reference model's maps, for every model).

    >>> interpretation_loss(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]]))
    tensor([[1.4142]])
    """
    if reference.shape[0] not in (1, maps.shape[0]) or reference.shape[1:] != maps.shape[1:]:
        raise ValueError(
            f"reference {tuple(reference.shape)} does not match maps {tuple(maps.shape)}"
        )
    refs = reference.expand_as(maps) if reference.shape[0] == 1 else reference
    return torch.stack(
        [l2_distance(maps[k], refs[k], normalize=normalize) for k in range(maps.shape[0])]
    )


def split_statistics(
    values: Tensor, layout: ProbeLayout, model: int | None = None
) -> dict[str, ProbeStatistic]:
    """``{"train", "test", "gap"}`` statistics of a per-(model, probe) value ``(K, N)``.

    ``train``: model k's mean over its own train probes (averaged over models, or of
    ``model`` alone); ``test``: the mean over the shared test probes; ``gap``: test minus
    train, per model and then averaged.

    >>> v = torch.tensor([[1.0, 2.0, 5.0], [0.0, 1.0, 3.0]])  # K=2, one train probe each
    >>> s = split_statistics(v, ProbeLayout.from_sizes([1, 1], 1))
    >>> [float(s[k].point()) for k in ("train", "test", "gap")]
    [1.0, 4.0, 3.0]
    """
    check_against_layout("split_statistics", "values", values, layout, model=model)
    models = list(range(layout.num_models)) if model is None else [model]
    w = 1.0 / len(models)
    train = ProbeStatistic({f"train_{k}": w * values[k, layout.train[k]] for k in models})
    test = ProbeStatistic({"test": values[models][:, layout.test].mean(0)})
    return {"train": train, "test": test, "gap": test - train}


def interpretation_gap(
    loss: Tensor, layout: ProbeLayout, model: int | None = None
) -> ProbeStatistic:
    """The interpretation gap, test loss minus train loss (of ``model``, or averaged).

    >>> loss = torch.tensor([[0.1, 0.2, 0.5, 0.7]])  # K=1: 2 train, 2 test probes
    >>> round(float(interpretation_gap(loss, ProbeLayout.from_sizes([2], 2)).point()), 4)
    0.45
    """
    return split_statistics(loss, layout, model)["gap"]


def gap_reduction(baseline_gap: ProbeStatistic, method_gap: ProbeStatistic) -> Transformed:
    """``|gap(baseline)| - |gap(method)|``: how much closer to 0 the method's gap is (a gap
    is better closer to 0, whatever its sign). Nonlinear: estimated by the bootstrap.

    >>> a, b = ProbeStatistic({"test": torch.tensor([-0.3])}), ProbeStatistic({"test": torch.tensor([0.1])})
    >>> round(float(gap_reduction(a, b).point()), 4)
    0.2
    """
    return Transformed(lambda a, b: a.abs() - b.abs(), baseline_gap, method_gap)


MetricArg = str | Mapping[str, Any] | MetricSpec


def agreement_values(
    a: Tensor,
    b: Tensor,
    metrics: Sequence[MetricArg] | None = None,
    *,
    normalize: bool = True,
    topk: float | None = None,
) -> dict[str, Tensor]:
    """Per-probe agreement of two batches of maps for each metric of ``metrics`` (names,
    ``{"metric": name, **params}`` or :class:`~lightning_saliency.metrics.MetricSpec`;
    default: every registered agreement metric). ``normalize`` and ``topk`` fill the
    specs' ``normalize`` and top-k's ``k`` where they do not set them (compatibility).

    >>> v = agreement_values(torch.ones(2, 1, 3, 3), torch.ones(2, 1, 3, 3), ["l2", "topk"])
    >>> v["l2"].tolist(), v["topk"].tolist()  # a constant map ranks nothing: top-k NaN
    ([0.0, 0.0], [nan, nan])
    """
    specs = agreement_specs(metrics, normalize=normalize, topk=topk)
    return _values(specs, a, b)


def _values(specs: Sequence[MetricSpec], a: Tensor, b: Tensor) -> dict[str, Tensor]:
    return {s.name: s(a, b).reshape(-1) for s in specs}


def _pair_rows(layout: ProbeLayout, i: int, j: int, split: str, device: torch.device) -> tuple:
    groups = layout.pair_groups(i, j, split)
    parts = [layout.rows(g) for g in groups]
    rows = torch.cat([torch.arange(p.start, p.stop, device=device) for p in parts])
    return groups, rows, [p.stop - p.start for p in parts]


def _pairwise(
    layout: ProbeLayout,
    num_sources: int,
    split: str,
    device: torch.device,
    fn: Callable[[int, int, Tensor], dict[str, Tensor]],
) -> dict[str, ProbeStatistic]:
    """Average ``fn(i, j, rows)`` (per-probe values of each pair of sources) over the pairs
    that contain each probe, then over the probes: one statistic per name."""
    values: dict[str, dict[str, list[Tensor]]] = {}
    for i, j in itertools.combinations(range(num_sources), 2):
        groups, rows, sizes = _pair_rows(layout, i, j, split, device)
        for name, v in fn(i, j, rows).items():
            for g, part in zip(groups, v.split(sizes), strict=True):
                values.setdefault(name, {}).setdefault(g, []).append(part)
    out = {}
    for name, by_group in values.items():
        total = sum(parts[0].numel() for parts in by_group.values())
        out[name] = ProbeStatistic(
            {g: torch.stack(p).mean(0) * (p[0].numel() / total) for g, p in by_group.items()}
        )
    return out


def pairwise_agreement(
    stack: MapStack | Tensor,
    layout: ProbeLayout,
    split: str,
    *,
    metrics: Sequence[MetricArg] | None = None,
    chance: bool = True,
    pairing: ChancePairing | None = None,
    normalize: bool = True,
    topk: float | None = None,
    features: PairFeatures | None = None,
) -> dict[str, ProbeStatistic]:
    """Agreement of every pair of sources on ``split`` probes, per metric (as
    :func:`agreement_values`); with ``chance`` also the chance levels (:mod:`.chance`) of
    the metrics that have one: ``<metric>_chance`` (class-blind, averaged over random
    derangements of the probes), ``<metric>_chance_same_class``, and
    ``<metric>_above_chance``, the paired excess over the class-blind level, oriented by
    the metric's direction (positive: more agreement than chance). ``features`` (a
    :class:`~._pair_features.PairFeatures` of ``stack`` and the same metrics) shares each
    map's features between calls (the splits of an epoch).

    >>> maps = torch.randn(2, 6, 1, 4, 4)
    >>> s = pairwise_agreement(maps, ProbeLayout.from_sizes([2, 2], 2), "test", metrics=["l2"])
    >>> sorted(s)
    ['l2', 'l2_above_chance', 'l2_chance', 'l2_chance_same_class']
    """
    if isinstance(stack, Tensor):
        stack = MapStack(stack)
    check_against_layout("pairwise_agreement", "maps", stack.maps, layout)
    pairing = ChancePairing() if pairing is None else pairing
    specs = agreement_specs(metrics, normalize=normalize, topk=topk)
    with_chance = [s for s in specs if s.info.chance is not None] if chance else []
    # each map's ranks, masks... once for every pair, draw and split (issue 21)
    feats = PairFeatures(stack, specs) if features is None else features
    if feats.stack.maps is not stack.maps:
        raise ValueError("pairwise_agreement: `features` were built for other maps than `stack`")

    def per_pair(i: int, j: int, rows: Tensor) -> dict[str, Tensor]:
        out = feats.values(i, j, rows, rows, only=specs)
        if with_chance:
            out.update(_chance_values(feats, i, j, rows, pairing, with_chance, out))
        return out

    return _pairwise(layout, stack.num_sources, split, stack.maps.device, per_pair)


def _chance_values(
    feats: PairFeatures, i: int, j: int, rows: Tensor, pairing: ChancePairing,
    specs: Sequence[MetricSpec], agree: dict[str, Tensor],
) -> dict[str, Tensor]:  # fmt: skip
    """Per-probe chance levels of source i against source j's maps of other probes (the
    registry's ``"other_probes"`` rule)."""
    n = rows.numel()
    metrics = [s.name for s in specs]
    nan = torch.full((n,), float("nan"), device=rows.device)
    if n < 2:  # no other probe to pair with: undefined, not a self-pairing
        blind = same = dict.fromkeys(metrics, nan)
    else:
        perms = pairing.derangements(rows)  # (draws, n): all draws in one call per metric
        blind = {m: v.view(perms.shape[0], n).mean(0) for m, v in feats.values(
            i, j, rows.repeat(perms.shape[0]), perms.reshape(-1), chance=True, only=specs).items()}  # fmt: skip
        partner = pairing.same_class(rows)
        valid = partner >= 0
        same = dict.fromkeys(metrics, nan)
        if bool(valid.any()):
            same = {m: torch.where(valid, v, torch.nan) for m, v in feats.values(
                i, j, rows, partner.clamp_min(0), chance=True, only=specs).items()}  # fmt: skip
    out = {}
    for spec in specs:
        m = spec.name
        out[_chance(m)] = blind[m]
        out[chance_same_class(m)] = same[m]
        out[above_chance(m)] = spec.info.excess(agree[m], blind[m])
    return out


_chance = chance  # the argument `chance` shadows the schema's name inside pairwise_agreement


def prediction_agreement(preds: Tensor, layout: ProbeLayout, split: str) -> ProbeStatistic:
    """Fraction of probes on which two sources predict the same class, over source pairs
    (a proportion: its interval is a Wilson score interval). A negative prediction marks a
    probe whose logits were not finite: its agreement is NaN, not a match.

    >>> p = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 3]])
    >>> float(prediction_agreement(p, ProbeLayout.from_sizes([1, 1], 2), "test").point())
    0.5
    """
    check_against_layout("prediction_agreement", "preds", preds, layout)

    def same(i: int, j: int, rows: Tensor) -> dict[str, Tensor]:
        a, b = preds[i, rows], preds[j, rows]
        agree = (a == b).double()
        return {"agree": torch.where((a >= 0) & (b >= 0), agree, torch.nan)}

    stat = _pairwise(layout, preds.shape[0], split, preds.device, same)["agree"]
    return ProbeStatistic(stat.terms, proportion=True)


def quality(maps: Tensor, layout: ProbeLayout, metric: str) -> dict[str, ProbeStatistic]:
    """Train/test/gap statistics of a reference-free quality metric of the models' maps
    (``"sparseness"``: Gini index of |map|; ``"complexity"``: entropy of |map| / sum |map|).

    >>> s = quality(torch.rand(2, 6, 1, 4, 4), ProbeLayout.from_sizes([2, 2], 2), "sparseness")
    >>> sorted(s)
    ['gap', 'test', 'train']
    """
    fn = get_metric(metric, "quality").fn
    assert fn is not None  # a quality metric is a function of maps
    check_against_layout("quality", "maps", maps, layout)
    k = layout.num_models
    return split_statistics(torch.stack([fn(maps[m]) for m in range(k)]), layout)


def drift(
    maps: Tensor, previous: Tensor, layout: ProbeLayout, *, normalize: bool = True
) -> ProbeStatistic:
    """Distance between each model's test maps and its test maps of the previous monitored
    epoch (``previous``: ``(K, n_test, ...)``), averaged over models.

    >>> m = torch.ones(1, 2, 1, 2, 2)
    >>> float(drift(m, m[:, 1:], ProbeLayout.from_sizes([1], 1)).point())
    0.0
    """
    check_against_layout("drift", "maps", maps, layout)
    t = layout.test
    if previous.shape[1] != t.stop - t.start:
        raise ValueError(
            f"previous maps hold {previous.shape[1]} test probes, the layout {t.stop - t.start}"
        )
    per_model = [
        l2_distance(maps[k, t], previous[k].to(maps.device), normalize=normalize)
        for k in range(layout.num_models)
    ]
    return ProbeStatistic({"test": torch.stack(per_model).mean(0)})

"""Two evaluation families of the peers (Quantus, Xplique), as per-probe statistics.

* **faithfulness** (:func:`faithfulness_statistics`): do the maps point at what the model
  uses? Per probe: muFidelity (Bhatt et al. 2020, :func:`~lightning_saliency.metrics.mu_fidelity`:
  Pearson correlation of the summed attribution of random pixel subsets with the drop of the
  target *logit* when they are set to the baseline; higher is better), and the deletion and
  insertion AUC (Samek et al. 2016; Petsiuk et al. 2018,
  :func:`~lightning_saliency.metrics.perturbation_curves`: the target-class *softmax
  probability* as pixels are removed from the probe, or put back into the baseline image, in
  the order of the channel-summed ``|map|``; deletion lower is better, insertion higher).
  It scores maps the callback already has: no attribution pass, only forward passes
  (``2 * steps + num_subsets + 1`` images per probe and model).
* **randomization** (:func:`randomization_statistics`): do the maps depend on the model at
  all? The sanity check of Adebayo et al. 2018, cascading: per probe, the similarity
  (Spearman of the channel-summed ``|map|``; SSIM) between a model's test maps and those of its
  copy with the top layers re-initialized (:mod:`.randomization`), at each cascade level.
  Low similarity means the maps depend on the learned weights: the check passes. It costs one
  attribution pass of the test probes per model and distinct cascade depth (3 at the defaults),
  plus one more per model for a stochastic method (its original maps are recomputed so that
  the copies see the same noise draws). The repaired variants of Binder et al. 2023
  (:mod:`.mprt`) are asked for by name in ``metrics``: ``entropy_rise`` (Efficient MPRT,
  from the same maps: no extra pass) and ``smooth_spearman``/``smooth_ssim`` (Smooth MPRT,
  ``samples`` passes per depth and model).

Both return :class:`ProbeStatistic` values keyed by :class:`MetricKey`, so every estimate
gets its interval from the probe groups (train_k, test) as every other number does.

Example: a linear model, its exact gradient x input maps.
    >>> import torch
    >>> from torch import nn
    >>> from lightning_saliency.generalization import ProbeLayout, estimate_all
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    >>> layout = ProbeLayout.from_sizes([4], 4)
    >>> x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    >>> maps = (x * net[1].weight[y].view(8, 1, 4, 4)).detach().unsqueeze(0)  # (M=1, N, ...)
    >>> stats = faithfulness_statistics([net], x, y, maps, layout, method_label="gxi", steps=4)
    >>> mu = estimate_all(stats)[MetricKey("gxi", "mean", "test", "mu_fidelity")]
    >>> round(mu.value, 4)  # exact attributions of a linear model: correlation 1
    1.0
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode
from lightning_saliency.attribution import MethodSpec, method_is_stochastic, resolve_method
from lightning_saliency.attribution._chunks import chunk_rows
from lightning_saliency.metrics import (
    DEFAULT_PERTURBATION_ROWS,
    DEFAULT_PERTURBATION_STEPS,
    mu_fidelity,
    perturbation_curves,
)

from .core import MapStack, agreement_values, split_statistics
from .epoch import compute_maps
from .layout import ProbeLayout
from .mprt import (
    MPRT_VARIANT_METRICS,
    SMOOTH_MPRT_NOISE,
    SMOOTH_MPRT_SAMPLES,
    entropy_rise,
    smooth_randomization_values,
)
from .randomization import Reinit, cascade_copies
from .schema import (
    FAITHFULNESS_METRICS,
    OPT_IN_FAMILIES,
    RANDOMIZATION_CASCADE,
    RANDOMIZATION_METRICS,
    MetricKey,
    randomization_metric,
)
from .statistics import ProbeStatistic

__all__ = [
    "faithfulness_statistics",
    "faithfulness_values",
    "family_statistics",
    "randomization_statistics",
    "randomization_values",
]

def _derived_seed(seed: int, *parts: str) -> int:
    """A seed of its own for each use of the callback's ``seed`` (as ``MethodSpec.noise_seed``)."""
    return (int(seed) * 1_000_003 + zlib.crc32("/".join(parts).encode())) % (2**63 - 1)


def _rows_per_forward(model: nn.Module, x: Tensor, batch_size: int | None,
                      memory_budget_mb: float | None) -> int:  # fmt: skip
    """Perturbed images per forward: ``batch_size``, else the attribution engine's memory
    budget (what a backward would keep bounds a no-grad forward), on CPU at most
    ``DEFAULT_PERTURBATION_ROWS`` (cache-sized chunks are faster there)."""
    if batch_size is not None:
        return batch_size
    rows = chunk_rows(model, x, None, memory_budget_mb)
    return rows if x.is_cuda else min(DEFAULT_PERTURBATION_ROWS, rows)


def faithfulness_values(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    maps: Tensor,
    *,
    metrics: Sequence[str] = FAITHFULNESS_METRICS,
    generator: torch.Generator | None = None,
    steps: int = DEFAULT_PERTURBATION_STEPS,
    baseline: float | Tensor = 0.0,
    relevance: str | None = None,
    num_subsets: int | None = None,
    subset_fraction: float | None = None,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """Per-probe ``(N,)`` values of each faithfulness metric of ``maps`` (of ``model``).

    ``None`` leaves an option at its metric's default (``relevance="abs_sum"`` of
    :func:`~lightning_saliency.metrics.perturbation_curves`; ``num_subsets=32``,
    ``subset_fraction=0.2`` of :func:`~lightning_saliency.metrics.mu_fidelity`).
    """
    unknown = sorted(set(metrics) - set(FAITHFULNESS_METRICS))
    if unknown:
        raise ValueError(f"unknown faithfulness metrics {unknown}; known: {FAITHFULNESS_METRICS}")
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    out: dict[str, Tensor] = {}
    if "mu_fidelity" in metrics:
        out["mu_fidelity"] = mu_fidelity(
            model, x, maps, target, baseline=baseline, generator=generator, batch_size=batch_size,
            **given(num_subsets=num_subsets, subset_fraction=subset_fraction),
        )  # fmt: skip
    if {"deletion_auc", "insertion_auc"} & set(metrics):
        curves = perturbation_curves(
            model, x, maps, target, steps=steps, baseline=baseline, batch_size=batch_size,
            **given(relevance=relevance),
        )  # fmt: skip
        out["deletion_auc"], out["insertion_auc"] = curves.deletion_auc, curves.insertion_auc
    return {m: out[m] for m in metrics}


def faithfulness_statistics(
    models: Sequence[nn.Module],
    x: Tensor,
    target: Tensor,
    maps: MapStack | Tensor,
    layout: ProbeLayout,
    *,
    method_label: str,
    stage: str = "fit",
    seed: int = 0,
    metrics: Sequence[str] = FAITHFULNESS_METRICS,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    **options: Any,
) -> dict[MetricKey, ProbeStatistic]:
    """Train/test/gap statistics of each faithfulness metric of one method's maps.

    ``maps`` ``(M, N, C, H, W)`` holds the maps of the K = ``len(models)`` models of
    ``layout`` (a reference source, M = K + 1, is not scored). Model k is scored on its own
    train probes and on the test probes (``train`` = mean over models of their own probes,
    ``test`` = mean over models per test probe, ``gap`` = test - train), under
    ``MetricKey(method_label, "mean", split, metric, stage)``. muFidelity's subsets come from a
    generator seeded from ``seed`` and the probe group on ``x``'s device: the same subsets for
    every model and method on the test probes. ``options`` go to :func:`faithfulness_values`
    (``steps``, ``baseline``, ``relevance``, ``num_subsets``, ``subset_fraction``).
    """
    stack = maps.maps if isinstance(maps, MapStack) else maps
    k_models = layout.num_models
    if len(models) != k_models or stack.shape[0] < k_models or stack.shape[1] != len(x):
        raise ValueError(
            f"{len(models)} models and maps {tuple(stack.shape)} do not match the layout of "
            f"{k_models} models and {layout.num_probes} probes (x has {len(x)})"
        )
    values = {m: torch.full((k_models, len(x)), torch.nan, device=x.device) for m in metrics}
    for k, model in enumerate(models):
        rows_per = _rows_per_forward(model, x, batch_size, memory_budget_mb)
        for group in (f"train_{k}", "test"):
            rows = layout.rows(group)
            gen = torch.Generator(device=x.device).manual_seed(
                _derived_seed(seed, "mu_fidelity", group)
            )
            got = faithfulness_values(model, x[rows], target[rows], stack[k, rows].to(x.device),
                                      metrics=metrics, generator=gen, batch_size=rows_per,
                                      **options)  # fmt: skip
            for m, v in got.items():
                values[m][k, rows] = v.to(values[m].dtype)
    out: dict[MetricKey, ProbeStatistic] = {}
    for m in metrics:
        for split, stat in split_statistics(values[m], layout).items():
            out[MetricKey(method_label, "mean", split, m, stage)] = stat
    return out


def randomization_values(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    spec: MethodSpec | str | Mapping[str, Any],
    original: Tensor,
    *,
    cascade: Sequence[str] = RANDOMIZATION_CASCADE,
    seed: int = 0,
    weight_seed: int = 0,
    metrics: Sequence[str] = RANDOMIZATION_METRICS,
    segments: Tensor | None = None,
    reinit: Reinit | None = None,
    **map_options: Any,
) -> dict[str, dict[str, Tensor]]:
    """``{level: {metric: (N,)}}``: similarity of ``original`` (``model``'s maps of ``x``) to
    the maps of ``model``'s copy randomized up to each cascade level, computed with the same
    spec and the same noise seed (``seed``, as :func:`compute_maps`); the new weights come from
    ``weight_seed``. ``metrics``: agreement metrics and ``entropy_rise`` (Efficient MPRT:
    :func:`~.mprt.entropy_rise` of ``original`` and the copy's maps). ``map_options`` go to
    :func:`compute_maps` (``input_range``, ``precision``, ``channels_last``, ``batch_size``)."""
    spec = resolve_method(spec)
    seg = None if segments is None else {spec.label: segments}
    agree = [m for m in metrics if m != "entropy_rise"]
    out: dict[str, dict[str, Tensor]] = {}
    last: tuple[int, dict[str, Tensor]] | None = None
    for level, depth, twin in cascade_copies(model, x, cascade, seed=weight_seed, reinit=reinit):
        if last is None or last[0] != depth:  # one attribution pass per distinct depth
            maps = compute_maps([twin], x, target, [spec], seed=seed, segments=seg, **map_options)
            new = maps[spec.label].maps[0]
            values = agreement_values(original, new, agree)
            if "entropy_rise" in metrics:  # Efficient MPRT, from the same maps
                values["entropy_rise"] = entropy_rise(original, new).to(new.dtype)
            last = depth, {m: values[m] for m in metrics}
        out[level] = last[1]
    return {level: out[level] for level in cascade}


def randomization_statistics(
    models: Sequence[nn.Module],
    x: Tensor,
    target: Tensor,
    spec: MethodSpec | str | Mapping[str, Any],
    maps: MapStack | Tensor | None,
    layout: ProbeLayout,
    *,
    seed: int = 0,
    cascade: Sequence[str] = RANDOMIZATION_CASCADE,
    stage: str = "fit",
    metrics: Sequence[str] = RANDOMIZATION_METRICS,
    segments: Tensor | None = None,
    reinit: Reinit | None = None,
    smooth_samples: int = SMOOTH_MPRT_SAMPLES,
    smooth_noise_level: float = SMOOTH_MPRT_NOISE,
    **map_options: Any,
) -> dict[MetricKey, ProbeStatistic]:
    """Test-probe statistics of each randomization similarity at each cascade level.

    ``maps`` ``(M, N, ...)`` are the spec's maps of all probes computed with ``seed`` (the
    callback's); the test rows of the K models' maps are reused for a deterministic spec,
    recomputed for a stochastic one (or when ``maps`` is None). ``segments`` ``(N, H, W)`` is
    the spec's segmentation for a super-pixel spec. Each model's copy gets its own weight seed
    derived from ``seed``. Keys: ``MetricKey(label, "mean", "test",
    randomization_metric(metric, level), stage)``, a mean over models per test probe.
    ``metrics`` may name :data:`~.mprt.MPRT_VARIANT_METRICS` too; Smooth MPRT's average
    ``smooth_samples`` maps at ``smooth_noise_level``, with noise drawn from a seed derived
    from ``seed`` (the same draws for every model and copy).
    """
    spec = resolve_method(spec)
    t, k_models = layout.test, layout.num_models
    if len(models) != k_models:
        raise ValueError(f"{len(models)} models for a layout of {k_models} models")
    known = (*RANDOMIZATION_METRICS, *MPRT_VARIANT_METRICS)
    unknown = sorted(set(metrics) - set(known))
    if unknown:
        raise ValueError(f"unknown randomization metrics {unknown}; known: {list(known)}")
    plain = [m for m in metrics if not m.startswith("smooth_")]
    smooth = [m for m in metrics if m.startswith("smooth_")]
    xt, yt = x[t], target[t]
    seg = None if segments is None else segments[t]
    if not plain:
        originals = None
    elif maps is None or method_is_stochastic(spec):
        seg_map = None if seg is None else {spec.label: seg}
        originals = compute_maps(models, xt, yt, [spec], seed=seed, segments=seg_map,
                                 **map_options)[spec.label].maps  # fmt: skip
    else:
        originals = (maps.maps if isinstance(maps, MapStack) else maps)[:k_models, t]
    per_model: list[dict[str, dict[str, Tensor]]] = []
    for k, model in enumerate(models):
        common: dict[str, Any] = dict(cascade=cascade, seed=seed, segments=seg, reinit=reinit,
                                      weight_seed=_derived_seed(seed, "randomization", str(k)),
                                      **map_options)  # fmt: skip
        values: dict[str, dict[str, Tensor]] = {level: {} for level in cascade}
        if originals is not None:
            values = randomization_values(model, xt, yt, spec, originals[k].to(x.device),
                                          metrics=plain, **common)  # fmt: skip
        if smooth:
            extra = smooth_randomization_values(
                model, xt, yt, spec, metrics=smooth, samples=smooth_samples,
                noise_level=smooth_noise_level, noise_seed=_derived_seed(seed, "smooth_mprt"),
                **common,
            )  # fmt: skip
            values = {lv: {**values[lv], **extra[lv]} for lv in cascade}
        per_model.append(values)
    out: dict[MetricKey, ProbeStatistic] = {}
    for level in cascade:
        for m in metrics:
            v = torch.stack([values[level][m] for values in per_model]).mean(0)
            key = MetricKey(spec.label, "mean", "test", randomization_metric(m, level), stage)
            out[key] = ProbeStatistic({"test": v})
    return out


def family_statistics(
    models: Sequence[nn.Module],
    x: Tensor,
    target: Tensor,
    maps: Mapping[str, MapStack | Tensor],
    layout: ProbeLayout,
    specs: Sequence[MethodSpec],
    *,
    families: Sequence[str] = OPT_IN_FAMILIES,
    seed: int = 0,
    stage: str = "fit",
    segments: Mapping[str, Tensor] | None = None,
    cascade: Sequence[str] = RANDOMIZATION_CASCADE,
    randomized: Sequence[nn.Module] | None = None,
    randomization_metrics: Sequence[str] = RANDOMIZATION_METRICS,
    **map_options: Any,
) -> dict[MetricKey, ProbeStatistic]:
    """The opt-in families' statistics (``families`` from :data:`OPT_IN_FAMILIES`) of every
    spec's maps, the models in eval mode: what the callback adds to a monitored epoch.

    ``maps[label]`` ``(M, N, ...)`` holds the spec's maps of the K = ``len(models)`` models;
    ``segments[label]`` ``(N, H, W)`` a super-pixel spec's segmentation; ``randomized`` the
    models whose copies the cascade re-initializes (default ``models``: the callback scores
    faithfulness on its BatchNorm-folded copies and randomizes the models as they are, so a
    normalization layer keeps its statistics, ``docs/metrics.md``); ``map_options`` go
    to :func:`compute_maps` for the randomized copies (``input_range``, ``precision``,
    ``channels_last``, ``batch_size``); ``randomization_metrics`` may add the repaired MPRT
    variants (:data:`~.mprt.MPRT_VARIANT_METRICS`) to the cascading similarities.
    """
    unknown = sorted(set(families) - set(OPT_IN_FAMILIES))
    if unknown:
        raise ValueError(f"unknown opt-in families {unknown}; known: {OPT_IN_FAMILIES}")
    randomized = models if randomized is None else randomized
    out: dict[MetricKey, ProbeStatistic] = {}
    with eval_mode(*models, *randomized):
        for spec in specs:
            if "faithfulness" in families:
                out.update(faithfulness_statistics(
                    models, x, target, maps[spec.label], layout, method_label=spec.label,
                    stage=stage, seed=seed, batch_size=map_options.get("batch_size"),
                ))  # fmt: skip
            if "randomization" in families:
                seg = None if segments is None else segments.get(spec.label)
                out.update(randomization_statistics(
                    randomized, x, target, spec, maps[spec.label], layout, seed=seed,
                    cascade=cascade, stage=stage, segments=seg,
                    metrics=randomization_metrics, **map_options,
                ))  # fmt: skip
    return out

"""One monitored epoch: maps of every model on the fixed probes, then every number.

This module holds no Lightning state: given models, probes and method specs it
returns :class:`Record` rows, the maps shown in image grids and the maps kept for
the next epoch's drift. The callback decides when to call it and where the rows go.
"""

from __future__ import annotations

import functools
import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode
from lightning_saliency.attribution import MethodSpec, compute_attribution, group_by_segments
from lightning_saliency.metrics import (
    complexity,
    l2_distance,
    mege_reco,
    normalize_maps,
    prediction_agreement,
    sparseness,
    spearman,
    ssim,
    topk_intersection,
)

from ._probes import ProbeSet

__all__ = ["FAMILIES", "EpochResult", "Record", "compute_epoch", "method_seed"]

#: Agreement metrics between two models' maps, each also logged as ``<metric>_chance``.
AGREEMENT_METRICS = ("l2", "spearman", "topk", "ssim")
#: Metric families a user can ask for; the reference-needing ones are in REFERENCE_FAMILIES.
FAMILIES = ("gap", "agreement", "mege_reco", "quality", "drift", "prediction_agreement")
REFERENCE_FAMILIES = ("gap", "agreement", "mege_reco")


@dataclass(frozen=True)
class Record:
    """One logged number, in the long format of ``interpretation_metrics.csv``."""

    tag: str
    method: str
    model: str
    split: str
    metric: str
    value: float


@dataclass
class EpochResult:
    records: list[Record]
    maps: dict[str, Tensor]  # label -> (M, N, C, H, W) maps of every model (and reference)
    preds: Tensor  # (M, N) predicted classes


def method_seed(seed: int, label: str) -> int:
    """A stable per-method seed (the same for every model: common random numbers).

    Example:
        >>> method_seed(0, "smooth_grad_s0.2") == method_seed(0, "smooth_grad_s0.2")
        True
    """
    return (int(seed) * 1_000_003 + zlib.crc32(label.encode())) % (2**63 - 1)


@torch.no_grad()
def _logits(models: Sequence[nn.Module], x: Tensor, batch_size: int) -> Tensor:
    out = []
    for model in models:
        parts = [model(x[i : i + batch_size]).float() for i in range(0, x.shape[0], batch_size)]
        out.append(torch.cat(parts))
    return torch.stack(out)


def _add(
    records: list[Record], label: str, model: str, split: str, metric: str, value: float, tag: str
) -> None:
    records.append(Record(tag, label, model, split, metric, value))


def _mean(t: Tensor) -> float:
    t = t.float()
    finite = t[torch.isfinite(t)]
    return float(finite.mean()) if finite.numel() else float("nan")


def _ssim_window(h: int, w: int) -> int | None:
    """SSIM's default window (11 px) where the maps are large enough, else the largest odd
    size that fits (8x8 digits: 7), so small images are scored instead of failing."""
    side = min(h, w)
    return None if side >= 11 else (side if side % 2 else side - 1)


def compute_epoch(
    models: Sequence[nn.Module],
    probes: ProbeSet,
    specs: Sequence[MethodSpec],
    *,
    reference: nn.Module | None = None,
    families: Sequence[str] = FAMILIES,
    normalize: bool = True,
    target: str = "label",
    precision: str = "32",
    channels_last: bool = False,
    seed: int = 0,
    input_range: tuple[float, float] | None = None,
    segments: dict[str, Tensor] | None = None,
    previous: dict[str, Tensor] | None = None,
    topk: float = 0.1,
    batch_size: int | None = None,
    baseline_label: str | None = None,
) -> EpochResult:
    """Compute every record of one monitored epoch.

    ``models`` are the K monitored models (K >= 2: leave-one-out reference); with
    K = 1, ``reference`` (if given) is the reference model. ``segments`` maps a
    segmenter key (see :func:`lightning_saliency.attribution.segmenter_args`) to the
    cached segmentation of ``probes``. ``previous`` holds last epoch's maps for drift.
    """
    fam = set(families)
    k_models = len(models)
    has_ref = k_models >= 2 or reference is not None
    all_models = list(models) + ([reference] if (reference is not None and k_models == 1) else [])
    x = probes.x
    bs = batch_size or 256
    records: list[Record] = []

    with eval_mode(*all_models):
        logits = _logits(all_models, x, bs)  # (M, N, classes)
    preds = logits.argmax(-1)
    if target == "label":
        tgt = probes.y
    else:  # "pred": one class per probe so that every model explains the same class
        tgt = logits[:k_models].mean(0).argmax(-1)
    labels = probes.y

    train_rows = [probes.part(f"train_{k}") for k in range(k_models)]
    test_rows = probes.part("test")

    def rows_of(pair: tuple[int, int], split: str) -> Tensor:
        if split == "test":
            return torch.arange(test_rows.start, test_rows.stop, device=x.device)
        i, j = pair
        parts = [train_rows[m] for m in {i, j} if m < k_models]
        return torch.cat([torch.arange(s.start, s.stop, device=x.device) for s in parts])

    pairs = list(itertools.combinations(range(len(all_models)), 2)) if has_ref else []
    ssim_window = _ssim_window(*x.shape[-2:])

    def agreement(a: Tensor, b: Tensor | None) -> dict[str, float]:
        """Mean agreement of two stacks of maps; NaN for every metric when ``b`` is None."""
        if b is None:
            return dict.fromkeys(AGREEMENT_METRICS, float("nan"))
        return {
            "l2": _mean(l2_distance(a, b, normalize=normalize)),
            "spearman": _mean(spearman(a, b)),
            "topk": _mean(topk_intersection(a, b, k=topk)),
            "ssim": _mean(ssim(a, b, win_size=ssim_window)),
        }

    if "prediction_agreement" in fam and len(all_models) >= 2:
        for split in ("train", "test"):
            vals = [
                float(
                    prediction_agreement(
                        preds[i, rows_of((i, j), split)], preds[j, rows_of((i, j), split)]
                    )
                )
                for i, j in pairs
            ]
            records.append(
                Record(
                    f"interp/prediction_agreement/{split}",
                    "-",
                    "pairs",
                    split,
                    "prediction_agreement",
                    sum(vals) / len(vals),
                )
            )

    # Pixel maps per (method, params), computed once per epoch: a super-pixel spec is the
    # grouping of its pixel twin's maps (the same noise draws), so "smooth_grad" and
    # "smooth_grad + slic" cost one attribution pass and differ only by the grouping.
    pixel_maps: dict[tuple[str, object], Tensor] = {}

    def maps_of(spec: MethodSpec) -> Tensor:
        key = (spec.method, spec.params)
        if key not in pixel_maps:
            twin = MethodSpec(spec.method, spec.params)  # canonical label: seeds the noise
            maps = []
            for model in all_models:
                gen = torch.Generator(device=x.device).manual_seed(method_seed(seed, twin.label))
                maps.append(
                    compute_attribution(
                        twin,
                        model,
                        x,
                        tgt,
                        generator=gen,
                        input_range=input_range,
                        precision=precision,
                        channels_last=channels_last,
                        batch_size=batch_size,
                    )
                )
            pixel_maps[key] = torch.stack(maps)  # (M, N, C, H, W)
        return pixel_maps[key]

    maps_out: dict[str, Tensor] = {}
    gaps: dict[str, float] = {}
    for spec in specs:
        label = spec.label
        seg = None
        if spec.superpixel is not None:
            seg = segments.get(label) if segments is not None else None
            if seg is None:
                raise ValueError(
                    f"spec {label!r} groups by super-pixels but no segmentation of the probes "
                    "was given for it"
                )
        maps_t = pixel_t = maps_of(spec)
        reduction = spec.superpixel["reduction"] if spec.superpixel is not None else None
        if seg is not None:
            maps_t = torch.stack([group_by_segments(m, seg, reduction=reduction) for m in maps_t])
        maps_out[label] = maps_t

        rec = functools.partial(_add, records, label)

        # Interpretation loss against the reference, and the gap.
        if "gap" in fam and has_ref:
            nmaps = normalize_maps(maps_t.flatten(0, 1)).view_as(maps_t) if normalize else maps_t
            losses = {"train": [], "test": [], "gap": []}
            for k in range(k_models):
                if k_models >= 2:
                    others = [j for j in range(k_models) if j != k]
                    ref = nmaps[others].mean(0)
                else:
                    ref = nmaps[1]
                tr = _mean(
                    l2_distance(maps_t[k, train_rows[k]], ref[train_rows[k]], normalize=normalize)
                )
                te = _mean(l2_distance(maps_t[k, test_rows], ref[test_rows], normalize=normalize))
                for name, value in (("train_loss", tr), ("test_loss", te), ("gap", te - tr)):
                    split = {"train_loss": "train", "test_loss": "test", "gap": "gap"}[name]
                    rec(
                        f"model_{k}",
                        split,
                        "loss" if name != "gap" else "gap",
                        value,
                        f"interp/{label}/model_{k}/{name}",
                    )
                losses["train"].append(tr)
                losses["test"].append(te)
                losses["gap"].append(te - tr)
            mean = {key: sum(v) / len(v) for key, v in losses.items()}
            rec("mean", "train", "loss", mean["train"], f"interp/{label}/train_loss")
            rec("mean", "test", "loss", mean["test"], f"interp/{label}/test_loss")
            rec("mean", "gap", "gap", mean["gap"], f"interp/{label}/gap")
            gaps[label] = mean["gap"]

        # Agreement between models (or model and reference) on each probe set.
        if "agreement" in fam and has_ref:
            for split in ("train", "test"):
                vals: dict[str, list[float]] = {}
                for i, j in pairs:
                    r = rows_of((i, j), split)
                    # chance level: model j's maps of the previous probe (cyclically), no
                    # probe paired with itself; NaN with fewer than two probes. A grouped
                    # spec groups that map by probe r's segments, so that the pair shares
                    # the segmentation (a super-pixel's size alone makes maps agree)
                    chance = None
                    if r.numel() >= 2:
                        other = r.roll(1)
                        chance = maps_t[j, other]
                        if seg is not None:
                            chance = group_by_segments(
                                pixel_t[j, other], seg[r.to(seg.device)], reduction
                            )
                    for suffix, b in (("", maps_t[j, r]), ("_chance", chance)):
                        for metric, value in agreement(maps_t[i, r], b).items():
                            vals.setdefault(metric + suffix, []).append(value)
                for metric, v in vals.items():
                    rec("pairs", split, metric, sum(v) / len(v), f"interp/{label}/{split}/{metric}")

        if "mege_reco" in fam and k_models >= 2:
            r = probes.train_rows()
            mege, reco = mege_reco(
                maps_t[:k_models, r],
                preds[:k_models, r],
                labels[r],
                probes.seen[:, r],
                pairs="one_seen",
            )
            rec("pairs", "train", "mege", float(mege), f"interp/{label}/mege")
            rec("pairs", "train", "reco", float(reco), f"interp/{label}/reco")

        # Reference-free quality of the monitored models' maps.
        if "quality" in fam:
            for metric, fn in (("sparseness", sparseness), ("complexity", complexity)):
                per_split = {}
                for split in ("train", "test"):
                    v = [
                        _mean(fn(maps_t[k, train_rows[k] if split == "train" else test_rows]))
                        for k in range(k_models)
                    ]
                    per_split[split] = sum(v) / len(v)
                    rec("mean", split, metric, per_split[split], f"interp/{label}/{split}/{metric}")
                rec("mean", "test", metric, per_split["test"], f"interp/{label}/{metric}")
                rec(
                    "mean",
                    "gap",
                    metric,
                    per_split["test"] - per_split["train"],
                    f"interp/{label}/{metric}_gap",
                )

        if "drift" in fam and previous is not None and label in previous:
            prev = previous[label]
            v = [
                _mean(
                    l2_distance(
                        maps_t[k, test_rows],
                        prev[k, test_rows].to(maps_t.device),
                        normalize=normalize,
                    )
                )
                for k in range(k_models)
            ]
            rec("mean", "test", "drift", sum(v) / len(v), f"interp/{label}/drift")

    if "gap" in fam and baseline_label is not None and baseline_label in gaps:
        for spec in specs:
            if spec.label in gaps:
                value = gaps[baseline_label] - gaps[spec.label]
                records.append(
                    Record(
                        f"interp/{spec.label}/gap_reduction",
                        spec.label,
                        "mean",
                        "gap",
                        "gap_reduction",
                        value,
                    )
                )

    return EpochResult(records=records, maps=maps_out, preds=preds)

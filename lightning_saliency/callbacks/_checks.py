"""The callback's validation rules, each in one place: arguments, probes, settings on resume."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_saliency.attribution import MethodSpec
from lightning_saliency.generalization import FAMILIES

if TYPE_CHECKING:
    from .interpretation import InterpretationGeneralization

__all__ = [
    "IDENTITY",
    "check_arguments",
    "check_probe_values",
    "check_resume_key",
    "resume_error",
    "saturated_fraction",
    "settings_changes",
]

#: Settings that define which probes are explained and how the numbers are computed: a
#: resumed run must keep them (else its epochs would not be comparable).
IDENTITY: tuple[str, ...] = (
    "methods", "num_train_probes", "num_test_probes", "seed", "target", "normalize", "topk",
    "metrics", "input_range", "precision", "chance_draws", "fold_batchnorm",
)  # fmt: skip


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")


def _check_topk(topk: Any) -> None:
    if isinstance(topk, bool) or not isinstance(topk, numbers.Real):
        raise ValueError(f"topk must be a fraction in (0, 1] or a pixel count >= 1; got {topk!r}")
    if isinstance(topk, numbers.Integral):
        if topk < 1:
            raise ValueError(f"topk as a pixel count must be >= 1; got {topk!r}")
    elif not (0 < float(topk) <= 1):
        raise ValueError(f"topk as a fraction of pixels must be in (0, 1]; got {topk!r}")


def check_arguments(args: Mapping[str, Any], specs: Sequence[MethodSpec]) -> None:
    """Every argument of the callback, before any training: a clear message naming it."""
    if not specs:
        raise ValueError("methods must name at least one saliency method")
    labels = [s.label for s in specs]
    dup = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dup:
        raise ValueError(f"methods must be distinct; these labels repeat: {dup}")
    for name in ("num_train_probes", "num_test_probes", "every_n_epochs", "num_images",
                 "chance_draws", "families_every_n_epochs"):  # fmt: skip
        _int_at_least(name, args[name], 1)
    _int_at_least("log_images_every_n_epochs", args["log_images_every_n_epochs"], 0)
    if isinstance(args["seed"], bool) or not isinstance(args["seed"], int):
        raise ValueError(f"seed must be an int; got {args['seed']!r}")
    if args["batch_size"] is not None:
        _int_at_least("batch_size", args["batch_size"], 1)
    _check_topk(args["topk"])
    overhead = args["max_overhead"]
    if overhead is not None and (isinstance(overhead, bool) or not isinstance(overhead, numbers.Real)
                                 or not 0 < float(overhead) < math.inf):  # fmt: skip
        raise ValueError(f"max_overhead must be a fraction > 0 of the training time, or None; got {overhead!r}")
    if args["is_ensemble"] not in (None, True, False):
        raise ValueError(f"is_ensemble must be None, True or False; got {args['is_ensemble']!r}")
    if args["output_transform"] is not None and not callable(args["output_transform"]):
        raise ValueError("output_transform must be callable: the model's output -> its logits")
    if args["probe_transform"] is not None and not callable(args["probe_transform"]):
        raise ValueError("probe_transform must be callable (e.g. a torchvision transform)")
    for name in ("normalize", "channels_last", "fold_batchnorm"):
        if not isinstance(args[name], bool):
            raise ValueError(f"{name} must be True or False; got {args[name]!r}")
    if args["target"] not in ("label", "pred"):
        raise ValueError(f"target must be 'label' or 'pred'; got {args['target']!r}")
    if args["precision"] not in ("32", "bf16"):
        raise ValueError(f"precision must be '32' or 'bf16'; got {args['precision']!r}")
    metrics = args["metrics"]
    if metrics is not None:
        unknown = [metrics] if isinstance(metrics, str) else sorted(set(metrics) - set(FAMILIES))
        if unknown:
            raise ValueError(
                f"unknown metric families {unknown} (metrics is a list of families); "
                f"known: {list(FAMILIES)}"
            )
    check_input_range(args["input_range"], "input_range")


def check_input_range(value: Any, name: str) -> None:
    """``(x_min, x_max)``: two finite numbers with x_min < x_max (or None)."""
    if value is None:
        return
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Real) and math.isfinite(float(v)) for v in value)
        and float(value[0]) < float(value[1])
    )
    if not ok:
        raise ValueError(f"{name} must be (x_min, x_max) with finite x_min < x_max; got {value!r}")


def check_probe_values(x: Tensor, indices: Mapping[str, list[int]]) -> None:
    """Probes must be finite numbers: a NaN or infinite pixel is named, with its probe."""
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        where = _probe_name(row, indices)
        raise ValueError(
            f"probe {where} has NaN or infinite pixels ({int(bad.sum())} of {len(x)} probes): "
            "fix the data (or its transform) before monitoring it"
        )


def _probe_name(row: int, indices: Mapping[str, list[int]]) -> str:
    start = 0
    for part, idx in indices.items():
        if row < start + len(idx):
            return f"{part}[{row - start}] (dataset index {idx[row - start]})"
        start += len(idx)
    return f"row {row}"


def settings_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``["name: saved -> now", ...]`` for the identity settings that differ."""
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in IDENTITY
        if k in saved and _plain(saved.get(k)) != _plain(now.get(k))
    ]


def _plain(v: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint may store either)."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def saturated_fraction(x: Tensor, input_range: tuple[float, float], tol: float = 1e-4) -> float:
    """Fraction of probe pixels at ``x_min`` or ``x_max`` (within ``tol`` of the range), where
    AdaptGrad's noise scale is 0.

    >>> saturated_fraction(torch.tensor([0.0, 0.5, 1.0, 1.0]), (0.0, 1.0))
    0.75
    """
    lo, hi = input_range
    band = tol * (hi - lo)
    return float(((x <= lo + band) | (x >= hi - band)).double().mean())


def resume_error(changes: list[str]) -> ValueError:
    """The refusal of a resume whose callback settings changed, naming each change."""
    return ValueError(
        "InterpretationGeneralization: the checkpoint was written with other settings ("
        + "; ".join(changes)
        + "). Its probes and methods define this run's numbers: resume with the checkpoint's "
        "settings, or start a new run in a new folder."
    )


def check_resume_key(cb: InterpretationGeneralization, checkpoint: dict[str, Any]) -> None:
    """Refuse a resume whose callback settings changed: its state is under another key."""
    states = checkpoint.get("callbacks", {})
    if cb.state_key in states:
        return
    mine = type(cb).__qualname__
    others = [v for k, v in states.items() if isinstance(k, str) and k.startswith(mine + "{")]
    diffs = [settings_changes(v.get("settings", {}), cb.settings) for v in others]
    diffs = [d for d in diffs if d]
    if diffs:
        raise resume_error(min(diffs, key=len))


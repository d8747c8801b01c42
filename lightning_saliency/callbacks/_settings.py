"""The callback's settings: its arguments, their validation, and which of them define a run.

:class:`MonitorSettings` is frozen: built once from the constructor's arguments (validated
there, before any training), read by every helper, never changed; ``precision`` and
``channels_last`` may say ``"auto"``/``None``, and :meth:`MonitorSettings.on_device` gives the
run's copy with both resolved (:mod:`._numerics`). :data:`IDENTITY` is the
one list of the settings that define a run's probes and numbers; the checkpoint's state
key, the settings record (checkpoint, ``methods.json``, the HParams ``interp/`` entries)
and the resume check all derive from it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_saliency.attribution import MethodSpec, resolve_method
from lightning_saliency.attribution.specs import DEFAULT_METHODS
from lightning_saliency.generalization import FAMILIES

from ._checks import check_input_range
from ._numerics import check_numerics, resolve_numerics
from ._tensorboard import SCALAR_SETS

__all__ = [
    "DEFAULT_METHODS",
    "IDENTITY",
    "KEY_FIELDS",
    "RESUME_FIELDS",
    "MonitorSettings",
    "resume_error",
    "settings_changes",
]

#: The settings that define a run's probes and numbers, in the record's order, each with its
#: part: ``"key"`` names the callback's state in a checkpoint (``state_key``) and must match on
#: resume; ``"resume"`` must match on resume; ``"record"`` is recorded only (it may change).
IDENTITY: tuple[tuple[str, Literal["key", "resume", "record"]], ...] = (
    ("methods", "key"), ("num_train_probes", "key"), ("num_test_probes", "key"),
    ("seed", "key"), ("target", "key"), ("normalize", "key"),
    ("topk", "resume"), ("metrics", "resume"), ("input_range", "resume"),
    ("precision", "resume"), ("chance_draws", "resume"), ("fold_batchnorm", "resume"),
    ("families_every_n_epochs", "record"), ("channels_last", "record"),
)  # fmt: skip
#: Those that name the checkpoint state (changing them moves the state to another key).
KEY_FIELDS: tuple[str, ...] = tuple(n for n, part in IDENTITY if part == "key")
#: Those a resumed run must keep (else its epochs would not be comparable).
RESUME_FIELDS: tuple[str, ...] = tuple(n for n, part in IDENTITY if part != "record")


@dataclass(frozen=True, eq=False)
class MonitorSettings:
    """The arguments of :class:`~lightning_saliency.callbacks.InterpretationGeneralization`
    (see there; its signature owns the defaults), validated; ``methods`` resolved to
    ``specs``, ``metrics`` a tuple. The callback holds them as ``config``.

    >>> from lightning_saliency.callbacks import InterpretationGeneralization
    >>> s = InterpretationGeneralization(methods=["simple_grad"], num_train_probes=8).config
    >>> s.record()["methods"], s.key_fields()["num_train_probes"], s.max_overhead
    (['simple_grad'], 8, 0.1)
    >>> InterpretationGeneralization(num_test_probes=0)
    Traceback (most recent call last):
    ...
    ValueError: num_test_probes must be an int >= 1; got 0
    """

    specs: tuple[MethodSpec, ...]
    num_train_probes: int
    num_test_probes: int
    every_n_epochs: int
    reference: str | nn.Module | None
    normalize: bool
    target: Literal["label", "pred"]
    precision: Literal["auto", "32", "bf16"]
    seed: int
    log_images_every_n_epochs: int
    num_images: int
    metrics: tuple[str, ...] | None
    train_probes: Any
    test_probes: Any
    input_range: tuple[float, float] | None
    unnormalize: Callable[[Tensor], Tensor] | None
    batch_size: int | None
    channels_last: bool | None
    topk: float
    chance_draws: int
    max_overhead: float | None
    is_ensemble: bool | None
    probe_transform: Callable[[Any], Any] | None
    fold_batchnorm: bool
    output_transform: Callable[[Any], Tensor] | None
    families_every_n_epochs: int
    input_key: str | None
    label_key: str | None
    profile: bool
    tensorboard_scalars: Literal["headline", "all"]

    @classmethod
    def from_arguments(
        cls, methods: Sequence[str | Mapping[str, Any]] | None = None, **args: Any
    ) -> MonitorSettings:
        """Resolve the methods, check every argument (a clear message naming it), and
        normalize ``seed``, ``metrics``, ``input_range`` and ``max_overhead``."""
        specs = tuple(resolve_method(m) for m in (DEFAULT_METHODS if methods is None else methods))
        names = {f.name for f in fields(cls)} - {"specs"}
        if set(args) != names:
            missing, unknown = sorted(names - set(args)), sorted(set(args) - names)
            raise TypeError(f"settings missing: {missing}; unknown: {unknown}")
        full = dict(args)
        _check_arguments(full, specs)
        metrics, rng, overhead = full["metrics"], full["input_range"], full["max_overhead"]
        full.update(
            seed=int(full["seed"]),
            metrics=None if metrics is None else tuple(metrics),
            input_range=None if rng is None else (float(rng[0]), float(rng[1])),
            max_overhead=None if overhead is None else float(overhead),
        )
        return cls(specs=specs, **full)

    def on_device(self, device: torch.device | str) -> MonitorSettings:
        """These settings with ``precision`` and ``channels_last`` resolved for a run on
        ``device`` (:func:`~._numerics.resolve_numerics`); the rest as they are.

        >>> from lightning_saliency.callbacks import InterpretationGeneralization
        >>> s = InterpretationGeneralization().config
        >>> (s.precision, s.channels_last), s.on_device("cpu").record()["precision"]
        (('auto', None), '32')
        >>> cuda = s.on_device("cuda")
        >>> cuda.precision, cuda.channels_last, cuda.on_device("cpu").precision
        ('bf16', True, 'bf16')
        """
        precision, channels_last = resolve_numerics(self.precision, self.channels_last, device)
        return replace(self, precision=precision, channels_last=channels_last)

    @property
    def labels(self) -> list[str]:
        """The methods' canonical labels, in order."""
        return [s.label for s in self.specs]

    def value(self, name: str) -> Any:
        """An identity setting as recorded: methods by label, tuples as lists."""
        if name == "methods":
            return self.labels
        return _plain(getattr(self, name))

    def record(self) -> dict[str, Any]:
        """The settings that define this run's probes and numbers (kept on resume)."""
        return {name: self.value(name) for name, _ in IDENTITY}

    def key_fields(self) -> dict[str, Any]:
        """What names the callback's state in a checkpoint (``Callback.state_key``)."""
        return {name: self.value(name) for name in KEY_FIELDS}

    def methods_record(self, stage: str, families: Sequence[str]) -> dict[str, Any]:
        """What ``methods.json`` holds: every method's canonical spec and, per stage, the
        settings that shaped the numbers."""
        settings = {**self.record(), "families": list(families)}
        return {"methods": [s.to_config() for s in self.specs], "settings": {stage: settings}}

    def check_saved(self, state: Mapping[str, Any]) -> None:
        """Refuse a checkpoint state written with other identity settings, naming each."""
        changes = settings_changes(state.get("settings", {}), self.record())
        if int(state.get("seed", self.seed)) != self.seed:
            changes.insert(0, f"seed: {state['seed']!r} -> {self.seed!r}")
        if changes:
            raise resume_error(changes)

    def check_checkpoint(self, checkpoint: Mapping[str, Any], state_key: str, owner: str) -> None:
        """Refuse a resume whose callback settings changed: its state is then under another
        key of ``checkpoint["callbacks"]`` (of the same class, ``owner``)."""
        states = checkpoint.get("callbacks", {})
        if state_key in states:
            return
        others = [v for k, v in states.items() if isinstance(k, str) and k.startswith(owner + "{")]
        diffs = [settings_changes(v.get("settings", {}), self.record()) for v in others]
        diffs = [d for d in diffs if d]
        if diffs:
            raise resume_error(min(diffs, key=len))


def settings_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``["name: saved -> now", ...]`` for the settings a resume must keep that differ.

    >>> settings_changes({"seed": 0, "topk": [1, 2]}, {"seed": 1, "topk": (1, 2)})
    ['seed: 0 -> 1']
    """
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in RESUME_FIELDS
        if k in saved and _plain(saved.get(k)) != _plain(now.get(k))
    ]


def _plain(v: Any) -> Any:
    """Tuples as lists (a checkpoint may store either)."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def resume_error(changes: list[str]) -> ValueError:
    """The refusal of a resume whose callback settings changed, naming each change."""
    return ValueError(
        "InterpretationGeneralization: the checkpoint was written with other settings ("
        + "; ".join(changes)
        + "). Its probes and methods define this run's numbers: resume with the checkpoint's "
        "settings, or start a new run in a new folder."
    )


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


def _check_arguments(args: Mapping[str, Any], specs: Sequence[MethodSpec]) -> None:
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
    for name in ("input_key", "label_key"):
        if args[name] is not None and not isinstance(args[name], str):
            raise ValueError(f"{name} must be a dict key (a str) or None; got {args[name]!r}")
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
    for name in ("normalize", "fold_batchnorm", "profile"):
        if not isinstance(args[name], bool):
            raise ValueError(f"{name} must be True or False; got {args[name]!r}")
    if args["target"] not in ("label", "pred"):
        raise ValueError(f"target must be 'label' or 'pred'; got {args['target']!r}")
    check_numerics(args["precision"], args["channels_last"])
    metrics = args["metrics"]
    if metrics is not None:
        unknown = [metrics] if isinstance(metrics, str) else sorted(set(metrics) - set(FAMILIES))
        if unknown:
            raise ValueError(
                f"unknown metric families {unknown} (metrics is a list of families); "
                f"known: {list(FAMILIES)}"
            )
    check_input_range(args["input_range"], "input_range")
    if args["tensorboard_scalars"] not in SCALAR_SETS:
        raise ValueError(
            f"tensorboard_scalars must be one of {list(SCALAR_SETS)} (the CSV gets every "
            f"number either way); got {args['tensorboard_scalars']!r}"
        )

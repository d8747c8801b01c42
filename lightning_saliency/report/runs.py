"""Reading run folders back: the callback's record (:mod:`lightning_saliency.generalization.record`)
and LightningCLI's config.

A run folder is what a fit leaves (``runs/<name>/version_<n>``): the callback's
``interpretation_metrics.csv`` and ``methods.json``, and with LightningCLI a
``config.yaml`` (or Lightning's ``hparams.yaml``). :func:`load_run` turns one into a
:class:`Run`; its numbers are :class:`~lightning_saliency.generalization.Estimate` values
under :class:`~lightning_saliency.generalization.MetricKey` keys, never parsed tags.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_saliency.attribution import MethodSpec, resolve_method
from lightning_saliency.generalization import STAGES, Estimate, MetricKey
from lightning_saliency.generalization.record import (
    CSV_NAME,
    LEGACY_CSV_FIELDS,
    METHODS_NAME,
    choose_epoch,
    read_csv,
    read_methods,
    read_settings,
)

__all__ = ["CONTROL_OPTIONS", "LEGACY_CSV_FIELDS", "SEED_KEYS", "Run", "find_runs", "load_run",
           "load_runs"]  # fmt: skip

_CALLBACK = "InterpretationGeneralization"


@dataclass(frozen=True)
class Run:
    """One run at one epoch and stage: its facts, method specs and numbers."""

    name: str
    path: Path
    epoch: int
    epochs: tuple[int, ...]
    stage: str
    estimates: dict[MetricKey, Estimate]
    specs: dict[str, MethodSpec] = field(default_factory=dict)
    split_factor: int | None = None
    num_models: int | None = None
    spectral_norm_factor: float | None = None
    backbone: str | None = None
    seed: int | None = None
    #: the run's config without its seeds, logger and paths: runs with equal signatures are
    #: seed replicates of one setting (None without a config.yaml)
    signature: str | None = None
    #: the positive control planted into one split (a data option of :data:`CONTROL_OPTIONS`,
    #: e.g. ``"shortcut"``; None: clean) and the split it was planted into
    control: str | None = None
    control_split: int | None = None
    #: the signature without the control options: a planted run and its clean twin share it
    twin_signature: str | None = None

    def get(self, method: str, aggregate: str, split: str, metric: str) -> Estimate | None:
        """The estimate of a key at this run's stage (None when the run did not log it)."""
        return self.estimates.get(MetricKey(method, aggregate, split, metric, self.stage))

    @property
    def labels(self) -> list[str]:
        """Method labels that have rows, in the run's method order, then any others."""
        present = {k.method for k in self.estimates} - {"-"}
        ordered = [lb for lb in self.specs if lb in present]
        return ordered + sorted(present - set(ordered))

    @property
    def logged_specs(self) -> dict[str, MethodSpec]:
        """``{label: spec}`` of the methods that have rows, in the run's method order."""
        present = {k.method for k in self.estimates}
        return {lb: s for lb, s in self.specs.items() if lb in present}


def _natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``sf2`` before ``sf16`` and ``version_9`` before ``version_10``."""
    parts = re.split(r"(\d+)", str(path))
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


def find_runs(path: str | os.PathLike[str]) -> list[Path]:
    """Run folders at or under ``path`` (folders holding the callback's CSV).

    Raises ``ValueError`` if ``path`` does not exist, is a file, is a run without the CSV,
    or holds no run. Folders below ``path`` with a config but no CSV (stopped before the
    first monitored epoch) are skipped with a warning.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "a" / "version_0").mkdir(parents=True)
    >>> _ = (d / "a" / "version_0" / CSV_NAME).write_text("x")
    >>> [p.relative_to(d).as_posix() for p in find_runs(d)]
    ['a/version_0']
    """
    root = Path(path)
    if not root.exists():
        raise ValueError(f"run folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is a file; expected a run folder or a folder of runs")
    if (root / CSV_NAME).is_file():
        return [root]
    if (root / "config.yaml").is_file() or (root / "hparams.yaml").is_file():
        raise ValueError(
            f"run folder {str(root)!r} has no {CSV_NAME}: was the {_CALLBACK} callback in its "
            "trainer, and did it finish a monitored epoch?"
        )
    found, incomplete = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if CSV_NAME in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run's own sub-folders (checkpoints) hold no runs
        elif "config.yaml" in filenames or "hparams.yaml" in filenames:
            incomplete.append(Path(dirpath))
    if incomplete:
        warnings.warn(
            f"skipping {len(incomplete)} run folder(s) without {CSV_NAME}: "
            + ", ".join(str(p) for p in incomplete),
            stacklevel=2,
        )
    if not found:
        raise ValueError(
            f"{str(root)!r} is not a run folder: no {CSV_NAME} or config.yaml in it or below it; "
            "expected a run's log folder (e.g. runs/<name>/version_0) or a folder of them"
        )
    return sorted(found, key=_natural_key)


class _RunLoader(yaml.SafeLoader):
    """Safe YAML plus Python tuples, which Lightning writes into ``hparams.yaml``."""


_RunLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node)
)


def _read_yaml(path: Path) -> dict[str, Any]:
    from ._safe_yaml import load_yaml_file  # size and alias limits (issue 19)

    return load_yaml_file(path, _RunLoader)


def _init_args(section: Any) -> dict[str, Any]:
    if not isinstance(section, Mapping):
        return {}
    if isinstance(section.get("init_args"), Mapping):
        return dict(section["init_args"])
    return dict(section)


def _callback_methods(config: Mapping[str, Any]) -> list[Any]:
    """The callback's ``methods`` in a LightningCLI config (its defaults when not given)."""
    trainer = config.get("trainer")
    callbacks = trainer.get("callbacks") if isinstance(trainer, Mapping) else None
    if isinstance(callbacks, Mapping):
        callbacks = [callbacks]
    methods: list[Any] = []
    for cb in callbacks or []:
        if isinstance(cb, Mapping) and str(cb.get("class_path", "")).endswith(_CALLBACK):
            m = _init_args(cb).get("methods")
            if m is None:
                from lightning_saliency.attribution.specs import DEFAULT_METHODS

                m = list(DEFAULT_METHODS)
            methods.extend(m if isinstance(m, list) else [m])
    return methods


def _specs(folder: Path, config: Mapping[str, Any]) -> dict[str, MethodSpec]:
    """label -> spec: the callback's ``methods.json``, else the config's callback methods."""
    path = folder / METHODS_NAME
    entries = read_methods(folder)
    if entries is not None:
        out: dict[str, MethodSpec] = {}
        for entry in entries:
            try:
                spec = resolve_method(entry)
            except (ValueError, TypeError, ImportError) as err:  # e.g. a user method not
                warnings.warn(  # registered here: its rows are still listed, by label
                    f"{str(path)!r}: method {entry.get('label', entry)!r} cannot be resolved "
                    f"here ({err}); import the package that registers it to use it in studies",
                    stacklevel=3,
                )
                continue
            out[spec.label] = spec
        return out
    out = {}
    for m in _callback_methods(config):
        try:
            spec = resolve_method(m)
        except (TypeError, ValueError):
            continue
        out.setdefault(spec.label, spec)
    return out


#: Config entries that differ between seed replicates of one setting (or only name a run).
SEED_KEYS: tuple[tuple[str, ...], ...] = (
    ("seed_everything",), ("model", "init_seed"), ("model", "init_args", "init_seed"),
    ("data", "init_args", "split_seed"), ("data", "split_seed"), ("trainer", "logger"),
    ("trainer", "default_root_dir"), ("ckpt_path",),
)  # fmt: skip


#: The data modules' positive-control options (``lightning_saliency.data``: ``shortcut=``,
#: ``memorize=``, ``shift=``), each a mapping with the ``split`` it is planted into.
CONTROL_OPTIONS: tuple[str, ...] = ("shortcut", "memorize", "shift")
_CONTROL_KEYS = tuple(p for name in CONTROL_OPTIONS
                      for p in (("data", "init_args", name), ("data", name)))  # fmt: skip


def _control(data: Mapping[str, Any], hparams: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """``(kind, split)`` of the planted control(s) the config's data section (else Lightning's
    ``hparams.yaml``) records; ``(None, None)`` for a clean run."""
    source = data if any(n in data for n in CONTROL_OPTIONS) else hparams
    planted = [(n, source[n]) for n in CONTROL_OPTIONS if isinstance(source.get(n), Mapping)]
    if not planted:
        return None, None
    split = planted[0][1].get("split", 0)
    split = split if isinstance(split, int) and not isinstance(split, bool) else None
    return "+".join(n for n, _ in planted), split


def _without_nulls(node: Any) -> Any:
    """``node`` without the ``None`` values of its mappings: an option a later version added
    (written ``null``, its default) must not split a setting's seed replicates."""
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_nulls(v) for v in node]
    return node


def _signature(config: Mapping[str, Any], drop: tuple[tuple[str, ...], ...] = ()) -> str | None:
    """The config with its seeds, logger and paths (and the ``drop`` paths) removed, and its
    ``null`` options, as canonical JSON."""
    if not config:
        return None
    cfg = _without_nulls(json.loads(json.dumps(config, default=str)))
    for path in SEED_KEYS + drop:
        node = cfg
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return json.dumps(cfg, sort_keys=True)


def _as_run(config: Mapping[str, Any], recorded: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` with the monitor's scalar arguments replaced by the values its run recorded
    (``methods.json``): a setting is what ran, not how it was spelled, so ``precision="auto"``
    run on a CPU (recorded ``"32"``) is a replicate of ``precision="32"``, and on CUDA
    (recorded ``"bf16"``) is not. Arguments the record lacks (an older version) stay.

    >>> cfg = {"trainer": {"callbacks": [{"class_path": "x.InterpretationGeneralization",
    ...        "init_args": {"precision": "auto", "topk": 0.1}}]}}
    >>> _as_run(cfg, {"precision": "32"})["trainer"]["callbacks"][0]["init_args"]
    {'precision': '32', 'topk': 0.1}
    """
    trainer = config.get("trainer")
    callbacks = trainer.get("callbacks") if isinstance(trainer, Mapping) else None
    if not recorded or not isinstance(callbacks, list):
        return dict(config)

    def scalar(value: Any) -> bool:
        return not isinstance(value, (list, dict))

    out = []
    for cb in callbacks:
        args = cb.get("init_args") if isinstance(cb, Mapping) else None
        if isinstance(args, Mapping) and str(cb.get("class_path", "")).endswith(_CALLBACK):
            args = {k: recorded[k] if k in recorded and scalar(v) and scalar(recorded[k]) else v
                    for k, v in args.items()}  # fmt: skip
            cb = {**cb, "init_args": args}
        out.append(cb)
    return {**config, "trainer": {**trainer, "callbacks": out}}  # type: ignore[dict-item]


def _facts(config: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
    model, data = _init_args(config.get("model")), _init_args(config.get("data"))

    def pick(name: str, *sources: Mapping[str, Any]) -> Any:
        return next((src[name] for src in sources if name in src), None)

    seed = pick("seed_everything", config)
    control, control_split = _control(data, hparams)
    return {
        "split_factor": pick("split_factor", data, hparams),
        "num_models": pick("num_models", data, model, hparams),
        "spectral_norm_factor": pick("spectral_norm_factor", model, hparams),
        "backbone": pick("backbone", model, hparams),
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "signature": _signature(config),
        "control": control,
        "control_split": control_split,
        "twin_signature": _signature(config, _CONTROL_KEYS),
    }


def load_run(
    path: str | os.PathLike[str],
    epoch: int | None = None,
    name: str | None = None,
    stage: str = "fit",
) -> Run:
    """Load one run folder at ``epoch`` (default: its last complete one) and ``stage``.

    ``stage`` picks the rows: ``"fit"`` (written while training), or ``"validate"`` /
    ``"test"`` (a trained checkpoint evaluated by ``lightning-saliency validate/test``).

    >>> run = load_run("runs/default/version_0")  # doctest: +SKIP
    >>> run.get("simple_grad", "mean", "gap", "gap")  # doctest: +SKIP
    Estimate(value=-0.0066, se=0.0047, lo=-0.0159, hi=0.0028, n=96, nonfinite=0, method='t')
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"run folder {str(folder)!r} does not exist")
    csv_path = folder / CSV_NAME
    if not csv_path.is_file():
        raise ValueError(f"run folder {str(folder)!r} has no {CSV_NAME}")
    by_epoch, stages = read_csv(csv_path, stage)
    if not by_epoch:
        others = sorted(stages - {stage})
        hint = f"; it has {', '.join(others)}-stage rows (--stage {others[0]})" if others else ""
        raise ValueError(f"{str(csv_path)!r} has no {stage}-stage rows{hint}")
    config = _read_yaml(folder / "config.yaml")
    specs = _specs(folder, config)
    recorded = read_settings(folder, stage) or read_settings(folder, "fit")
    chosen = choose_epoch(by_epoch, stage, epoch, str(folder))
    return Run(
        name=folder.name if name is None else name,
        path=folder,
        epoch=chosen,
        epochs=tuple(sorted(by_epoch)),
        stage=stage,
        estimates=by_epoch[chosen],
        specs=specs,
        **_facts(_as_run(config, recorded), _read_yaml(folder / "hparams.yaml")),
    )


def load_runs(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    epoch: int | None = None,
    stage: str = "fit",
) -> list[Run]:
    """Find and load every run at or under ``paths``, named by their path relative to the
    folder they have in common (a single run by its folder name).

    >>> runs = load_runs(["runs/split_factor"])  # doctest: +SKIP
    >>> sorted(r.split_factor for r in runs)  # doctest: +SKIP
    [2, 4, 8, 16]
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    folders: list[Path] = []
    for p in paths:
        for run in find_runs(p):
            if run.resolve() not in {f.resolve() for f in folders}:
                folders.append(run)
    if not folders:
        raise ValueError("no run folders given")
    resolved = [f.resolve() for f in folders]
    common = Path(os.path.commonpath(resolved))
    if len(resolved) == 1:
        common = common.parent
    return [
        load_run(f, epoch=epoch, name=r.relative_to(common).as_posix(), stage=stage)
        for f, r in zip(folders, resolved, strict=True)
    ]

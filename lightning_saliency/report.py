"""Read finished runs back into the five studies' tables and plots.

``lightning-saliency report RUN_DIR [RUN_DIR ...] --out OUT_DIR [--epoch N]`` reads each
run's ``config.yaml`` (or ``hparams.yaml``) and ``interpretation_metrics.csv`` and writes
``report.md`` (markdown tables), ``report.csv`` (one tidy row per number in the tables)
and one PNG per study into ``OUT_DIR``:

(a) ``split_factor``: test-map Spearman rank correlation and top-k intersection against
    the split factor, beside prediction agreement (paper 000, Table 1, Fig. 1b);
(b) ``smoothgrad``: test normalized L2 distance and interpretation gap against the
    SmoothGrad noise, one curve per draw count (paper 000, sec. 6.4);
(c) ``superpixel``: SSIM and MeGe of each method with and without super-pixel grouping,
    per segmenter (paper 003);
(d) ``spectral_norm``: test interpretation loss against the spectral-norm factor
    (paper 000, Fig. 1a);
(e) ``adaptgrad``: sparseness (Gini) of AdaptGrad against SmoothGrad (paper 002, Table 2).

A ``RUN_DIR`` is a run's log folder (``runs/<name>/version_<n>``) or any folder above
several of them. Everything is plain Python + numpy + matplotlib (no pandas).

Example:
    >>> from lightning_saliency.report import load_runs, write_report
    >>> runs = load_runs(["runs/split_factor"])  # doctest: +SKIP
    >>> write_report(runs, "reports/split_factor")  # doctest: +SKIP
    PosixPath('reports/split_factor/report.md')
"""

from __future__ import annotations

import argparse
import csv
import inspect
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from lightning_saliency.attribution import (
    GROUP_REDUCTIONS,
    MethodSpec,
    available_methods,
    resolve_method,
)
from lightning_saliency.attribution import smooth_grad as _smooth_grad

__all__ = [
    "CSV_HEADER",
    "REPORT_FIELDS",
    "STAGES",
    "STUDIES",
    "build_studies",
    "find_runs",
    "load_run",
    "load_runs",
    "main",
    "write_report",
]

#: Header of the callback's ``interpretation_metrics.csv``.
CSV_HEADER: tuple[str, ...] = ("epoch", "step", "method", "model", "split", "metric", "value")
#: Stages whose rows a report can read (``split`` is ``"validate:test"`` etc. outside fit).
STAGES: tuple[str, ...] = ("fit", "validate", "test")
Stage = Literal["fit", "validate", "test"]
#: Columns of ``report.csv``.
REPORT_FIELDS: tuple[str, ...] = (
    "study",
    "run",
    "method",
    "x_name",
    "x",
    "group",
    "metric",
    "value",
)
#: Study keys and titles, in report order.
STUDIES: dict[str, str] = {
    "split_factor": "(a) Agreement of test maps against split factor (paper 000, Table 1, Fig. 1b)",
    "smoothgrad": "(b) L2 distance and gap against SmoothGrad noise (paper 000, sec. 6.4)",
    "superpixel": "(c) Pixel against super-pixel: SSIM and MeGe (paper 003)",
    "spectral_norm": "(d) Test interpretation loss against spectral-norm factor (paper 000, Fig. 1a)",
    "adaptgrad": "(e) Sparseness of AdaptGrad against SmoothGrad (paper 002, Table 2)",
}

_CSV_NAME = "interpretation_metrics.csv"
_NO_DATA = "no runs for this study"
_DEFAULT_SAMPLES = int(inspect.signature(_smooth_grad).parameters["samples"].default)

Key = tuple[str, str, str, str]  # (method, model, split, metric)


# =========================================================================== loading
def _is_run(folder: Path) -> bool:
    return (folder / _CSV_NAME).is_file() or (folder / "config.yaml").is_file()


def find_runs(path: str | os.PathLike[str]) -> list[Path]:
    """Run folders at or under ``path`` (folders holding ``interpretation_metrics.csv``).

    Raises ``ValueError`` if ``path`` does not exist, is not a folder, is a run without
    the CSV, or holds no run at all. Runs below ``path`` that have a ``config.yaml`` but no
    CSV (e.g. stopped before the first monitored epoch) are skipped with a warning.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "a" / "version_0").mkdir(parents=True)
    >>> _ = (d / "a" / "version_0" / "interpretation_metrics.csv").write_text("x")
    >>> [p.relative_to(d).as_posix() for p in find_runs(d)]
    ['a/version_0']
    """
    root = Path(path)
    if not root.exists():
        raise ValueError(f"run folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is a file; expected a run folder or a folder of runs")
    if (root / _CSV_NAME).is_file():
        return [root]
    if (root / "config.yaml").is_file() or (root / "hparams.yaml").is_file():
        raise ValueError(
            f"run folder {str(root)!r} has no {_CSV_NAME}: was the "
            "InterpretationGeneralization callback in its trainer, and did it finish a "
            "monitored epoch?"
        )
    found: list[Path] = []
    incomplete: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        if _CSV_NAME in filenames:
            found.append(here)
            dirnames[:] = []  # a run's own sub-folders (checkpoints) hold no runs
        elif "config.yaml" in filenames or "hparams.yaml" in filenames:
            incomplete.append(here)
    if incomplete:
        warnings.warn(
            f"skipping {len(incomplete)} run folder(s) without {_CSV_NAME}: "
            + ", ".join(str(p) for p in incomplete),
            stacklevel=2,
        )
    if not found:
        raise ValueError(
            f"{str(root)!r} is not a run folder: no {_CSV_NAME} or config.yaml in it or below "
            "it; expected a run's log folder (e.g. runs/<name>/version_0) or a folder of them"
        )
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``sf2`` before ``sf16`` and ``version_9`` before ``version_10``."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", str(path))
        if part
    )


class _RunLoader(yaml.SafeLoader):
    """Safe YAML plus Python tuples, which Lightning writes into ``hparams.yaml``."""


_RunLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node)
)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open() as fh:
            data = yaml.load(fh, Loader=_RunLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ValueError(f"{str(path)!r} is not valid YAML: {err}") from err
    return data if isinstance(data, dict) else {}


def _init_args(section: Any) -> dict[str, Any]:
    if not isinstance(section, Mapping):
        return {}
    if isinstance(section.get("init_args"), Mapping):
        return dict(section["init_args"])
    return dict(section)


def _config_facts(config: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
    """split_factor, num_models, spectral_norm_factor, backbone and the method specs."""
    model = _init_args(config.get("model"))
    data = _init_args(config.get("data"))

    def pick(name: str, *sources: Mapping[str, Any]) -> Any:
        for src in sources:
            if name in src:
                return src[name]
        return None

    facts: dict[str, Any] = {
        "split_factor": pick("split_factor", data, hparams),
        "num_models": pick("num_models", data, model, hparams),
        "spectral_norm_factor": pick("spectral_norm_factor", model, hparams),
        "backbone": pick("backbone", model, hparams),
    }
    methods: list[Any] = []
    has_callback = False
    trainer = config.get("trainer")
    callbacks = trainer.get("callbacks") if isinstance(trainer, Mapping) else None
    if isinstance(callbacks, Mapping):
        callbacks = [callbacks]
    for cb in callbacks or []:
        if isinstance(cb, Mapping) and str(cb.get("class_path", "")).endswith(
            "InterpretationGeneralization"
        ):
            has_callback = True
            m = _init_args(cb).get("methods")
            if m is None:
                from lightning_saliency.callbacks import DEFAULT_METHODS

                m = list(DEFAULT_METHODS)
            methods.extend(m if isinstance(m, list) else [m])
    specs: dict[str, MethodSpec] = {}
    for m in methods:
        try:
            spec = resolve_method(m)
        except (TypeError, ValueError):
            continue
        specs.setdefault(spec.label, spec)
    facts["specs"] = specs
    facts["has_callback"] = has_callback
    return facts


def _label_to_spec(label: str) -> MethodSpec | None:
    """Recover the spec of a generated label (verified by regenerating it), else None."""
    if label == "-":
        return None
    base, sp_part = label, None
    if "_sp-" in label:
        base, sp_part = label.split("_sp-", 1)
    method = next(
        (
            m
            for m in sorted(available_methods(), key=len, reverse=True)
            if base == m or base.startswith(m + "_")
        ),
        None,
    )
    if method is None:
        return None
    params: dict[str, Any] = {}
    prefixes = (("nl", "noise_level"), ("s", "sigma"), ("c", "confidence"), ("n", "samples"))
    for tok in base[len(method) :].split("_")[1:]:
        if tok in ("gxi", "ig"):
            params["base"] = {"gxi": "grad_x_input", "ig": "integrated_gradients"}[tok]
            continue
        if tok == "sq":
            params["squared"] = True
            continue
        for prefix, name in prefixes:
            if tok.startswith(prefix):
                try:
                    num = float(tok[len(prefix) :])
                except ValueError:
                    continue
                params[name] = int(num) if name == "samples" else num
                break
        else:
            return None  # a token this quick parser does not know
    superpixel: dict[str, Any] | None = None
    if sp_part is not None:
        parts = sp_part.split("-")
        superpixel = {"algorithm": parts[0]}
        if len(parts) == 2 and parts[1] in GROUP_REDUCTIONS:
            superpixel["reduction"] = parts[1]
        elif len(parts) > 1:
            return None
    try:
        spec = MethodSpec(method, params, superpixel)
    except (TypeError, ValueError):
        return None
    return spec if spec.label == label else None


def load_run(
    path: str | os.PathLike[str],
    epoch: int | None = None,
    name: str | None = None,
    stage: Stage = "fit",
) -> dict[str, Any]:
    """Load one run folder into a plain dict.

    Keys: ``name``, ``path``, ``epoch`` (the epoch read: the last one unless ``epoch`` is
    given), ``epochs`` (all monitored epochs of that stage), ``stage``, ``split_factor``,
    ``num_models``, ``spectral_norm_factor``, ``backbone``, ``specs`` (label ->
    :class:`MethodSpec`, from the callback's ``methods`` in ``config.yaml``, else recovered
    from the labels) and ``metrics`` (``(method, model, split, metric) -> value`` at that
    epoch; of duplicated rows the first counts).

    ``stage`` picks the rows: ``"fit"`` (the default) those written while training;
    ``"validate"`` or ``"test"`` those of ``lightning-saliency validate/test`` runs, for
    example a trained checkpoint evaluated with other methods (``--ckpt_path``); their
    epoch column is 0 (``trainer.validate`` does not restore the training epoch).

    >>> run = load_run("runs/default/version_0")  # doctest: +SKIP
    >>> run["metrics"][("simple_grad", "mean", "test", "loss")]  # doctest: +SKIP
    0.71
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"run folder {str(folder)!r} does not exist")
    csv_path = folder / _CSV_NAME
    if not csv_path.is_file():
        raise ValueError(f"run folder {str(folder)!r} has no {_CSV_NAME}")
    by_epoch: dict[int, dict[Key, float]] = {}
    stages_seen: set[str] = set()
    with csv_path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise ValueError(
                f"{str(csv_path)!r} has header {header!r}; expected {','.join(CSV_HEADER)}"
            )
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(CSV_HEADER):
                raise ValueError(
                    f"{str(csv_path)!r} line {lineno}: expected {len(CSV_HEADER)} fields, "
                    f"got {len(row)}: {row!r}"
                )
            ep, _step, method, model, split, metric, value = row
            row_stage, _, bare = split.rpartition(":")
            row_stage = row_stage or "fit"  # fit rows carry no prefix
            stages_seen.add(row_stage)
            if row_stage != stage:
                continue
            split = bare
            try:
                e, v = int(ep), float(value)
            except ValueError as err:
                raise ValueError(
                    f"{str(csv_path)!r} line {lineno}: epoch must be an int and value a "
                    f"number, got epoch={ep!r}, value={value!r}"
                ) from err
            by_epoch.setdefault(e, {}).setdefault((method, model, split, metric), v)
    if not by_epoch:
        hint = ""
        others = sorted(stages_seen - {stage})
        if others:
            hint = f"; it has {', '.join(others)}-stage rows (--stage {others[0]})"
        raise ValueError(f"{str(csv_path)!r} has no {stage}-stage rows{hint}")
    epochs = sorted(by_epoch)
    if epoch is None:
        chosen = epochs[-1]
    elif epoch in by_epoch:
        chosen = epoch
    else:
        raise ValueError(f"run {str(folder)!r} has no epoch {epoch}; it has epochs {epochs}")

    config = _read_yaml(folder / "config.yaml")
    hparams = _read_yaml(folder / "hparams.yaml")
    facts = _config_facts(config, hparams)
    specs: dict[str, MethodSpec] = facts.pop("specs")
    facts.pop("has_callback")
    metrics = by_epoch[chosen]
    for label in sorted({k[0] for k in metrics}):
        if label not in specs:
            spec = _label_to_spec(label)
            if spec is not None:
                specs[label] = spec
    return {
        "name": name if name is not None else folder.name,
        "path": str(folder),
        "epoch": chosen,
        "epochs": epochs,
        "stage": stage,
        **facts,
        "specs": specs,
        "metrics": metrics,
    }


def load_runs(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    epoch: int | None = None,
    stage: Stage = "fit",
) -> list[dict[str, Any]]:
    """Find and load every run at or under ``paths`` (see :func:`load_run` for one run).

    Runs are named by their path relative to the folder the runs have in common (a
    single run by its folder name). Raises ``ValueError`` for a folder that does not
    exist, is not a run, a run without ``interpretation_metrics.csv``, a CSV with a
    wrong header, or an ``epoch`` a run lacks.

    >>> runs = load_runs(["runs/split_factor"], epoch=None)  # doctest: +SKIP
    >>> sorted(r["split_factor"] for r in runs)  # doctest: +SKIP
    [2, 4, 8, 16]
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    folders: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        for run in find_runs(p):
            key = run.resolve()
            if key not in seen:
                seen.add(key)
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


# =========================================================================== studies
def _get(run: Mapping[str, Any], method: str, model: str, split: str, metric: str) -> float | None:
    return run["metrics"].get((method, model, split, metric))


def _labels(run: Mapping[str, Any]) -> list[str]:
    """Method labels that have rows in the run, in the config's order, then the rest."""
    present = {k[0] for k in run["metrics"]} - {"-"}
    ordered = [lb for lb in run["specs"] if lb in present]
    return ordered + sorted(present - set(ordered))


def _noise(spec: MethodSpec) -> tuple[str, float] | None:
    for name in ("noise_level", "sigma"):
        if name in spec.params:
            return name, float(spec.params[name])
    return None


def _base_key(spec: MethodSpec) -> str:
    """The gradient a method builds on: grad, grad_x_input, integrated_gradients[_b...]."""
    if spec.method == "simple_grad":
        base = "grad"
    elif spec.method in ("grad_x_input", "integrated_gradients"):
        base = spec.method
    else:
        base = str(spec.params.get("base", "grad"))
    if base == "integrated_gradients" and "baseline" in spec.params:
        base += f"_b{spec.params['baseline']}"
    if spec.params.get("squared"):
        base += "_sq"
    return base


def _fmt_x(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _study_split_factor(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run["split_factor"] is None:
            continue
        pa = _get(run, "-", "pairs", "test", "prediction_agreement")
        for label in _labels(run):
            sp = _get(run, label, "pairs", "test", "spearman")
            tk = _get(run, label, "pairs", "test", "topk")
            if sp is None and tk is None:
                continue
            rows.append(
                {
                    "run": run["name"],
                    "split_factor": int(run["split_factor"]),
                    "method": label,
                    "spearman": sp,
                    "topk": tk,
                    "prediction_agreement": pa,
                    # agreement of maps of different probes (None for runs that predate it)
                    "spearman_chance": _get(run, label, "pairs", "test", "spearman_chance"),
                    "topk_chance": _get(run, label, "pairs", "test", "topk_chance"),
                }
            )
    rows.sort(key=lambda r: (r["method"], r["split_factor"], r["run"]))
    return {
        "columns": [
            "split_factor",
            "run",
            "method",
            "spearman",
            "topk",
            "prediction_agreement",
            "spearman_chance",
            "topk_chance",
        ],
        "headers": [
            "split factor",
            "run",
            "method",
            "test Spearman",
            "test top-k",
            "test prediction agreement",
            "test Spearman chance",
            "test top-k chance",
        ],
        "rows": rows,
        "x": "split_factor",
        "metrics": {
            "spearman": "spearman_test",
            "topk": "topk_test",
            "prediction_agreement": "prediction_agreement_test",
            "spearman_chance": "spearman_chance_test",
            "topk_chance": "topk_chance_test",
        },
        "needs": "runs with a split factor and test spearman/topk rows",
    }


def _study_smoothgrad(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for run in runs:
        specs = run["specs"]
        curves: dict[tuple[str, int], list[tuple[float, str]]] = {}
        for label in _labels(run):
            spec = specs.get(label)
            if spec is None or spec.method != "smooth_grad" or spec.superpixel is not None:
                continue
            if _base_key(spec) != "grad" or set(spec.params) - {"noise_level", "sigma", "samples"}:
                continue
            kind, value = _noise(spec)  # type: ignore[misc]
            samples = int(spec.params.get("samples", _DEFAULT_SAMPLES))
            curves.setdefault((kind, samples), []).append((value, label))
        if not curves:
            continue
        plain = next(
            (
                lb
                for lb in _labels(run)
                if (s := specs.get(lb)) is not None
                and s.method == "simple_grad"
                and s.superpixel is None
                and s.params.get("output", "logit") == "logit"
            ),
            None,
        )
        for (kind, samples), points in curves.items():
            if plain is not None:
                points = [(0.0, plain), *points]
            for value, label in points:
                rows.append(
                    {
                        "run": run["name"],
                        "noise": kind,
                        "value": value,
                        "samples": samples,
                        "method": label,
                        "l2": _get(run, label, "pairs", "test", "l2"),
                        "gap": _get(run, label, "mean", "gap", "gap"),
                        "test_loss": _get(run, label, "mean", "test", "loss"),
                    }
                )
    rows.sort(key=lambda r: (r["run"], r["noise"], r["samples"], r["value"]))
    return {
        "columns": ["run", "noise", "value", "samples", "method", "l2", "gap", "test_loss"],
        "headers": [
            "run",
            "noise",
            "value",
            "samples",
            "method",
            "test L2 distance",
            "gap",
            "test loss",
        ],
        "rows": rows,
        "x": "value",
        "metrics": {"l2": "l2_test", "gap": "gap", "test_loss": "test_loss"},
        "needs": "runs with smooth_grad methods (no super-pixels)",
    }


def _study_superpixel(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for run in runs:
        specs = run["specs"]
        labels = _labels(run)
        for label in labels:
            spec = specs.get(label)
            if spec is None or spec.superpixel is None:
                continue
            twin = MethodSpec(spec.method, spec.params)
            pixel = next(
                (
                    lb
                    for lb in labels
                    if (s := specs.get(lb)) is not None
                    and s.superpixel is None
                    and s.method == twin.method
                    and s.params == twin.params
                ),
                None,
            )
            if pixel is None:
                continue
            seg = label.split("_sp-", 1)[1] if "_sp-" in label else spec.superpixel["algorithm"]

            ssim_p = _get(run, pixel, "pairs", "test", "ssim")
            ssim_s = _get(run, label, "pairs", "test", "ssim")
            mege_p = _get(run, pixel, "pairs", "train", "mege")
            mege_s = _get(run, label, "pairs", "train", "mege")
            # SSIM of mismatched probes (runs since the chance level was logged, else None):
            # grouping alone raises it, so compare the SSIM each gains above it
            chance_p = _get(run, pixel, "pairs", "test", "ssim_chance")
            chance_s = _get(run, label, "pairs", "test", "ssim_chance")
            rows.append(
                {
                    "run": run["name"],
                    "method": pixel,
                    "segmenter": seg,
                    "superpixel_method": label,
                    "ssim_pixel": ssim_p,
                    "ssim_superpixel": ssim_s,
                    "ssim_diff": _diff(ssim_s, ssim_p),
                    "ssim_chance_pixel": chance_p,
                    "ssim_chance_superpixel": chance_s,
                    "ssim_above_chance_diff": _diff(
                        _diff(ssim_s, chance_s), _diff(ssim_p, chance_p)
                    ),
                    "mege_pixel": mege_p,
                    "mege_superpixel": mege_s,
                    "mege_diff": _diff(mege_s, mege_p),
                    "gap_pixel": _get(run, pixel, "mean", "gap", "gap"),
                    "gap_superpixel": _get(run, label, "mean", "gap", "gap"),
                }
            )
    rows.sort(key=lambda r: (r["run"], r["method"], r["segmenter"]))
    return {
        "columns": [
            "run",
            "method",
            "segmenter",
            "ssim_pixel",
            "ssim_superpixel",
            "ssim_diff",
            "ssim_chance_pixel",
            "ssim_chance_superpixel",
            "ssim_above_chance_diff",
            "mege_pixel",
            "mege_superpixel",
            "mege_diff",
            "gap_pixel",
            "gap_superpixel",
        ],
        "headers": [
            "run",
            "method",
            "segmenter",
            "test SSIM pixel",
            "test SSIM super-pixel",
            "SSIM sp - px",
            "SSIM chance pixel",
            "SSIM chance super-pixel",
            "SSIM above chance, sp - px",
            "MeGe pixel",
            "MeGe super-pixel",
            "MeGe sp - px",
            "gap pixel",
            "gap super-pixel",
        ],
        "rows": rows,
        "x": "segmenter",
        "needs": "runs with a super-pixel method and its pixel twin",
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _study_spectral_norm(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    if any(run["spectral_norm_factor"] is not None for run in runs):
        for run in runs:
            factor = run["spectral_norm_factor"]
            for label in _labels(run):
                test = _get(run, label, "mean", "test", "loss")
                if test is None:
                    continue
                rows.append(
                    {
                        "run": run["name"],
                        "spectral_norm_factor": None if factor is None else float(factor),
                        "method": label,
                        "test_loss": test,
                        "train_loss": _get(run, label, "mean", "train", "loss"),
                        "gap": _get(run, label, "mean", "gap", "gap"),
                    }
                )
    rows.sort(
        key=lambda r: (
            r["method"],
            math.inf if r["spectral_norm_factor"] is None else r["spectral_norm_factor"],
            r["run"],
        )
    )
    return {
        "columns": ["spectral_norm_factor", "run", "method", "test_loss", "train_loss", "gap"],
        "headers": ["spectral-norm factor", "run", "method", "test loss", "train loss", "gap"],
        "rows": rows,
        "x": "spectral_norm_factor",
        "metrics": {"test_loss": "test_loss", "train_loss": "train_loss", "gap": "gap"},
        "needs": "runs with model.spectral_norm_factor set",
    }


def _study_adaptgrad(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    variants = {"adapt_grad": "adapt", "smooth_grad": "smooth"}
    for run in runs:
        specs = run["specs"]
        chosen = []
        for label in _labels(run):
            spec = specs.get(label)
            if spec is None or spec.superpixel is not None:
                continue
            if spec.method in variants:
                chosen.append((label, spec, variants[spec.method]))
            elif spec.method in ("simple_grad", "grad_x_input", "integrated_gradients"):
                chosen.append((label, spec, "plain"))
        if not any(v == "adapt" for _, _, v in chosen):
            continue
        bases = {_base_key(s) for _, s, v in chosen if v == "adapt"}
        for label, spec, variant in chosen:
            base = _base_key(spec)
            if base not in bases:
                continue
            rows.append(
                {
                    "run": run["name"],
                    "base": base,
                    "variant": variant,
                    "method": label,
                    "sparseness": _get(run, label, "mean", "test", "sparseness"),
                    "complexity": _get(run, label, "mean", "test", "complexity"),
                    "gap": _get(run, label, "mean", "gap", "gap"),
                }
            )
    order = {"plain": 0, "smooth": 1, "adapt": 2}
    rows.sort(key=lambda r: (r["run"], r["base"], order[r["variant"]], r["method"]))
    return {
        "columns": ["run", "base", "variant", "method", "sparseness", "complexity", "gap"],
        "headers": [
            "run",
            "base",
            "variant",
            "method",
            "test sparseness (Gini)",
            "test complexity",
            "gap",
        ],
        "rows": rows,
        "x": "base",
        "metrics": {"sparseness": "sparseness_test", "complexity": "complexity_test", "gap": "gap"},
        "needs": "runs with adapt_grad among the methods",
    }


def build_studies(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The five studies' tables: ``{study: {"columns", "headers", "rows", ...}}``.

    Each row is a dict keyed by ``columns``; a missing number is ``None``.

    >>> build_studies([])["split_factor"]["rows"]
    []
    """
    return {
        "split_factor": _study_split_factor(runs),
        "smoothgrad": _study_smoothgrad(runs),
        "superpixel": _study_superpixel(runs),
        "spectral_norm": _study_spectral_norm(runs),
        "adaptgrad": _study_adaptgrad(runs),
    }


# =========================================================================== output
def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _markdown_table(study: Mapping[str, Any]) -> list[str]:
    cols, rows = study["columns"], study["rows"]
    lines = ["| " + " | ".join(study["headers"]) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row[c]
            if c in ("spectral_norm_factor", "value") and isinstance(v, float | type(None)):
                cells.append(_fmt_x(v))
            else:
                cells.append(_cell(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _tidy_rows(name: str, study: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in study["rows"]:
        run = r["run"]

        def add(
            method: str, x_name: str, x: Any, group: str, metric: str, value: Any, run: str = run
        ) -> None:
            if value is not None:
                out.append(
                    {
                        "study": name,
                        "run": run,
                        "method": method,
                        "x_name": x_name,
                        "x": _fmt_x(x),
                        "group": group,
                        "metric": metric,
                        "value": repr(float(value)),
                    }
                )

        if name == "superpixel":
            seg = r["segmenter"]
            add(r["method"], "segmenter", seg, "pixel", "ssim_test", r["ssim_pixel"])
            add(
                r["superpixel_method"],
                "segmenter",
                seg,
                "superpixel",
                "ssim_test",
                r["ssim_superpixel"],
            )
            for kind, method in (("pixel", r["method"]), ("superpixel", r["superpixel_method"])):
                add(method, "segmenter", seg, kind, "ssim_chance", r[f"ssim_chance_{kind}"])
            add(r["method"], "segmenter", seg, "pixel", "mege", r["mege_pixel"])
            add(
                r["superpixel_method"], "segmenter", seg, "superpixel", "mege", r["mege_superpixel"]
            )
            add(r["method"], "segmenter", seg, "pixel", "gap", r["gap_pixel"])
            add(r["superpixel_method"], "segmenter", seg, "superpixel", "gap", r["gap_superpixel"])
            continue
        for col, metric in study["metrics"].items():
            if name == "split_factor":
                method = "-" if col == "prediction_agreement" else r["method"]
                add(method, "split_factor", r["split_factor"], "", metric, r[col])
            elif name == "smoothgrad":
                add(r["method"], r["noise"], r["value"], f"samples={r['samples']}", metric, r[col])
            elif name == "spectral_norm":
                add(
                    r["method"],
                    "spectral_norm_factor",
                    r["spectral_norm_factor"],
                    "",
                    metric,
                    r[col],
                )
            elif name == "adaptgrad":
                add(r["method"], "base", r["base"], r["variant"], metric, r[col])
    if name == "split_factor":  # prediction agreement once per run, not once per method
        uniq: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in out:
            uniq.setdefault(tuple(row.values()), row)
        out = list(uniq.values())
    return out


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _mean(values: Iterable[float | None]) -> float:
    """Mean of the finite values (NaN if none), without numpy's empty-slice warning."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else math.nan


def _new_figure(ncols: int, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(5.2 * ncols, height), layout="constrained")


def _plot_split_factor(study: Mapping[str, Any], path: Path) -> None:
    rows = study["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    # one legend line per method: grow the figure so a long legend still fits beside it
    fig = _new_figure(2, height=max(4.0, 0.16 * (len(methods) + 1)))
    axes = fig.subplots(1, 2)
    for ax, col, title in zip(
        axes, ("spearman", "topk"), ("test Spearman", "test top-k"), strict=True
    ):
        for m in methods:
            pts = [(r["split_factor"], _nan(r[col])) for r in rows if r["method"] == m]
            xs = sorted({x for x, _ in pts})
            means = [_mean([y for x, y in pts if x == xv] or [math.nan]) for xv in xs]
            line = ax.plot(xs, means, marker="o", label=m)[0]
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=10, color=line.get_color())
        agree: dict[int, dict[str, float]] = {}
        for r in rows:
            agree.setdefault(r["split_factor"], {})[r["run"]] = _nan(r["prediction_agreement"])
        xs = sorted(agree)
        ax.plot(
            xs,
            [_mean(list(agree[x].values())) for x in xs],
            "k--",
            marker="s",
            label="prediction agreement",
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("split factor")
        ax.set_title(f"{title} vs prediction agreement")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.savefig(path, dpi=100)


def _plot_smoothgrad(study: Mapping[str, Any], path: Path) -> None:
    fig = _new_figure(2)
    axes = fig.subplots(1, 2)
    rows = study["rows"]
    curves = list(dict.fromkeys((r["run"], r["noise"], r["samples"]) for r in rows))
    multi = len({c[0] for c in curves}) > 1
    for ax, col, title in zip(
        axes, ("l2", "gap"), ("test L2 distance", "interpretation gap"), strict=True
    ):
        for run, kind, samples in curves:
            pts = [
                (r["value"], _nan(r[col]))
                for r in rows
                if (r["run"], r["noise"], r["samples"]) == (run, kind, samples)
            ]
            label = f"{kind}, n={samples}" + (f" ({run})" if multi else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel("SmoothGrad noise (0 = simple gradient)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)


def _plot_superpixel(study: Mapping[str, Any], path: Path) -> None:
    import numpy as np

    fig = _new_figure(2)
    axes = fig.subplots(1, 2)
    rows = study["rows"]
    groups = list(dict.fromkeys((r["method"], r["segmenter"]) for r in rows))
    idx = np.arange(len(groups))
    for ax, metric, title in zip(axes, ("ssim", "mege"), ("test SSIM", "MeGe"), strict=True):
        for offset, kind in ((-0.2, "pixel"), (0.2, "superpixel")):
            vals = [
                _mean(
                    [
                        _nan(r[f"{metric}_{kind}"])
                        for r in rows
                        if (r["method"], r["segmenter"]) == g
                    ]
                    or [math.nan]
                )
                for g in groups
            ]
            ax.bar(idx + offset, vals, width=0.4, label=kind)
        ax.set_xticks(idx, [f"{m}\n{s}" for m, s in groups], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{title}: pixel vs super-pixel")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)


def _plot_spectral_norm(study: Mapping[str, Any], path: Path) -> None:

    fig = _new_figure(1)
    ax = fig.subplots(1, 1)
    rows = study["rows"]
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = sorted(
            (r["spectral_norm_factor"], _nan(r["test_loss"]))
            for r in rows
            if r["method"] == m and r["spectral_norm_factor"] is not None
        )
        xs = sorted({x for x, _ in pts})
        means = [_mean([y for x, y in pts if x == xv]) for xv in xs]
        line = ax.plot(xs, means, marker="o", label=m)[0]
        plain = [
            _nan(r["test_loss"])
            for r in rows
            if r["method"] == m and r["spectral_norm_factor"] is None
        ]
        if plain:
            ax.axhline(
                float(_mean(plain)),
                color=line.get_color(),
                ls="--",
                lw=1,
                label=f"{m} (no spectral norm)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("spectral-norm factor c")
    ax.set_ylabel("test interpretation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def _plot_adaptgrad(study: Mapping[str, Any], path: Path) -> None:
    import numpy as np

    fig = _new_figure(1)
    ax = fig.subplots(1, 1)
    rows = study["rows"]
    labels = list(dict.fromkeys((r["base"], r["method"], r["variant"]) for r in rows))
    colors = {"plain": "tab:gray", "smooth": "tab:blue", "adapt": "tab:orange"}
    vals = [
        _mean(
            [_nan(r["sparseness"]) for r in rows if (r["base"], r["method"]) == (b, m)]
            or [math.nan]
        )
        for b, m, _ in labels
    ]
    idx = np.arange(len(labels))
    ax.bar(idx, vals, color=[colors[v] for _, _, v in labels])
    ax.set_xticks(idx, [m for _, m, _ in labels], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("test sparseness (Gini)")
    ax.set_title("AdaptGrad (orange) vs SmoothGrad (blue) vs plain (gray)")
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=100)


_PLOTS = {
    "split_factor": _plot_split_factor,
    "smoothgrad": _plot_smoothgrad,
    "superpixel": _plot_superpixel,
    "spectral_norm": _plot_spectral_norm,
    "adaptgrad": _plot_adaptgrad,
}


def _pct(a: float, b: float) -> str:
    return "n/a" if a == 0 or math.isnan(a) or math.isnan(b) else f"{100 * (b - a) / abs(a):+.1f}%"


def _summary(name: str, study: Mapping[str, Any]) -> list[str]:
    """A few sentences with the trend's numbers, under the table."""

    rows = study["rows"]
    lines: list[str] = []
    if name == "split_factor":
        sfs = sorted({r["split_factor"] for r in rows})
        if len(sfs) < 2:
            return lines
        lo, hi = sfs[0], sfs[-1]

        def mean_at(col: str, sf: int, method: str | None = None) -> float:
            if method is None:  # one value per run (prediction agreement)
                per_run = {r["run"]: r[col] for r in rows if r["split_factor"] == sf}
                return _mean(per_run.values())
            return _mean(r[col] for r in rows if r["split_factor"] == sf and r["method"] == method)

        pa_lo, pa_hi = mean_at("prediction_agreement", lo), mean_at("prediction_agreement", hi)
        lines.append(
            f"From split factor {lo} to {hi}: test prediction agreement "
            f"{_cell(pa_lo)} -> {_cell(pa_hi)} ({_pct(pa_lo, pa_hi)})."
        )
        for m in dict.fromkeys(r["method"] for r in rows):
            for col in ("spearman", "topk"):
                a, b = mean_at(col, lo, m), mean_at(col, hi, m)
                if not (math.isnan(a) or math.isnan(b)):
                    lines.append(f"- `{m}` test {col}: {_cell(a)} -> {_cell(b)} ({_pct(a, b)})")
    elif name == "adaptgrad":
        for run in dict.fromkeys(r["run"] for r in rows):
            for base in dict.fromkeys(r["base"] for r in rows if r["run"] == run):
                sel = [r for r in rows if r["run"] == run and r["base"] == base]
                parts = [f"`{r['method']}` {_cell(r['sparseness'])}" for r in sel]
                lines.append(f"- {run}, base {base}: Gini " + ", ".join(parts))
    return lines


def write_report(runs: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.md``, ``report.csv`` and one PNG per study with data into ``out_dir``.

    ``runs`` come from :func:`load_runs`. A study without data says "no runs for this
    study" in ``report.md``. Returns the path of ``report.md``.

    >>> write_report(load_runs("runs/smoothgrad"), "reports/smoothgrad")  # doctest: +SKIP
    PosixPath('reports/smoothgrad/report.md')
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {str(out)!r} is a file; expected a folder")
    out.mkdir(parents=True, exist_ok=True)
    studies = build_studies(runs)

    md = ["# lightning-saliency report", "", "## Runs", ""]
    stages = sorted({r.get("stage", "fit") for r in runs} - {"fit"})
    if stages:
        md += [f"Rows of the {', '.join(stages)} stage (a trained checkpoint evaluated).", ""]
    md += [
        "| run | epoch | epochs | backbone | models | split factor | spectral-norm factor "
        "| methods |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ep = r["epochs"]
        md.append(
            f"| {r['name']} | {r['epoch']} | {ep[0]}-{ep[-1]} ({len(ep)}) | "
            f"{_cell(r['backbone'])} | {_cell(r['num_models'])} | {_cell(r['split_factor'])} | "
            f"{_fmt_x(r['spectral_norm_factor'])} | {len(_labels(r))} |"
        )
    md.append("")
    tidy: list[dict[str, Any]] = []
    for name, title in STUDIES.items():
        study = studies[name]
        md += [f"## {title}", ""]
        if not study["rows"]:
            md += [f"{_NO_DATA} (needs {study['needs']}).", ""]
            continue
        md += _markdown_table(study)
        md.append("")
        summary = _summary(name, study)
        if summary:
            md += [*summary, ""]
        png = f"{name}.png"
        _PLOTS[name](study, out / png)
        md += [f"![{name}]({png})", ""]
        tidy += _tidy_rows(name, study)

    report = out / "report.md"
    report.write_text("\n".join(md))
    with (out / "report.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(tidy)
    return report


# =========================================================================== CLI
def main(argv: list[str] | None = None) -> None:
    """``lightning-saliency report RUN_DIR [RUN_DIR ...] --out OUT_DIR [--epoch N] [--stage S]``.

    >>> main(["runs/split_factor", "--out", "reports/split_factor"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(
        prog="lightning-saliency report",
        description="Tables (report.md, report.csv) and plots (PNG) of the five studies from "
        "run folders written by the InterpretationGeneralization callback.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="a run's log folder (runs/<name>/version_<n>) or a folder holding several",
    )
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder")
    parser.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="monitored epoch to read from every run (default: each run's last)",
    )
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="fit",
        help="rows to read: those written while training (fit, the default) or by a "
        "`lightning-saliency validate/test` run of a trained checkpoint",
    )
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs, epoch=args.epoch, stage=args.stage)
        report = write_report(runs, args.out)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {report} ({len(runs)} run(s))")

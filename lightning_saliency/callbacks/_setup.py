"""What the callback resolves once per run: models, reference, probes, ranges, segments."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode
from lightning_saliency.attribution import (
    MethodSpec,
    as_logits,
    logits_outputs,
    method_needs_input_range,
    segment,
    segmenter_args,
)
from lightning_saliency.attribution.outputs import check_logits
from lightning_saliency.generalization import DEFAULT_FAMILIES, REFERENCE_FAMILIES
from lightning_saliency.generalization.input_bounds import (
    SHARE_AT_BOUNDS,
    adapt_grad_ranges,
    share_at_input_bounds,
)
from lightning_saliency.generalization.method_trial import try_methods
from lightning_saliency.generalization.record import RunRecord

from . import _checks
from ._probes import ProbeSet, as_dataset, draw_indices, gather
from ._run import PreparedProbes, RunSetup
from ._settings import MonitorSettings

__all__ = [
    "check_models",
    "draw_probes",
    "find_log_dir",
    "load_reference",
    "models_of",
    "prepare_probes",
    "probe_images",
    "resolve_run",
    "run_families",
    "segment_probes",
    "share_at_bounds",
]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def models_of(pl_module: nn.Module, is_ensemble: bool | None = None) -> list[nn.Module]:
    """The monitored models: an ensemble's ``models`` ModuleList, else the module itself.

    ``is_ensemble`` None detects the ensemble (a non-empty ``nn.ModuleList`` named
    ``models``); False monitors the module as one model whatever it holds; True requires it.
    """
    models = getattr(pl_module, "models", None)
    found = isinstance(models, nn.ModuleList) and len(models) > 0
    if is_ensemble is False or (is_ensemble is None and not found):
        return [pl_module]
    if not found:
        raise ValueError(
            "is_ensemble=True but the module has no non-empty nn.ModuleList named `models`; "
            "an ensemble keeps its K models there (see DisjointEnsemble)"
        )
    return list(models)  # type: ignore[arg-type]


def load_reference(reference: Any, pl_module: pl.LightningModule) -> nn.Module | None:
    """The reference module: given, or loaded from a checkpoint of ``pl_module``'s class."""
    if reference is None:
        return None
    if isinstance(reference, (str, os.PathLike)):
        path = Path(reference)
        if not path.is_file():
            raise FileNotFoundError(f"reference checkpoint {str(path)!r} does not exist")
        cls = type(pl_module)
        try:  # weights only: a checkpoint from elsewhere cannot run code when loaded
            reference = cls.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt, empty, another class's, or not weights-only
            raise ValueError(
                f"reference checkpoint {str(path)!r} could not be loaded as a {cls.__name__} "
                f"(weights only): {_first_line(err)}"
            ) from None
    if not isinstance(reference, nn.Module):
        raise TypeError(
            f"reference must be a module or a checkpoint path; got {type(reference).__name__}"
        )
    return reference


def _probe_sources(
    trainer: pl.Trainer, k_models: int, train_probes: Any, test_probes: Any
) -> tuple[list[Any], Any]:
    dm = getattr(trainer, "datamodule", None)
    if train_probes is not None or test_probes is not None:
        if train_probes is None or test_probes is None:
            raise ValueError("give both train_probes and test_probes, or neither")
        if k_models >= 2:
            raise ValueError(
                "explicit probes serve single-model modules; K >= 2 models draw their "
                "train probes from their own splits of a DisjointSplitDataModule"
            )
        return [as_dataset(train_probes)], as_dataset(test_probes)
    if dm is not None and hasattr(dm, "split_dataset") and hasattr(dm, "heldout_dataset"):
        if not getattr(dm, "split_indices", None):
            dm.setup("fit")
        n_splits = len(dm.split_indices)
        if n_splits < k_models:
            raise ValueError(
                f"the module has {k_models} models but the data module has {n_splits} splits"
            )
        return [dm.split_dataset(k) for k in range(k_models)], dm.heldout_dataset()
    raise ValueError(
        "no probes: use a lightning_saliency DisjointSplitDataModule or pass "
        "train_probes= and test_probes= (tensors or datasets)"
    )


def draw_probes(
    trainer: pl.Trainer,
    k_models: int,
    *,
    num_train: int,
    num_test: int,
    seed: int,
    train_probes: Any = None,
    test_probes: Any = None,
    loaded: dict[str, list[int]] | None = None,
    need_labels: bool = True,
    transform: Callable[[Any], Any] | None = None,
    keys: tuple[str | None, str | None] = (None, None),
) -> ProbeSet:
    """The fixed probes of a run: drawn with a dedicated generator, or the checkpoint's
    (``keys``: a dict item's image and label keys, :func:`~._probes.gather`)."""
    train_sets, test_set = _probe_sources(trainer, k_models, train_probes, test_probes)
    gen = torch.Generator().manual_seed(seed)
    indices: dict[str, list[int]] = {}
    parts = []
    for k, ds in enumerate(train_sets):
        key = f"train_{k}"
        idx = draw_indices(len(ds), num_train, gen, "train")
        if loaded is not None and key in loaded:
            idx = torch.tensor(loaded[key], dtype=torch.long)
        indices[key] = idx.tolist()
        parts.append(gather(ds, idx, transform, *keys))
    idx = draw_indices(len(test_set), num_test, gen, "test")
    if loaded is not None and "test" in loaded:
        idx = torch.tensor(loaded["test"], dtype=torch.long)
    indices["test"] = idx.tolist()
    probes = ProbeSet.build(parts, gather(test_set, idx, transform, *keys), indices)
    if need_labels and bool((probes.y < 0).any()):
        raise ValueError("the probes have no labels: pass (images, labels) or use target='pred'")
    return probes


@torch.no_grad()
def check_models(
    models: Sequence[nn.Module],
    reference: nn.Module | None,
    probes: ProbeSet,
    need_labels: bool,
    transform: Callable[[Any], Tensor] = lambda out: out,
) -> None:
    """The models (and reference) return 2-D logits (after ``transform``) with matching
    classes for the labels."""
    x = probes.x[:2]
    checked = [*models, *([reference] if reference is not None else [])]
    outs = []
    with eval_mode(*checked), isolate_rng():
        for i, m in enumerate(checked):
            dev = next((p.device for p in m.parameters()), torch.device("cpu"))
            try:
                out = m(x.to(dev))
            except Exception as err:  # wrong channels, an image too small for the network, ...
                who = "the reference model" if i == len(models) else f"model {i}"
                raise ValueError(
                    f"{who} cannot take the probes, shaped {tuple(x.shape[1:])} (C, H, W): "
                    f"{_first_line(err)}. Check the model's "
                    "input channels and image size against the data (or the probes you passed)"
                ) from None
            try:
                outs.append(transform(out))
            except TypeError as err:  # not logits by the convention, and no output_transform
                raise ValueError(str(err)) from None
    for out in outs:
        if not isinstance(out, Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the model must return 2-D logits (N, classes); got {shape}")
        check_logits(out)  # probabilities would be softmaxed twice in faithfulness
    if reference is not None and outs[-1].shape[1] != outs[0].shape[1]:
        raise ValueError(
            f"the reference model has {outs[-1].shape[1]} output classes, the model {outs[0].shape[1]}"
        )
    classes = outs[0].shape[1]
    if need_labels and int(probes.y.max()) >= classes:
        raise ValueError(
            f"probe labels go up to {int(probes.y.max())} but the model has {classes} classes"
        )


def probe_images(x: Tensor, unnormalize: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Probes as [0, 1] images: the data's ``unnormalize``, else per-image min-max scaling."""
    if unnormalize is not None:
        return unnormalize(x).clamp(0, 1)
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1, 1)
    return ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def segment_probes(specs: Sequence[MethodSpec], images: Tensor) -> dict[str, Tensor]:
    """label -> segmentation of the probes, once per distinct segmenter."""
    cache: dict[str, Tensor] = {}
    out = {}
    for spec in specs:
        args = segmenter_args(spec)
        if args is None:
            continue
        key = repr(sorted(args.items()))
        if key not in cache:
            cache[key] = segment(images.cpu(), **args)
        out[spec.label] = cache[key]
    return out


def find_log_dir(trainer: pl.Trainer) -> str | None:
    """The run's own folder: the first logger's ``log_dir`` (TensorBoard, CSV); else, for a
    logger without one (W&B, MLflow), ``<save_dir>/<name>/<version>`` (for MLflow's file
    store, its own run folder); with no logger, the trainer's ``default_root_dir``."""
    for logger in trainer.loggers:
        d = getattr(logger, "log_dir", None)
        if d:
            return str(d)
    for logger in trainer.loggers:
        version = getattr(logger, "version", None)
        if version is not None:
            root = getattr(logger, "save_dir", None) or trainer.default_root_dir
            return str(Path(root) / str(getattr(logger, "name", None) or "run") / str(version))
    return trainer.default_root_dir


def resolve_run(
    settings: MonitorSettings,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    loaded: dict[str, list[int]] | None,
) -> RunSetup:
    """What the callback's ``setup`` resolves: reference, metric families, probes (drawn, or
    the checkpoint's ``loaded`` indices), run record; the models are checked against them."""
    models = models_of(pl_module, settings.is_ensemble)
    reference = load_reference(settings.reference, pl_module) if len(models) == 1 else None
    if len(models) >= 2 and settings.reference is not None:
        raise ValueError(
            "reference is for single-model modules; with K >= 2 models the reference is "
            "the leave-one-out mean of the other models' maps"
        )
    families = run_families(settings.metrics, len(models), reference is not None)
    prepared = prepare_probes(settings, trainer, len(models), loaded)
    transform = settings.output_transform or as_logits
    check_models(models, reference, prepared.probes, settings.target == "label", transform)
    try_on_one_probe(settings, [*models, *([reference] if reference is not None else [])],
                     prepared, transform)  # fmt: skip
    # Every rank reads the log dir here, outside any rank-0-only branch (it may synchronize).
    return RunSetup(reference, families, prepared, RunRecord(find_log_dir(trainer)))


def try_on_one_probe(
    settings: MonitorSettings, models: Sequence[nn.Module], prepared: PreparedProbes,
    transform: Callable[[Any], Tensor],
) -> None:
    """Every method (a registered or Captum one, a Grad-CAM layer) tried on one probe of each
    model at setup, so that a typo or a wrong shape fails before epoch 0 trains."""
    dev = next((p.device for p in models[0].parameters()), torch.device("cpu"))
    x = prepared.probes.x[:1].to(dev)
    with isolate_rng(), logits_outputs(models, transform):
        if settings.target == "label":
            target = prepared.probes.y[:1].to(dev)
        else:
            with torch.no_grad(), eval_mode(*models):
                target = models[0](x).argmax(-1)
        try_methods(models, x, target, settings.specs, input_range=prepared.input_range)


def run_families(
    requested: tuple[str, ...] | None, k_models: int, has_reference: bool
) -> tuple[str, ...]:
    """The metric families a run computes: the ``requested`` ones (checked against what the
    models and reference allow), else every default family that applies."""
    has_ref = k_models >= 2 or has_reference
    if requested is None:
        if not has_ref:
            rank_zero_warn(
                "InterpretationGeneralization: one model and no reference, so only "
                "reference-free metrics (sparseness, complexity, drift) are logged; gap and "
                "agreement metrics need K >= 2 models or a `reference`."
            )
            return tuple(f for f in DEFAULT_FAMILIES if f not in REFERENCE_FAMILIES)
        return DEFAULT_FAMILIES
    needs = sorted(set(requested) & set(REFERENCE_FAMILIES))
    if needs and not has_ref:
        raise ValueError(
            f"metrics {needs} need a reference: train K >= 2 models (DisjointEnsemble) "
            "or pass `reference=` (a module or a checkpoint path)"
        )
    if "mege_reco" in requested and k_models < 2:
        raise ValueError("mege_reco needs K >= 2 models trained on disjoint splits")
    return requested


def _probes_range(x: Tensor) -> tuple[float, float]:
    """The probes' min and max, as the input range of a method that needs one."""
    lo, hi = float(x.min()), float(x.max())
    if not lo < hi:
        raise ValueError(
            f"every probe pixel is {lo}: the input range cannot be derived from the "
            "probes; pass input_range=(x_min, x_max) of the model's input space"
        )
    return lo, hi


def prepare_probes(
    settings: MonitorSettings,
    trainer: pl.Trainer,
    k_models: int,
    loaded: dict[str, list[int]] | None,
) -> PreparedProbes:
    """Draw (or restore) the probes, resolve the input range, segment the probes once."""
    s = settings
    probes = draw_probes(
        trainer, k_models, num_train=s.num_train_probes, num_test=s.num_test_probes,
        seed=s.seed, train_probes=s.train_probes, test_probes=s.test_probes,
        loaded=loaded, need_labels=s.target == "label", transform=s.probe_transform,
        keys=(s.input_key, s.label_key),
    )  # fmt: skip
    dm = getattr(trainer, "datamodule", None)
    rng, unnormalize = s.input_range, s.unnormalize
    if rng is None and dm is not None and hasattr(dm, "input_range"):
        lo, hi = dm.input_range
        rng = (float(lo), float(hi))
    if unnormalize is None and dm is not None and hasattr(dm, "unnormalize"):
        unnormalize = dm.unnormalize
    _checks.check_probe_values(probes.x, probes.indices)
    if any(method_needs_input_range(spec) for spec in s.specs) and rng is None:
        rng = _probes_range(probes.x)
    _checks.check_input_range(rng, "input_range (the data module's)")
    share = share_at_bounds(s.specs, rng, probes.x)
    probes.images = probe_images(probes.x, unnormalize)
    segments = segment_probes(s.specs, probes.images)
    return PreparedProbes(probes, rng, unnormalize, segments, share)


def share_at_bounds(specs: Sequence[MethodSpec], rng: tuple[float, float] | None,
                    x: Tensor) -> Tensor | None:  # fmt: skip
    """Per probe, the share of its elements at the input bounds AdaptGrad uses (computed once
    per probe set, logged every monitored epoch); None without AdaptGrad, or (with a warning)
    when two AdaptGrad methods use different bounds. Warns when most pixels sit there."""
    ranges = adapt_grad_ranges(specs, rng)
    if len(ranges) != 1:
        if ranges:
            rank_zero_warn(
                f"InterpretationGeneralization: the AdaptGrad methods use different input "
                f"ranges {ranges}, so the probes' share at the input bounds "
                f"({SHARE_AT_BOUNDS}) is not logged."
            )
        return None
    share = share_at_input_bounds(x, ranges[0]).cpu()
    mean = float(share.mean())
    if mean > 0.5:
        rank_zero_warn(
            f"InterpretationGeneralization: {mean:.0%} of the probe pixels sit "
            "at the input bounds, where AdaptGrad adds no noise: there its maps are the plain "
            "gradient's (docs/metrics.md, Conventions)."
        )
    return share

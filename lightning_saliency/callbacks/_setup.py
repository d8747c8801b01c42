"""What the callback resolves once per run: models, reference, probes, ranges, segments."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode
from lightning_saliency.attribution import MethodSpec, segment, segmenter_args

from ._probes import ProbeSet, as_dataset, draw_indices, gather

__all__ = [
    "check_models",
    "draw_probes",
    "find_log_dir",
    "load_reference",
    "models_of",
    "probe_images",
    "segment_probes",
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
) -> ProbeSet:
    """The fixed probes of a run: drawn with a dedicated generator, or the checkpoint's."""
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
        parts.append(gather(ds, idx, transform))
    idx = draw_indices(len(test_set), num_test, gen, "test")
    if loaded is not None and "test" in loaded:
        idx = torch.tensor(loaded["test"], dtype=torch.long)
    indices["test"] = idx.tolist()
    probes = ProbeSet.build(parts, gather(test_set, idx, transform), indices)
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

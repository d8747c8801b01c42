"""The :class:`InterpretationGeneralization` callback.

Every monitored epoch it explains a fixed set of probes with every configured
saliency method, for every model, and logs how far each model's maps are from a
reference on its own training data and on held-out data (the interpretation loss
and its generalization gap, paper 000 sec. 4), how much the models agree, and how
SmoothGrad, AdaptGrad and super-pixel grouping shrink the gap. See
``docs/metrics.md`` for every tag.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode
from lightning_saliency.attribution import (
    MethodSpec,
    method_needs_input_range,
    resolve_method,
    segment,
    segmenter_args,
)

from . import _tensorboard
from ._compute import FAMILIES, REFERENCE_FAMILIES, EpochResult, Record, compute_epoch
from ._probes import ProbeSet, as_dataset, draw_indices, gather

__all__ = ["DEFAULT_METHODS", "InterpretationGeneralization"]

#: The default method set: the plain gradient baseline, SmoothGrad at several noise
#: levels, integrated gradients, AdaptGrad, and super-pixel-grouped simple/smooth grad.
DEFAULT_METHODS: tuple[str | dict[str, Any], ...] = (
    "simple_grad",
    {"method": "smooth_grad", "noise_level": 0.1, "samples": 16},
    {"method": "smooth_grad", "noise_level": 0.2, "samples": 16},
    {"method": "smooth_grad", "noise_level": 0.5, "samples": 16},
    {"method": "integrated_gradients", "steps": 16},
    {"method": "adapt_grad", "samples": 16},
    {"method": "simple_grad", "superpixel": "slic"},
    {"method": "smooth_grad", "noise_level": 0.2, "samples": 16, "superpixel": "slic"},
)

CSV_NAME = "interpretation_metrics.csv"
CSV_FIELDS = ("epoch", "step", "method", "model", "split", "metric", "value")


def _training_epoch_finished(trainer: pl.Trainer) -> bool:
    """Whether the current training epoch has run its last batch (Lightning 2.x loops)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return bool(getattr(loop, "_is_training_done", False))


def _purge_tensorboard_after(trainer: pl.Trainer, step: int) -> None:
    """Hide events at ``step`` and later that a run wrote before it was resumed.

    TensorBoard's own restart marker (what ``SummaryWriter(purge_step=...)`` writes): a
    resumed run re-logs those steps, so without it they would show twice.
    """
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment._get_file_writer()
            writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))


def _models_of(pl_module: nn.Module) -> list[nn.Module]:
    models = getattr(pl_module, "models", None)
    if isinstance(models, nn.ModuleList) and len(models) > 0:
        return list(models)
    return [pl_module]


class InterpretationGeneralization(Callback):
    """Watch whether saliency maps generalize from training to held-out data.

    Three ways to use it:

    1. With :class:`~lightning_saliency.models.DisjointEnsemble` (K >= 2 models on
       disjoint splits): the reference of model k is the leave-one-out mean of the
       other models' maps; train probes of model k come from split k, test probes
       from the held-out set.
    2. With any single-model LightningModule and a ``reference`` module (or a
       checkpoint path of the same LightningModule class).
    3. With a single model and no reference: only reference-free metrics
       (sparseness, complexity, drift and their train-vs-test difference).

    Args:
        methods: method names or specs of :func:`lightning_saliency.attribution.resolve_method`.
        num_train_probes: probes per model drawn from its own training split.
        num_test_probes: held-out probes, the same for every model.
        every_n_epochs: monitor every n-th training epoch.
        reference: reference model (module or checkpoint path) for single-model modules.
        normalize: compare unit-L2-normalized maps (paper 000) instead of raw ones.
        target: explain the true ``"label"`` or the (ensemble's) predicted class ``"pred"``.
        precision: ``"32"`` or ``"bf16"`` (bf16 autocast on CUDA) for the attribution passes.
        seed: seeds the probe draw and every method's noise (a dedicated generator).
        log_images_every_n_epochs: image grids and figures every n monitored epochs (0: never).
        num_images: test probes shown in each image grid.
        metrics: metric families to compute (default: all that apply), from
            ``"gap", "agreement", "mege_reco", "quality", "drift", "prediction_agreement"``.
        train_probes / test_probes: explicit probes (images, ``(images, labels)`` or a
            dataset) for modules that do not use this library's data modules.
        input_range: ``(x_min, x_max)`` of the model's input space (default: the data
            module's ``input_range``; else the probes' min and max).
        unnormalize: maps model inputs back to [0, 1] images for super-pixels and display
            (default: the data module's ``unnormalize``; else per-image min-max scaling).
        batch_size: rows per forward/backward chunk of the attribution passes.
        channels_last: channels_last memory format on CUDA.
        topk: fraction (or count) of pixels for the top-k intersection.

    Example:
        >>> import lightning as L
        >>> from lightning_saliency.callbacks import InterpretationGeneralization
        >>> from lightning_saliency.data import DigitsDataModule
        >>> from lightning_saliency.models import DisjointEnsemble
        >>> cb = InterpretationGeneralization(methods=["simple_grad"], num_train_probes=8,
        ...                                   num_test_probes=8)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[cb], logger=False,
        ...                     enable_checkpointing=False, enable_progress_bar=False,
        ...                     limit_train_batches=2, limit_val_batches=1)
        >>> trainer.fit(DisjointEnsemble(), DigitsDataModule())  # doctest: +SKIP
    """

    def __init__(
        self,
        methods: Sequence[str | Mapping[str, Any]] | None = None,
        num_train_probes: int = 64,
        num_test_probes: int = 64,
        every_n_epochs: int = 1,
        reference: str | nn.Module | None = None,
        normalize: bool = True,
        target: Literal["label", "pred"] = "label",
        precision: Literal["32", "bf16"] = "32",
        seed: int = 0,
        log_images_every_n_epochs: int = 5,
        num_images: int = 4,
        metrics: Sequence[str] | None = None,
        train_probes: Any = None,
        test_probes: Any = None,
        input_range: tuple[float, float] | None = None,
        unnormalize: Callable[[Tensor], Tensor] | None = None,
        batch_size: int | None = None,
        channels_last: bool = False,
        topk: float = 0.1,
    ) -> None:
        super().__init__()
        self.specs: list[MethodSpec] = [
            resolve_method(m) for m in (DEFAULT_METHODS if methods is None else methods)
        ]
        if not self.specs:
            raise ValueError("methods must name at least one saliency method")
        labels = [s.label for s in self.specs]
        dup = sorted({lb for lb in labels if labels.count(lb) > 1})
        if dup:
            raise ValueError(f"methods must be distinct; these labels repeat: {dup}")
        for name, value in (
            ("num_train_probes", num_train_probes),
            ("num_test_probes", num_test_probes),
            ("every_n_epochs", every_n_epochs),
            ("num_images", num_images),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        if (
            isinstance(log_images_every_n_epochs, bool)
            or not isinstance(log_images_every_n_epochs, int)
            or log_images_every_n_epochs < 0
        ):
            raise ValueError(
                f"log_images_every_n_epochs must be an int >= 0; got {log_images_every_n_epochs!r}"
            )
        if target not in ("label", "pred"):
            raise ValueError(f"target must be 'label' or 'pred'; got {target!r}")
        if precision not in ("32", "bf16"):
            raise ValueError(f"precision must be '32' or 'bf16'; got {precision!r}")
        if metrics is not None:
            unknown = sorted(set(metrics) - set(FAMILIES))
            if unknown:
                raise ValueError(f"unknown metric families {unknown}; known: {list(FAMILIES)}")
        if input_range is not None and not (
            len(input_range) == 2 and input_range[0] < input_range[1]
        ):
            raise ValueError(
                f"input_range must be (x_min, x_max) with x_min < x_max; got {input_range!r}"
            )
        self.num_train_probes = num_train_probes
        self.num_test_probes = num_test_probes
        self.every_n_epochs = every_n_epochs
        self.reference = reference
        self.normalize = normalize
        self.target = target
        self.precision = precision
        self.seed = int(seed)
        self.log_images_every_n_epochs = log_images_every_n_epochs
        self.num_images = num_images
        self.requested_metrics = None if metrics is None else tuple(metrics)
        self.train_probes = train_probes
        self.test_probes = test_probes
        self.input_range = (
            None if input_range is None else (float(input_range[0]), float(input_range[1]))
        )
        self.unnormalize = unnormalize
        # what this run uses (the arguments above, else the data module's, else the probes')
        self._range: tuple[float, float] | None = None
        self._unnormalize: Callable[[Tensor], Tensor] | None = None
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.topk = topk

        # Run state (rebuilt in setup; probe indices and logged epochs travel in checkpoints).
        self.probes: ProbeSet | None = None
        self.families: tuple[str, ...] = ()
        self.segments: dict[str, Tensor] = {}
        self.previous: dict[str, Tensor] | None = None
        self.logged_epochs: list[int] = []  # training epochs already monitored
        self.final_values: dict[str, float] = {}  # tag -> value at the last monitored epoch
        self._loaded_indices: dict[str, list[int]] | None = None
        self._reference_module: nn.Module | None = None
        self._log_dir: str | None = None
        self._warned_no_tb = False
        self._layout_done = False

    # ------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            methods=[s.label for s in self.specs],
            num_train_probes=self.num_train_probes,
            num_test_probes=self.num_test_probes,
            seed=self.seed,
            target=self.target,
            normalize=self.normalize,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "probe_indices": None if self.probes is None else self.probes.indices,
            "logged_epochs": list(self.logged_epochs),
            "final_values": dict(self.final_values),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if int(state_dict.get("seed", self.seed)) != self.seed:
            raise ValueError(
                f"checkpoint was written with seed {state_dict['seed']}, this callback has seed {self.seed}"
            )
        self._loaded_indices = state_dict.get("probe_indices")
        self.logged_epochs = [int(e) for e in state_dict.get("logged_epochs", [])]
        self.final_values = {
            str(k): float(v) for k, v in state_dict.get("final_values", {}).items()
        }

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            # A new fit starts a new run; a checkpoint restore (after setup) refills this.
            self.logged_epochs, self.final_values, self.previous = [], {}, None
            self._loaded_indices = None
        models = _models_of(pl_module)
        self._reference_module = self._load_reference(pl_module) if len(models) == 1 else None
        if len(models) >= 2 and self.reference is not None:
            raise ValueError(
                "reference is for single-model modules; with K >= 2 models the reference is "
                "the leave-one-out mean of the other models' maps"
            )
        has_ref = len(models) >= 2 or self._reference_module is not None
        if self.requested_metrics is None:
            families = (
                FAMILIES if has_ref else tuple(f for f in FAMILIES if f not in REFERENCE_FAMILIES)
            )
            if not has_ref:
                rank_zero_warn(
                    "InterpretationGeneralization: one model and no reference, so only "
                    "reference-free metrics (sparseness, complexity, drift) are logged; gap and "
                    "agreement metrics need K >= 2 models or a `reference`."
                )
        else:
            families = self.requested_metrics
            needs = sorted(set(families) & set(REFERENCE_FAMILIES))
            if needs and not has_ref:
                raise ValueError(
                    f"metrics {needs} need a reference: train K >= 2 models (DisjointEnsemble) "
                    "or pass `reference=` (a module or a checkpoint path)"
                )
            if "mege_reco" in families and len(models) < 2:
                raise ValueError("mege_reco needs K >= 2 models trained on disjoint splits")
        self.families = tuple(families)
        self.probes = self._draw_probes(trainer, len(models), self._loaded_indices)
        self._check_models(models, self.probes)
        self._resolve_ranges(trainer)
        if any(method_needs_input_range(s) for s in self.specs) and self._range is None:
            self._range = (float(self.probes.x.min()), float(self.probes.x.max()))
        self.probes.images = self._images(self.probes.x)
        self._segment_probes()
        # Every rank reads the log dir here, outside any rank-0-only branch (it may synchronize).
        self._log_dir = self._find_log_dir(trainer)

    def _load_reference(self, pl_module: pl.LightningModule) -> nn.Module | None:
        ref = self.reference
        if ref is None:
            return None
        if isinstance(ref, (str, os.PathLike)):
            path = Path(ref)
            if not path.is_file():
                raise FileNotFoundError(f"reference checkpoint {str(path)!r} does not exist")
            ref = type(pl_module).load_from_checkpoint(str(path), map_location="cpu")
        if not isinstance(ref, nn.Module):
            raise TypeError(
                f"reference must be a module or a checkpoint path; got {type(ref).__name__}"
            )
        return ref

    def _datamodule(self, trainer: pl.Trainer) -> Any:
        return getattr(trainer, "datamodule", None)

    def _draw_probes(
        self, trainer: pl.Trainer, k_models: int, loaded: dict[str, list[int]] | None
    ) -> ProbeSet:
        dm = self._datamodule(trainer)
        if self.train_probes is not None or self.test_probes is not None:
            if self.train_probes is None or self.test_probes is None:
                raise ValueError("give both train_probes and test_probes, or neither")
            train_sets = [as_dataset(self.train_probes)]
            if k_models >= 2:
                raise ValueError(
                    "explicit probes serve single-model modules; K >= 2 models draw their "
                    "train probes from their own splits of a DisjointSplitDataModule"
                )
            test_set = as_dataset(self.test_probes)
        elif dm is not None and hasattr(dm, "split_dataset") and hasattr(dm, "heldout_dataset"):
            if not getattr(dm, "split_indices", None):
                dm.setup("fit")
            n_splits = len(dm.split_indices)
            if n_splits < k_models:
                raise ValueError(
                    f"the module has {k_models} models but the data module has {n_splits} splits"
                )
            train_sets = [dm.split_dataset(k) for k in range(k_models)]
            test_set = dm.heldout_dataset()
        else:
            raise ValueError(
                "no probes: use a lightning_saliency DisjointSplitDataModule or pass "
                "train_probes= and test_probes= (tensors or datasets)"
            )
        gen = torch.Generator().manual_seed(self.seed)
        indices: dict[str, list[int]] = {}
        parts = []
        for k, ds in enumerate(train_sets):
            key = f"train_{k}"
            idx = draw_indices(len(ds), self.num_train_probes, gen, "train")
            if loaded is not None and key in loaded:
                idx = torch.tensor(loaded[key], dtype=torch.long)
            indices[key] = idx.tolist()
            parts.append(gather(ds, idx))
        idx = draw_indices(len(test_set), self.num_test_probes, gen, "test")
        if loaded is not None and "test" in loaded:
            idx = torch.tensor(loaded["test"], dtype=torch.long)
        indices["test"] = idx.tolist()
        test_part = gather(test_set, idx)
        probes = ProbeSet.build(parts, test_part, indices)
        if self.target == "label" and bool((probes.y < 0).any()):
            raise ValueError(
                "the probes have no labels: pass (images, labels) or use target='pred'"
            )
        return probes

    @torch.no_grad()
    def _check_models(self, models: list[nn.Module], probes: ProbeSet) -> None:
        x = probes.x[:2]
        outs = []
        checked = models + ([self._reference_module] if self._reference_module is not None else [])
        with eval_mode(*checked), isolate_rng():
            for m in checked:
                dev = next((p.device for p in m.parameters()), torch.device("cpu"))
                outs.append(m(x.to(dev)))
        for out in outs:
            if not isinstance(out, Tensor) or out.ndim != 2:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"the model must return 2-D logits (N, classes); got {shape}")
        if self._reference_module is not None and outs[-1].shape[1] != outs[0].shape[1]:
            raise ValueError(
                f"the reference model has {outs[-1].shape[1]} output classes, the model {outs[0].shape[1]}"
            )
        classes = outs[0].shape[1]
        if self.target == "label" and int(probes.y.max()) >= classes:
            raise ValueError(
                f"probe labels go up to {int(probes.y.max())} but the model has {classes} classes"
            )

    def _resolve_ranges(self, trainer: pl.Trainer) -> None:
        dm = self._datamodule(trainer)
        self._range, self._unnormalize = self.input_range, self.unnormalize
        if self._range is None and dm is not None and hasattr(dm, "input_range"):
            lo, hi = dm.input_range
            self._range = (float(lo), float(hi))
        if self._unnormalize is None and dm is not None and hasattr(dm, "unnormalize"):
            self._unnormalize = dm.unnormalize

    def _images(self, x: Tensor) -> Tensor:
        if self._unnormalize is not None:
            return self._unnormalize(x).clamp(0, 1)
        flat = x.flatten(1)
        lo = flat.min(1).values.view(-1, 1, 1, 1)
        hi = flat.max(1).values.view(-1, 1, 1, 1)
        return ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)

    def _segment_probes(self) -> None:
        """Segment the probes once per distinct segmenter (they do not change between epochs)."""
        assert self.probes is not None and self.probes.images is not None
        cache: dict[str, Tensor] = {}
        self.segments = {}
        for spec in self.specs:
            args = segmenter_args(spec)
            if args is None:
                continue
            key = repr(sorted(args.items()))
            if key not in cache:
                cache[key] = segment(self.probes.images.cpu(), **args)
            self.segments[spec.label] = cache[key]

    @staticmethod
    def _find_log_dir(trainer: pl.Trainer) -> str | None:
        for logger in trainer.loggers:
            d = getattr(logger, "log_dir", None)
            if d:
                return str(d)
        return trainer.default_root_dir

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a checkpoint restore: the probes come from the checkpoint's indices.
        if (
            self._loaded_indices is not None
            and self.probes is not None
            and self._loaded_indices != self.probes.indices
        ):
            models = _models_of(pl_module)
            self.probes = self._draw_probes(trainer, len(models), self._loaded_indices)
            self.probes.images = self._images(self.probes.x)
            self._segment_probes()
        self._to_device(pl_module)
        if trainer.is_global_zero:
            self._add_layout(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resuming (the loops' state, global_step included, is restored by now): drop what
        # the earlier run wrote after the checkpoint, so that no epoch shows twice.
        if trainer.is_global_zero and self._loaded_indices is not None:
            self._rewrite_csv()
            _purge_tensorboard_after(trainer, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if self._is_monitored(epoch) and epoch > self._last_logged_epoch:
            self._monitor(trainer, pl_module, epoch=epoch, stage="fit")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "validate":
            self._to_device(pl_module)
            self._monitor(trainer, pl_module, epoch=trainer.current_epoch, stage="validate")
            return
        # The validation that closes a training epoch runs before on_train_epoch_end, and a
        # ModelCheckpoint may save right after it (on_validation_end): monitor the finished
        # epoch now, so that the checkpoint already holds it. The weights are final here.
        epoch = trainer.current_epoch
        if (
            trainer.state.fn == "fit"
            and _training_epoch_finished(trainer)
            and self._is_monitored(epoch)
            and epoch > self._last_logged_epoch
        ):
            self._monitor(trainer, pl_module, epoch=epoch, stage="fit")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._to_device(pl_module)
        self._monitor(trainer, pl_module, epoch=trainer.current_epoch, stage="test")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        final = {f"hp/{k}": v for k, v in self.final_values.items() if math.isfinite(v)}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and final:
                params = {f"interp_{k}": str(v) for k, v in self._hparams().items()}
                logger.log_hyperparams(params, metrics=final)

    # ------------------------------------------------------------------ work
    @property
    def _last_logged_epoch(self) -> int:
        return max(self.logged_epochs, default=-1)

    def _is_monitored(self, epoch: int) -> bool:
        return (epoch + 1) % self.every_n_epochs == 0

    def _to_device(self, pl_module: pl.LightningModule) -> None:
        if self.probes is None:
            raise RuntimeError("InterpretationGeneralization.setup has not run")
        device = pl_module.device
        self.probes.to(device)
        if self._reference_module is not None:
            self._reference_module.to(device)
        self.segments = {k: v.to(device) for k, v in self.segments.items()}

    def _hparams(self) -> dict[str, Any]:
        return {
            "methods": ",".join(s.label for s in self.specs),
            "num_train_probes": self.num_train_probes,
            "num_test_probes": self.num_test_probes,
            "normalize": self.normalize,
            "target": self.target,
            "seed": self.seed,
        }

    def _baseline_label(self) -> str | None:
        for s in self.specs:
            if s.method == "simple_grad" and s.superpixel is None:
                return s.label
        return None

    def _monitor(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, stage: str
    ) -> None:
        assert self.probes is not None
        models = _models_of(pl_module)
        with isolate_rng(), torch.inference_mode(False), torch.enable_grad():
            probes = self._materialize(self.probes)
            result = compute_epoch(
                models,
                probes,
                self.specs,
                reference=self._reference_module,
                families=self.families,
                normalize=self.normalize,
                target=self.target,
                precision=self.precision,
                channels_last=self.channels_last,
                seed=self.seed,
                input_range=self._range,
                segments=self.segments,
                previous=self.previous if stage == "fit" else None,
                topk=self.topk,
                batch_size=self.batch_size,
                baseline_label=self._baseline_label(),
            )
        if stage == "fit":
            self.previous = {k: v[: len(models)].detach().cpu() for k, v in result.maps.items()}
            self.logged_epochs.append(epoch)
            self.final_values = {r.tag: float(r.value) for r in result.records}
        step = trainer.global_step
        self._log_scalars(trainer, pl_module, result.records, stage)
        rows = [
            {
                "epoch": epoch,
                "step": step,
                "stage": stage,
                "tag": r.tag,
                "method": r.method,
                "model": r.model,
                "split": r.split,
                "metric": r.metric,
                "value": r.value,
            }
            for r in result.records
        ]
        if trainer.is_global_zero:
            self._append_csv(rows)
            images_due = (
                stage == "fit"
                and self.log_images_every_n_epochs > 0
                and (len(self.logged_epochs) - 1) % self.log_images_every_n_epochs == 0
            )
            if images_due or stage != "fit":
                self._log_media(trainer, result, step)

    @staticmethod
    def _materialize(probes: ProbeSet) -> ProbeSet:
        """Copies that are ordinary tensors even when created under inference mode."""
        return ProbeSet(
            x=probes.x.clone(),
            y=probes.y.clone(),
            slices=probes.slices,
            seen=probes.seen.clone(),
            images=None if probes.images is None else probes.images.clone(),
            indices=probes.indices,
        )

    def _log_scalars(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, records: list[Record], stage: str
    ) -> None:
        prefix = "" if stage == "fit" else f"{stage}/"
        metrics = {f"{prefix}{r.tag}": float(r.value) for r in records}
        has_tb = any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
        if not has_tb and not self._warned_no_tb:
            self._warned_no_tb = True
            rank_zero_warn(
                "InterpretationGeneralization: no TensorBoardLogger, so no image grids, figures or "
                "custom-scalar layout; scalars still go through the module's logging and "
                f"{CSV_NAME} is still written."
            )
        if stage == "fit":
            # Logged from every rank with identical values; rank_zero_only avoids any collective.
            for name, value in metrics.items():
                pl_module.log(
                    name, value, on_step=False, on_epoch=True, rank_zero_only=True, logger=True
                )
        else:
            for name, value in metrics.items():
                pl_module.log(name, value, rank_zero_only=True)

    # ------------------------------------------------------------------ files and media
    def _csv_path(self) -> Path | None:
        return None if self._log_dir is None else Path(self._log_dir) / CSV_NAME

    def _append_csv(self, rows: list[dict[str, Any]]) -> None:
        path = self._csv_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        seen: set[tuple[str, ...]] = set()
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            for row in rows:
                out = dict(row)
                if row.get("stage", "fit") != "fit":
                    out["split"] = f"{row['stage']}:{row['split']}"
                # a tag that repeats another row (interp/L/sparseness = its test value) once
                key = tuple(str(out[f]) for f in ("method", "model", "split", "metric"))
                if key not in seen:
                    seen.add(key)
                    writer.writerow(out)

    def _rewrite_csv(self) -> None:
        """On (re)start, make the CSV hold exactly the training epochs this callback logged.

        Rows of epochs after the checkpoint (a run that went on past its last checkpoint
        and then failed) are dropped, so a resumed run writes each epoch once; rows of
        ``validate``/``test`` stages are kept.
        """
        path = self._csv_path()
        if path is None or not path.exists():
            return
        keep_epochs = set(self.logged_epochs)
        with path.open(newline="") as fh:
            rows = [
                r
                for r in csv.DictReader(fh)
                if ":" in r.get("split", "")
                or (r.get("epoch", "").isdigit() and int(r["epoch"]) in keep_epochs)
            ]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)

    def _add_layout(self, trainer: pl.Trainer) -> None:
        if self._layout_done:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(
                    _tensorboard.custom_scalars_layout([s.label for s in self.specs])
                )
        self._layout_done = True

    def _log_media(self, trainer: pl.Trainer, result: EpochResult, step: int) -> None:
        tbs = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not tbs or self.probes is None or self.probes.images is None:
            return
        test = self.probes.part("test")
        n = min(self.num_images, test.stop - test.start)
        rows = slice(test.start, test.start + n)
        k_models = len(result.preds) if self._reference_module is None else len(result.preds) - 1
        try:
            figures = _tensorboard.figures(result.records, self.specs)
        except Exception as err:  # a broken figure must never stop training
            warnings.warn(
                f"InterpretationGeneralization: could not draw figures: {err}", stacklevel=2
            )
            figures = {}
        for logger in tbs:
            exp = logger.experiment
            for label, maps in result.maps.items():
                grid = _tensorboard.image_grid(
                    self.probes.images[rows].cpu(), maps[:, rows].cpu(), k_models
                )
                exp.add_image(f"interp_images/{label}", grid, global_step=step)
            for name, fig in figures.items():
                exp.add_figure(f"interp_figures/{name}", fig, global_step=step, close=False)
        for fig in figures.values():
            _tensorboard.close(fig)

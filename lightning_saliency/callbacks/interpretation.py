"""The :class:`InterpretationGeneralization` callback.

Every monitored epoch it explains a fixed set of probes with every configured
saliency method, for every model, and logs how far each model's maps are from a
reference on its own training data and on held-out data (the interpretation loss
and its generalization gap, paper 000 sec. 4), how much the models agree, and how
SmoothGrad, AdaptGrad and super-pixel grouping shrink the gap. See
``docs/metrics.md`` for every tag.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_saliency import _compat
from lightning_saliency.attribution import MethodSpec, resolve_method
from lightning_saliency.generalization import CHANCE_DRAWS, EpochEvaluation
from lightning_saliency.generalization.record import RunRecord

from . import _checks, _epoch, _logging, _setup
from ._probes import ProbeSet
from ._schedule import Schedule

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
        every_n_epochs: monitor every n-th training epoch (the last epoch always).
        max_overhead: the monitoring cost the callback keeps, as a fraction of the fit's
            training time (default 0.1): it times itself and the training epochs and spreads
            the monitored epochs it can afford over the fit, always monitoring the first and
            the last; ``None`` monitors every ``every_n_epochs`` epochs whatever the cost.
        reference: reference model (module or checkpoint path) for single-model modules.
        normalize: compare unit-L2-normalized maps (paper 000) instead of raw ones.
        target: explain the true ``"label"`` or the (ensemble's) predicted class ``"pred"``.
        precision: ``"32"`` or ``"bf16"`` (bf16 autocast, on CUDA or CPU; on a CPU without
            bf16 units it is slower) for the attribution passes.
        seed: seeds the probe draw and every method's noise (a dedicated generator).
        log_images_every_n_epochs: image grids and figures every n monitored epochs (0: never).
        num_images: test probes shown in each image grid.
        metrics: metric families to compute (default: all that apply), from
            ``"gap", "agreement", "mege_reco", "quality", "drift", "prediction_agreement"``
            and the opt-in ``"faithfulness"`` (muFidelity, deletion and insertion AUC) and
            ``"randomization"`` (similarity to maps of copies with re-initialized top
            layers, Adebayo et al. 2018), which run only when named (``docs/metrics.md``).
        families_every_n_epochs: the opt-in families run on every n-th monitored epoch of
            a fit (the first and the last always) and at every validate/test.
        train_probes / test_probes: explicit probes (images, ``(images, labels)`` or a
            dataset) for modules that do not use this library's data modules.
        input_range: ``(x_min, x_max)`` of the model's input space (default: the data
            module's ``input_range``; else the probes' min and max).
        unnormalize: maps model inputs back to [0, 1] images for super-pixels and display
            (default: the data module's ``unnormalize``; else per-image min-max scaling).
        batch_size: rows per forward/backward chunk of the attribution passes.
        channels_last: channels_last memory format for the attribution passes (on CPU the
            folded copy is channels-last anyway).
        topk: fraction (or count) of pixels for the top-k intersection.
        chance_draws: random derangements of the probes the class-blind chance level of
            every agreement averages over (``docs/metrics.md``).
        is_ensemble: None detects an ensemble (a ``models`` ModuleList, as in
            DisjointEnsemble); False monitors the module as one model whatever it holds.
        probe_transform: applied to each probe image of a dataset (e.g. a torchvision
            transform for PIL images); dict items give their image and label by key.
        fold_batchnorm: explain a frozen eval-mode copy of each model with BatchNorm folded
            into its convolutions (channels-last weights on CPU), built once per monitored
            epoch: faster, the same maps up to float32 rounding (a ReLU decision within
            rounding of its threshold can flip in a few percent of maps). False explains the
            models as they are, bit for bit as version 0.1.
        output_transform: maps a model's output to its ``(N, classes)`` logits; default: a
            tensor as it is, a tuple's first element, a dict's ``"logits"``, an object's
            ``.logits`` (:func:`~lightning_saliency.attribution.as_logits`).

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
        chance_draws: int = CHANCE_DRAWS,
        max_overhead: float | None = 0.1,
        is_ensemble: bool | None = None,
        probe_transform: Callable[[Any], Any] | None = None,
        fold_batchnorm: bool = True,
        output_transform: Callable[[Any], Tensor] | None = None,
        families_every_n_epochs: int = 1,
    ) -> None:
        super().__init__()
        self.specs: list[MethodSpec] = [
            resolve_method(m) for m in (DEFAULT_METHODS if methods is None else methods)
        ]
        _checks.check_arguments(
            {k: v for k, v in locals().items() if k not in ("self", "methods", "__class__")},
            self.specs,
        )
        # Every rank computes (or gathers) the same numbers, so there is nothing to sync:
        # Lightning's advice to pass sync_dist=True does not apply to these tags.
        warnings.filterwarnings(
            "ignore", message=r"It is recommended to use `self\.log\('((validate|test)/)?interp/"
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
        self.chance_draws = chance_draws
        self.is_ensemble = is_ensemble
        self.fold_batchnorm = fold_batchnorm
        self.output_transform = output_transform
        self.families_every_n_epochs = families_every_n_epochs
        self.probe_transform = probe_transform
        self.max_overhead = None if max_overhead is None else float(max_overhead)
        self._schedule = Schedule(every_n_epochs, self.max_overhead)
        self._epoch_start: float | None = None
        self._epoch_monitor = 0.0  # seconds the monitor took in the current epoch
        self._decided: tuple[int, bool] | None = None

        # Run state (rebuilt in setup; probe indices and logged epochs travel in checkpoints).
        self.probes: ProbeSet | None = None
        self.families: tuple[str, ...] = ()
        self.segments: dict[str, Tensor] = {}
        self.previous: dict[str, Tensor] | None = None
        self.logged_epochs: list[int] = []  # training epochs already monitored
        self.final_values: dict[str, float] = {}  # tag -> value at the last monitored epoch
        self._loaded_indices: dict[str, list[int]] | None = None
        self._reference_module: nn.Module | None = None
        self._record = RunRecord(None)
        self._warned_no_tb = False
        self._layout_done = False
        self._last: dict | None = None  # the last fit-stage estimates (end-of-fit summary)
        self._sources = 2  # map sources: K models, plus the reference model

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

    @property
    def settings(self) -> dict[str, Any]:
        """The settings that define this run's probes and numbers (kept on resume)."""
        return {
            "methods": [s.label for s in self.specs],
            "num_train_probes": self.num_train_probes,
            "num_test_probes": self.num_test_probes,
            "seed": self.seed,
            "target": self.target,
            "normalize": self.normalize,
            "topk": self.topk,
            "metrics": None if self.requested_metrics is None else list(self.requested_metrics),
            "input_range": None if self.input_range is None else list(self.input_range),
            "precision": self.precision,
            "chance_draws": self.chance_draws,
            "fold_batchnorm": self.fold_batchnorm,
            "families_every_n_epochs": self.families_every_n_epochs,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "settings": self.settings,
            "probe_indices": None if self.probes is None else self.probes.indices,
            "logged_epochs": list(self.logged_epochs),
            "final_values": dict(self.final_values),
            # last monitored epoch's test-probe maps: drift of the first resumed epoch
            "previous": None if self.previous is None else dict(self.previous),
            "schedule": self._schedule.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        changes = _checks.settings_changes(state_dict.get("settings", {}), self.settings)
        if int(state_dict.get("seed", self.seed)) != self.seed:
            changes.insert(0, f"seed: {state_dict['seed']!r} -> {self.seed!r}")
        if changes:
            raise _checks.resume_error(changes)
        self._loaded_indices = state_dict.get("probe_indices")
        self.logged_epochs = [int(e) for e in state_dict.get("logged_epochs", [])]
        self.final_values = {
            str(k): float(v) for k, v in state_dict.get("final_values", {}).items()
        }
        self.previous = state_dict.get("previous")
        self._schedule.load_state_dict(state_dict.get("schedule", {}))

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse a resume whose callback settings changed: its state is under another key."""
        _checks.check_resume_key(self, checkpoint)

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _setup.setup_run(self, trainer, pl_module, stage)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a checkpoint restore: the probes come from the checkpoint's indices.
        if (
            self._loaded_indices is not None
            and self.probes is not None
            and self._loaded_indices != self.probes.indices
        ):
            k_models = len(_setup.models_of(pl_module, self.is_ensemble))
            _setup.prepare_probes(self, trainer, k_models, self._loaded_indices)
        if self._loaded_indices is None:  # a fresh fit, not a resume: a fresh record
            self._record.check_fresh("fit")
        _setup.to_device(self, pl_module)
        if trainer.is_global_zero:
            _logging.add_run_layout(self, trainer)
            self._record.write_methods(self._methods_record("fit"))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._start_stage(trainer, "validate")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_stage(trainer, "test")

    def _start_stage(self, trainer: pl.Trainer, stage: str) -> None:
        self._record.check_fresh(stage)
        if trainer.is_global_zero:
            self._record.write_methods(self._methods_record(stage))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resuming (the loops' state, global_step included, is restored by now): drop what
        # the earlier run wrote after the checkpoint, so that no epoch shows twice.
        if trainer.is_global_zero and self._loaded_indices is not None:
            self._record.keep_fit_epochs(self.logged_epochs)
            # the earlier run's events from the first step after the checkpoint on are hidden;
            # the checkpointed epoch's own scalars and images sit before it
            _logging.purge_tensorboard_after(trainer, trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._epoch_monitor = time.perf_counter(), 0.0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if epoch > self._last_logged_epoch and _epoch.is_due(self, trainer, epoch):
            self._monitor(trainer, pl_module, epoch=epoch, stage="fit")
        if self._epoch_start is not None:  # this epoch's training time, the monitor's excluded
            spent = time.perf_counter() - self._epoch_start - self._epoch_monitor
            self._schedule.record_training(spent)
            self._epoch_start = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "validate":
            _setup.to_device(self, pl_module)
            self._monitor(trainer, pl_module, epoch=trainer.current_epoch, stage="validate")
            return
        # The validation that closes a training epoch runs before on_train_epoch_end, and a
        # ModelCheckpoint may save right after it (on_validation_end): monitor the finished
        # epoch now, so that the checkpoint already holds it. The weights are final here.
        epoch = trainer.current_epoch
        if (
            trainer.state.fn == "fit"
            and _compat.training_epoch_finished(trainer)
            and epoch > self._last_logged_epoch
            and _epoch.is_due(self, trainer, epoch)
        ):
            self._monitor(trainer, pl_module, epoch=epoch, stage="fit")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _setup.to_device(self, pl_module)
        self._monitor(trainer, pl_module, epoch=trainer.current_epoch, stage="test")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _logging.fit_summary(self, trainer)

    # ------------------------------------------------------------------ work
    @property
    def _last_logged_epoch(self) -> int:
        return max(self.logged_epochs, default=-1)

    def _methods_record(self, stage: str) -> dict[str, Any]:
        """What ``methods.json`` holds: every method's canonical spec and, per stage, the
        settings that shaped the numbers."""
        settings = {**self.settings, "families": list(self.families)}
        return {"methods": [s.to_config() for s in self.specs], "settings": {stage: settings}}

    def evaluate(
        self,
        pl_module: pl.LightningModule,
        stage: str = "fit",
        progress: Any = None,
        trainer: pl.Trainer | None = None,
        opt_in: bool = True,
    ) -> EpochEvaluation:
        """Explain the probes with every method and compute every number (no logging).

        Under DDP (``trainer`` with several processes) each process explains its share of
        the models and the maps are gathered, so every process ends with the same numbers
        (the opt-in families, run when ``opt_in``, are computed by every process).
        """
        return _epoch.evaluate(self, pl_module, stage, progress, trainer, opt_in)

    def _monitor(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, stage: str
    ) -> None:
        _epoch.monitor(self, trainer, pl_module, epoch, stage)

"""The :class:`InterpretationGeneralization` callback.

Every monitored epoch it explains a fixed set of probes with every configured
saliency method, for every model, and logs how far each model's maps are from a
reference on its own training data and on held-out data (the interpretation loss
and its generalization gap, paper 000 sec. 4), how much the models agree, and how
SmoothGrad, AdaptGrad and super-pixel grouping shrink the gap. See
``docs/metrics.md`` for every tag.

The callback is the hooks over two objects it owns: ``config``, the frozen
:class:`~._settings.MonitorSettings` (its arguments, validated; which of them define a
run; from ``setup`` on with ``precision`` and ``channels_last`` resolved for the trainer's
device, the arguments as given staying in ``requested``), and ``run``, the
:class:`~._run.MonitorRun` (what a run resolved and has done, with its own ``state_dict``).
The helpers (``_setup``: what a run resolves; ``_epoch``: one monitored epoch; ``_logging``:
where the media, HParams and summary go) take those two, never the callback.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_saliency import _compat
from lightning_saliency.attribution import MethodSpec
from lightning_saliency.generalization import CHANCE_DRAWS, EpochEvaluation, Estimate, MetricKey

from . import _epoch, _logging, _setup
from ._probes import ProbeSet
from ._run import MonitorRun
from ._schedule import Schedule
from ._settings import DEFAULT_METHODS, MonitorSettings

__all__ = ["DEFAULT_METHODS", "InterpretationGeneralization"]


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
        precision: ``"auto"`` (default: ``"bf16"`` on CUDA, ``"32"`` elsewhere, resolved at
            ``setup`` from the trainer's device), ``"32"`` or ``"bf16"`` (bf16 autocast, on
            CUDA or CPU; on a CPU without bf16 units it is slower) for the attribution passes.
            On CUDA bf16 maps of trained CIFAR-10 models agree with fp32 ones to Spearman
            >= 0.9968 and move the pair agreement by <= 0.0003 (issue 21). The resolved value
            is recorded (checkpoint, ``methods.json``, HParams, the fit's summary) and a
            resume must keep it. TF32 is never changed: ``torch.backends.cuda.matmul.allow_tf32``
            and ``torch.backends.cudnn.allow_tf32`` stay as set (so ``"32"`` on CUDA runs
            TF32 convolutions unless ``cudnn.allow_tf32`` is off); the summary states them.
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
        channels_last: channels_last memory format of the attribution passes' input rows;
            None (default): on where ``precision`` resolves to bf16 on CUDA, else off (on
            CPU the folded copy's weights are channels-last anyway).
        topk: fraction (or count) of pixels for the top-k intersection.
        chance_draws: random derangements of the probes the class-blind chance level of
            every agreement averages over (``docs/metrics.md``).
        is_ensemble: None detects an ensemble (a ``models`` ModuleList, as in
            DisjointEnsemble); False monitors the module as one model whatever it holds.
        probe_transform: applied to each probe image of a dataset (e.g. a torchvision
            transform; a PIL image without one is refused: its scale is not the model's).
        input_key / label_key: the keys of a dict item's image and label (default: the one
            known key the item holds; an item holding two, e.g. ``image`` and
            ``pixel_values``, is refused until one is named).
        fold_batchnorm: explain a frozen eval-mode copy of each model with BatchNorm folded
            into its convolutions (channels-last weights on CPU), built once per monitored
            epoch: faster, the same maps up to float32 rounding (a ReLU decision within
            rounding of its threshold can flip in a few percent of maps). False explains the
            models as they are, bit for bit as version 0.1.
        output_transform: maps a model's output to its ``(N, classes)`` logits; default: a
            tensor as it is, a tuple's first element, a dict's ``"logits"``, an object's
            ``.logits`` (:func:`~lightning_saliency.attribution.as_logits`).
        profile: time every stage of a monitored epoch (attribution, statistics, agreement,
            logging, images...) and print where the time went, per monitored epoch, in the
            fit's closing summary (``run.times``; CUDA synchronized at each stage's ends).
        tensorboard_scalars: the numbers the loggers get (``pl_module.log``): ``"headline"``,
            per method the gap and the test Spearman above chance with their 95% intervals
            (the end-of-fit summary's numbers) and the test prediction agreement, or
            ``"all"``. The CSV (``interpretation_metrics.csv``) gets every number either way.

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
        precision: Literal["auto", "32", "bf16"] = "auto",
        seed: int = 0,
        log_images_every_n_epochs: int = 5,
        num_images: int = 4,
        metrics: Sequence[str] | None = None,
        train_probes: Any = None,
        test_probes: Any = None,
        input_range: tuple[float, float] | None = None,
        unnormalize: Callable[[Tensor], Tensor] | None = None,
        batch_size: int | None = None,
        channels_last: bool | None = None,
        topk: float = 0.1,
        chance_draws: int = CHANCE_DRAWS,
        max_overhead: float | None = 0.1,
        is_ensemble: bool | None = None,
        probe_transform: Callable[[Any], Any] | None = None,
        fold_batchnorm: bool = True,
        output_transform: Callable[[Any], Tensor] | None = None,
        families_every_n_epochs: int = 1,
        input_key: str | None = None,
        label_key: str | None = None,
        profile: bool = False,
        tensorboard_scalars: Literal["headline", "all"] = "headline",
    ) -> None:
        super().__init__()
        # the settings: validated and frozen; the run: everything a run resolves and does
        self.requested = MonitorSettings.from_arguments(
            **{k: v for k, v in locals().items() if k not in ("self", "__class__")}
        )
        self.config = self.requested  # resolved for the trainer's device at every setup
        self.run = MonitorRun.fresh(self.config)
        # Every rank computes (or gathers) the same numbers, so there is nothing to sync:
        # Lightning's advice to pass sync_dist=True does not apply to these tags.
        warnings.filterwarnings(
            "ignore", message=r"It is recommended to use `self\.log\('((validate|test)/)?interp/"
        )

    # ------------------------------------------------------------------ read-only views
    @property
    def specs(self) -> list[MethodSpec]:
        """The resolved method specs, in order."""
        return list(self.config.specs)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def reference(self) -> str | nn.Module | None:
        """The ``reference`` argument (the loaded module is ``run.reference``)."""
        return self.config.reference

    @property
    def every_n_epochs(self) -> int:
        return self.config.every_n_epochs

    @property
    def num_train_probes(self) -> int:
        return self.config.num_train_probes

    @property
    def num_test_probes(self) -> int:
        return self.config.num_test_probes

    @property
    def probes(self) -> ProbeSet | None:
        """The run's fixed probes (after ``setup``)."""
        return self.run.probes

    @property
    def families(self) -> tuple[str, ...]:
        """The metric families this run computes (after ``setup``)."""
        return self.run.families

    @property
    def logged_epochs(self) -> list[int]:
        """The training epochs already monitored."""
        return self.run.logged_epochs

    @property
    def final_values(self) -> dict[str, float]:
        """Tag -> value at the last monitored epoch of the fit."""
        return self.run.final_values

    @property
    def _schedule(self) -> Schedule:
        return self.run.schedule

    @property
    def _last(self) -> dict[MetricKey, Estimate] | None:
        return self.run.last

    # ------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self.config.key_fields())

    @property
    def settings(self) -> dict[str, Any]:
        """The settings that define this run's probes and numbers (kept on resume)."""
        return self.config.record()

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.config.seed, "settings": self.settings, **self.run.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.config.check_saved(state_dict)
        self.run.load_state_dict(state_dict)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse a resume whose callback settings changed: its state is under another key."""
        self.config.check_checkpoint(checkpoint, self.state_key, type(self).__qualname__)

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Numerics, models, reference, metric families, probes, run record (a fit starts a
        new run). The module is still on the CPU here: the trainer's device decides."""
        self.config = self.requested.on_device(trainer.strategy.root_device)
        if stage == "fit":
            self.run.start_fit(self.config)
        self.run.begin(_setup.resolve_run(self.config, trainer, pl_module, self.run.loaded_indices))

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self.run
        # After a checkpoint restore: the probes come from the checkpoint's indices.
        loaded = run.loaded_indices
        if loaded is not None and run.probes is not None and loaded != run.probes.indices:
            k_models = len(_setup.models_of(pl_module, self.config.is_ensemble))
            run.use_probes(_setup.prepare_probes(self.config, trainer, k_models, loaded))
        if loaded is None:  # a fresh fit, not a resume: a fresh record, claimed by this fit
            run.record.check_fresh("fit")
            if trainer.is_global_zero:
                run.record.claim_fit(owner=f"trainer-{id(trainer)}")
        run.to(pl_module.device)
        for logger in trainer.loggers:  # the callback's HParams record is the run's first
            _compat.disable_default_hp_metric(logger)
        if trainer.is_global_zero:
            _logging.add_run_layout(self.config, run, trainer)
            run.record.write_methods(self.config.methods_record("fit", run.families))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._start_stage(trainer, "validate")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_stage(trainer, "test")

    def _start_stage(self, trainer: pl.Trainer, stage: str) -> None:
        self.run.record.check_fresh(stage)
        if trainer.is_global_zero:
            self.run.record.write_methods(self.config.methods_record(stage, self.run.families))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resuming (the loops' state, global_step included, is restored by now): drop what
        # the earlier run wrote after the checkpoint, so that no epoch shows twice.
        if trainer.is_global_zero and self.run.loaded_indices is not None:
            self.run.record.keep_fit_epochs(self.run.logged_epochs)
            # the earlier run's events from the first step after the checkpoint on are hidden;
            # the checkpointed epoch's own scalars and images sit before it
            _logging.purge_tensorboard_after(trainer, trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run.start_epoch()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if epoch > self.run.last_logged_epoch and _epoch.is_due(self.run, trainer, epoch):
            self._monitor(trainer, pl_module, epoch=epoch, stage="fit")
        self.run.end_epoch()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "validate":
            self.run.to(pl_module.device)
            self._monitor(trainer, pl_module, epoch=trainer.current_epoch, stage="validate")
            return
        # The validation that closes a training epoch runs before on_train_epoch_end, and a
        # ModelCheckpoint may save right after it (on_validation_end): monitor the finished
        # epoch now, so that the checkpoint already holds it. The weights are final here.
        epoch = trainer.current_epoch
        if (
            trainer.state.fn == "fit"
            and _compat.training_epoch_finished(trainer)
            and epoch > self.run.last_logged_epoch
            and _epoch.is_due(self.run, trainer, epoch)
        ):
            self._monitor(trainer, pl_module, epoch=epoch, stage="fit")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run.to(pl_module.device)
        self._monitor(trainer, pl_module, epoch=trainer.current_epoch, stage="test")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run.media.wait()  # the last epoch's images are written before the summary
        _logging.fit_summary(self.config, self.run, trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.run.media.close()  # before the loggers are finalized: no image is lost

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        try:  # the images rendered so far reach the logger; the fit's own error goes on
            self.run.media.close()
        except Exception as err:
            warnings.warn(f"InterpretationGeneralization: media not written: {err}", stacklevel=2)

    # ------------------------------------------------------------------ work
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
        return _epoch.evaluate(self.config, self.run, pl_module, stage, progress, trainer, opt_in)

    def _monitor(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, stage: str
    ) -> None:
        _epoch.monitor(self.config, self.run, self.evaluate, trainer, pl_module, epoch, stage)

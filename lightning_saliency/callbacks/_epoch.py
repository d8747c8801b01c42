"""One monitored epoch of the callback: whether it is due, the evaluation, the logging, and
the helpers that need the trainer (sharding, schedule facts, copies)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from lightning_saliency import _compat
from lightning_saliency.attribution import (
    MethodSpec,
    as_logits,
    attribution_model,
    find_grad_cam_layer,
    logits_outputs,
)
from lightning_saliency.generalization import (
    OPT_IN_FAMILIES,
    EpochEvaluation,
    _timing,
    compute_pixel_maps,
    epoch_rows,
    evaluate_epoch,
    family_statistics,
    group_maps,
    model_logits,
    predictions,
)
from lightning_saliency.generalization.core import MapStack
from lightning_saliency.generalization.input_bounds import share_statistics
from lightning_saliency.generalization.shard import merge_estimates, method_shard
from lightning_saliency.generalization.stability_fidelity import fidelity_statistics

from . import _logging, _media, _setup
from ._probes import ProbeSet
from ._run import MonitorRun
from ._settings import MonitorSettings

__all__ = [
    "Evaluate",
    "attribution_sources",
    "evaluate",
    "is_due",
    "is_last_epoch",
    "materialize",
    "monitor",
    "sharded_evaluate_epoch",
    "sharded_pixel_maps",
]


def sharded_pixel_maps(trainer: pl.Trainer | None, sources: list[nn.Module], *args: Any,
                       **kw: Any) -> dict:  # fmt: skip
    """Pixel maps of every source; under DDP, process r explains sources r, r + W, ... and
    the maps are gathered (each source's maps depend on that source only: the same result)."""
    world = 1 if trainer is None else int(trainer.world_size)
    if world <= 1:
        return compute_pixel_maps(sources, *args, **kw)
    rank, m = int(trainer.global_rank), len(sources)  # type: ignore[union-attr]
    mine = list(range(rank, m, world))
    local = compute_pixel_maps([sources[i] for i in mine], *args, **kw)
    per = -(-m // world)  # the most sources any process has
    out = {}
    for twin, maps in local.items():
        padded = torch.zeros((per, *maps.shape[1:]), dtype=maps.dtype, device=maps.device)
        padded[: maps.shape[0]] = maps
        gathered = trainer.strategy.all_gather(padded)  # type: ignore[union-attr]  # (W, per, ...)
        out[twin] = torch.stack([gathered[i % world, i // world] for i in range(m)])
    return out


def sharded_evaluate_epoch(trainer: pl.Trainer | None, maps: Any, layout: Any,
                           specs: Sequence[MethodSpec], **kw: Any) -> EpochEvaluation:  # fmt: skip
    """:func:`evaluate_epoch`; under DDP, process r computes the statistics of its share of
    the methods (:func:`~lightning_saliency.generalization.shard.method_shard`) and the
    shares' estimates are gathered and merged in one process's order: the same numbers.
    The ``statistics`` of the result are then this process's share only."""
    world = 1 if trainer is None else int(trainer.world_size)
    if world <= 1 or len(specs) < 2:
        return evaluate_epoch(maps, layout, specs, **kw)
    mine = method_shard(specs, int(trainer.global_rank), world)  # type: ignore[union-attr]
    part = evaluate_epoch({s.label: maps[s.label] for s in mine}, layout, mine, **kw)
    shares: list[Any] = [None] * world
    dist.all_gather_object(shares, part.estimates)
    return EpochEvaluation(
        estimates=merge_estimates(specs, shares),
        statistics=part.statistics,  # this process's share (the estimates are all of them)
        maps={s.label: m.maps if isinstance(m := maps[s.label], MapStack) else m for s in specs},
        preds=part.preds,
        methods=[s.label for s in specs],
    )


def is_last_epoch(trainer: pl.Trainer, epoch: int) -> bool:
    """The fit's last epoch (by max_epochs, or stopping early): its images are always logged."""
    last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs - 1
    return bool(last or trainer.should_stop)


def materialize(probes: ProbeSet) -> ProbeSet:
    """Copies that are ordinary tensors even when created under inference mode."""
    return ProbeSet(
        x=probes.x.clone(),
        y=probes.y.clone(),
        layout=probes.layout,
        images=None if probes.images is None else probes.images.clone(),
        indices=probes.indices,
    )


def attribution_sources(
    sources: list[nn.Module], specs: Sequence[MethodSpec], x: torch.Tensor,
    channels_last: bool | None,
) -> list[nn.Module]:
    """A frozen eval-mode copy of each source for this epoch's attribution passes, with
    BatchNorm folded into its convolutions (and channels-last weights on CPU): the same maps
    up to float32 rounding, faster (``docs/benchmarks.md``). A Grad-CAM layer is kept."""
    out = []
    for model in sources:
        keep = [s.params.get("layer") or find_grad_cam_layer(model, x[:1])
                for s in specs if s.method == "grad_cam"]  # fmt: skip
        out.append(attribution_model(model, channels_last=channels_last or None, keep=keep))
    return out


def is_due(run: MonitorRun, trainer: pl.Trainer, epoch: int) -> bool:
    """Whether to monitor ``epoch`` (decided once per epoch, the same on every rank)."""
    known = run.decision(epoch)
    if known is not None:
        return known
    last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else None
    due, reason = run.schedule.due(epoch, last)
    due = bool(trainer.strategy.broadcast(due, src=0))
    if not due and reason != "every_n_epochs":
        rank_zero_info(f"InterpretationGeneralization: epoch {epoch} not monitored ({reason})")
    run.decide(epoch, due, reason)
    return due


def evaluate(
    settings: MonitorSettings,
    run: MonitorRun,
    pl_module: pl.LightningModule,
    stage: str,
    progress: Any,
    trainer: pl.Trainer | None,
    opt_in: bool,
) -> EpochEvaluation:
    """The body of :meth:`InterpretationGeneralization.evaluate` (see there)."""
    s = settings
    assert run.probes is not None
    models = _setup.models_of(pl_module, s.is_ensemble)
    sources = models + ([run.reference] if run.reference is not None else [])
    transform = s.output_transform or as_logits
    with isolate_rng(), torch.inference_mode(False), torch.enable_grad():
        with _timing.stage("models"):  # predictions and this epoch's frozen (folded) copies
            probes = materialize(run.probes)
            logits = model_logits(sources, probes.x, s.batch_size or 256, transform)
            target = probes.y if s.target == "label" else logits[: len(models)].mean(0).argmax(-1)
            explained = (attribution_sources(sources, s.specs, probes.x, s.channels_last)
                         if s.fold_batchnorm else sources)  # fmt: skip
        extra = [f for f in OPT_IN_FAMILIES if opt_in and f in run.families]
        # the randomization cascade re-initializes the models as they are, not folded copies
        folded = explained is not sources
        unfolded = models if folded and "randomization" in extra else []
        with logits_outputs([*explained, *unfolded], transform):
            with _timing.stage("attribution"):
                pixel = sharded_pixel_maps(
                    trainer, explained, probes.x, target, s.specs, seed=s.seed,
                    input_range=run.input_range, precision=s.precision,
                    channels_last=s.channels_last, batch_size=s.batch_size,
                    progress=progress,
                )  # fmt: skip
            with _timing.stage("segmentation"):  # grouping by the run's cached segmentations
                maps = group_maps(s.specs, pixel, run.segments)
            with _timing.stage("families"):
                extra_stats = family_statistics(
                    explained[: len(models)], probes.x, target, maps, probes.layout, s.specs,
                    families=extra, seed=s.seed, stage=stage, segments=run.segments,
                    randomized=unfolded or None,
                    input_range=run.input_range, precision=s.precision,
                    channels_last=s.channels_last, batch_size=s.batch_size,
                ) if extra else {}  # fmt: skip
        with _timing.stage("statistics"):
            result = sharded_evaluate_epoch(
                trainer, maps, probes.layout, s.specs, labels=probes.y, preds=predictions(logits),
                families=run.families, normalize=s.normalize, topk=s.topk,
                previous=run.previous if stage == "fit" else None, stage=stage,
                seed=s.seed, chance_draws=s.chance_draws,
            )  # fmt: skip
            result.extend(extra_stats)
        with _timing.stage("families"):
            result.extend(fidelity_statistics(maps, s.specs, probes.layout, stage=stage))
        if run.share_at_bounds is not None:  # fixed probes: computed once, a row every epoch
            result.extend(share_statistics(run.share_at_bounds, probes.layout, stage))
        return result


#: The callback's ``evaluate``: (pl_module, stage, progress=, trainer=, opt_in=) -> result.
Evaluate = Callable[..., EpochEvaluation]


def monitor(
    settings: MonitorSettings,
    run: MonitorRun,
    evaluate: Evaluate,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    epoch: int,
    stage: str,
) -> None:
    """One monitored epoch: ``evaluate`` (the callback's), then log scalars, rows and (when
    due) media."""
    bar = _logging.MonitorProgress(trainer, len({s.pixel_twin for s in settings.specs}), epoch)
    start = time.perf_counter()
    with run.profiling(settings.profile, pl_module.device):
        with _timing.stage("images"):  # the previous epoch's media, if still rendering
            run.media.wait()
        try:
            every = settings.families_every_n_epochs
            opt_in = stage != "fit" or len(run.logged_epochs) % every == 0 or (
                is_last_epoch(trainer, epoch))  # fmt: skip
            result = evaluate(pl_module, stage, progress=bar.step, trainer=trainer, opt_in=opt_in)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        k_models = len(_setup.models_of(pl_module, settings.is_ensemble))
        run.record_result(result, epoch, stage, k_models, seconds)
        _log_epoch(settings, run, trainer, pl_module, result, epoch, stage, k_models)


def _log_epoch(
    settings: MonitorSettings,
    run: MonitorRun,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    result: EpochEvaluation,
    epoch: int,
    stage: str,
    k_models: int,
) -> None:
    """A monitored epoch's scalars, CSV rows and (when due) media."""
    step = _compat.epoch_log_step(trainer, stage)  # where Lightning puts the scalars
    with _timing.stage("logging"):
        _logging.warn_nonfinite(result, epoch, stage)
        _logging.log_scalars(trainer, pl_module, result, stage, run, settings.tensorboard_scalars)
        if trainer.is_global_zero:
            run.record.append(epoch_rows(result.estimates, epoch, step, stage))
    if not trainer.is_global_zero:
        return
    every = settings.log_images_every_n_epochs
    images_due = stage != "fit" or (every > 0 and (
        (len(run.logged_epochs) - 1) % every == 0 or is_last_epoch(trainer, epoch)))  # fmt: skip
    if images_due:
        with _timing.stage("images"):
            log_run_media(settings, run, trainer, result, step, k_models, epoch)


def log_run_media(settings: MonitorSettings, run: MonitorRun, trainer: pl.Trainer,
                  result: EpochEvaluation, step: int, k_models: int, epoch: int) -> None:  # fmt: skip
    """Map grids of the first test probes and the epoch's figures, to every media logger:
    from ``run.media``'s thread when every media logger is TensorBoard, else right here
    (W&B and MLflow steps must not go back)."""
    probes = run.probes
    if probes is None or probes.images is None or not _logging.has_media_logger(trainer):
        return
    job = _media.media_job(result, settings.specs, probes, settings.num_images, step, k_models,
                           epoch)  # fmt: skip

    def work() -> None:
        _logging.log_images(trainer, _media.render(job), job.step)

    if _logging.only_tensorboard_media(trainer):
        run.media.submit(work)
    else:
        work()

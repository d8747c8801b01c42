"""Where the callback's media, HParams and end-of-fit summary go, for any logger.

TensorBoard gets images, figures (as images), the custom-scalars layout and one HParams
record; W&B (``WandbLogger``) and MLflow (``MLFlowLogger``) get the same images and
figures through their own APIs; every logger gets the scalars through ``pl_module.log``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_saliency import _compat
from lightning_saliency.attribution import MethodSpec
from lightning_saliency.generalization import (
    CSV_NAME,
    HPARAMS_PREFIX,
    METHODS_NAME,
    EpochEvaluation,
    Estimate,
    MetricKey,
    format_headline,
    headline,
    nonfinite_key,
)
from lightning_saliency.generalization.studies import is_plain_baseline

from . import _setup
from ._numerics import numerics_line
from ._run import MonitorRun
from ._settings import MonitorSettings
from ._tensorboard import TENSORBOARD_PAGE, in_tensorboard, tensorboard_scalars
from ._tensorboard_layout import custom_scalars_layout

__all__ = [
    "MonitorProgress",
    "add_layout",
    "add_run_layout",
    "fit_summary",
    "has_media_logger",
    "is_headline",
    "log_images",
    "log_scalars",
    "only_tensorboard_media",
    "print_summary",
    "purge_tensorboard_after",
    "schedule_note",
    "summary_text",
    "warn_nonfinite",
    "where_to_look",
    "write_hparams",
]


def _logger_kind(logger: Any) -> str:
    name = type(logger).__name__
    if isinstance(logger, TensorBoardLogger):
        return "tensorboard"
    return {"WandbLogger": "wandb", "MLFlowLogger": "mlflow"}.get(name, "other")


def has_media_logger(trainer: pl.Trainer) -> bool:
    """Whether any logger of the trainer can show images (TensorBoard, W&B, MLflow)."""
    return any(_logger_kind(lg) != "other" for lg in trainer.loggers)


def only_tensorboard_media(trainer: pl.Trainer) -> bool:
    """Whether every logger that shows images is a TensorBoard logger (whose event writer
    may be written from another thread, :mod:`._media`)."""
    kinds = {_logger_kind(lg) for lg in trainer.loggers} - {"other"}
    return kinds == {"tensorboard"}


def log_images(trainer: pl.Trainer, images: Mapping[str, np.ndarray], step: int) -> None:
    """Send ``{tag: (H, W, 3) uint8}`` images to every logger that shows images."""
    logger: Any  # the TensorBoard / W&B / MLflow logger's own API, chosen by _logger_kind
    for logger in trainer.loggers:
        kind = _logger_kind(logger)
        for tag, img in images.items():
            if kind == "tensorboard":
                logger.experiment.add_image(tag, img, global_step=step, dataformats="HWC")
            elif kind == "wandb":
                logger.log_image(key=tag, images=[img], step=step)
            elif kind == "mlflow":
                name = f"{tag}/step_{step:07d}.png"
                logger.experiment.log_image(logger.run_id, img, name)


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, (bool, int, float, str)) and not (isinstance(v, float) and math.isnan(v)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def write_hparams(
    trainer: pl.Trainer, settings: Mapping[str, Any], metric_tags: Iterable[str]
) -> None:
    """One HParams record per TensorBoard run: the module's and data's hyperparameters, the
    callback's settings (``interp/...``), and its final values registered on the existing
    ``interp/*`` scalar tags (TensorBoard reads each one's last value; no copies)."""
    from torch.utils.tensorboard.summary import hparams

    tags = list(metric_tags)
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        if _compat.default_hp_metric(logger):
            rank_zero_warn(
                "InterpretationGeneralization: this TensorBoardLogger already wrote Lightning's "
                "HParams record (hp_metric = -1), and TensorBoard shows only the first record of a "
                "run; pass TensorBoardLogger(default_hp_metric=False) to see the callback's "
                "settings and final values in the HParams tab."
            )
            continue
        params = {**_flat(dict(logger.hparams)), **_flat(settings, HPARAMS_PREFIX)}
        exp, ssi, sei = hparams(params, dict.fromkeys(tags, 0.0))
        writer = _compat.tensorboard_event_writer(logger.experiment)
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        logger.experiment.flush()


def summary_text(
    estimates: Mapping[MetricKey, Estimate],
    methods: list[str],
    folder: str | Path | None,
    loggers: Sequence[Any] = (),
) -> str:
    """The end-of-fit summary: per method the gap and test Spearman above chance (with
    95% intervals), the run folder with its CSV, where each of ``loggers`` shows the run
    (:func:`where_to_look`) and the report command."""
    lines = ["", "InterpretationGeneralization: last monitored epoch"]
    lines.append(format_headline(headline(estimates, methods)))
    if folder is not None:
        lines += [f"run folder: {folder}", f"  values: {Path(folder) / CSV_NAME}"]
        lines += [f"  {line}" for line in where_to_look(loggers)]
        if any("tensorboard --logdir" in line for line in lines):
            lines.append(f"    then open {TENSORBOARD_PAGE} (the headline with 95% intervals, unsmoothed)")
        lines.append(f"  lightning-saliency report {folder} --out {Path(folder) / 'report'}")
    return "\n".join(lines)


def where_to_look(loggers: Sequence[Any]) -> list[str]:
    """Per logger, where it shows the run: ``tensorboard --logdir`` only for a TensorBoard
    logger (the only one that writes event files), a W&B run's URL (offline: its folder and
    ``wandb sync``), an MLflow run's tracking URI and run id, a CSV logger's ``metrics.csv``.

    >>> from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    >>> where_to_look([TensorBoardLogger("runs", name="a", version=0), CSVLogger("logs", version=1)])
    ['tensorboard --logdir runs/a/version_0', "CSVLogger's metrics: logs/lightning_logs/version_1/metrics.csv"]
    """
    lines = []
    for logger in loggers:
        kind = _logger_kind(logger)
        if kind == "tensorboard":
            lines.append(f"tensorboard --logdir {logger.log_dir}")
        elif kind == "wandb":
            lines.append(_wandb_place(logger))
        elif kind == "mlflow":
            # Lightning keeps the URI it was given (or derived from save_dir) only here
            uri = getattr(logger, "_tracking_uri", None) or "MLflow's default tracking URI"
            lines.append(f"MLflow run {logger.run_id} (experiment {logger.experiment_id}) at "
                         f"{uri}: mlflow ui --backend-store-uri {uri}")  # fmt: skip
        elif type(logger).__name__ == "CSVLogger":
            lines.append(f"CSVLogger's metrics: {Path(logger.log_dir) / 'metrics.csv'}")
    return lines


def _wandb_place(logger: Any) -> str:
    run = logger.experiment
    url = getattr(run, "url", None)
    if url:
        return f"W&B run: {url}"
    folder = Path(run.dir).parent if getattr(run, "dir", None) else None
    return f"W&B offline run: {folder} (upload it with: wandb sync {folder})"


def schedule_note(logged: Sequence[int], skipped: Sequence[Sequence[Any]],
                  max_overhead: float | None) -> str:  # fmt: skip
    """The closing line on the schedule: the monitored epochs, and for the ones the time
    budget skipped, why and what to change (``skipped``: the schedule's ``[epoch, reason]``).

    >>> print(schedule_note([0, 3], [[1, "over budget: ..."], [2, "over budget: ..."]], 0.1))
    monitored epochs: 0, 3
    epochs 1, 2 skipped: monitoring them would exceed max_overhead=0.1 of the training time (epoch 1: over budget: ...); to monitor every epoch set the callback's max_overhead: null (or a larger fraction), or choose the epochs with every_n_epochs
    """
    text = f"monitored epochs: {', '.join(str(e) for e in logged) or 'none'}"
    missed = [(int(e), str(why)) for e, why in skipped if int(e) not in logged]
    if not missed:
        return text
    epochs = [e for e, _ in missed]
    word = "epoch" if len(epochs) == 1 else "epochs"
    them = "it" if len(epochs) == 1 else "them"
    return (
        f"{text}\n{word} {', '.join(map(str, epochs))} skipped: monitoring {them} would exceed "
        f"max_overhead={max_overhead} of the training time (epoch {missed[0][0]}: "
        f"{missed[0][1]}); to monitor every epoch set the callback's max_overhead: null (or "
        "a larger fraction), or choose the epochs with every_n_epochs"
    )


def print_summary(trainer: pl.Trainer, text: str) -> None:
    if trainer.is_global_zero:
        rank_zero_info(text)


class MonitorProgress:
    """A transient progress bar over the methods while a monitored epoch runs (on rank 0,
    when the trainer shows a progress bar), so a long monitor does not look frozen."""

    def __init__(self, trainer: pl.Trainer, total: int, epoch: int) -> None:
        self.bar = None
        if trainer.is_global_zero and trainer.progress_bar_callback is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"interpretation monitor, epoch {epoch}",
                            leave=False, file=sys.stderr, dynamic_ncols=True)  # fmt: skip

    def step(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def is_headline(key: MetricKey) -> bool:
    """The numbers the HParams tab lists: gap, test loss, headline agreements above chance,
    gap reduction, test prediction agreement."""
    if key.metric == "loss":
        return key.split == "test" and key.aggregate == "mean"
    if key.metric == "prediction_agreement":
        return key.split == "test"
    return key.aggregate in ("mean", "pairs") and key.split in ("gap", "test") and key.metric in (
        "gap", "gap_reduction", "spearman_above_chance", "ssim_above_chance")  # fmt: skip


def purge_tensorboard_after(trainer: pl.Trainer, step: int) -> None:
    """Hide events at ``step`` and later that a run wrote before it was resumed.

    TensorBoard's own restart marker (what ``SummaryWriter(purge_step=...)`` writes): a
    resumed run re-logs those steps, so without it they would show twice.
    """
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = _compat.tensorboard_event_writer(logger.experiment)
            writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))


def warn_nonfinite(result: EpochEvaluation, epoch: int, stage: str) -> None:
    """One warning naming every method with non-finite maps, and how many probes."""
    bad = {lb: int(result.estimates[nonfinite_key(lb, stage)].value) for lb in result.methods}
    bad = {lb: n for lb, n in bad.items() if n}
    if bad:
        n = result.maps[result.methods[0]].shape[1]
        rank_zero_warn(
            f"InterpretationGeneralization ({stage}, epoch {epoch}): non-finite maps on "
            + ", ".join(f"{lb}: {k} of {n} probes" for lb, k in bad.items())
            + "; every number over those probes is NaN (with the count in `nonfinite`). "
            "A model with NaN weights, or a method that overflows, gives this."
        )


def log_scalars(trainer: pl.Trainer, pl_module: pl.LightningModule, result: EpochEvaluation,
                stage: str, run: MonitorRun, scalars: str) -> None:  # fmt: skip
    """Every TensorBoard-bound number (the ``scalars`` set, ``_tensorboard.SCALAR_SETS``)
    through ``pl_module.log`` (so every logger gets it); without a media logger, a warning
    once in the ``run``."""
    sources = result.maps[result.methods[0]].shape[0] if result.methods else 2
    metrics = tensorboard_scalars(result.estimates, sources, scalars)
    if not has_media_logger(trainer) and run.once("no-media-logger warning"):
        rank_zero_warn(
            "InterpretationGeneralization: no TensorBoard, W&B or MLflow logger, so no image "
            "grids or figures; scalars still go through the module's logging and "
            f"{CSV_NAME} and {METHODS_NAME} are still written."
        )
    to_logger = bool(trainer.loggers)  # without one, Lightning warns once per name
    on_epoch: dict[str, Any] = {"on_step": False, "on_epoch": True} if stage == "fit" else {}
    # Logged from every rank with identical values; rank_zero_only avoids any collective.
    for name, value in metrics.items():
        pl_module.log(name, value, rank_zero_only=True, logger=to_logger, **on_epoch)


def add_layout(trainer: pl.Trainer, specs: Sequence[MethodSpec], k_models: int, reference: bool,
               families: Sequence[str] | None, scalars: str) -> None:  # fmt: skip
    """The custom-scalars layout of the ``scalars`` set, once, into every TensorBoard logger."""
    baseline = next((s.label for s in specs if is_plain_baseline(s)), None)
    layout = custom_scalars_layout([s.label for s in specs], k_models, reference=reference,
                                   baseline=baseline, families=families, scalars=scalars)  # fmt: skip
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_custom_scalars(layout)


def fit_summary(settings: MonitorSettings, run: MonitorRun, trainer: pl.Trainer) -> None:
    """End of fit: the HParams record and the printed summary (rank 0)."""
    if not trainer.is_global_zero or run.last is None:
        return
    tags = [k.tag for k in run.last
            if in_tensorboard(k, run.sources, settings.tensorboard_scalars) and is_headline(k)]  # fmt: skip
    write_hparams(trainer, settings.record(), tags)
    text = summary_text(run.last, settings.labels, run.record.folder, trainer.loggers)
    text += "\n" + schedule_note(run.logged_epochs, run.schedule.skipped, run.schedule.max_overhead)
    text += "\n" + numerics_line(settings.precision, bool(settings.channels_last),
                                  trainer.strategy.root_device)  # fmt: skip
    if settings.profile:  # where the monitor's time went (issue 21)
        text += "\n" + "\n".join(run.times.lines(len(run.logged_epochs)))
        if run.media.jobs:  # the worker thread's own time, beside the training thread's
            text += (f"\nmedia rendered in a background thread: {run.media.cpu / run.media.jobs:.3f} s "
                     f"cpu per image epoch ({run.media.jobs} epochs; not in the total above)")  # fmt: skip
    print_summary(trainer, text)


def add_run_layout(settings: MonitorSettings, run: MonitorRun, trainer: pl.Trainer) -> None:
    """The run's custom-scalars layout, once in the run's life."""
    if run.once("layout"):
        k = len(_setup.models_of(trainer.lightning_module, settings.is_ensemble))
        add_layout(trainer, settings.specs, k, run.reference is not None, run.families,
                   settings.tensorboard_scalars)  # fmt: skip

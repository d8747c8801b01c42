"""Where the callback's media, HParams and end-of-fit summary go, for any logger.

TensorBoard gets images, figures (as images), the custom-scalars layout and one HParams
record; W&B (``WandbLogger``) and MLflow (``MLFlowLogger``) get the same images and
figures through their own APIs; every logger gets the scalars through ``pl_module.log``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_saliency import _compat
from lightning_saliency.generalization import Estimate, MetricKey, format_headline, headline

__all__ = ["MonitorProgress", "log_images", "summary_text", "write_hparams"]


def _logger_kind(logger: Any) -> str:
    name = type(logger).__name__
    if isinstance(logger, TensorBoardLogger):
        return "tensorboard"
    return {"WandbLogger": "wandb", "MLFlowLogger": "mlflow"}.get(name, "other")


def has_media_logger(trainer: pl.Trainer) -> bool:
    """Whether any logger of the trainer can show images (TensorBoard, W&B, MLflow)."""
    return any(_logger_kind(lg) != "other" for lg in trainer.loggers)


def log_images(trainer: pl.Trainer, images: Mapping[str, np.ndarray], step: int) -> None:
    """Send ``{tag: (H, W, 3) uint8}`` images to every logger that shows images."""
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
        params = {**_flat(dict(logger.hparams)), **_flat(settings, "interp/")}
        exp, ssi, sei = hparams(params, dict.fromkeys(tags, 0.0))
        writer = _compat.tensorboard_event_writer(logger.experiment)
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        logger.experiment.flush()


def summary_text(
    estimates: Mapping[MetricKey, Estimate], methods: list[str], folder: str | Path | None
) -> str:
    """The end-of-fit summary: per method the gap and test Spearman above chance (with
    95% intervals), the run folder and the commands that open it."""
    lines = ["", "InterpretationGeneralization: last monitored epoch"]
    lines.append(format_headline(headline(estimates, methods)))
    if folder is not None:
        lines += [
            f"run folder: {folder}",
            f"  tensorboard --logdir {folder}",
            f"  lightning-saliency report {folder} --out {Path(folder) / 'report'}",
        ]
    return "\n".join(lines)


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

"""Every private API of a third-party library this package relies on, in one place.

Each helper names what it reads; ``tests/test_compat.py`` fails loudly when an upgrade of
Lightning, TensorBoard or torch removes or changes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.parametrizations import _SpectralNorm as SpectralNormParametrization

__all__ = [
    "SpectralNormParametrization",
    "batches_stepped",
    "default_hp_metric",
    "disable_default_hp_metric",
    "epoch_log_step",
    "set_spectral_vectors",
    "subcommands_action",
    "tensorboard_event_writer",
    "training_epoch_finished",
]


def training_epoch_finished(trainer: Any) -> bool:
    """Whether the current training epoch has run its last batch (Lightning 2.x:
    ``fit_loop.epoch_loop._is_training_done``)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return bool(getattr(loop, "_is_training_done", False))


def batches_stepped(trainer: Any) -> int:
    """Lightning's logging step counter, ``fit_loop.epoch_loop._batches_that_stepped``
    (restored from a checkpoint on resume)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def epoch_log_step(trainer: Any, stage: str) -> int:
    """The step at which Lightning's loggers receive epoch-level metrics logged now.

    Lightning logs them at ``fit_loop.epoch_loop._batches_that_stepped``, minus one at the
    end of a training epoch (the index of the epoch's last batch). The validation that
    closes a training epoch runs before that epoch's last batch is counted, so there the
    count is one short. The callback puts its images, figures and CSV rows at the same
    step as its scalars.
    """
    batches = batches_stepped(trainer)
    if stage != "fit":
        return batches
    pending = 1 if trainer.validating else 0
    return max(batches + pending - 1, 0)


def tensorboard_event_writer(experiment: Any) -> Any:
    """The event-file writer of a ``torch.utils.tensorboard.SummaryWriter``
    (``SummaryWriter._get_file_writer``), to add raw events such as a restart marker."""
    return experiment._get_file_writer()


def default_hp_metric(logger: Any) -> bool:
    """Whether a ``TensorBoardLogger`` writes Lightning's ``hp_metric`` placeholder record
    (``TensorBoardLogger._default_hp_metric``)."""
    return bool(getattr(logger, "_default_hp_metric", False))


def disable_default_hp_metric(logger: Any) -> None:
    """Stop a ``TensorBoardLogger`` from writing Lightning's ``hp_metric`` placeholder record.

    TensorBoard shows only a run's first HParams record, and Lightning writes its placeholder
    at fit start (after the callbacks' ``on_fit_start``) unless the logger was made with
    ``default_hp_metric=False``; turned off then, the module's hyperparameters are still
    collected (``logger.hparams``) and go into the callback's one record at the end.
    """
    if hasattr(logger, "_default_hp_metric"):
        logger._default_hp_metric = False


def set_spectral_vectors(sn: Any, u: torch.Tensor | None, v: torch.Tensor | None,
                         weight: torch.Tensor, steps: int = 3) -> None:  # fmt: skip
    """Set a spectral-norm parametrization's power-iteration vectors (``_u``, ``_v``; None
    keeps them) and run ``steps`` iterations (``_power_method``), so it starts at the fixed
    point."""
    if u is not None and v is not None:
        sn._u.copy_(u.to(sn._u.dtype))
        sn._v.copy_(v.to(sn._v.dtype))
    sn._power_method(weight, steps)


def subcommands_action(parser: Any) -> Any:
    """A LightningCLI parser's subcommands action (jsonargparse's ``_subcommands_action``),
    to list one more subcommand in ``--help``."""
    return parser._subcommands_action

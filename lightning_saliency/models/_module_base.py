"""What ``DisjointEnsemble`` and ``Classifier`` share: batch unpacking, the ``"triangle"`` lr
factor, data-dependent init, and the optimizer/scheduler/clipping/spectral-logging base class.

Part of :mod:`lightning_saliency.models.modules` (which re-exports ``TRIANGLE`` and
``triangle``); the two LightningModules stay defined there (their class paths are saved in
configs and checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities import AttributeDict, rank_zero_warn
from torch import Tensor, nn

from .spectral import capacity

_Pair = tuple[Tensor, Tensor]


def _as_pair(obj: Any) -> _Pair | None:
    if (
        isinstance(obj, (list, tuple))
        and len(obj) >= 2
        and isinstance(obj[0], Tensor)
        and isinstance(obj[1], Tensor)
    ):
        return obj[0], obj[1]
    return None


def _pairs(batch: Any) -> list[_Pair]:
    """A batch as a list of ``(x, y)`` pairs: one pair, or a list/dict of pairs."""
    pair = _as_pair(batch)
    if pair is not None:
        return [pair]
    items: list[Any]
    if isinstance(batch, Mapping):
        items = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        items = list(batch)
    else:
        items = []
    pairs = [_as_pair(item) for item in items]
    if not pairs or any(p is None for p in pairs):
        raise TypeError(
            "expected a batch (x, y) of tensors or a list of K (x, y) pairs (from "
            f"CombinedLoader), got {type(batch).__name__}"
        )
    return pairs  # type: ignore[return-value]


TRIANGLE = (0.2, 0.23, 0.07)
"""``scheduler="triangle"`` (airbench94): the lr factor rises linearly from 0.2 to 1 over the
first 23% of the steps, then falls linearly to 0.07 at the last step."""


def triangle(step: int, total: int) -> float:
    """The ``"triangle"`` lr factor at optimizer step ``step`` of ``total``.

    >>> [round(triangle(i, 100), 3) for i in (0, 23, 100)]
    [0.2, 1.0, 0.07]
    """
    start, peak, end = TRIANGLE
    top = max(1, int(peak * total))
    if step < top:
        return start + (1.0 - start) * step / top
    return 1.0 + (end - 1.0) * min(1.0, (step - top) / max(1, total - top))


DATA_INIT_SAMPLES = 5000


def _init_from_data(models: list[nn.Module], datasets: list[Any]) -> None:
    """Call ``init_from_data`` of every model that asks for it (``needs_data_init``) with
    ``DATA_INIT_SAMPLES`` evenly spaced samples of its own dataset (e.g. whitening)."""
    for model, dataset in zip(models, datasets, strict=True):
        if not getattr(model, "needs_data_init", False):
            continue
        n = len(dataset)
        idx = (torch.arange(min(n, DATA_INIT_SAMPLES)) * n // min(n, DATA_INIT_SAMPLES)).tolist()
        items = dataset.__getitems__(idx) if hasattr(dataset, "__getitems__") else None
        items = items if items is not None else [dataset[i] for i in idx]
        device = next(model.parameters()).device
        data_init: Any = model  # duck-typed: a model with needs_data_init has init_from_data
        data_init.init_from_data(torch.stack([torch.as_tensor(x) for x, _ in items]).to(device))


class _SaliencyModuleBase(L.LightningModule):
    """Optimizer/scheduler/clipping/spectral-logging logic shared by the two modules."""

    _log_per_model: bool = True
    _warned_nonfinite_spectral: bool = False

    @property
    def _hp(self) -> AttributeDict:
        """``hparams``, the AttributeDict that ``save_hyperparameters`` fills (typed access)."""
        return cast(AttributeDict, self.hparams)

    def setup(self, stage: str) -> None:
        """Before fitting, initialize backbones that need data (``needs_data_init``) on their
        own training split (``datamodule.split_dataset(k)``); a resumed run then restores
        the checkpoint's weights over it."""
        models = self._backbones()
        if stage != "fit" or not any(getattr(m, "needs_data_init", False) for m in models):
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "split_dataset"):
            raise ValueError(
                "the backbone needs training images to initialize (e.g. airbench whitening): "
                "fit with a DisjointSplitDataModule (datamodule=...)"
            )
        _init_from_data(models, [dm.split_dataset(k) for k in range(len(models))])

    def _validate_common(
        self,
        optimizer: str,
        lr: float,
        momentum: float,
        weight_decay: float,
        scheduler: str,
        step_size: int,
        gamma: float,
        max_epochs_hint: int | None,
        gradient_clip_val: float | None,
        spectral_norm_factor: float | None,
        nesterov: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        if scheduler not in ("cosine", "step", "triangle", "none"):
            raise ValueError(
                f"scheduler must be 'cosine', 'step', 'triangle' or 'none', got {scheduler!r}"
            )
        if nesterov and (optimizer != "sgd" or not momentum):
            raise ValueError("nesterov=True needs optimizer='sgd' with momentum > 0")
        if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not (isinstance(momentum, (int, float)) and momentum >= 0):
            raise ValueError(f"momentum must be >= 0, got {momentum!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not (isinstance(step_size, int) and step_size >= 1):
            raise ValueError(f"step_size must be an int >= 1, got {step_size!r}")
        if not (isinstance(gamma, (int, float)) and gamma > 0):
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        if max_epochs_hint is not None and not (
            isinstance(max_epochs_hint, int) and max_epochs_hint >= 1
        ):
            raise ValueError(
                f"max_epochs_hint must be None or an int >= 1, got {max_epochs_hint!r}"
            )
        if gradient_clip_val is not None and not (
            isinstance(gradient_clip_val, (int, float)) and gradient_clip_val > 0
        ):
            raise ValueError(f"gradient_clip_val must be None or > 0, got {gradient_clip_val!r}")
        if spectral_norm_factor is not None and not (
            isinstance(spectral_norm_factor, (int, float))
            and not isinstance(spectral_norm_factor, bool)
            and math.isfinite(spectral_norm_factor)
            and spectral_norm_factor > 0
        ):
            raise ValueError(
                f"spectral_norm_factor must be None or a finite number > 0, got "
                f"{spectral_norm_factor!r}"
            )

    def _backbones(self) -> list[nn.Module]:
        raise NotImplementedError

    # ----------------------------------------------------------------- optimization
    def configure_optimizers(self) -> Any:
        hp = self._hp
        groups = [
            {"params": [p for p in m.parameters() if p.requires_grad], "name": f"model_{k}"}
            for k, m in enumerate(self._backbones())
        ]
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups,
                lr=hp.lr,
                momentum=hp.momentum,
                weight_decay=hp.weight_decay,
                nesterov=bool(hp.get("nesterov", False)),
            )
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "triangle":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            tri = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: triangle(i, total))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": tri, "interval": "step"}}
        if hp.scheduler == "cosine":
            t_max = hp.max_epochs_hint
            if t_max is None:
                t_max = self.trainer.max_epochs if self._trainer is not None else None
            if t_max is None or t_max < 1:
                raise ValueError(
                    "the cosine schedule needs a number of epochs: set Trainer(max_epochs=...) "
                    f"or max_epochs_hint (got trainer.max_epochs={t_max!r})"
                )
            sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(t_max))
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | int | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip each model's gradients separately (one parameter group per model).

        Uses this module's ``gradient_clip_val`` if set, else the Trainer's; the algorithm is
        the Trainer's ``gradient_clip_algorithm`` ("norm" by default, or "value").
        """
        val = self._hp.gradient_clip_val
        if val is None:
            val = gradient_clip_val
        if not val:
            return
        algorithm = str(getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm))
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, float(val))
            else:
                torch.nn.utils.clip_grad_norm_(params, float(val))

    # ----------------------------------------------------------------- spectral logging
    def _log_spectral(self) -> None:
        if not self._hp.log_spectral or self.trainer.sanity_checking:
            return
        per_model = [capacity(m) for m in self._backbones()]
        bad = [k for k, t in enumerate(per_model) if any(math.isnan(v) for v in t.values())]
        if bad and not self._warned_nonfinite_spectral:
            self._warned_nonfinite_spectral = True  # once per module: later epochs stay quiet
            rank_zero_warn(
                f"model(s) {bad} have NaN or Inf Conv/Linear weights: their spectral terms "
                "(spectral/...) are logged as NaN (this warning is shown once per module)"
            )
        for k, terms in enumerate(per_model if self._log_per_model else []):
            for key, value in terms.items():
                self.log(f"spectral/model_{k}/{key}", float(value), on_step=False, on_epoch=True)
        for key in per_model[0]:
            mean = sum(t[key] for t in per_model) / len(per_model)
            self.log(f"spectral/{key}", float(mean), on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self._log_spectral()

"""LightningModules: ``DisjointEnsemble`` (K backbones on disjoint splits) and ``Classifier``.

``DisjointEnsemble`` keeps K backbones of one architecture in an ``nn.ModuleList`` and trains
them with ONE optimizer holding one parameter group per model on the SUM of the K losses.
Model k's loss does not depend on the other models' parameters, so its gradient reaches only
its own group; element-wise optimizers (SGD with momentum/weight decay, AdamW) then update
each model exactly as K separate optimizers would, and ``global_step`` counts batches as
usual. Gradient clipping is done per model (per parameter group).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import AttributeDict, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from .backbones import build_backbone
from .spectral import apply_spectral_norm, capacity

__all__ = ["TRIANGLE", "Classifier", "DisjointEnsemble", "triangle"]

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


class DisjointEnsemble(_SaliencyModuleBase):
    """K classifiers of one architecture, each trained on its own split of the data.

    Args:
        backbone: a ``build_backbone`` name (``"small_cnn"``, ``"mlp"``, ``"resnet18"``, ...).
        num_classes: number of classes.
        in_chans: input channels.
        image_size: input side length (needed by ``"mlp"`` and ViT-like timm models).
        num_models: K, the number of models.
        pretrained: ``False``, ``True`` (hub download) or a local checkpoint path
            (all K models load it; heads of another size stay freshly initialized).
        spectral_norm_factor: if set, every Conv/Linear weight becomes ``c * W / sigma(W)``
            (applied after all K models are built). The effective sigma is exactly c at
            init; during training torch's power iteration (``spectral_norm_iterations`` steps
            per train-mode forward) tracks it only approximately, which the logged exact
            ``spectral/*`` values show.
        spectral_norm_iterations: power-iteration steps per train-mode forward.
        optimizer: ``"sgd"`` (with ``momentum``, ``weight_decay``) or ``"adamw"``.
        lr, momentum, weight_decay: optimizer settings (same for every model).
        scheduler: ``"cosine"`` (``T_max = max_epochs_hint`` or ``trainer.max_epochs``),
            ``"step"`` (``step_size``, ``gamma``) or ``"none"``, stepped once per epoch; or
            ``"triangle"`` (:data:`TRIANGLE`, stepped every optimizer step).
        gradient_clip_val: per-model gradient-norm clipping (overrides the Trainer's value,
            which is otherwise also applied per model).
        init_seed: model k is initialized under ``torch.manual_seed(init_seed + k)`` inside
            an isolated RNG, so the models differ, are reproducible, and the global RNG state
            is left untouched.
        backbone_kwargs: extra constructor kwargs for the backbone (e.g. ``{"width": 16}``).
        log_spectral: log the spectral capacity terms every training epoch.
        nesterov: Nesterov momentum (``optimizer="sgd"``, ``momentum > 0``).
        label_smoothing: label smoothing of the training cross-entropy (validation and test
            losses are the plain cross-entropy).

    Training batches are a list of K ``(x, y)`` pairs (``CombinedLoader(mode="min_size")``;
    model k gets pair k) or one ``(x, y)`` pair shared by all models. Validation/test
    batches are ``(x, y)`` (of a list of pairs, the first is used).

    Logged (epoch-level; per-batch values are weighted by the batch size, so epoch values
    are exact dataset-level fractions): ``train/loss``, ``train/acc`` (mean over models),
    ``train/model_{k}/loss``, ``train/model_{k}/acc``; ``val/loss``, ``val/acc``,
    ``val/model_{k}/loss``, ``val/model_{k}/acc``, ``val/ensemble_acc`` (argmax of the mean
    logits), ``val/prediction_agreement`` (mean over model pairs of the fraction of equal
    argmax; K >= 2); the same with ``test/``; at each training epoch end
    ``spectral/model_{k}/{term}`` and ``spectral/{term}`` (mean over models) for every term
    of :func:`capacity` (``norm_product``, ``R_w``, ``L_w``, ``log_R_w``, ...).

    >>> ens = DisjointEnsemble(backbone="small_cnn", num_models=2, backbone_kwargs={"width": 4})
    >>> ens(torch.zeros(3, 1, 32, 32)).shape
    torch.Size([3, 10])
    """

    def __init__(
        self,
        backbone: str = "small_cnn",
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int | None = 32,
        num_models: int = 2,
        pretrained: bool | str = False,
        spectral_norm_factor: float | None = None,
        spectral_norm_iterations: int = 1,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: Literal["cosine", "step", "triangle", "none"] = "cosine",
        step_size: int = 30,
        gamma: float = 0.1,
        max_epochs_hint: int | None = None,
        gradient_clip_val: float | None = None,
        init_seed: int = 0,
        backbone_kwargs: dict[str, Any] | None = None,
        log_spectral: bool = True,
        nesterov: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 1:
            raise ValueError(f"num_models must be an int >= 1, got {num_models!r}")
        if isinstance(init_seed, bool) or not isinstance(init_seed, int):
            raise ValueError(f"init_seed must be an int, got {init_seed!r}")
        self._validate_common(
            optimizer, lr, momentum, weight_decay, scheduler, step_size, gamma,
            max_epochs_hint, gradient_clip_val, spectral_norm_factor, nesterov, label_smoothing,
        )  # fmt: skip
        if not (isinstance(spectral_norm_iterations, int) and spectral_norm_iterations >= 1):
            raise ValueError(
                f"spectral_norm_iterations must be an int >= 1, got {spectral_norm_iterations!r}"
            )
        self.save_hyperparameters()
        self.num_models = num_models
        models = []
        for k in range(num_models):
            with isolate_rng():
                torch.manual_seed(init_seed + k)
                models.append(
                    build_backbone(
                        backbone,
                        num_classes=num_classes,
                        in_chans=in_chans,
                        pretrained=pretrained,
                        image_size=image_size,
                        **(backbone_kwargs or {}),
                    )
                )
        if spectral_norm_factor is not None:
            for m in models:
                apply_spectral_norm(m, float(spectral_norm_factor), spectral_norm_iterations)
        self.models = nn.ModuleList(models)

    def _backbones(self) -> list[nn.Module]:
        return list(self.models)

    def model_logits(self, x: Tensor) -> Tensor:
        """Logits of every model, shaped ``(K, N, num_classes)``."""
        return torch.stack([m(x) for m in self.models])

    def forward(self, x: Tensor) -> Tensor:
        """Mean logits over the K models, ``(N, num_classes)``."""
        return self.model_logits(x).mean(0)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        pairs = _pairs(batch)
        if len(pairs) == 1:
            pairs = pairs * self.num_models
        if len(pairs) != self.num_models:
            raise ValueError(
                f"training batch has {len(pairs)} (x, y) pairs but the ensemble has "
                f"{self.num_models} models; give one pair per model or a single shared pair"
            )
        losses, accs = [], []
        for k, (model, (x, y)) in enumerate(zip(self.models, pairs, strict=True)):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self._hp.label_smoothing)
            acc = (logits.detach().argmax(-1) == y).float().mean()
            n = int(y.shape[0])
            self.log(f"train/model_{k}/loss", loss.detach(), on_step=False, on_epoch=True,
                     batch_size=n)  # fmt: skip
            self.log(f"train/model_{k}/acc", acc, on_step=False, on_epoch=True, batch_size=n)
            losses.append(loss)
            accs.append(acc)
        total = torch.stack(losses).sum()
        n0 = int(pairs[0][1].shape[0])
        self.log("train/loss", total.detach() / len(losses), on_step=True, on_epoch=True,
                 prog_bar=True, batch_size=n0)  # fmt: skip
        self.log("train/acc", torch.stack(accs).mean(), on_step=True, on_epoch=True,
                 batch_size=n0)  # fmt: skip
        return total

    def _eval_step(self, batch: Any, prefix: str) -> None:
        x, y = _pairs(batch)[0]
        logits = self.model_logits(x)
        n = int(y.shape[0])
        kw: dict[str, Any] = dict(on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        preds = logits.argmax(-1)
        losses = torch.stack([F.cross_entropy(lg, y) for lg in logits])
        accs = (preds == y).float().mean(1)
        for k in range(self.num_models):
            self.log(f"{prefix}/model_{k}/loss", losses[k], **kw)
            self.log(f"{prefix}/model_{k}/acc", accs[k], **kw)
        self.log(f"{prefix}/loss", losses.mean(), prog_bar=True, **kw)
        self.log(f"{prefix}/acc", accs.mean(), prog_bar=True, **kw)
        ens = (logits.mean(0).argmax(-1) == y).float().mean()
        self.log(f"{prefix}/ensemble_acc", ens, **kw)
        if self.num_models >= 2:
            i, j = torch.triu_indices(self.num_models, self.num_models, 1, device=preds.device)
            agree = (preds[i] == preds[j]).float().mean()
            self.log(f"{prefix}/prediction_agreement", agree, **kw)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        pair = _as_pair(batch)
        x = pair[0] if pair is not None else (batch if isinstance(batch, Tensor) else None)
        if x is None:
            x = _pairs(batch)[0][0]
        return self(x)


class Classifier(_SaliencyModuleBase):
    """One classifier (the single-model counterpart of ``DisjointEnsemble``).

    Same arguments as ``DisjointEnsemble`` without ``num_models``; the backbone is built
    under ``torch.manual_seed(init_seed)`` in an isolated RNG and is ``.model``. Batches are
    ``(x, y)`` or a list of ``(x, y)`` pairs (the first is used). Logs ``train/loss``,
    ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` and, each training
    epoch, ``spectral/{term}`` for every term of :func:`capacity`.

    >>> clf = Classifier(backbone="mlp", image_size=8, backbone_kwargs={"hidden": [16]})
    >>> clf(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    _log_per_model = False

    def __init__(
        self,
        backbone: str = "small_cnn",
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int | None = 32,
        pretrained: bool | str = False,
        spectral_norm_factor: float | None = None,
        spectral_norm_iterations: int = 1,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: Literal["cosine", "step", "triangle", "none"] = "cosine",
        step_size: int = 30,
        gamma: float = 0.1,
        max_epochs_hint: int | None = None,
        gradient_clip_val: float | None = None,
        init_seed: int = 0,
        backbone_kwargs: dict[str, Any] | None = None,
        log_spectral: bool = True,
        nesterov: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(init_seed, bool) or not isinstance(init_seed, int):
            raise ValueError(f"init_seed must be an int, got {init_seed!r}")
        self._validate_common(
            optimizer, lr, momentum, weight_decay, scheduler, step_size, gamma,
            max_epochs_hint, gradient_clip_val, spectral_norm_factor, nesterov, label_smoothing,
        )  # fmt: skip
        if not (isinstance(spectral_norm_iterations, int) and spectral_norm_iterations >= 1):
            raise ValueError(
                f"spectral_norm_iterations must be an int >= 1, got {spectral_norm_iterations!r}"
            )
        self.save_hyperparameters()
        with isolate_rng():
            torch.manual_seed(init_seed)
            model = build_backbone(
                backbone,
                num_classes=num_classes,
                in_chans=in_chans,
                pretrained=pretrained,
                image_size=image_size,
                **(backbone_kwargs or {}),
            )
        if spectral_norm_factor is not None:
            apply_spectral_norm(model, float(spectral_norm_factor), spectral_norm_iterations)
        self.model = model

    def _backbones(self) -> list[nn.Module]:
        return [self.model]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        return self.model(x)

    def _step(self, batch: Any, prefix: str) -> Tensor:
        x, y = _pairs(batch)[0]
        logits = self(x)
        train = prefix == "train"
        smoothing = self._hp.label_smoothing if train else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        acc = (logits.detach().argmax(-1) == y).float().mean()
        n = int(y.shape[0])
        kw: dict[str, Any] = dict(on_step=train, on_epoch=True, batch_size=n, sync_dist=not train)
        self.log(f"{prefix}/loss", loss.detach(), prog_bar=True, **kw)
        self.log(f"{prefix}/acc", acc, **kw)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        if isinstance(batch, Tensor):
            return self(batch)
        return self(_pairs(batch)[0][0])

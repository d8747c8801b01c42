"""LightningModules: ``DisjointEnsemble`` (K backbones on disjoint splits) and ``Classifier``.

``DisjointEnsemble`` keeps K backbones of one architecture in an ``nn.ModuleList`` and trains
them with ONE optimizer holding one parameter group per model on the SUM of the K losses.
Model k's loss does not depend on the other models' parameters, so its gradient reaches only
its own group; element-wise optimizers (SGD with momentum/weight decay, AdamW) then update
each model exactly as K separate optimizers would, and ``global_step`` counts batches as
usual. Gradient clipping is done per model (per parameter group).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from ._module_base import DATA_INIT_SAMPLES as DATA_INIT_SAMPLES  # re-exported
from ._module_base import TRIANGLE as TRIANGLE  # re-exported: the "triangle" schedule
from ._module_base import _as_pair, _pairs, _SaliencyModuleBase
from ._module_base import triangle as triangle
from .backbones import build_backbone
from .spectral import apply_spectral_norm

__all__ = ["TRIANGLE", "Classifier", "DisjointEnsemble", "triangle"]


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

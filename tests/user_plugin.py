"""A user's own code, importable by class path in tests: a LightningModule and a method.

``plugin_grad`` is not registered here (an entry point registers it on first use);
``user_cli_grad`` is registered at import, as a user's module would do, so a CLI config
naming ``user_plugin.TinyUserModule`` can use it in the callback's ``methods``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_saliency.attribution import register_method


def plugin_grad(model: nn.Module, x: Tensor, target: Tensor | int) -> Tensor:
    """The plain logit gradient, written by hand."""
    x = x.detach().requires_grad_()
    t = torch.as_tensor(target, device=x.device).expand(len(x))
    return torch.autograd.grad(model(x).gather(1, t.view(-1, 1)).sum(), x)[0]


@register_method(overwrite=True)
def user_cli_grad(
    model: nn.Module, x: Tensor, target: Tensor | int, *, scale: float = 1.0
) -> Tensor:
    """``scale`` times the logit gradient."""
    return scale * plugin_grad(model, x, target)


class TinyUserModule(L.LightningModule):
    """A user's own K-model ensemble (an ``nn.ModuleList`` named ``models``): it takes the
    linked ``num_models``, ``num_classes`` and ``in_chans`` but no ``image_size``.

    Defaults differ from the data (3 classes, 3 channels), so the links must apply.
    """

    def __init__(
        self, num_models: int = 3, num_classes: int = 3, in_chans: int = 3, lr: float = 0.01
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.models = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_chans, 4, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(4),
                nn.Flatten(),
                nn.Linear(64, num_classes),
            )
            for _ in range(num_models)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self.models]).mean(0)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        pairs = batch if isinstance(batch[0], (list, tuple)) else [batch] * len(self.models)
        loss = sum(
            nn.functional.cross_entropy(m(x), y)
            for m, (x, y) in zip(self.models, pairs, strict=True)
        )
        self.log("train/loss", loss)
        return loss  # type: ignore[return-value]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

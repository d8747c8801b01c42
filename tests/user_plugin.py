"""A user's own code, importable by class path in tests: a LightningModule and a method.

``plugin_grad`` is not registered here (an entry point registers it on first use);
``user_cli_grad`` is registered at import, as a user's module would do, so a CLI config
naming ``user_plugin.TinyUserModule`` can use it in the callback's ``methods``.
"""

from __future__ import annotations

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
    """A user's LightningModule with none of the linked arguments but ``num_classes``."""

    def __init__(self, num_classes: int = 3, hidden: int = 16, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: object, batch_idx: int) -> Tensor:
        x, y = batch[0] if isinstance(batch, list) else batch  # type: ignore[misc]
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: object, batch_idx: int) -> None:
        x, y = batch  # type: ignore[misc]
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

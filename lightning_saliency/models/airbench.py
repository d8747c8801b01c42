"""A fast-training CIFAR network after Keller Jordan's airbench94 (backbone name ``"airbench"``).

Layout (airbench94): a 2x2 stem convolution without padding (``2 * in_chans * 4`` channels,
optionally initialized as a patch-whitening filter bank from training images), GELU, then three
blocks ``conv3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU`` and a
global max pool into a bias-free linear head whose logits are scaled by ``logit_scale``
(airbench: 1/9). Convolutions are identity-initialized on their first ``in_channels`` filters
(``nn.init.dirac_``, an implicit residual). A 32x32 input gives 31 -> 15 -> 7 -> 3 pixels, so
the last block (``features.block3``, the Grad-CAM layer) has a 3x3 map.

Multiply-accumulates per 32x32 RGB image (forward; a training step costs about 3x that):
widths (64, 256, 256) (airbench94) 118 M, (32, 128, 128) 33 M, (16, 64, 64) 9.5 M
(:func:`count_macs`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .spectral import _Scale, _weight_parametrizations

__all__ = ["AirbenchCNN", "count_macs"]


def _conv(cin: int, cout: int, bias: bool, dirac: bool) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=bias)
    if dirac:
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(cin, cout)])
    return conv


def _norm(channels: int, momentum: float | None, weight: bool, bias_lr_scale: float) -> nn.Module:
    """BatchNorm (``momentum=None``: none) with an optionally frozen scale and a faster bias.

    ``bias_lr_scale`` s stores the bias as ``sqrt(s) * b'`` (a parametrization: ``.bias``
    reads the real value) so plain SGD moves the bias s times as fast as an ``lr`` step would
    (airbench94's ``bias_scaler``), while weight decay shrinks it at the usual per-step rate.
    """
    if momentum is None:
        return nn.Identity()
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    bn.weight.requires_grad_(weight)
    if bias_lr_scale != 1.0:
        parametrize.register_parametrization(bn, "bias", _Scale(math.sqrt(bias_lr_scale)))
    return bn


class _Block(nn.Module):
    """``conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU`` (airbench94's ConvGroup)."""

    def __init__(self, cin: int, cout: int, norm: dict[str, Any], dirac: bool) -> None:
        super().__init__()
        bias = norm["momentum"] is None
        self.conv1 = _conv(cin, cout, bias=bias, dirac=dirac)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _norm(cout, **norm)
        self.act1 = nn.GELU()
        self.conv2 = _conv(cout, cout, bias=bias, dirac=dirac)
        self.norm2 = _norm(cout, **norm)
        self.act2 = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


class AirbenchCNN(nn.Module):
    """airbench94-style CNN: whitening-able 2x2 stem, three conv blocks, max pool, linear head.

    Args:
        in_chans: input channels.
        num_classes: number of logits.
        widths: output channels of the three blocks (airbench94: ``(64, 256, 256)``).
        batch_norm: BatchNorm after every block convolution (else the convs get a bias).
        bn_momentum: ``nn.BatchNorm2d`` momentum (torch convention; airbench94 uses 0.4).
        bn_weight: train the BatchNorm scales (airbench94: no, they stay 1, which makes every
            block convolution scale-invariant).
        bn_bias_lr_scale: the BatchNorm biases learn this many times faster than the other
            parameters under SGD (airbench94's ``bias_scaler``: 64), through a
            parametrization ``bias = sqrt(scale) * bias'``.
        dirac_init: identity-initialize the first ``in_channels`` filters of every block conv.
        logit_scale: constant factor on the logits (airbench94: 1/9).
        channels_last: keep the block convolutions' weights in channels-last memory format
            (oneDNN runs them about 1.7x faster on CPU; outputs are unchanged). The stem stays
            contiguous, so gradients with respect to the input keep the input's layout.

        whitening: the stem is a frozen patch-whitening filter bank (airbench94) computed from
            training images by :meth:`init_from_data` (``DisjointEnsemble`` / ``Classifier``
            call it in ``setup("fit")`` with their own split); until then a training-mode
            forward raises. False: a plain learnable stem (:meth:`init_whitening` may still
            set it).

    >>> net = AirbenchCNN(in_chans=3, num_classes=10, widths=(8, 16, 16))
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> tuple(net.features(torch.zeros(1, 3, 32, 32)).shape)
    (1, 16, 3, 3)
    """

    gradcam_layer = "features.block3"
    whitened: Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 256, 256),
        batch_norm: bool = True,
        bn_momentum: float = 0.4,
        bn_weight: bool = False,
        bn_bias_lr_scale: float = 64.0,
        dirac_init: bool = True,
        logit_scale: float = 1.0 / 9.0,
        channels_last: bool = True,
        whitening: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three ints >= 1, got {widths!r}")
        if not 0.0 < float(bn_momentum) <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum!r}")
        if not float(bn_bias_lr_scale) > 0.0:
            raise ValueError(f"bn_bias_lr_scale must be > 0, got {bn_bias_lr_scale!r}")
        norm = dict(
            momentum=float(bn_momentum) if batch_norm else None,
            weight=bool(bn_weight),
            bias_lr_scale=float(bn_bias_lr_scale),
        )
        stem = 2 * in_chans * 4
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            OrderedDict(
                stem=nn.Conv2d(in_chans, stem, kernel_size=2, padding=0, bias=True),
                stem_act=nn.GELU(),
                block1=_Block(stem, w1, norm, dirac_init),
                block2=_Block(w1, w2, norm, dirac_init),
                block3=_Block(w2, w3, norm, dirac_init),
            )
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(w3, num_classes, bias=False)
        self.logit_scale = float(logit_scale)
        if channels_last:
            for name in ("block1", "block2", "block3"):
                self.features.get_submodule(name).to(memory_format=torch.channels_last)
        self.whitening = bool(whitening)
        # saved with the weights: a restored model is not whitened again
        self.register_buffer("whitened", torch.tensor(False))
        if self.whitening:
            _stem_weight_param(cast(nn.Conv2d, self.features.stem)).requires_grad_(False)

    @property
    def needs_data_init(self) -> bool:
        """True while ``whitening`` waits for :meth:`init_from_data`."""
        return self.whitening and not bool(self.whitened)

    def init_from_data(self, images: Tensor) -> None:
        """Whiten the stem on ``images`` (model inputs of the training split; about 5,000)."""
        self.init_whitening(images)

    @property
    def last_conv_block(self) -> nn.Module:
        """The last convolutional block (default Grad-CAM layer)."""
        return cast(nn.Module, self.features.block3)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.needs_data_init:
            raise RuntimeError(
                "AirbenchCNN(whitening=True) is not whitened yet: call init_from_data(images) "
                "with training images first (DisjointEnsemble/Classifier do it in setup('fit'))"
            )
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1)) * self.logit_scale

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the stem to a patch-whitening filter bank of ``images`` (model inputs, N C H W).

        The 2x2 patches' covariance ``V diag(l) V^T`` gives filters ``v_i / sqrt(l_i + eps)``
        and their negatives (airbench94); the stem bias is set to 0.
        """
        stem = cast(nn.Conv2d, self.features.stem)
        if images.dim() != 4 or images.shape[1] != stem.in_channels:
            raise ValueError(
                f"images must be (N, {stem.in_channels}, H, W) model inputs, got "
                f"{tuple(images.shape)}"
            )
        c, (h, w) = stem.in_channels, stem.kernel_size
        patches = images.float().unfold(2, h, 1).unfold(3, w, 1)  # N C H' W' h w
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * h * w).double()
        cov = flat.T @ flat / flat.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(cov)
        filters = (eigvecs.T / torch.sqrt(eigvals.clamp_min(0) + eps)[:, None]).flip(0)
        filters = filters.reshape(c * h * w, c, h, w).to(stem.weight.dtype)
        bank = torch.cat([filters, -filters])
        if parametrize.is_parametrized(stem, "weight"):
            stem.weight = bank  # through the parametrizations' right_inverse
        else:
            stem.weight.copy_(bank)
        if stem.bias is not None:
            stem.bias.zero_()
        self.whitened.fill_(True)


def _stem_weight_param(conv: nn.Conv2d) -> Tensor:
    if parametrize.is_parametrized(conv, "weight"):
        return _weight_parametrizations(conv).original
    return conv.weight


def count_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of the Conv2d/Linear layers in one forward pass of ``x[:1]``.

    >>> count_macs(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)),
    ...            torch.zeros(1, 1, 4, 4))
    96
    """
    total = 0

    def hook(module: nn.Module, args: object, out: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out[0].numel() * module.in_channels // module.groups * k
        elif isinstance(module, nn.Linear):
            total += out[0].numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return total

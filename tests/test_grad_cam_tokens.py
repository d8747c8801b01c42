"""Grad-CAM's default layer on token models is a transformer block, never the patch
embedding (issue 16), and token outputs are reshaped to the patch grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_saliency.attribution import find_grad_cam_layer, grad_cam

timm = pytest.importorskip("timm")


def _vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=4,
                             depth=3, pretrained=False, **kw)  # fmt: skip


def test_class_token_vit_gets_the_block_before_the_last() -> None:
    """The class token reads the patch tokens in the last block's attention: the last
    block's own patch tokens never reach it, its input does."""
    x = torch.randn(2, 3, 32, 32)
    vit = _vit()
    assert find_grad_cam_layer(vit, x) == "blocks.1"
    cam = grad_cam(vit, x, torch.tensor([0, 3]))
    assert cam.shape == x.shape and bool((cam.abs().sum((1, 2, 3)) > 0).all())


def test_average_pooled_vit_gets_its_last_block_and_the_cam_matches_a_hand_reshape() -> None:
    x = torch.randn(2, 3, 32, 32)
    vit = _vit(global_pool="avg", class_token=False)
    assert find_grad_cam_layer(vit, x) == "blocks.2"
    # by hand: tokens (N, 16, D) of blocks.2 -> (N, D, 4, 4), Grad-CAM, bilinear to 32x32
    store = {}
    h = vit.blocks[2].register_forward_hook(lambda m, a, o: store.__setitem__("a", o))
    vit.eval()
    out = vit(x)
    h.remove()
    (g,) = torch.autograd.grad(out[:, 1].sum(), store["a"])
    a = store["a"].detach().transpose(1, 2).reshape(2, -1, 4, 4)
    d = g.transpose(1, 2).reshape(2, -1, 4, 4)
    want = torch.relu((d.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    want = nn.functional.interpolate(want, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(grad_cam(vit, x, 1)[:, :1], want, rtol=1e-4, atol=1e-6)


def test_convnets_keep_their_last_conv_block() -> None:
    resnet = timm.create_model("resnet18", num_classes=4, pretrained=False)
    assert find_grad_cam_layer(resnet, torch.randn(1, 3, 32, 32)) == "layer4"


class _TokenMix(nn.Module):
    """(N, 4 patches, dim) -> (N, 3 tokens, dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.lin(t.transpose(1, 2)).transpose(1, 2)


class _ThreeTokens(nn.Module):
    """A patch embedding (2 x 2 patches) followed by a layer that mixes them into 3 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 16, stride=16)
        self.mix = _TokenMix()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, 4 patches, 4 dims)
        return self.head(self.mix(tokens).mean(1))


def test_a_token_layer_that_is_not_a_patch_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="3 tokens, which do not make a patch grid"):
        grad_cam(_ThreeTokens(), torch.randn(1, 3, 32, 32), 0, layer="mix")

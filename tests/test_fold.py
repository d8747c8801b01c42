"""attribution_model: BatchNorm folded into convolutions, checked against hand-computed folds,
the unfolded model's maps (relative difference, scipy's Spearman) and state isolation."""

from __future__ import annotations

import warnings

import pytest
import scipy.stats
import timm
import torch
import torchvision
from torch import Tensor, nn

from lightning_saliency.attribution import (
    attribution_model,
    find_grad_cam_layer,
    foldable_pairs,
    grad_cam,
    integrated_gradients,
    simple_grad,
    smooth_grad,
)
from lightning_saliency.attribution import fold as fold_module
from lightning_saliency.models import apply_spectral_norm, build_backbone


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters (fresh ones fold to ~identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def _rel(a: Tensor, b: Tensor) -> Tensor:
    """Per map: max |a - b| / max |b|."""
    return (a - b).flatten(1).abs().amax(1) / b.flatten(1).abs().amax(1)


def _spearman(a: Tensor, b: Tensor) -> list[float]:
    return [
        float(scipy.stats.spearmanr(u.flatten().numpy(), v.flatten().numpy()).statistic)
        for u, v in zip(a, b, strict=True)
    ]


def test_hand_computed_fold() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(3, eps=1e-3)
    net = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4))
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    copy = attribution_model(net, channels_last=False)
    assert isinstance(copy[1], nn.Identity) and copy.folded_batchnorm == (("0", "1"),)
    scale = torch.tensor([2.0, -1.0, 0.5]) / torch.sqrt(torch.tensor([4.0, 0.25, 1.0]) + 1e-3)
    want_w = conv.weight.detach() * scale.view(3, 1, 1, 1)
    want_b = (conv.bias.detach() - torch.tensor([0.5, -1.0, 2.0])) * scale + torch.tensor(
        [0.1, 0.2, -0.3]
    )
    torch.testing.assert_close(copy[0].weight, want_w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(copy[0].bias, want_b, rtol=1e-6, atol=1e-7)
    x = torch.randn(5, 2, 4, 4)
    torch.testing.assert_close(copy(x), net.eval()(x), rtol=1e-5, atol=1e-6)


_METHODS = (
    simple_grad,
    lambda m, x, y: smooth_grad(m, x, y, sigma=0.2, samples=4, seed=3),
    lambda m, x, y: integrated_gradients(m, x, y, steps=4),
)


@pytest.mark.parametrize("backbone", ["small_cnn", pytest.param("cifar:resnet18", marks=pytest.mark.slow)])
def test_maps_equal_the_unfolded_model(backbone: str) -> None:
    """Folding is exact in real arithmetic: in float64 the maps (returned in float32) agree
    to float32 rounding. In float32 a ReLU or max-pool decision that sits within rounding
    of its threshold can flip for an occasional map, which then moves locally (up to ~1e-2
    of its max on one CPU, 3e-2 on another: a flip inside one noisy SmoothGrad sample moves
    the whole map, and 3 of these 4 maps flipped on a 2-core AMD EPYC): every ranking agrees
    to 0.999, and the maps of the first pass (no noise) agree to ~1e-5 at the median."""
    torch.manual_seed(0)
    model = _randomize_bn(build_backbone(backbone, num_classes=10)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 3, 5, 9])
    copy = attribution_model(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(copy.folded_batchnorm) == n_bn  # every BN of both follows a conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    model64 = _randomize_bn(build_backbone(backbone, num_classes=10)).double().eval()
    copy64 = attribution_model(model64)
    for method in _METHODS:
        want, got = method(model64, x.double(), y), method(copy64, x.double(), y)
        assert float(_rel(got, want).max()) < 1e-6
        want, got = method(model, x, y), method(copy, x, y)
        if method is simple_grad:
            assert float(_rel(got, want).median()) < 1e-5
        assert float(_rel(got, want).max()) < 5e-2
        assert min(_spearman(got, want)) > 0.999


def test_torchvision_resnet_and_grad_cam_layer_names() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()
    copy = attribution_model(model)
    assert len(copy.folded_batchnorm) == 20  # conv1/bn1, 2 per block, 3 downsample pairs
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in copy.folded_batchnorm
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert find_grad_cam_layer(copy, x) == find_grad_cam_layer(model, x) == "layer4"
    want, got = grad_cam(model, x, 1), grad_cam(copy, x, 1)
    assert want.abs().max() > 0 and (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_spectral_norm_folds_with_the_effective_weight() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(apply_spectral_norm(build_backbone("small_cnn", num_classes=10), 2.0))
    model.train()
    model(torch.randn(8, 3, 32, 32))  # power iterations: u and v move away from their init
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copy = attribution_model(model)
    assert len(copy.folded_batchnorm) == 3
    x = torch.randn(3, 3, 32, 32)
    want, got = simple_grad(model, x, 2), simple_grad(copy, x, 2)
    assert float(_rel(got, want).max()) < 1e-4
    # the original keeps its parametrization and its power-iteration state
    assert type(model.features.block1[0]).__name__ == "ParametrizedConv2d"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert type(copy.features.block1[0]) is nn.Conv2d


def test_copy_shares_no_state_with_the_model() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build_backbone("small_cnn", num_classes=10))
    model.train()
    flags = {n: m.training for n, m in model.named_modules()}
    copy = attribution_model(model)
    own = {p.untyped_storage().data_ptr() for p in (*model.parameters(), *model.buffers())}
    assert not own & {p.untyped_storage().data_ptr() for p in copy.parameters()}
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(p.requires_grad for p in model.parameters())
    assert not copy.training and not any(p.requires_grad for p in copy.parameters())
    x = torch.randn(2, 3, 32, 32)
    before = copy(x).detach()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(4, 3, 32, 32)).sum().backward()  # train-mode forward: BN stats move
    opt.step()
    torch.testing.assert_close(copy(x), before, rtol=0, atol=0)
    assert all(p.grad is None for p in copy.parameters())


class _Residual(nn.Module):
    """conv's output feeds BN and a skip connection: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 16, 2)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv(x)
        return self.head((self.bn(c) + c).flatten(1))


class _Untraceable(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it) around a plain Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 16, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if h.sum() > -1e9:  # always true, but fx cannot know
            h = h * 1.0
        return self.head(h.flatten(1))


def test_unsafe_pairs_are_left_in_eval_mode() -> None:
    torch.manual_seed(0)
    assert foldable_pairs(_Residual()) == []
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert foldable_pairs(no_stats) == []
    after_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    assert foldable_pairs(after_relu) == []
    hooked = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    hooked[0].register_forward_hook(lambda m, a, o: None)
    assert foldable_pairs(hooked) == []
    shared_conv = nn.Conv2d(3, 3, 3, padding=1)
    shared = nn.Sequential(shared_conv, nn.BatchNorm2d(3), shared_conv)
    assert foldable_pairs(shared) == []
    # a model fx cannot trace still folds its plain Sequential pairs
    untraceable = _randomize_bn(_Untraceable()).eval()
    assert foldable_pairs(untraceable) == [("body.0", "body.1")]
    copy = attribution_model(untraceable)
    x = torch.randn(3, 3, 4, 4)
    torch.testing.assert_close(simple_grad(copy, x, 1), simple_grad(untraceable, x, 1))
    resid = _randomize_bn(_Residual()).eval()
    kept = attribution_model(resid)
    assert isinstance(kept.bn, nn.BatchNorm2d) and not kept.bn.training
    torch.testing.assert_close(simple_grad(kept, x, 0), simple_grad(resid, x, 0))


def test_a_wrong_fold_is_caught_by_the_example_check(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build_backbone("small_cnn", num_classes=10)).eval()
    real = fold_module._fold

    def broken(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        real(conv, bn)
        with torch.no_grad():
            conv.weight.mul_(1.5)

    monkeypatch.setattr(fold_module, "_fold", broken)
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match="returning a copy without folding"):
        copy = attribution_model(model, example=x)
    assert copy.folded_batchnorm == ()
    torch.testing.assert_close(copy(x), model(x), rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(fold_module, "_fold", real)
        assert len(attribution_model(model, example=x).folded_batchnorm) == 3


def test_grad_cam_refuses_a_folded_convolution_as_its_layer() -> None:
    torch.manual_seed(0)
    net = _randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64, 2),
        )
    ).eval()
    x = torch.randn(2, 3, 4, 4)
    assert find_grad_cam_layer(net, x) == "0"  # the conv itself, whose output BN changes
    with pytest.raises(ValueError, match="BatchNorm folded into it"):
        grad_cam(attribution_model(net), x, 1)
    kept = attribution_model(net, keep=["0"])
    assert kept.folded_batchnorm == ()
    torch.testing.assert_close(grad_cam(kept, x, 1), grad_cam(net, x, 1))
    # the BN's own output is the folded conv's: Grad-CAM at the (now Identity) BN is unchanged
    folded = attribution_model(net)
    want = grad_cam(net, x, 1, layer="1")
    assert (grad_cam(folded, x, 1, layer="1") - want).abs().max() <= 1e-5 * want.abs().max()
    with pytest.raises(ValueError, match="does not have"):
        attribution_model(net, keep=["nope"])


def test_channels_last_choice_and_timm_layout() -> None:
    model = timm.create_model("resnet18", num_classes=10, pretrained=False).eval()
    auto = attribution_model(model)  # on the CPU: channels-last weights
    assert auto.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = attribution_model(model, channels_last=False, fold_batchnorm=False)
    assert plain.conv1.weight.is_contiguous() and isinstance(plain.bn1, nn.BatchNorm2d)
    mlp = attribution_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    assert mlp.folded_batchnorm == ()
    with pytest.raises(TypeError, match="fold_batchnorm must be a bool"):
        attribution_model(model, fold_batchnorm="yes")  # type: ignore[arg-type]

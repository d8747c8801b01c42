"""The fast CIFAR backbone ("airbench") and the recipe options of the modules (Nesterov, label
smoothing, the triangle schedule)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_saliency.attribution import find_grad_cam_layer, grad_cam
from lightning_saliency.models import (
    BUILTIN_BACKBONES,
    AirbenchCNN,
    DisjointEnsemble,
    apply_spectral_norm,
    build_backbone,
    count_macs,
)
from lightning_saliency.models.modules import triangle

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

TINY = (8, 16, 16)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch) -> None:
    """Without a logger the run folder is the working directory: keep splits.json out of the repo."""
    monkeypatch.chdir(tmp_path)


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("channels_last", [True, False])
def test_forward_backward_shapes(channels_last: bool) -> None:
    torch.manual_seed(0)
    net = build_backbone("airbench", num_classes=7, in_chans=3, widths=TINY,
                         channels_last=channels_last)  # fmt: skip
    assert "airbench" in BUILTIN_BACKBONES and isinstance(net, AirbenchCNN)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    out = net(x)
    assert out.shape == (4, 7)
    out.sum().backward()
    trainable = [p for p in net.parameters() if p.requires_grad]  # BN scales stay 1
    assert all(p.grad is not None and p.grad.shape == p.shape for p in trainable)
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.is_contiguous()
    assert tuple(net.features(x).shape) == (4, 16, 3, 3)  # 32 -> 31 -> 15 -> 7 -> 3
    gray = build_backbone("airbench", num_classes=2, in_chans=1, widths=TINY)
    assert gray(torch.zeros(2, 1, 28, 28)).shape == (2, 2)
    with pytest.raises(ValueError, match="three ints"):
        AirbenchCNN(widths=(8, 16))


def test_channels_last_does_not_change_outputs() -> None:
    torch.manual_seed(0)
    a = AirbenchCNN(widths=TINY, channels_last=False).eval()
    b = AirbenchCNN(widths=TINY, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-5)


def test_batchnorm_bias_learns_scale_times_faster_and_scales_stay_one() -> None:
    torch.manual_seed(0)
    fast = AirbenchCNN(widths=TINY, bn_bias_lr_scale=64.0)
    plain = AirbenchCNN(widths=TINY, bn_bias_lr_scale=1.0, bn_weight=True)
    # the same function: BN biases start at 0 in both, the other tensors are copied by name
    state = fast.state_dict()
    plain.load_state_dict({k.replace(".parametrizations.bias.original", ".bias"): v
                           for k, v in state.items()})  # fmt: skip
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    F.cross_entropy(plain(x), y).backward()
    g = plain.features.block1.norm1.bias.grad.clone()
    opt = torch.optim.SGD([p for p in fast.parameters() if p.requires_grad], lr=1e-3)
    F.cross_entropy(fast(x), y).backward()
    before = fast.features.block1.norm1.bias.detach().clone()
    opt.step()
    with torch.no_grad():
        delta = fast.features.block1.norm1.bias - before
    assert torch.allclose(delta, -64 * 1e-3 * g, atol=1e-7)
    norm = fast.features.block1.norm1
    assert not norm.weight.requires_grad and torch.equal(norm.weight, torch.ones(8))


def test_count_macs_by_hand() -> None:
    net = AirbenchCNN(in_chans=3, num_classes=10, widths=TINY)
    w1, w2, w3 = TINY
    stem = 31 * 31 * 24 * 3 * 4
    block1 = 31 * 31 * w1 * 24 * 9 + 15 * 15 * w1 * w1 * 9
    block2 = 15 * 15 * w2 * w1 * 9 + 7 * 7 * w2 * w2 * 9
    block3 = 7 * 7 * w3 * w2 * 9 + 3 * 3 * w3 * w3 * 9
    head = w3 * 10
    assert count_macs(net, torch.zeros(1, 3, 32, 32)) == stem + block1 + block2 + block3 + head
    full = count_macs(AirbenchCNN(widths=(64, 256, 256)), torch.zeros(1, 3, 32, 32))
    assert round(full / 1e6) == 118


def test_grad_cam_default_layer_and_spectral_norm() -> None:
    torch.manual_seed(0)
    net = AirbenchCNN(widths=TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    assert find_grad_cam_layer(net, x) == "features"  # the whole stack: block3's 3x3 map
    maps = grad_cam(net, x, torch.tensor([1, 2]))
    assert maps.shape[0] == 2 and maps.shape[-2:] == (32, 32) and torch.isfinite(maps).all()
    for batch_norm in (True, False):
        model = AirbenchCNN(widths=TINY, batch_norm=batch_norm)
        apply_spectral_norm(model, 2.0)
        model.train()
        model(torch.randn(4, 3, 32, 32))  # train-mode forward (power iteration, BN stats)
        model.eval()
        with torch.no_grad():
            for name, m in model.named_modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    w = m.weight.reshape(m.weight.shape[0], -1).double()
                    assert abs(torch.linalg.svdvals(w)[0].item() - 2.0) < 0.05, name
        assert not batch_norm or any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_init_whitening_decorrelates_patches() -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 3, 16, 16, generator=g)
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.7], [0.3, 0.0, 1.0]])
    x = F.avg_pool2d(torch.einsum("dc,nchw->ndhw", mix, noise), 3, 1, 1)  # correlated
    net = AirbenchCNN(in_chans=3, widths=TINY)
    net.init_whitening(x, eps=1e-9)
    with torch.no_grad():
        out = F.conv2d(x, net.features.stem.weight[:12])  # the positive half, no bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = flat.T @ flat / flat.shape[0]
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert torch.equal(net.features.stem.weight[12:], -net.features.stem.weight[:12])
    with pytest.raises(ValueError, match="model inputs"):
        net.init_whitening(torch.zeros(2, 1, 8, 8))


def test_triangle_schedule_values() -> None:
    assert triangle(0, 100) == pytest.approx(0.2)
    assert triangle(23, 100) == pytest.approx(1.0)
    assert triangle(100, 100) == pytest.approx(0.07)
    assert triangle(10, 100) == pytest.approx(0.2 + 0.8 * 10 / 23)
    assert triangle(50, 100) == pytest.approx(1.0 - 0.93 * 27 / 77)


def _digits_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = (F.interpolate(x, size=32, mode="bilinear", align_corners=False) - 0.5) / 0.5
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x, y, [perm[:600], perm[600:1200]], perm[1200:]


@pytest.mark.slow
def test_airbench_recipe_trains_on_digits() -> None:
    x, y, splits, held = _digits_split()

    def loader(idx, shuffle):
        gen = torch.Generator().manual_seed(1) if shuffle else None
        return DataLoader(TensorDataset(x[idx], y[idx]), batch_size=100, shuffle=shuffle,
                          generator=gen)  # fmt: skip

    ens = DisjointEnsemble(
        backbone="airbench", num_models=2, in_chans=1, backbone_kwargs={"widths": [16, 32, 32]},
        optimizer="sgd", lr=0.4, momentum=0.85, nesterov=True, weight_decay=1e-3,
        scheduler="triangle", label_smoothing=0.2, log_spectral=False,
    )  # fmt: skip
    lrs: list[float] = []

    class LR(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = _trainer(max_epochs=4, callbacks=[LR()])
    train = CombinedLoader([loader(s, True) for s in splits], mode="min_size")
    trainer.fit(ens, train_dataloaders=train, val_dataloaders=loader(held, False))
    assert trainer.optimizers[0].defaults["nesterov"] is True
    assert lrs == pytest.approx([0.4 * triangle(i, 24) for i in range(24)])  # 6 steps x 4
    assert trainer.callback_metrics["val/model_0/acc"] > 0.6  # chance is 0.1
    assert trainer.callback_metrics["val/model_1/acc"] > 0.6
    # the training loss is label-smoothed: (1 - e) * CE + e * mean_c(-log p_c)
    ens.eval()
    xb, yb = x[:8], y[:8]
    with torch.no_grad():
        logp = ens.models[0](xb).log_softmax(-1)
        ref = 0.8 * F.nll_loss(logp, yb) - 0.2 * logp.mean(-1).mean()
        loss = F.cross_entropy(ens.models[0](xb), yb, label_smoothing=ens.hparams.label_smoothing)
    assert torch.isclose(loss, ref, atol=1e-5)


def test_recipe_option_errors() -> None:
    with pytest.raises(ValueError, match="nesterov"):
        DisjointEnsemble(backbone="mlp", image_size=4, optimizer="adamw", nesterov=True)
    with pytest.raises(ValueError, match="label_smoothing"):
        DisjointEnsemble(backbone="mlp", image_size=4, label_smoothing=1.0)
    with pytest.raises(ValueError, match="triangle"):
        DisjointEnsemble(backbone="mlp", image_size=4, scheduler="linear")  # type: ignore[arg-type]


def test_whitening_is_initialized_on_each_models_own_split(tmp_path) -> None:
    from lightning_saliency.data import DigitsDataModule

    dm = DigitsDataModule(image_size=16, batch_size=256, split_factor=2)
    ens = DisjointEnsemble(
        backbone="airbench", num_models=2, in_chans=1, image_size=16,
        backbone_kwargs={"widths": [8, 16, 16], "whitening": True}, log_spectral=False,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="not whitened yet"):
        ens.models[0](torch.zeros(2, 1, 16, 16))
    assert not ens.models[0].features.stem.weight.requires_grad  # frozen: no optimizer step
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(ens, datamodule=dm)
    for k, model in enumerate(ens.models):
        split = dm.split_dataset(k)
        idx = (torch.arange(len(split)) * len(split) // len(split)).tolist()  # all 718 < 5000
        ref = AirbenchCNN(in_chans=1, widths=(8, 16, 16))
        ref.init_whitening(torch.stack([split[i][0] for i in idx]))
        assert bool(model.whitened)
        assert torch.allclose(model.features.stem.weight, ref.features.stem.weight, atol=1e-5)
    assert not torch.allclose(
        ens.models[0].features.stem.weight, ens.models[1].features.stem.weight
    )
    # a restored model keeps its stem: the buffer says it is whitened
    ckpt = tmp_path / "w.ckpt"
    trainer.save_checkpoint(ckpt)
    again = DisjointEnsemble.load_from_checkpoint(ckpt)
    assert not again.models[1].needs_data_init
    assert torch.equal(again.models[1].features.stem.weight, ens.models[1].features.stem.weight)

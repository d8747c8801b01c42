"""Tests for lightning_saliency.models: backbones, spectral normalization, LightningModules."""

from __future__ import annotations

import copy
import math
import random
import warnings

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_saliency.models import (
    Classifier,
    DisjointEnsemble,
    SmallCNN,
    apply_spectral_norm,
    build_backbone,
    capacity,
    spectral_norms,
)


def _trainer(**kw) -> L.Trainer:
    args = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    args.update(kw)
    return L.Trainer(**args)


def _effective_sigmas(model: nn.Module) -> dict[str, float]:
    """Independent reference: top singular value of each layer's forward weight (eval mode)."""
    was = model.training
    model.eval()
    out = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                w = m.weight
                if isinstance(m, nn.ConvTranspose2d):
                    w = w.transpose(0, 1)
                out[name] = torch.linalg.svdvals(w.reshape(w.shape[0], -1).double())[0].item()
    model.train(was)
    return out


# --------------------------------------------------------------------------- backbones
def test_mlp_needs_image_size_and_maps_to_classes():
    with pytest.raises(ValueError, match="image_size"):
        build_backbone("mlp", num_classes=10, in_chans=1)
    net = build_backbone("mlp", num_classes=7, in_chans=2, image_size=8, hidden=(16,))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2 * 8 * 8, 16), (16, 7)]
    assert net(torch.zeros(3, 2, 8, 8)).shape == (3, 7)


def test_small_cnn_shapes_and_gradcam_layer():
    net = build_backbone("small_cnn", num_classes=10, in_chans=1)
    assert isinstance(net, SmallCNN)
    feats = {}
    block = net.get_submodule(SmallCNN.gradcam_layer)
    assert block is net.last_conv_block
    block.register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert feats["a"].shape[-2:] == (8, 8)
    # the Grad-CAM block is the last block that contains a Conv2d
    conv_blocks = [
        n for n, m in net.named_children() for c in m.modules() if isinstance(c, nn.Conv2d)
    ]
    assert conv_blocks and net.features[-1] is block
    assert build_backbone("small_cnn", 5, in_chans=3)(torch.zeros(1, 3, 28, 28)).shape == (1, 5)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_timm_resnet18_at_32(in_chans):
    import timm.models.resnet

    torch.manual_seed(0)
    net = build_backbone("resnet18", num_classes=10, in_chans=in_chans, image_size=32)
    assert isinstance(net, timm.models.resnet.ResNet)
    assert net.conv1.in_channels == in_chans
    assert net(torch.randn(2, in_chans, 32, 32)).shape == (2, 10)


def test_timm_vit_uses_image_size():
    net = build_backbone("vit_tiny_patch16_224", num_classes=4, in_chans=1, image_size=32, depth=1)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_torchvision_names():
    import torchvision

    net = build_backbone("tv:resnet18", num_classes=10, in_chans=1)
    assert isinstance(net, torchvision.models.ResNet)
    assert net.conv1.in_channels == 1 and net.conv1.out_channels == 64
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    # a name timm does not know falls back to torchvision
    net = build_backbone("shufflenet_v2_x0_5", num_classes=3, in_chans=3)
    assert isinstance(net, torchvision.models.ShuffleNetV2)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="unknown backbone") as err:
        build_backbone("resnet18x", num_classes=10)
    assert "resnet18" in str(err.value)
    with pytest.raises(ValueError, match="small_cnn"):
        build_backbone("smal_cnn", num_classes=10)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("tv:resnet_does_not_exist", num_classes=10)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": ""}, TypeError, "non-empty string"),
        ({"name": 3}, TypeError, "non-empty string"),
        ({"num_classes": 0}, ValueError, "num_classes must be an int >= 1"),
        ({"num_classes": True}, ValueError, "num_classes must be an int >= 1"),
        ({"in_chans": 2.0}, ValueError, "in_chans must be an int >= 1"),
        ({"image_size": 0}, ValueError, "image_size must be None or an int >= 1"),
        ({"pretrained": 1.5}, TypeError, "pretrained must be a bool or a path"),
        ({"pretrained": True}, ValueError, "has no hub weights"),
    ],
)
def test_bad_backbone_arguments_are_refused_before_building(kwargs, error, message):
    arguments = {"name": "small_cnn", "num_classes": 10, **kwargs}
    with pytest.raises(error, match=message):
        build_backbone(**arguments)


def test_a_name_with_spaces_builds_the_builtin():
    net = build_backbone(" airbench ", num_classes=4, in_chans=1)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 4)


def test_pretrained_local_state_dict_roundtrip(tmp_path):
    torch.manual_seed(1)
    src = build_backbone("small_cnn", num_classes=10, in_chans=1, width=4)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    dst = build_backbone("small_cnn", num_classes=10, in_chans=1, pretrained=str(path), width=4)
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_pretrained_lightning_ckpt_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    a = build_backbone("mlp", 5, in_chans=1, image_size=4, hidden=(6,))
    b = build_backbone("mlp", 5, in_chans=1, image_size=4, hidden=(6,))
    state = {f"models.{k}.{n}": v for k, m in enumerate((a, b)) for n, v in m.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "run.ckpt")
    out = build_backbone(
        "mlp", 5, in_chans=1, image_size=4, hidden=(6,), pretrained=str(tmp_path / "run.ckpt")
    )
    assert all(
        torch.equal(x, y)
        for x, y in zip(out.state_dict().values(), a.state_dict().values(), strict=True)
    )
    save_file({n: v.contiguous() for n, v in b.state_dict().items()}, tmp_path / "b.safetensors")
    out = build_backbone(
        "mlp", 5, 1, pretrained=tmp_path / "b.safetensors", image_size=4, hidden=(6,)
    )
    assert all(
        torch.equal(x, y)
        for x, y in zip(out.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_pretrained_head_mismatch_is_skipped_with_warning(tmp_path):
    torch.manual_seed(1)
    src = build_backbone("small_cnn", num_classes=10, in_chans=1, width=4)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(5)
    fresh = build_backbone("small_cnn", num_classes=3, in_chans=1, width=4)
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match="shape mismatch"):
        dst = build_backbone("small_cnn", 3, in_chans=1, width=4, pretrained=tmp_path / "w.pt")
    assert torch.equal(dst.classifier.weight, fresh.classifier.weight)  # head kept fresh
    assert torch.equal(dst.features.block2[0].weight, src.features.block2[0].weight)


def test_pretrained_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        build_backbone("small_cnn", 10, pretrained=str(missing))
    torch.save({"something": 1}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="state dict"):
        build_backbone("small_cnn", 10, pretrained=str(tmp_path / "bad.pth"))
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor"):
        build_backbone("small_cnn", 10, pretrained=str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="local checkpoint"):
        build_backbone("small_cnn", 10, pretrained=True)

    import timm

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"pretrained='/path/to/weights\.pth'"):
        build_backbone("resnet18", 10, pretrained=True)


# --------------------------------------------------------------------------- spectral norm
@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_spectral_norm_sets_every_layer_sigma(factor):
    torch.manual_seed(0)
    net = nn.Sequential(
        build_backbone("small_cnn", num_classes=10, in_chans=1, width=8),
        nn.Unflatten(1, (10, 1, 1)),
        nn.ConvTranspose2d(10, 3, kernel_size=2),
    )
    net.train()
    apply_spectral_norm(net, factor)
    assert net.training  # flags untouched
    ref = _effective_sigmas(net)
    assert len(ref) == 5
    for name, sigma in ref.items():
        assert abs(sigma - factor) < 1e-3, (name, sigma)
    ours = spectral_norms(net)
    assert ours.keys() == ref.keys()
    for name in ref:
        assert math.isclose(ours[name], ref[name], rel_tol=1e-6)
    # the forward really uses the normalized weight
    lin = net[0].classifier
    z = torch.randn(4, lin.in_features)
    net.eval()
    w = lin.parametrizations.weight.original
    sn = lin.parametrizations.weight[0]
    sigma_hat = torch.dot(sn._u, w.reshape(w.shape[0], -1) @ sn._v)
    assert torch.allclose(lin(z), z @ (factor * w / sigma_hat).T + lin.bias, atol=1e-5)


def test_spectral_norm_on_ensemble_and_rng():
    state = torch.get_rng_state()
    ens = DisjointEnsemble(
        backbone="mlp", image_size=8, num_models=2, spectral_norm_factor=0.7,
        backbone_kwargs={"hidden": [16, 16]},
    )  # fmt: skip
    assert torch.equal(state, torch.get_rng_state())
    for m in ens.models:
        assert all(abs(s - 0.7) < 1e-3 for s in _effective_sigmas(m).values())
    # capacity's norm product of a c-normalized net is c**L
    assert math.isclose(capacity(ens.models[0])["norm_product"], 0.7**3, rel_tol=1e-5)


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan"), float("inf")])
def test_spectral_norm_bad_factor(factor):
    with pytest.raises(ValueError, match="factor"):
        apply_spectral_norm(nn.Linear(2, 2), factor)
    with pytest.raises(ValueError, match="spectral_norm_factor"):
        DisjointEnsemble(backbone="mlp", image_size=4, spectral_norm_factor=factor)


def test_spectral_norm_twice_is_an_error():
    net = apply_spectral_norm(nn.Linear(3, 3), 1.0)
    with pytest.raises(ValueError, match="already"):
        apply_spectral_norm(net, 1.0)


def test_spectral_norms_reads_without_side_effects():
    torch.manual_seed(0)
    net = apply_spectral_norm(build_backbone("small_cnn", 10, in_chans=1, width=4), 1.0)
    net.train()
    net.features.block2.eval()  # mixed flags must come back as they were
    with torch.no_grad():  # move the weights so u, v are no longer a fixed point
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flags = {n: m.training for n, m in net.named_modules()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    first = spectral_norms(net)
    capacity(net)
    assert spectral_norms(net) == first
    assert flags == {n: m.training for n, m in net.named_modules()}
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), n
    # control: a train-mode read of .weight does run the power iteration
    _ = net.classifier.weight
    u_after = net.classifier.parametrizations.weight[0]._u
    assert not torch.equal(u_after, buffers["classifier.parametrizations.weight.0._u"])


def test_capacity_hand_computed():
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.0]]))
    # layer 1: sigma 4, rows 3 + 4 + 0 = 7; layer 2: sigma sqrt2, (2,1)-norm sqrt2
    s1, r1, s2, r2 = 4.0, 7.0, math.sqrt(2), math.sqrt(2)
    ratio = ((r1 / s1) ** (2 / 3) + (r2 / s2) ** (2 / 3)) ** 1.5
    for gammas in (1.0, (1.0, 2.0)):
        g1, g2 = (gammas, gammas) if isinstance(gammas, float) else gammas
        c = capacity(net, gammas=gammas)
        assert math.isclose(c["norm_product"], s1 * s2, rel_tol=1e-9)
        assert math.isclose(c["L_w"], g1 * s1 * g2 * s2 * ratio, rel_tol=1e-9)
        prefix = g1 * s1 + g1 * s1 * g2 * s2
        assert math.isclose(c["R_w"], prefix * g1 * s1 * g2 * s2 * ratio, rel_tol=1e-9)
        assert math.isclose(c["log_R_w"], math.log(c["R_w"]), rel_tol=1e-9)
    with pytest.raises(ValueError, match="one value per"):
        capacity(net, gammas=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("factor", [None, 0.5])
def test_spectral_terms_of_a_nonfinite_model_are_nan(bad, factor):
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    if factor is not None:
        apply_spectral_norm(net, factor)
    finite = capacity(net)
    weight = net[2].parametrizations.weight.original if factor else net[2].weight
    with torch.no_grad():
        weight[0, 1] = bad  # raised `linalg.svd ... non-finite` before
    norms = spectral_norms(net)
    assert math.isfinite(norms["0"]) and math.isnan(norms["2"])  # per layer
    c = capacity(net)
    assert list(c) == list(finite) and all(math.isnan(v) for v in c.values())


# --------------------------------------------------------------------------- ensemble
def _ens(**kw) -> DisjointEnsemble:
    args = dict(backbone="small_cnn", num_models=3, backbone_kwargs={"width": 4})
    args.update(kw)
    return DisjointEnsemble(**args)


def test_ensemble_init_differs_reproducible_and_leaves_rng():
    torch.manual_seed(123)
    random.seed(4)
    np.random.seed(5)  # noqa: NPY002 (the legacy global state is what must stay put)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())  # noqa: NPY002
    a = _ens(init_seed=7)
    assert torch.equal(states[0], torch.get_rng_state())
    assert states[1] == random.getstate()
    assert np.array_equal(states[2], np.random.get_state()[1])  # noqa: NPY002
    b = _ens(init_seed=7)
    c = _ens(init_seed=8)
    pa, pb = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (a, b))
    assert torch.equal(pa, pb)
    w = [torch.nn.utils.parameters_to_vector(m.parameters()) for m in a.models]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    # model k is seeded with init_seed + k
    for x, y in zip(a.models[1].parameters(), c.models[0].parameters(), strict=True):
        assert torch.equal(x, y)
    x = torch.randn(5, 1, 32, 32)
    a.eval()
    assert torch.allclose(a(x), torch.stack([m(x) for m in a.models]).mean(0), atol=1e-6)


def test_one_models_loss_does_not_touch_the_others():
    ens = _ens(num_models=2, optimizer="sgd", weight_decay=1e-2, scheduler="none")
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    loss0 = F.cross_entropy(ens.models[0](x), y)
    grads = torch.autograd.grad(loss0, list(ens.models[1].parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    opt = ens.configure_optimizers()
    assert [g["name"] for g in opt.param_groups] == ["model_0", "model_1"]
    before = [p.detach().clone() for p in ens.models[1].parameters()]
    before0 = torch.nn.utils.parameters_to_vector(ens.models[0].parameters()).detach().clone()
    opt.zero_grad()
    F.cross_entropy(ens.models[0](x), y).backward()
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ens.models[1].parameters(), before, strict=True))
    assert not torch.equal(torch.nn.utils.parameters_to_vector(ens.models[0].parameters()), before0)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_ensemble_step_equals_separate_optimizers(optimizer):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(24, 1, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g))
            for _ in range(2)]  # fmt: skip
    loaders = [DataLoader(TensorDataset(x, y), batch_size=8) for x, y in data]
    lr, wd, clip = (0.05, 1e-3, 0.5)
    ens = _ens(num_models=2, optimizer=optimizer, lr=lr, weight_decay=wd, momentum=0.9,
               scheduler="none", gradient_clip_val=clip)  # fmt: skip
    refs = [copy.deepcopy(m) for m in ens.models]
    trainer = _trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(ens, train_dataloaders=CombinedLoader(loaders, mode="min_size"))
    assert trainer.global_step == 3
    for ref, loader in zip(refs, loaders, strict=True):
        ref.train()
        if optimizer == "sgd":
            opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
        else:
            opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=wd)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(ref(x), y).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
            opt.step()
    for ref, model in zip(refs, ens.models, strict=True):
        for (n, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), n


def test_ensemble_with_nan_weights_logs_nan_spectral_terms_and_warns_once():
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    pair = DataLoader(TensorDataset(xs, ys), batch_size=8)
    ens = _ens(num_models=2, scheduler="none")
    with torch.no_grad():
        ens.models[1].classifier.weight[0, 0] = float("nan")
    trainer = _trainer(max_epochs=2, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ens, train_dataloaders=CombinedLoader([pair, pair], mode="min_size"))
    ours = [w for w in caught if "spectral terms" in str(w.message)]
    assert len(ours) == 1 and "[1]" in str(ours[0].message)
    m = trainer.callback_metrics
    for key in ("norm_product", "R_w", "L_w", "log_R_w"):
        assert math.isfinite(float(m[f"spectral/model_0/{key}"]))
        assert math.isnan(float(m[f"spectral/model_1/{key}"]))
        assert math.isnan(float(m[f"spectral/{key}"]))  # the mean over models says so too


def test_ensemble_fit_logs_metrics_exactly():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(40, 1, 32, 32, generator=g)
    ys = torch.randint(0, 10, (40,), generator=g)
    xv = torch.randn(21, 1, 32, 32, generator=g)
    yv = torch.randint(0, 4, (21,), generator=g)
    train = CombinedLoader(
        [DataLoader(TensorDataset(xs[:20], ys[:20]), batch_size=10),
         DataLoader(TensorDataset(xs[20:], ys[20:]), batch_size=10)], mode="min_size",
    )  # fmt: skip
    val = DataLoader(TensorDataset(xv, yv), batch_size=8)  # uneven last batch
    ens = _ens(num_models=2, lr=0.01, max_epochs_hint=3)
    trainer = _trainer(max_epochs=1)
    trainer.fit(ens, train_dataloaders=train, val_dataloaders=val)
    m = trainer.callback_metrics
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "val/ensemble_acc",
                "val/prediction_agreement", "spectral/norm_product", "spectral/R_w",
                "spectral/L_w"}  # fmt: skip
    for k in range(2):
        expected |= {f"train/model_{k}/loss", f"train/model_{k}/acc", f"val/model_{k}/loss",
                     f"val/model_{k}/acc", f"spectral/model_{k}/norm_product",
                     f"spectral/model_{k}/R_w", f"spectral/model_{k}/L_w"}  # fmt: skip
    assert expected <= set(m), expected - set(m)
    ens.eval()
    with torch.no_grad():
        logits = torch.stack([mod(xv) for mod in ens.models])
    preds = logits.argmax(-1)
    accs = (preds == yv).float().mean(1)
    for k in range(2):
        assert torch.isclose(m[f"val/model_{k}/acc"], accs[k], atol=1e-6)
        assert torch.isclose(m[f"val/model_{k}/loss"], F.cross_entropy(logits[k], yv), atol=1e-5)
    assert torch.isclose(m["val/acc"], accs.mean(), atol=1e-6)
    ens_acc = (logits.mean(0).argmax(-1) == yv).float().mean()
    assert torch.isclose(m["val/ensemble_acc"], ens_acc, atol=1e-6)
    assert torch.isclose(m["val/prediction_agreement"], (preds[0] == preds[1]).float().mean(),
                         atol=1e-6)  # fmt: skip
    for k in range(2):
        ref = capacity(ens.models[k])
        assert math.isclose(float(m[f"spectral/model_{k}/R_w"]), ref["R_w"], rel_tol=1e-5)
    with torch.no_grad():
        assert torch.allclose(ens(xv), logits.mean(0), atol=1e-6)
    # the cosine schedule uses max_epochs_hint
    sched = ens.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 3
    trainer.test(ens, dataloaders=val, verbose=False)
    assert torch.isclose(trainer.callback_metrics["test/acc"], accs.mean(), atol=1e-6)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5, torch.tensor(d.target)


@pytest.mark.slow
def test_ensemble_learns_digits():
    x, y = _digits()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    splits, held = [perm[:600], perm[600:1200]], perm[1200:]

    def loader(idx, shuffle, bs=32):
        gen = torch.Generator().manual_seed(1) if shuffle else None
        return DataLoader(TensorDataset(x[idx], y[idx]), batch_size=bs, shuffle=shuffle,
                          generator=gen)  # fmt: skip

    torch.manual_seed(0)
    ens = _ens(num_models=2, backbone_kwargs={"width": 8}, optimizer="adamw", lr=3e-3,
               weight_decay=0.0, scheduler="none")  # fmt: skip
    trainer = _trainer(max_epochs=3)
    train = CombinedLoader([loader(s, True) for s in splits], mode="min_size")
    trainer.fit(ens, train_dataloaders=train, val_dataloaders=loader(held, False, 256))
    ens.eval()
    with torch.no_grad():
        acc = (ens(x[held]).argmax(-1) == y[held]).float().mean().item()
    assert acc > 0.6  # chance is 0.1
    assert trainer.callback_metrics["val/model_0/acc"] > 0.6
    assert trainer.callback_metrics["val/model_1/acc"] > 0.6


# --------------------------------------------------------------------------- classifier
def test_classifier_fit_and_batches():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    clf = Classifier(backbone="mlp", num_classes=3, image_size=8, backbone_kwargs={"hidden": [8]},
                     spectral_norm_factor=1.5, scheduler="step", step_size=1)  # fmt: skip
    assert all(abs(s - 1.5) < 1e-3 for s in _effective_sigmas(clf.model).values())
    pairs = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer = _trainer(max_epochs=1)
    trainer.fit(clf, train_dataloaders=CombinedLoader([pairs, pairs], mode="min_size"),
                val_dataloaders=pairs)  # fmt: skip
    keys = set(trainer.callback_metrics)
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "spectral/norm_product",
            "spectral/R_w", "spectral/L_w"} <= keys  # fmt: skip
    assert not any(k.startswith("spectral/model_") for k in keys)
    clf.eval()
    with torch.no_grad():
        assert torch.equal(clf(x), clf.model(x))
        acc = (clf(x).argmax(-1) == y).float().mean()
    assert torch.isclose(trainer.callback_metrics["val/acc"], acc, atol=1e-6)


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="optimizer"):
        DisjointEnsemble(backbone="mlp", image_size=4, optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_models"):
        DisjointEnsemble(backbone="mlp", image_size=4, num_models=0)
    with pytest.raises(ValueError, match="unknown backbone"):
        DisjointEnsemble(backbone="resnet_18")
    ens = _ens(num_models=2)
    batch = [(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))] * 3
    with pytest.raises(ValueError, match="3 \\(x, y\\) pairs"):
        ens.training_step(batch, 0)


def test_modules_are_cli_parsable():
    from jsonargparse import ArgumentParser

    for cls in (DisjointEnsemble, Classifier):
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "model")
        cfg = parser.parse_args(["--model.spectral_norm_factor=0.5", "--model.optimizer=adamw",
                                 "--model.pretrained=false"])  # fmt: skip
        assert cfg.model.spectral_norm_factor == 0.5 and cfg.model.pretrained is False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(Exception):  # noqa: B017  (jsonargparse's own error type)
                parser.parse_args(["--model.optimizer=adam"])


def test_cifar_stem_resnet_keeps_spatial_resolution() -> None:
    import timm

    from lightning_saliency.models import build_backbone

    net = build_backbone("cifar:resnet18", num_classes=10, in_chans=3).eval()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    feats = net.forward_features(torch.zeros(1, 3, 32, 32))
    assert feats.shape[-2:] == (4, 4)  # the ImageNet stem leaves 1x1 here
    plain = timm.create_model("resnet18", num_classes=10).eval()
    assert plain.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (1, 1)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="conv1 and maxpool"):
        build_backbone("cifar:vit_tiny_patch16_224", num_classes=10, in_chans=3)
    with pytest.raises(ValueError, match="hub weights"):
        build_backbone("cifar:resnet18", num_classes=10, pretrained=True)

"""GPU correctness: CUDA maps equal CPU maps in fp32, the bf16 and channels-last paths really
run and stay close to fp32, the memory budget holds on the card, and the callback monitors a
GPU fit. Skipped without CUDA (CI has none); on the lent GPU machine run
``python3 -m pytest -q tests/test_cuda.py`` (docs/benchmarks.md, "GPU session")."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lightning_saliency.attribution import (
    attribution_model,
    grad_cam,
    grad_x_input,
    input_gradients,
    integrated_gradients,
    simple_grad,
    smooth_grad,
)
from lightning_saliency.attribution._chunks import ACTIVATION_HEADROOM, activation_memory
from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.data import DigitsDataModule
from lightning_saliency.metrics import spearman, ssim
from lightning_saliency.models import DisjointEnsemble, build_backbone

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """fp32 comparisons need true fp32 convolutions and matmuls (cuDNN allows TF32 by default)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, num_classes=10).eval()


def _batch(n: int = 16) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _rel_close(got: Tensor, want: Tensor, tol: float) -> None:
    scale = want.abs().max().clamp_min(1e-12)
    assert float((got - want).abs().max() / scale) <= tol


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
@pytest.mark.parametrize(
    "method",
    [
        simple_grad,
        grad_x_input,
        lambda m, x, t: integrated_gradients(m, x, t, steps=8, rule="gauss_legendre"),
        grad_cam,
    ],
    ids=["simple_grad", "grad_x_input", "integrated_gradients", "grad_cam"],
)
def test_fp32_maps_on_cuda_equal_cpu(no_tf32: None, backbone: str, method) -> None:
    model = _model(backbone)
    x, t = _batch()
    want = method(model, x, t)
    got = method(model.cuda(), x.cuda(), t.cuda())
    assert got.is_cuda and got.dtype == torch.float32 and got.is_contiguous()
    _rel_close(got.cpu(), want, 1e-4)


@pytest.fixture
def deterministic() -> Iterator[None]:
    """torch's deterministic mode (cuBLAS needs its workspace setting for it)."""
    saved_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
        if saved_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved_env


def test_smooth_grad_on_cuda_is_bit_exact_under_deterministic_mode(
    no_tf32: None, deterministic: None
) -> None:
    """The guarantee: with torch's deterministic mode the same call gives the same bits (and
    the pass leaves cuDNN autotuning off, so no algorithm is chosen by timing)."""
    model = _model("small_cnn").cuda()
    x, t = (v.cuda() for v in _batch())
    a = smooth_grad(model, x, t, sigma=0.3, samples=8, seed=5)
    b = smooth_grad(model, x, t, sigma=0.3, samples=8, seed=5)
    assert torch.equal(a, b)
    assert torch.backends.cudnn.benchmark is False


def test_smooth_grad_on_cuda_is_reproducible_to_rounding_and_chunk_independent(
    no_tf32: None,
) -> None:
    """Without deterministic mode CUDA kernels may sum in another order (atomics, autotuned
    algorithms): the same call agrees to float32 rounding, not bit for bit."""
    model = _model("small_cnn").cuda()
    x, t = (v.cuda() for v in _batch())
    a = smooth_grad(model, x, t, sigma=0.3, samples=8, seed=5)
    b = smooth_grad(model, x, t, sigma=0.3, samples=8, seed=5)
    c = smooth_grad(model, x, t, sigma=0.3, samples=8, seed=5, batch_size=7)
    _rel_close(b, a, 1e-5)
    _rel_close(c, a, 1e-5)
    # the noise is drawn on the GPU from its own generator: the global CUDA RNG is untouched
    state = torch.cuda.get_rng_state()
    smooth_grad(model, x, t, sigma=0.3, samples=8, seed=5)
    assert torch.equal(state, torch.cuda.get_rng_state())


def test_bf16_and_channels_last_really_run_and_stay_close_to_fp32(no_tf32: None) -> None:
    model = _model("resnet18").cuda().to(memory_format=torch.channels_last)
    x, t = (v.cuda() for v in _batch(64))
    seen: list[tuple[torch.dtype, bool]] = []
    conv = model.conv1
    hook = conv.register_forward_hook(
        lambda m, a, o: seen.append(
            (o.dtype, a[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    try:
        fast = simple_grad(model, x, t, precision="bf16", channels_last=True)
    finally:
        hook.remove()
    slow = simple_grad(model, x, t)
    # measurement passes and the real chunk all ran in bf16 on channels-last inputs
    assert seen and all(dtype == torch.bfloat16 and cl for dtype, cl in seen)
    assert fast.dtype == torch.float32 and fast.is_contiguous()
    rho = spearman(fast, slow)
    sim = ssim(fast, slow)
    assert float(rho.mean()) > 0.9, float(rho.mean())
    assert float(sim.mean()) > 0.8, float(sim.mean())


def _peak_of(fn) -> tuple[Tensor, float]:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, float(torch.cuda.max_memory_allocated() - base)


def test_memory_budget_holds_on_cuda() -> None:
    model = _model("cifar:resnet18").cuda()
    x, t = (v.cuda() for v in _batch(256))
    budget_mb = 512.0
    per_row, fixed = activation_memory(model, x)
    rows = int((budget_mb * 2**20 - fixed) // (per_row * ACTIVATION_HEADROOM))
    assert rows < 256 * 8  # the budget forces chunks
    maps, peak = _peak_of(
        lambda: smooth_grad(model, x, t, sigma=0.2, samples=8, memory_budget_mb=budget_mb)
    )
    assert bool(torch.isfinite(maps).all())
    # the chunk plus the inputs, noise blocks and accumulators (a few copies of x)
    assert peak <= budget_mb * 2**20 + 8 * x.numel() * 4, peak / 2**20


@pytest.mark.parametrize("backbone", ["resnet18", "cifar:resnet18"])
def test_a_16_gb_budget_holds_for_4096_probes_x_50_draws_in_fp32(
    no_tf32: None, backbone: str
) -> None:
    """Issue 21's case: it peaked at 48 GB (timm ResNet-18) and 20.7 GB (CIFAR ResNet-18)
    before the chunks were sized from the measured peak per row."""
    model = _model(backbone).cuda()
    x, t = (v.cuda() for v in _batch(4096))
    budget_mb = 16 * 1024.0
    maps, peak = _peak_of(
        lambda: smooth_grad(model, x, t, sigma=0.2, samples=50, memory_budget_mb=budget_mb)
    )
    assert bool(torch.isfinite(maps).all())
    assert peak <= budget_mb * 2**20 + 8 * x.numel() * 4, peak / 2**30


def test_callback_monitors_a_bf16_gpu_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's attribution passes ran on the GPU, autocast to bf16, on channels-last
    rows (Lightning's teardown moves the module back to the CPU after fit, so the parameters'
    device says nothing about where the monitor ran)."""
    from lightning_saliency.attribution import _core

    seen: list[tuple[str, bool, bool]] = []
    real = _core._row_gradients

    def spy(model, rows, target, output, precision, channels_last, target_max=None):
        seen.append((rows.device.type, precision == "bf16", channels_last))
        return real(model, rows, target, output, precision, channels_last, target_max)

    monkeypatch.setattr(_core, "_row_gradients", spy)
    L.seed_everything(0)
    model = DisjointEnsemble(
        backbone="small_cnn", num_classes=10, in_chans=1, image_size=16, num_models=2
    )
    data = DigitsDataModule(image_size=16, split_factor=2, num_models=2, batch_size=64)
    cb = InterpretationGeneralization(
        methods=[
            "simple_grad",
            {"method": "smooth_grad", "sigma": 0.3, "samples": 4},
            {"method": "simple_grad", "superpixel": "slic"},
        ],
        num_train_probes=8,
        num_test_probes=8,
        precision="bf16",
        channels_last=True,
        log_images_every_n_epochs=1,
    )
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        callbacks=[cb],
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, data)
    with (Path(trainer.logger.log_dir) / "interpretation_metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({int(r["epoch"]) for r in rows}) == [0, 1]
    losses = [float(r["value"]) for r in rows if r["metric"] == "loss"]
    assert losses and all(math.isfinite(v) and 0.0 <= v <= 2.0 for v in losses)
    # the setup's trial of every method on one probe runs where the module then is: the CPU
    on_gpu = [s for s in seen if s[0] == "cuda"]
    assert on_gpu and all(s == ("cuda", True, True) for s in on_gpu), set(seen)
    assert {s for s in seen if s[0] != "cuda"} <= {("cpu", False, False)}, set(seen)


def test_the_default_callback_on_a_gpu_fit_is_bf16_on_channels_last_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21: the defaults (``precision="auto"``, ``channels_last=None``) resolve on a CUDA
    trainer to bf16 passes on channels-last rows (the module is still on the CPU at setup:
    the trainer's device decides); methods.json, the checkpoint and the summary say so, the
    TF32 flags are as the process set them before and after; and the checkpoint resumed on the
    CPU, where ``"auto"`` is float32, is refused naming the precision."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_saliency.attribution import _core
    from lightning_saliency.callbacks._numerics import tf32_flags

    seen: set[tuple[str, bool, bool]] = set()
    real = _core._row_gradients

    def spy(model, rows, target, output, precision, channels_last, target_max=None):
        seen.add((rows.device.type, precision == "bf16", channels_last))
        return real(model, rows, target, output, precision, channels_last, target_max)

    monkeypatch.setattr(_core, "_row_gradients", spy)
    methods = ["simple_grad", {"method": "smooth_grad", "sigma": 0.3, "samples": 4}]

    def fit(accelerator: str, max_epochs: int, **kw) -> InterpretationGeneralization:
        L.seed_everything(0)
        cb = InterpretationGeneralization(methods=methods, num_train_probes=8, num_test_probes=8)
        model = DisjointEnsemble(
            backbone="small_cnn", num_classes=10, in_chans=1, image_size=16, num_models=2
        )
        data = DigitsDataModule(image_size=16, split_factor=2, num_models=2, batch_size=64)
        trainer = L.Trainer(
            accelerator=accelerator, devices=1, max_epochs=max_epochs, limit_train_batches=3,
            limit_val_batches=1, logger=TensorBoardLogger(str(tmp_path), name="tb", version=0),
            callbacks=[cb, ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True)],
            enable_progress_bar=False,
        )  # fmt: skip
        trainer.fit(model, data, **kw)
        return cb

    flags = tf32_flags()
    with caplog.at_level("INFO"):
        cb = fit("gpu", max_epochs=1)
    # every monitored pass on the GPU; the setup's one-probe trial ran on the CPU, in float32
    assert seen == {("cuda", True, True), ("cpu", False, False)}
    assert (cb.requested.precision, cb.requested.channels_last) == ("auto", None)
    assert (cb.config.precision, cb.config.channels_last) == ("bf16", True)
    run = tmp_path / "tb" / "version_0"
    settings = json.loads((run / "methods.json").read_text())["settings"]["fit"]
    assert (settings["precision"], settings["channels_last"]) == ("bf16", True)
    last = tmp_path / "ck" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)["callbacks"][cb.state_key]
    assert (state["settings"]["precision"], state["settings"]["channels_last"]) == ("bf16", True)
    assert "attribution passes on cuda: precision bf16, channels_last True; TF32 left as set" in (
        caplog.text
    )
    assert tf32_flags() == flags
    csv_before = (run / "interpretation_metrics.csv").read_bytes()
    with pytest.raises(ValueError, match=r"precision: 'bf16' -> '32'"):
        fit("cpu", max_epochs=2, ckpt_path=str(last))
    assert (run / "interpretation_metrics.csv").read_bytes() == csv_before


def test_the_chunk_loop_never_synchronizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's sync debug mode raises on any device-to-host synchronization inside the loop."""
    from lightning_saliency.attribution import _core

    real = _core._run_chunks

    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(_core, "_run_chunks", strict)
    model = _model("small_cnn").cuda()
    x, t = (v.cuda() for v in _batch())
    for kw in (
        {"samples": 4, "noise_std": 0.2},
        {"steps": 4},
        {"samples": 3, "noise_std": 0.1, "reduction": "var"},
    ):
        g = input_gradients(model, x, t, batch_size=8, **kw)
        assert bool(torch.isfinite(g).all())


def test_folded_copy_on_cuda_matches_the_model(no_tf32: None) -> None:
    model = _model("cifar:resnet18").cuda()
    copy = attribution_model(model)
    assert copy.conv1.weight.is_contiguous()  # channels_last=None: off on CUDA
    x, t = (v.cuda() for v in _batch())
    want, got = simple_grad(model, x, t), simple_grad(copy, x, t)
    assert float(spearman(got, want).min()) > 0.999

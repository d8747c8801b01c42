"""The memory model that sizes attribution chunks, against hand counts and torch's profiler."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from lightning_saliency.attribution import input_gradients, smooth_grad
from lightning_saliency.attribution._chunks import (
    ACTIVATION_HEADROOM,
    activation_memory,
    chunk_rows,
)
from lightning_saliency.models import build_backbone

MB = 2**20


def _peak_cpu_bytes(fn) -> int:
    """Peak of the bytes allocated on CPU while ``fn`` runs, from torch's profiler events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    assert events, "the profiler recorded no memory events"
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


class Counting(nn.Module):
    """Wraps a model and records the batch size of every forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.rows.append(x.shape[0])
        return self.inner(x)


def test_hand_count_conv_relu_linear() -> None:
    # saved for backward per row: the input (1x8x8 floats = 256 B; conv saves it) and the
    # ReLU output (4x8x8 floats = 1,024 B; ReLU and the Linear after Flatten share it);
    # the weights are parameters and are not counted
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )
    x = torch.randn(3, 1, 8, 8)
    assert activation_memory(net, x) == (256 + 1024, 0)
    # float64 rows keep twice the bytes (a separate cache entry)
    assert activation_memory(net.double(), x.double()) == (2 * (256 + 1024), 0)


def test_measurement_leaves_the_model_alone() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(), nn.Flatten())
    net.train()
    x = torch.randn(4, 1, 6, 6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    activation_memory(net, x)
    assert net.training and all(m.training for m in net.modules())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize(
    ("backbone", "rows"),
    [("small_cnn", 48), ("cifar:resnet18", 12)],
)
def test_estimate_bounds_the_profiled_peak(backbone: str, rows: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(backbone, num_classes=10).eval()
    x = torch.randn(rows, 3, 32, 32)
    per_row, fixed = activation_memory(model, x)

    def grads() -> None:
        input_gradients(model, x, 0, batch_size=rows)

    peak = _peak_cpu_bytes(grads)
    estimate = fixed + rows * per_row
    # the chunk's peak (plus the inputs, clones and result: a few copies of x) stays
    # under the headroom the chunk sizing allows, and the estimate is not loose either
    assert peak <= ACTIVATION_HEADROOM * estimate + 4 * x.numel() * 4
    assert peak >= 0.7 * estimate


def test_cifar_stem_resnet_needs_far_more_than_the_fallback_factor() -> None:
    model = build_backbone("cifar:resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    per_row, _ = activation_memory(model, x)
    input_row = 3 * 32 * 32 * 4
    # the 32x32 stem keeps many 64-channel 32x32 maps: about 380x the input row, not 64x
    assert per_row > 300 * input_row
    # and a budget therefore gives fewer rows than the old 64x-the-input rule did
    assert chunk_rows(model, x, None, 256.0) < 256 * MB // (64 * input_row)


def test_chunks_follow_the_budget_and_the_peak_stays_inside_it() -> None:
    torch.manual_seed(0)
    model = Counting(build_backbone("small_cnn", num_classes=10)).eval()
    x = torch.randn(32, 3, 32, 32)
    budget_mb = 4.0
    per_row, fixed = activation_memory(model, x)
    model.rows.clear()
    noise_block = 32 * 8 * x[0].numel() * 4  # all 32 samples' noise fits one 4 MiB block
    expected = int((budget_mb * MB - fixed - noise_block) // (per_row * ACTIVATION_HEADROOM))
    assert 1 < expected < 32 * 8  # the budget really splits the 256 noisy rows

    def run() -> None:
        smooth_grad(model, x, 0, sigma=0.1, samples=8, memory_budget_mb=budget_mb, seed=0)

    peak = _peak_cpu_bytes(run)
    assert max(model.rows) == expected  # the measurement is cached: only real chunks ran
    assert sum(model.rows) == 32 * 8
    # inputs, noise blocks and accumulators come on top of the chunk
    assert peak <= budget_mb * MB + 4 * x.numel() * 4


def test_chunking_does_not_change_the_maps() -> None:
    torch.manual_seed(0)
    model = build_backbone("small_cnn", num_classes=10).eval()
    x = torch.randn(16, 3, 32, 32)
    whole = smooth_grad(model, x, 1, sigma=0.2, samples=4, batch_size=64, seed=3)
    small = smooth_grad(model, x, 1, sigma=0.2, samples=4, memory_budget_mb=1.0, seed=3)
    torch.testing.assert_close(small, whole, rtol=1e-5, atol=1e-7)


def test_bad_budget_fails_before_the_model_runs() -> None:
    model = Counting(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    x = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="memory_budget_mb must be > 0"):
        input_gradients(model, x, 0, memory_budget_mb=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        input_gradients(model, x, 0, batch_size=0)
    assert model.rows == []

"""cuDNN autotuning around attribution passes, and chunk sizes from a measured peak (CPU-side
checks; the CUDA behaviour itself is tested in tests/test_cuda.py on the GPU machine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lightning_saliency.attribution._chunks import (
    ACTIVATION_HEADROOM,
    activation_memory,
    chunk_rows,
    measured_row_bytes,
    remember_peak,
)
from lightning_saliency.attribution._context import fast_kernels


@pytest.fixture
def nondeterministic() -> Iterator[None]:
    """No request for determinism (a Trainer(deterministic=True) earlier in the process leaves
    both flags set), restored afterwards."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())  # fmt: skip
    torch.backends.cudnn.deterministic = False
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2])


def test_fast_kernels_turns_autotuning_on_for_cuda_only_and_restores_it(
    nondeterministic: None,
) -> None:
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with fast_kernels(torch.device("cuda")):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with fast_kernels(torch.device("cpu")):
            assert torch.backends.cudnn.benchmark is False
        # restored also when the pass raises
        try:
            with fast_kernels(torch.device("cuda")):
                raise KeyError("boom")
        except KeyError:
            pass
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = saved


def test_fast_kernels_respects_a_request_for_determinism(nondeterministic: None) -> None:
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        with fast_kernels(torch.device("cuda")):
            assert torch.backends.cudnn.benchmark is False
        torch.backends.cudnn.deterministic = False
        torch.use_deterministic_algorithms(True)
        try:
            with fast_kernels(torch.device("cuda")):
                assert torch.backends.cudnn.benchmark is False
        finally:
            torch.use_deterministic_algorithms(False)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def test_chunks_are_sized_from_a_measured_peak_when_it_is_larger() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))  # keeps its 256-byte input row
    x = torch.zeros(1, 1, 8, 8)
    per_row, fixed = activation_memory(net, x)
    assert (per_row, fixed) == (256, 0)
    budget = 1.0  # MB
    assert chunk_rows(net, x, None, budget) == int(2**20 // (per_row * ACTIVATION_HEADROOM))
    assert measured_row_bytes(net, x, "32", False) is None
    remember_peak(net, x, "32", False, 4096.0)  # backward needed 16x what autograd saves
    assert measured_row_bytes(net, x, "32", False) == 4096.0
    assert chunk_rows(net, x, None, budget) == 2**20 // 4096
    remember_peak(net, x, "32", False, 100.0)  # a smaller later measurement does not lower it
    assert chunk_rows(net, x, None, budget) == 2**20 // 4096
    # another precision or layout is another key
    assert measured_row_bytes(net, x, "bf16", False) is None

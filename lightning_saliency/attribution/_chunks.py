"""How many expanded rows go into one forward/backward chunk: memory and speed.

Memory: :func:`activation_memory` measures what the model keeps for backward per row (once
per model, row shape, dtype, device, precision and layout); a budget then gives
``(budget - fixed) / (ACTIVATION_HEADROOM x per_row)`` rows.

Speed (CPU): chunks of thousands of rows spill out of the caches, and an attribution row then
costs more than a training row. The rows of a CPU chunk are therefore also capped so that the
largest single activation saved for backward (summed over the chunk's rows) stays within
``CPU_CACHE_TARGET_BYTES``: that tensor is written by one layer and read back at once by the
next ones and by backward. The cap follows from the model (no per-model table); it gives 256
rows for the built-in small CNN and 64 for the CIFAR-stem ResNet-18 at 32x32, the fastest
chunk sizes measured for both (``docs/benchmarks.md``, "Chunk size on CPU").

CUDA: the saved-tensor estimate misses what backward allocates on the way (gradient buffers,
cuDNN workspaces): a 4,096 x 50 SmoothGrad under a 16 GB budget peaked at 48 GB. So the first
pass of a model and row shape on CUDA measures its peak memory per row on a small chunk
(:func:`measured_row_bytes`, ``torch.cuda.max_memory_allocated``) and the chunks are sized from
the larger of the two. After an out-of-memory error the halved chunk that fitted is remembered for that model
and row shape, so later chunks and calls start from it instead of failing again.
"""

from __future__ import annotations

import collections
import dataclasses
import numbers
import weakref

import torch
from torch import Tensor, nn

from lightning_saliency.attribution._checks import (
    PRECISIONS,
    check_choice,
    check_input,
    check_positive_int,
)
from lightning_saliency.attribution._context import attribution_mode, autocast, prepare_rows

__all__ = [
    "ACTIVATION_HEADROOM",
    "CALIBRATION_ROWS",
    "CPU_CACHE_TARGET_BYTES",
    "DEFAULT_CPU_BUDGET_MB",
    "DEFAULT_CUDA_FREE_FRACTION",
    "MemoryProfile",
    "activation_memory",
    "chunk_rows",
    "measured_row_bytes",
    "memory_profile",
    "remember_peak",
]

#: Peak memory of a forward/backward chunk over the bytes autograd saves for its backward
#: (:func:`activation_memory`); torch's profiler measured 1.00-1.14 on CPU for a small CNN,
#: ResNet-18 at 32x32 (CIFAR stem) and 224x224, and ViT-Tiny.
ACTIVATION_HEADROOM = 1.25
#: Memory budget used on CPU when neither ``batch_size`` nor ``memory_budget_mb`` is given.
DEFAULT_CPU_BUDGET_MB = 1024.0
#: Fraction of the free CUDA memory used when no budget is given.
DEFAULT_CUDA_FREE_FRACTION = 0.25
#: CPU chunks: rows x (largest activation saved per row) stays within this many bytes.
CPU_CACHE_TARGET_BYTES = 16 * 2**20

#: Rows of the chunk that measures a CUDA pass's peak memory per row (at most).
CALIBRATION_ROWS = 256

_Key = tuple[tuple[int, ...], torch.dtype, torch.device, str, bool]


@dataclasses.dataclass(frozen=True)
class MemoryProfile:
    """Bytes saved for backward: per row, fixed (not growing with rows), largest tensor per row."""

    per_row: int
    fixed: int
    largest_row: int


#: model -> {(row shape, dtype, device, precision, channels_last): MemoryProfile}
_MEMORY_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[_Key, MemoryProfile]] = (
    weakref.WeakKeyDictionary()
)
#: model -> {key: rows of the largest chunk that fitted after a CUDA out-of-memory error}
_OOM_ROWS: weakref.WeakKeyDictionary[nn.Module, dict[_Key, int]] = weakref.WeakKeyDictionary()


#: model -> {key: peak CUDA bytes per row measured over a whole forward/backward chunk}
_PEAK_ROWS: weakref.WeakKeyDictionary[nn.Module, dict[_Key, float]] = weakref.WeakKeyDictionary()


def _key(x: Tensor, precision: str, channels_last: bool) -> _Key:
    return (tuple(x.shape[1:]), x.dtype, x.device, precision, bool(channels_last))


def _saved_storages(model: nn.Module, rows: Tensor, precision: str, cl: bool) -> dict[int, int]:
    """{storage pointer: bytes} of what autograd saves in one forward (parameters excluded)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no plain storage: not counted
            return t
        if st.data_ptr() not in own:
            storages[st.data_ptr()] = st.nbytes()
        return t

    inp = prepare_rows(rows.contiguous(), cl)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(precision, inp.device):
            out = model(inp)
    # the input itself stays alive for the whole pass, saved or not
    storages[inp.untyped_storage().data_ptr()] = inp.untyped_storage().nbytes()
    del out, inp
    return storages


def memory_profile(
    model: nn.Module, x: Tensor, *, precision: str = "32", channels_last: bool = False
) -> MemoryProfile:
    """:func:`activation_memory` plus the largest single saved tensor per row (cached).

    The largest per-row tensor is found as the largest storage of the two-row pass that has
    no equal in the one-row pass (fixed storages have the same size in both), halved.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> memory_profile(net, torch.randn(5, 1, 2, 2))  # the 16-byte input row is the largest
    MemoryProfile(per_row=28, fixed=0, largest_row=16)
    """
    check_input(x)
    check_choice("precision", precision, PRECISIONS)
    key = _key(x, precision, channels_last)
    cache = _MEMORY_CACHE.setdefault(model, {})
    if key in cache:
        return cache[key]
    with attribution_mode(model):
        row = x[:1].detach().clone()
        one = _saved_storages(model, row, precision, channels_last)
        two = _saved_storages(model, row.expand(2, *row.shape[1:]), precision, channels_last)
    input_row = x[0].numel() * x.element_size()
    per_row = max(sum(two.values()) - sum(one.values()), input_row)
    fixed = max(sum(one.values()) - per_row, 0)
    grown = collections.Counter(two.values()) - collections.Counter(one.values())
    largest = max((max(grown) // 2) if grown else 0, input_row)
    cache[key] = MemoryProfile(int(per_row), int(fixed), int(min(largest, per_row)))
    return cache[key]


def activation_memory(
    model: nn.Module, x: Tensor, *, precision: str = "32", channels_last: bool = False
) -> tuple[int, int]:
    """Bytes autograd keeps for the backward of an input-gradient pass: ``(per_row, fixed)``.

    Measured from two forwards in eval mode, on one and on two rows of ``x``, under
    ``torch.autograd.graph.saved_tensors_hooks`` (no backward is run): every distinct
    storage saved for backward is counted once, except the model's parameters and
    buffers. ``fixed`` is what does not grow with the rows (for example bf16 copies of
    the weights under autocast). The result is cached per model, row shape, dtype,
    device, precision and layout, so a change of the model's architecture after a call
    is not seen. :func:`chunk_rows` sizes the chunks from it, so a memory budget holds
    whatever the model's activations cost (a CIFAR-stem ResNet-18 keeps about 380x its
    input row, a ViT-Tiny at 224x224 about 50x).

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> activation_memory(net, torch.randn(5, 1, 2, 2))  # input (16 B) + ReLU output (12 B)
    (28, 0)
    """
    p = memory_profile(model, x, precision=precision, channels_last=channels_last)
    return p.per_row, p.fixed


def _budget_bytes(memory_budget_mb: float | None, x: Tensor) -> float:
    """The memory budget in bytes: ``memory_budget_mb``, else a quarter of the free CUDA
    memory of x's device, else ``DEFAULT_CPU_BUDGET_MB``."""
    if memory_budget_mb is not None:
        if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, numbers.Real):
            raise TypeError(f"memory_budget_mb must be a number > 0, got {memory_budget_mb!r}")
        if not memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        return float(memory_budget_mb) * 2**20
    if x.is_cuda:
        free, _ = torch.cuda.mem_get_info(x.device)
        return free * DEFAULT_CUDA_FREE_FRACTION
    return DEFAULT_CPU_BUDGET_MB * 2**20


def cpu_row_cap(profile: MemoryProfile) -> int:
    """Rows per CPU chunk for speed: ``CPU_CACHE_TARGET_BYTES // largest_row`` (at least 1).

    >>> cpu_row_cap(MemoryProfile(per_row=3 * 2**20, fixed=0, largest_row=2**18))
    64
    """
    return max(1, CPU_CACHE_TARGET_BYTES // max(profile.largest_row, 1))


def oom_rows(model: nn.Module, x: Tensor, precision: str, channels_last: bool) -> int | None:
    """Rows of the largest chunk known to fit after an out-of-memory error, or None."""
    return _OOM_ROWS.get(model, {}).get(_key(x, precision, channels_last))


def remember_oom(model: nn.Module, x: Tensor, precision: str, cl: bool, rows: int) -> None:
    """Record that chunks of more than ``rows`` rows ran out of memory for this model and shape."""
    known = _OOM_ROWS.setdefault(model, {})
    key = _key(x, precision, cl)
    known[key] = min(rows, known.get(key, rows))


def measured_row_bytes(
    model: nn.Module, x: Tensor, precision: str, channels_last: bool
) -> float | None:
    """Peak CUDA bytes per row measured over a forward/backward chunk, or None (not yet)."""
    return _PEAK_ROWS.get(model, {}).get(_key(x, precision, channels_last))


def remember_peak(
    model: nn.Module, x: Tensor, precision: str, channels_last: bool, per_row: float
) -> None:
    """Record the measured peak bytes per row of this model and row shape (the largest seen)."""
    known = _PEAK_ROWS.setdefault(model, {})
    key = _key(x, precision, channels_last)
    known[key] = max(float(per_row), known.get(key, 0.0))


def chunk_rows(
    model: nn.Module,
    x: Tensor,
    batch_size: int | None,
    memory_budget_mb: float | None,
    precision: str = "32",
    channels_last: bool = False,
    reserved_bytes: int = 0,
) -> int:
    """Rows of the expanded batch per forward/backward chunk.

    ``batch_size`` wins; otherwise the budget (``memory_budget_mb``, default a quarter of
    the free CUDA memory or 1024 MB on CPU), less :func:`activation_memory`'s fixed bytes
    and ``reserved_bytes`` (a noise block, say), divided by ``ACTIVATION_HEADROOM`` x its bytes per row
    (or by the peak bytes per row measured on CUDA, :func:`measured_row_bytes`, if larger); on CPU at most
    :func:`cpu_row_cap` rows; never more than a chunk that ran out of memory before allowed.
    The budget is validated before the model runs.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))  # keeps its 256-byte input row
    >>> chunk_rows(net, torch.zeros(1, 1, 8, 8), None, 1.0)  # 2**20 // (1.25 * 256)
    3276
    >>> chunk_rows(net, torch.zeros(1, 1, 8, 8), None, 64.0)  # the CPU cap: 2**24 // 256
    65536
    """
    if batch_size is not None:
        return check_positive_int("batch_size", batch_size)
    budget = _budget_bytes(memory_budget_mb, x)
    prof = memory_profile(model, x, precision=precision, channels_last=channels_last)
    free = budget - prof.fixed - reserved_bytes
    per_row = prof.per_row * ACTIVATION_HEADROOM
    measured = measured_row_bytes(model, x, precision, channels_last)
    if measured is not None:
        per_row = max(per_row, measured)
    rows = max(1, int(free // per_row))
    if x.device.type == "cpu":
        rows = min(rows, cpu_row_cap(prof))
    known = oom_rows(model, x, precision, channels_last)
    return rows if known is None else max(1, min(rows, known))

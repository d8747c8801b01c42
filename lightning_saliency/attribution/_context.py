"""The mode, precision and memory layout an attribution pass runs in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode

__all__ = ["attribution_mode", "autocast", "fast_kernels", "prepare_rows", "select_scores"]

#: Device types on which ``precision="bf16"`` autocasts the forward.
AUTOCAST_DEVICES: tuple[str, ...] = ("cpu", "cuda")


@contextlib.contextmanager
def attribution_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode + ``inference_mode(False)`` + ``enable_grad()``; restores every ``training`` flag.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    >>> _ = net[1].eval()
    >>> with attribution_mode(net):
    ...     net.training
    False
    >>> net.training, net[0].training, net[1].training
    (True, True, False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def fast_kernels(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning (``torch.backends.cudnn.benchmark``) for a pass on CUDA; the flag is
    restored afterwards.

    Lightning leaves autotuning off unless asked, and then fp32 input gradients of a ResNet-18
    ran 5.4x slower on an H200 (``docs/benchmarks.md``). It is left alone when the user asked
    for determinism (``torch.use_deterministic_algorithms(True)`` or
    ``torch.backends.cudnn.deterministic = True``): autotuning may pick another algorithm for
    the same shapes from one process to the next, so maps then agree to rounding, not bit for
    bit. TF32 is never changed here: the user's ``allow_tf32`` flags hold.

    >>> with fast_kernels(torch.device("cpu")):  # nothing to tune on the CPU
    ...     torch.backends.cudnn.benchmark
    False
    """
    deterministic = (
        torch.are_deterministic_algorithms_enabled() or torch.backends.cudnn.deterministic
    )
    if device.type != "cuda" or deterministic:
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast of the forward on CPU and CUDA for ``precision="bf16"``, else nothing.

    >>> with autocast("bf16", torch.device("cpu")):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    if precision == "bf16" and device.type in AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_rows(rows: Tensor, channels_last: bool) -> Tensor:
    """A fresh leaf that requires grad, in channels-last memory format when asked (any device)."""
    inp = rows.detach()
    if channels_last and inp.ndim == 4:
        inp = inp.contiguous(memory_format=torch.channels_last)
    return inp.requires_grad_(True)


def select_scores(out: Tensor, target: Tensor, output: str) -> Tensor:
    """The target logit (or log-softmax) of every row, in at least float32."""
    if out.dtype not in (torch.float32, torch.float64):
        out = out.float()
    if output == "log_softmax":
        out = torch.log_softmax(out, dim=1)
    return out.gather(1, target[:, None]).squeeze(1)

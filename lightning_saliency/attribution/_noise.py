"""Noise, baselines and the reduction of per-draw values, for the expanded pass.

Noise is drawn in blocks of whole samples: the draws of samples ``[k B, (k + 1) B)`` are one
``randn((B x samples, C, H, W))`` call on the generator's device, in sample order, with ``B``
fixed by the sample shape, dtype and number of draws (``NOISE_BLOCK_BYTES``), never by the
chunking, so maps do not depend on ``batch_size`` or the memory budget, and are deterministic
given the generator. On a CPU generator, and when ``samples x C x H x W`` is a multiple of 16
(torch's CPU normal sampler fills 16 values at a time), one block call gives bit for bit the
same numbers as ``B`` per-sample calls, the draw order of earlier versions; otherwise, on CPU,
``B = 1`` keeps that order. CUDA generators always use blocks (one launch per block instead
of one per sample).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from lightning_saliency.attribution._checks import check_nonneg_float

__all__ = ["NOISE_BLOCK_BYTES", "NoiseSource", "baseline_tensor", "check_noise_std"]

#: Noise of at most this many bytes (whole samples; at least one) is drawn per generator call;
#: the memory budget of a chunk reserves one block.
NOISE_BLOCK_BYTES = 4 * 2**20
#: torch's CPU normal sampler fills groups of this many values.
_CPU_NORMAL_GROUP = 16


def block_samples(samples: int, like: Tensor, generator_device: torch.device) -> int:
    """Samples per noise block (see the module docstring).

    >>> block_samples(16, torch.zeros(1, 3, 32, 32), torch.device("cpu"))  # 4 MiB / 192 KiB
    21
    >>> block_samples(3, torch.zeros(1, 1, 2, 2), torch.device("cpu"))  # 12 values: per sample
    1
    """
    per_sample = samples * like[0].numel()
    if generator_device.type == "cpu" and per_sample % _CPU_NORMAL_GROUP:
        return 1
    return max(1, NOISE_BLOCK_BYTES // (per_sample * like.element_size()))


class NoiseSource:
    """Gaussian noise ``z * std`` for the draws of N samples, drawn block by block on demand."""

    def __init__(
        self, std: float | Tensor, samples: int, like: Tensor, generator: torch.Generator
    ) -> None:
        self.std = std
        self.samples = samples
        self.n = like.shape[0]
        self.shape = tuple(like.shape[1:])
        self.dtype = like.dtype
        self.device = like.device
        self.generator = generator
        self.per_block = block_samples(samples, like, generator.device)
        self.blocks: dict[int, Tensor] = {}
        #: bytes of one block (what a chunk's memory budget reserves for it)
        self.block_bytes = min(self.per_block, self.n) * samples * like[0].numel()
        self.block_bytes *= like.element_size()

    def _block(self, k: int) -> Tensor:
        if k not in self.blocks:
            n0 = k * self.per_block
            n1 = min(self.n, n0 + self.per_block)
            z = torch.randn(
                ((n1 - n0) * self.samples, *self.shape),
                generator=self.generator,
                device=self.generator.device,
                dtype=self.dtype,
            ).to(self.device)
            if isinstance(self.std, Tensor):  # in place: one block in memory, not two
                z.view(n1 - n0, self.samples, *self.shape).mul_(self.std[n0:n1, None])
            else:
                z.mul_(self.std)
            self.blocks[k] = z
        return self.blocks[k]

    def draws(self, d0: int, d1: int) -> Tensor:
        """Noise of the draws ``d0 .. d1 - 1`` (draw d belongs to sample d // samples).

        Draws must be asked for in increasing order: earlier blocks are dropped.
        """
        rows = self.per_block * self.samples
        k0, k1 = d0 // rows, (d1 - 1) // rows
        for k in [k for k in self.blocks if k < k0]:
            del self.blocks[k]
        parts = []
        for k in range(k0, k1 + 1):
            lo = max(d0, k * rows) - k * rows
            hi = min(d1, (k + 1) * rows) - k * rows
            parts.append(self._block(k)[lo:hi])
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def check_noise_std(std: float | Tensor | None, x: Tensor) -> float | Tensor | None:
    """Validate the noise std: None/0 -> None (no noise), a float, or a tensor shaped like x."""
    if std is None:
        return None
    if isinstance(std, Tensor):
        if not std.is_floating_point():
            std = std.float()
        with torch.inference_mode(False):
            s = std.detach().to(device=x.device, dtype=x.dtype).clone()
        try:
            s = torch.broadcast_to(s, x.shape).clone()
        except RuntimeError as err:
            raise ValueError(
                f"noise_std of shape {tuple(std.shape)} does not broadcast to x's shape "
                f"{tuple(x.shape)}"
            ) from err
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ValueError("noise_std must be finite and >= 0 everywhere")
        return s
    value = check_nonneg_float("noise_std", std)
    return None if value == 0 else value


def baseline_tensor(baseline: float | Tensor | None, x: Tensor) -> Tensor:
    """The IG baseline shaped like x: zeros, a constant, or a broadcast tensor."""
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, Tensor):
        with torch.inference_mode(False):
            b = baseline.detach().to(device=x.device, dtype=x.dtype).clone()
        try:
            return torch.broadcast_to(b, x.shape).clone()
        except RuntimeError as err:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to x's shape "
                f"{tuple(x.shape)}"
            ) from err
    if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real):
        raise TypeError(f"baseline must be None, a number or a tensor, got {baseline!r}")
    if not math.isfinite(float(baseline)):
        raise ValueError(f"baseline must be finite, got {baseline!r}")
    return torch.full_like(x, float(baseline))


class Accumulator:
    """Reduces per-draw values (draw d of sample d // samples) to per-sample statistics.

    Draws arrive in order, so a chunk holds the consecutive samples ``n0 .. n1``. ``"var"``
    uses Chan et al.'s parallel update of the mean and the sum of squared deviations, with
    the per-sample counts of the chunk counted on the device: no update synchronizes with
    the host.
    """

    def __init__(self, reduction: str, n: int, samples: int, like: Tensor) -> None:
        self.reduction = reduction
        self.samples = samples
        shape = (n, *like.shape[1:])
        self.dtype = torch.promote_types(like.dtype, torch.float32)
        kw: dict[str, Any] = {"dtype": self.dtype, "device": like.device}
        if reduction == "none":
            self.values = torch.zeros((n * samples, *like.shape[1:]), **kw)
        else:
            self.total = torch.zeros(shape, **kw)
        if reduction == "var":
            self.m2 = torch.zeros(shape, **kw)
            self.count = torch.zeros(n, **kw)

    def add(self, d0: int, ids: Tensor, v: Tensor) -> None:
        v = v.to(self.dtype)
        if self.reduction == "none":
            self.values[d0 : d0 + v.shape[0]] = v
        elif self.reduction == "mean":
            self.total.index_add_(0, ids, v)
        elif self.reduction == "mean_square":
            self.total.index_add_(0, ids, v * v)
        else:
            self._add_var(d0, ids, v)

    def _add_var(self, d0: int, ids: Tensor, v: Tensor) -> None:
        n0, n1 = d0 // self.samples, (d0 + v.shape[0] - 1) // self.samples + 1
        inverse = ids - n0
        ones = torch.ones(v.shape[0], dtype=self.dtype, device=v.device)
        c = torch.zeros(n1 - n0, dtype=self.dtype, device=v.device).index_add_(0, inverse, ones)
        c = c.view(-1, *[1] * (v.ndim - 1))
        csum = torch.zeros((n1 - n0, *v.shape[1:]), dtype=self.dtype, device=v.device)
        csum.index_add_(0, inverse, v)
        cmean = csum / c
        cm2 = torch.zeros_like(csum).index_add_(0, inverse, (v - cmean[inverse]) ** 2)
        old = self.count[n0:n1].view_as(c)
        new = old + c
        mean = self.total[n0:n1]  # running mean
        delta = cmean - mean
        self.total[n0:n1] = mean + delta * (c / new)
        self.m2[n0:n1] = self.m2[n0:n1] + cm2 + delta * delta * (old * c / new)
        self.count[n0:n1] = new.flatten()

    def result(self) -> Tensor:
        if self.reduction == "none":
            return self.values.view(-1, self.samples, *self.values.shape[1:])
        if self.reduction == "var":
            return self.m2 / self.samples
        return self.total / self.samples

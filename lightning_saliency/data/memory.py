"""Decoded images held in memory as one uint8 tensor, with batched, epoch-keyed augmentation.

:class:`InMemoryImages` serves ``(x, y)`` like a torchvision dataset whose transform is
``ToTensor() + Normalize(mean, std)``, with the same float32 values (``x / 255``, then
``(x - mean) / std``), but without a per-sample PIL pipeline: a DataLoader fetches a whole batch
through ``__getitems__`` (one gather, one batched crop/flip, one normalization). The crop/flip
parameters of every sample for epoch e are drawn once from a dedicated generator seeded with
``mix_seed(seed, e)``, so they are reproducible, independent of batch size, order and resume,
and the global RNG is never touched. :func:`image_stats` computes normalization statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .augment import augment_batch, check_crop_mode, default_padding, draw_params
from .sampling import mix_seed

__all__ = ["InMemoryImages", "image_stats", "stats_indices"]

_AUG_STREAM = 2  # mix_seed stream id of the augmentation draws (the order uses no stream id)


def stats_indices(n: int, max_samples: int | None) -> Tensor:
    """Evenly spaced indices of at most ``max_samples`` of ``n`` samples (all if None or more).

    Deterministic and, on a class-sorted folder, class-balanced.

    >>> stats_indices(10, 4).tolist(), stats_indices(3, None).tolist()
    ([0, 2, 5, 7], [0, 1, 2])
    """
    if max_samples is None or max_samples >= n:
        return torch.arange(n)
    return torch.arange(max_samples) * n // max_samples


def image_stats(
    images: Tensor | Sequence[Tensor], chunk: int = 1024
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images in [0, 1] units.

    ``images`` is a uint8 tensor ``(N, C, H, W)`` or a sequence of ``(C, H, W)`` tensors (sizes
    may differ); every pixel counts once. Sums are exact integers in float64.

    >>> x = torch.tensor([[[[0, 255]]], [[[255, 255]]]], dtype=torch.uint8)
    >>> image_stats(x)
    ((0.75,), (0.4330127018922193,))
    """
    total: Tensor | None = None
    squares: Tensor | None = None
    count: int | None = None
    items = images if isinstance(images, Sequence) else [images]
    for item in items:
        item = item if item.dim() == 4 else item.unsqueeze(0)
        for start in range(0, item.shape[0], chunk):
            part = item[start : start + chunk].to(torch.float64)
            s = part.sum(dim=(0, 2, 3))
            q = part.square().sum(dim=(0, 2, 3))
            c = part.shape[0] * part.shape[2] * part.shape[3]
            total = s if total is None else total + s
            squares = q if squares is None else squares + q
            count = c if count is None else count + c
    if total is None or squares is None or not count:
        raise ValueError("image_stats needs at least one image")
    mean = total / count / 255.0
    var = (squares / count / 255.0**2 - mean.square()).clamp_min(0.0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


class InMemoryImages(Dataset):
    """uint8 images ``(N, C, H, W)`` and labels, served as normalized float32 ``(x, y)``.

    Args:
        images: uint8 tensor ``(N, C, H, W)``.
        targets: int labels ``(N,)``.
        mean, std: per-channel normalization (None: ``x / 255`` only).
        classes: class names (for ``num_classes`` inference, like ``ImageFolder.classes``).
        augment: names from :data:`~lightning_saliency.data.augment.AUGMENTATIONS` (already
            validated, e.g. by :func:`~lightning_saliency.data.augment.parse_augment`).
        padding: crop padding (None: ``default_padding(H)``).
        crop_mode: ``"zeros"`` or ``"reflect"`` padding of the crop.
        seed: seed of the per-epoch augmentation draws.

    >>> ds = InMemoryImages(torch.full((4, 1, 2, 2), 255, dtype=torch.uint8), torch.arange(4))
    >>> x, y = ds[1]; x.tolist(), int(y)
    ([[[1.0, 1.0], [1.0, 1.0]]], 1)
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor | Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        classes: Sequence[str] | None = None,
        augment: Sequence[str] = (),
        padding: int | None = None,
        seed: int = 0,
        crop_mode: str = "zeros",
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor shaped (N, C, H, W)")
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        if self.targets.shape != (images.shape[0],):
            raise ValueError(
                f"targets must have one label per image: {tuple(self.targets.shape)} vs "
                f"{images.shape[0]} images"
            )
        self.classes = list(classes) if classes is not None else None
        channels = images.shape[1]
        self._scale: Tensor | None = None
        self._mean: Tensor | None = None
        if mean is not None and std is not None:
            if len(mean) not in (1, channels) or len(std) != len(mean):
                raise ValueError(f"mean/std need 1 or {channels} entries, got {mean}, {std}")
            self._mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
            self._scale = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        self.augment = tuple(augment)
        self.padding = padding if padding is not None else default_padding(images.shape[-2])
        self.seed = int(seed)
        self.crop_mode = check_crop_mode(crop_mode)
        self.epoch = 0
        self._params: dict[str, Tensor] | None = None
        self._params_epoch: int | None = None

    def view(self, augment: Sequence[str] = (), seed: int | None = None) -> InMemoryImages:
        """Another dataset over the same storage (no copy) with other augmentations."""
        out = InMemoryImages.__new__(InMemoryImages)
        out.__dict__.update(self.__dict__)
        out.augment = tuple(augment)
        out.seed = self.seed if seed is None else int(seed)
        out._params, out._params_epoch = None, None
        return out

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation parameters the next batches use."""
        self.epoch = int(epoch)

    def _epoch_params(self) -> dict[str, Tensor]:
        if self._params is None or self._params_epoch != self.epoch:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, _AUG_STREAM))
            self._params = draw_params(len(self), self.augment, self.padding, generator)
            self._params_epoch = self.epoch
        return self._params

    def batch(self, indices: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        """The samples at ``indices`` as ``(x (B, C, H, W) float32, y (B,) int64)``."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.images[idx]
        if self.augment:
            params = {k: v[idx] for k, v in self._epoch_params().items()}
            x = augment_batch(x, params, self.padding, self.crop_mode)
        out = x.to(torch.float32).div(255)
        if self._mean is not None and self._scale is not None:
            out = out.sub_(self._mean).div_(self._scale)
        return out, self.targets[idx]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.batch([int(index)])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Any]]:
        x, y = self.batch(list(indices))
        return list(zip(x.unbind(0), y.unbind(0), strict=True))

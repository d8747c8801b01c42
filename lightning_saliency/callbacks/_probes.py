"""Probe sets for the interpretation callbacks: which samples are explained each epoch.

Probes are fixed once per run. They are stored as *indices* into datasets (plus the
seed that drew them), never as image tensors, so a checkpoint stays small and a
resumed run rebuilds exactly the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_saliency.data.probe_items import item_image, split_item
from lightning_saliency.generalization import ProbeLayout

__all__ = ["ProbeSet", "as_dataset", "draw_indices", "gather"]


class _TensorPairs(Dataset):
    """A dataset view of explicit ``(x, y)`` tensors."""

    def __init__(self, x: Tensor, y: Tensor | None) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"explicit probe images must be 4-D (N, C, H, W); got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"probe images must be floating point; got dtype {x.dtype}")
        if y is not None and (y.ndim != 1 or y.shape[0] != x.shape[0]):
            raise ValueError(
                f"probe labels must be 1-D with one label per image ({x.shape[0]}); "
                f"got shape {tuple(y.shape)}"
            )
        self.x = x
        self.y = y if y is not None else torch.full((x.shape[0],), -1, dtype=torch.long)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]


def as_dataset(probes: Tensor | tuple[Tensor, Tensor] | Dataset) -> Dataset:
    """Wrap explicit probes (images, ``(images, labels)`` or a dataset) as a dataset.

    Example:
        >>> ds = as_dataset((torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 2])))
        >>> len(ds)
        3
    """
    if isinstance(probes, Tensor):
        return _TensorPairs(probes, None)
    if isinstance(probes, (tuple, list)) and len(probes) == 2 and isinstance(probes[0], Tensor):
        return _TensorPairs(probes[0], torch.as_tensor(probes[1]).long())
    if isinstance(probes, Dataset) or hasattr(probes, "__getitem__"):
        return probes
    raise TypeError(
        "probes must be a tensor of images, an (images, labels) pair or a dataset; "
        f"got {type(probes).__name__}"
    )


def draw_indices(n_available: int, n: int, generator: torch.Generator, what: str) -> Tensor:
    """Draw ``n`` distinct indices out of ``n_available``, in random order, with a dedicated
    generator.

    Example:
        >>> draw_indices(10, 3, torch.Generator().manual_seed(0), "test").shape
        torch.Size([3])
    """
    if n < 1:
        raise ValueError(f"the number of {what} probes must be >= 1; got {n}")
    if n > n_available:
        raise ValueError(
            f"asked for {n} {what} probes but only {n_available} samples are available; "
            f"lower num_{what}_probes to at most {n_available}"
        )
    # in random order, not sorted: a dataset listed class by class (ImageFolder) must not
    # give a class-sorted probe set (image grids of one class; neighbours of one class)
    return torch.randperm(n_available, generator=generator)[:n]


def gather(
    dataset: Dataset,
    indices: Tensor,
    transform: Callable[[Any], Any] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Stack ``dataset[i]`` for the given indices into ``(images, labels)`` tensors.

    An item is an ``(image, label)`` pair, a dict (image under ``input_key`` or the one of
    :data:`~lightning_saliency.data.probe_items.IMAGE_KEYS` it holds, label likewise;
    HuggingFace datasets), or an image alone; an image is a tensor or an array after
    ``transform`` (a PIL image needs ``transform``: its scale is not the model's). Ambiguous
    items are refused (:mod:`lightning_saliency.data.probe_items`).

    Example:
        >>> x, y = gather(as_dataset(torch.ones(5, 1, 2, 2)), torch.tensor([0, 3]))
        >>> tuple(x.shape), y.tolist()
        ((2, 1, 2, 2), [-1, -1])
        >>> x, y = gather([{"pixel_values": torch.zeros(1, 2, 2), "label": 7}], torch.tensor([0]))
        >>> y.tolist()
        [7]
    """
    xs, ys = [], []
    for i in indices.tolist():
        image, label = split_item(dataset[i], i, input_key, label_key)
        xs.append(item_image(image, transform, i))
        ys.append(int(torch.as_tensor(label)))
    x = torch.stack(xs).float()
    if x.ndim != 4:
        raise ValueError(
            f"probe images must be 4-D (N, C, H, W) once stacked; got shape {tuple(x.shape)}"
        )
    return x, torch.tensor(ys, dtype=torch.long)


@dataclass
class ProbeSet:
    """Fixed probes: per-model train probes and shared test probes, as one tensor.

    ``x`` stacks the train probes of model 0, ..., model K-1 and then the test probes,
    as ``layout`` (a :class:`~lightning_saliency.generalization.ProbeLayout`) describes.
    """

    x: Tensor
    y: Tensor
    layout: ProbeLayout
    images: Tensor | None = None  # unnormalized [0, 1] copies for segmentation and display
    indices: dict[str, list[int]] = field(default_factory=dict)

    def part(self, name: str) -> slice:
        """The rows of a probe group (``"train_k"`` or ``"test"``)."""
        return self.layout.rows(name)

    @classmethod
    def build(
        cls,
        train_parts: Sequence[tuple[Tensor, Tensor]],
        test_part: tuple[Tensor, Tensor],
        indices: dict[str, list[int]] | None = None,
    ) -> ProbeSet:
        xs = [p[0] for p in train_parts] + [test_part[0]]
        ys = [p[1] for p in train_parts] + [test_part[1]]
        shapes = {tuple(x.shape[1:]) for x in xs}
        if len(shapes) != 1:
            raise ValueError(f"all probes must share one image shape; got {sorted(shapes)}")
        layout = ProbeLayout.from_sizes([x.shape[0] for x in xs[:-1]], xs[-1].shape[0])
        return cls(torch.cat(xs), torch.cat(ys), layout, indices=dict(indices or {}))

    def to(self, device: torch.device) -> ProbeSet:
        self.x = self.x.to(device)
        self.y = self.y.to(device)
        if self.images is not None:
            self.images = self.images.to(device)
        return self

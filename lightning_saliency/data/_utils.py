"""Small shared helpers of the data package: a transform view and argument checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["STATS_FROM_DATA", "TransformDataset"]


class TransformDataset(Dataset):
    """A view of ``base`` whose samples ``(x, y)`` become ``(transform(x), y)``.

    Lets one stored dataset serve both an augmented training view and a deterministic view
    (for probes) without holding the data twice.

    >>> ds = TransformDataset(TensorDataset(torch.arange(3.0), torch.arange(3)), lambda x: 2 * x)
    >>> ds[2]
    (tensor(4.), tensor(2))
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], Any] | None = None) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        x, y = self.base[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, y

    def __getattr__(self, name: str) -> Any:
        # expose e.g. ``classes`` / ``targets`` of the wrapped dataset
        if name in ("base", "transform") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


STATS_FROM_DATA = "auto"
"""The ``mean``/``std`` value that asks a data module to compute them from its training images."""


def _as_stats(name: str, value: Sequence[float] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str):
        raise ValueError(
            f"{name} must be a sequence of floats, {STATS_FROM_DATA!r} or None, got {value!r}"
        )
    try:
        stats = tuple(float(v) for v in value)
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of floats or None, got {value!r}") from err
    if len(stats) == 0:
        raise ValueError(f"{name} must have at least one entry (one per channel), got {value!r}")
    return stats


def _check_stats(
    mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Validate a normalization: both None, or equal-length sequences with every std > 0."""
    m, s = _as_stats("mean", mean), _as_stats("std", std)
    if (m is None) != (s is None):
        raise ValueError(
            f"mean and std must both be given or both be None, got mean={mean!r}, std={std!r}"
        )
    if m is not None and s is not None:
        if len(m) != len(s):
            raise ValueError(
                f"mean and std must have the same length (one entry per channel), got "
                f"{len(m)} and {len(s)}"
            )
        if any(not v > 0 for v in s):
            raise ValueError(f"every std entry must be > 0, got std={s}")
    return m, s


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _unwrap(dataset: Any) -> Any:
    while isinstance(dataset, TransformDataset):
        dataset = dataset.base
    return dataset


def _infer_num_classes(dataset: Any) -> int | None:
    ds = _unwrap(dataset)
    if isinstance(ds, Subset):
        return _infer_num_classes(ds.dataset)
    classes = getattr(ds, "classes", None)
    if classes is not None:
        return len(classes)
    targets = getattr(ds, "targets", None)
    if targets is not None and len(targets) > 0:
        return int(torch.as_tensor(targets).max()) + 1
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2 and len(ds.tensors[1]) > 0:
        return int(ds.tensors[1].max()) + 1
    return None

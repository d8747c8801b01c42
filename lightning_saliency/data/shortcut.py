"""A planted shortcut: the positive control of the interpretation gap (issue 15).

:class:`PlantedShortcut` puts a bright square into the images of some classes, at a place
that depends on the class, so a model trained on them can classify those images by the square
alone. :class:`~lightning_saliency.data.DisjointSplitDataModule` applies it to one split
(``shortcut={"split": 0}``): that model explains its own training probes (which carry the
square) by the square, the other model and the held-out probes know nothing of it, so the
interpretation loss on that model's training probes differs from the test loss: a gap planted
and known (``docs/experiments.md``, positive control).

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> ds = PlantedShortcut(TensorDataset(torch.zeros(2, 1, 6, 6), torch.tensor([0, 1])),
...                      classes=[1], size=2, value=1.0)
>>> ds[0][0].sum().item(), ds[1][0].sum().item()   # class 1 carries a 2x2 square
(0.0, 4.0)
>>> shortcut_box(1, 6, 2)   # (top, left) of class 1's square: the second slot of row 0
(0, 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .controls import check_split_option

__all__ = ["PlantedShortcut", "check_shortcut", "shortcut_box"]

_KEYS = {"split": 0, "classes": None, "size": 3}


def shortcut_box(label: int, width: int, size: int) -> tuple[int, int]:
    """``(top, left)`` of class ``label``'s square: slots of ``size`` pixels, row by row."""
    per_row = width // size
    return (label // per_row) * size, (label % per_row) * size


def check_shortcut(spec: Mapping[str, Any] | None, num_models: int) -> dict[str, Any] | None:
    """The shortcut option with its defaults (``split`` 0, every class, ``size`` 3), or an
    early ``ValueError`` that names the bad key."""
    if spec is None:
        return None
    out = check_split_option("shortcut", spec, _KEYS, num_models)
    size, classes = out["size"], out["classes"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"shortcut size must be a positive int; got {size!r}")
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
            raise ValueError(f"shortcut classes must be a non-empty list of ints; got {classes!r}")
        out["classes"] = sorted({int(c) for c in classes})
    return out


class PlantedShortcut(Dataset):
    """A view of ``dataset`` (yielding model inputs ``(C, H, W)``) whose images of
    ``classes`` (None: all) carry a ``size`` x ``size`` square set to ``value`` in every
    channel, at :func:`shortcut_box` of their class. The other images are unchanged."""

    def __init__(self, dataset: Dataset, *, classes: Sequence[int] | None, size: int,
                 value: float) -> None:  # fmt: skip
        self.dataset = dataset
        self.classes = None if classes is None else frozenset(int(c) for c in classes)
        self.size, self.value = int(size), float(value)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _plant(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        label = int(y)
        if self.classes is not None and label not in self.classes:
            return x
        top, left = shortcut_box(label, x.shape[-1], self.size)
        if top + self.size > x.shape[-2]:
            raise ValueError(
                f"class {label}'s shortcut square (size {self.size}) does not fit a "
                f"{tuple(x.shape[-2:])} image; use a smaller size"
            )
        x = x.clone()
        x[..., top : top + self.size, left : left + self.size] = self.value
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        x, y = self.dataset[index]
        return self._plant(x, y), y

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, Any]]:
        many = getattr(self.dataset, "__getitems__", None)
        items = many(list(indices)) if many is not None else [self.dataset[i] for i in indices]
        return [(self._plant(x, y), y) for x, y in items]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

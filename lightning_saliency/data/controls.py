"""Positive controls beyond the planted shortcut: memorization and a shifted distribution.

Each plants into ONE split something that makes its model explain its own training images
unlike any model that did not train on them, with a clean twin (the same run without it):

* :class:`RelabeledSplit` (``memorize={"split": 0, "fraction": 0.5}``): a share of the split's
  labels is reassigned at random to another class, fixed per image. Its model must memorize
  them; its probes carry the reassigned labels, so the target every model explains there is a
  class only that model has learned to find in those images.
* :class:`ShiftedSplit` (``shift={"split": 0, "kind": "rotate", "fraction": 0.5}``): half the
  split's images come from another distribution of the same classes (turned by 90 degrees, or
  inverted within the input range): a sub-population only this model trained on, present in
  its own training probes, that the other models never saw anything like.

The held-out set and the other splits stay clean. ``docs/metrics.md`` ("Positive controls")
states which logged quantity each must move, and which way.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> ds = TensorDataset(torch.zeros(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
>>> relabeled = RelabeledSplit(ds, fraction=0.5, num_classes=3, seed=0)
>>> [int(relabeled[i][1]) != int(ds[i][1]) for i in range(6)].count(True)
3
>>> ShiftedSplit(ds, kind="invert", input_range=(0.0, 1.0))[0][0].flatten().tolist()
[1.0, 1.0, 1.0, 1.0]
>>> int(ShiftedSplit(ds, kind="rotate", input_range=(0.0, 1.0), fraction=0.5).shifted.sum())
3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "MEMORIZE_KEYS",
    "SHIFT_KEYS",
    "SHIFT_KINDS",
    "RelabeledSplit",
    "ShiftedSplit",
    "check_memorize",
    "check_shift",
    "check_split_option",
]

#: ``memorize`` option keys and defaults.
MEMORIZE_KEYS: dict[str, Any] = {"split": 0, "fraction": 0.5, "seed": 0}
#: ``shift`` option keys and defaults.
SHIFT_KEYS: dict[str, Any] = {"split": 0, "kind": "rotate", "fraction": 0.5, "seed": 0}
#: The distribution shifts :class:`ShiftedSplit` knows.
SHIFT_KINDS = ("invert", "rotate")


def check_split_option(name: str, spec: Any, keys: Mapping[str, Any], num_models: int) -> dict:
    """A control option planted into one split: a mapping of known ``keys`` (their defaults
    filled in) whose ``split`` is an int in [0, num_models); else a ``ValueError`` naming it."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{name} must be a mapping such as {{'split': 0}}; got {spec!r}")
    unknown = sorted(set(spec) - set(keys))
    if unknown:
        raise ValueError(f"unknown {name} keys {unknown}; known: {sorted(keys)}")
    out = {**keys, **spec}
    split = out["split"]
    if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split < num_models:
        raise ValueError(f"{name} split must be an int in [0, {num_models}); got {split!r}")
    return out


def _check_fraction(name: str, fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ValueError(f"{name} fraction must be a number in (0, 1]; got {fraction!r}")
    if not 0 < float(fraction) <= 1:
        raise ValueError(f"{name} fraction must be in (0, 1]; got {fraction!r}")
    return float(fraction)


def _check_seed(name: str, seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name} seed must be an int; got {seed!r}")


def _chosen(n: int, fraction: float, seed: int) -> tuple[Tensor, torch.Generator]:
    """``round(fraction x n)`` item indices drawn once from ``seed`` (and the generator)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen)[: round(fraction * n)], gen


def check_memorize(spec: Mapping[str, Any] | None, num_models: int) -> dict[str, Any] | None:
    """The ``memorize`` option with its defaults, or an early ``ValueError`` naming the key.

    >>> check_memorize({"fraction": 0.25}, 2)
    {'split': 0, 'fraction': 0.25, 'seed': 0}
    """
    if spec is None:
        return None
    out = check_split_option("memorize", spec, MEMORIZE_KEYS, num_models)
    out["fraction"] = _check_fraction("memorize", out["fraction"])
    _check_seed("memorize", out["seed"])
    return out


def check_shift(spec: Mapping[str, Any] | None, num_models: int) -> dict[str, Any] | None:
    """The ``shift`` option with its defaults, or an early ``ValueError`` naming the key.

    >>> check_shift({"split": 1}, 2)
    {'split': 1, 'kind': 'rotate', 'fraction': 0.5, 'seed': 0}
    """
    if spec is None:
        return None
    out = check_split_option("shift", spec, SHIFT_KEYS, num_models)
    if out["kind"] not in SHIFT_KINDS:
        raise ValueError(f"shift kind must be one of {list(SHIFT_KINDS)}; got {out['kind']!r}")
    out["fraction"] = _check_fraction("shift", out["fraction"])
    _check_seed("shift", out["seed"])
    return out


class _View(Dataset):
    """A dataset view that changes items one at a time (``_change``), batched reads kept."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _change(self, index: int, x: torch.Tensor, y: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        x, y = self.dataset[index]
        return self._change(index, x, y)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, Any]]:
        many = getattr(self.dataset, "__getitems__", None)
        items = many(list(indices)) if many is not None else [self.dataset[i] for i in indices]
        return [self._change(i, x, y) for i, (x, y) in zip(indices, items, strict=True)]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class RelabeledSplit(_View):
    """``dataset`` with a ``fraction`` of its items' labels moved to another class.

    Which items, and by how much each label moves (1 .. num_classes - 1 classes on, modulo
    ``num_classes``), is drawn once from ``seed``, so every epoch and every probe sees the
    same wrong label. Exactly ``round(fraction x len)`` items change.
    """

    def __init__(self, dataset: Dataset, *, fraction: float, num_classes: int, seed: int) -> None:
        super().__init__(dataset)
        if num_classes < 2:
            raise ValueError(f"memorize needs at least 2 classes; got {num_classes}")
        n = len(dataset)  # type: ignore[arg-type]
        chosen, gen = _chosen(n, fraction, seed)
        self.offset = torch.zeros(n, dtype=torch.long)
        self.offset[chosen] = torch.randint(1, num_classes, (len(chosen),), generator=gen)
        self.num_classes = int(num_classes)

    def _change(self, index: int, x: torch.Tensor, y: Any) -> tuple[torch.Tensor, Any]:
        shift = int(self.offset[index])
        if not shift:
            return x, y
        label = (int(y) + shift) % self.num_classes
        return x, torch.as_tensor(label, dtype=y.dtype) if isinstance(y, torch.Tensor) else label


class ShiftedSplit(_View):
    """``dataset`` (model inputs in ``input_range``) with a ``fraction`` of its images (drawn
    once from ``seed``) from another distribution of the same classes: ``"rotate"`` turns them
    by 90 degrees, ``"invert"`` maps x to ``lo + hi - x``.

    A whole split shifted is no control for a leave-one-out comparison: the other model is
    then as foreign to this split's images as this model is to the others' (both directions
    move alike). A sub-population that only this model trained on is one.
    """

    def __init__(self, dataset: Dataset, *, kind: str, input_range: tuple[float, float],
                 fraction: float = 1.0, seed: int = 0) -> None:  # fmt: skip
        super().__init__(dataset)
        if kind not in SHIFT_KINDS:
            raise ValueError(f"shift kind must be one of {list(SHIFT_KINDS)}; got {kind!r}")
        self.kind = kind
        self.lo, self.hi = float(input_range[0]), float(input_range[1])
        n = len(dataset)  # type: ignore[arg-type]
        self.shifted = torch.zeros(n, dtype=torch.bool)
        self.shifted[_chosen(n, fraction, seed)[0]] = True

    def _change(self, index: int, x: torch.Tensor, y: Any) -> tuple[torch.Tensor, Any]:
        if not bool(self.shifted[index]):
            return x, y
        if self.kind == "rotate":
            return torch.rot90(x, 1, (-2, -1)), y
        return (self.lo + self.hi) - x, y

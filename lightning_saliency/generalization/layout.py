"""Where each probe set sits in a stack of probes: the public probe layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ProbeLayout"]


@dataclass(frozen=True)
class ProbeLayout:
    """Rows of N stacked probes: model 0's train probes, ..., model K-1's, then the test probes.

    Model k's *train probes* come from its own training split; the *test probes* are
    held out and shared by every model. A map stack ``(M, N, ...)`` holds the maps of
    M >= K sources (the K monitored models, then an optional reference model) of these
    N probes. Each part is a *probe group*: an independent sample of probes, named
    ``"train_0"``, ..., ``"train_{K-1}"`` and ``"test"``; the uncertainty of every
    aggregated number is computed from its groups (see :mod:`.statistics`).

    Example:
        >>> layout = ProbeLayout.from_sizes([3, 3], 4)
        >>> layout.num_models, layout.num_probes, layout.groups
        (2, 10, ('train_0', 'train_1', 'test'))
        >>> layout.rows("train_1"), layout.test
        (slice(3, 6, None), slice(6, 10, None))
    """

    train: tuple[slice, ...]
    test: slice

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("a probe layout needs the train probes of at least one model")
        start = 0
        for part in (*self.train, self.test):
            if part.start != start or part.stop <= part.start or part.step not in (None, 1):
                raise ValueError(
                    "probe layout parts must be contiguous, non-empty and in order "
                    f"(train_0, ..., test); got {self.train} and {self.test}"
                )
            start = part.stop

    @classmethod
    def from_sizes(cls, train_sizes: Sequence[int], num_test: int) -> ProbeLayout:
        """The layout of ``train_sizes[k]`` train probes per model and ``num_test`` test probes.

        >>> ProbeLayout.from_sizes([2], 1).train
        (slice(0, 2, None),)
        """
        parts, start = [], 0
        for size in (*train_sizes, num_test):
            parts.append(slice(start, start + int(size)))
            start += int(size)
        return cls(tuple(parts[:-1]), parts[-1])

    @property
    def num_models(self) -> int:
        """K, the number of monitored models (each with its own train probes)."""
        return len(self.train)

    @property
    def num_probes(self) -> int:
        """N, train probes of every model plus the test probes."""
        return self.test.stop

    @property
    def groups(self) -> tuple[str, ...]:
        """Names of the independent probe groups, in row order."""
        return (*(f"train_{k}" for k in range(self.num_models)), "test")

    def rows(self, group: str) -> slice:
        """The rows of one probe group (``"train_k"`` or ``"test"``)."""
        if group == "test":
            return self.test
        if group.startswith("train_") and group[6:].isdigit() and int(group[6:]) < len(self.train):
            return self.train[int(group[6:])]
        raise KeyError(f"no probe group {group!r}; groups: {list(self.groups)}")

    @property
    def train_rows(self) -> slice:
        """Rows of every model's train probes (models 0..K-1 in order)."""
        return slice(0, self.test.start)

    def seen(self, device: torch.device | str | None = None) -> Tensor:
        """``(K, N)`` bool: ``seen[k, n]`` is True where probe n is one of model k's own.

        >>> ProbeLayout.from_sizes([1, 1], 1).seen().int().tolist()
        [[1, 0, 0], [0, 1, 0]]
        """
        seen = torch.zeros(self.num_models, self.num_probes, dtype=torch.bool, device=device)
        for k, part in enumerate(self.train):
            seen[k, part] = True
        return seen

    def pair_groups(self, i: int, j: int, split: str) -> tuple[str, ...]:
        """Probe groups on which sources i and j are compared in ``split``.

        On ``"test"`` every pair shares the test probes; on ``"train"`` a pair is compared
        on both models' train probes (a reference source, index >= K, has none).

        >>> ProbeLayout.from_sizes([2, 2, 2], 2).pair_groups(0, 2, "train")
        ('train_0', 'train_2')
        >>> ProbeLayout.from_sizes([2], 2).pair_groups(0, 1, "train")
        ('train_0',)
        """
        if split == "test":
            return ("test",)
        if split != "train":
            raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
        return tuple(f"train_{m}" for m in sorted({i, j}) if m < self.num_models)

"""Epoch-keyed shuffling: the order of epoch e is a function of (seed, e) alone.

A ``RandomSampler`` with a freshly seeded generator replays epoch 0's order after a resume;
:class:`EpochShuffleSampler` draws epoch e's permutation from a generator seeded with
``mix_seed(seed, e)``, so a run resumed at epoch e sees the order an uninterrupted run sees.
Lightning calls :meth:`EpochShuffleSampler.set_epoch` before every training epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

__all__ = ["EpochShuffleSampler", "find_epoch_keyed", "mix_seed", "set_dataset_epoch"]

_MASK = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Hash ints into one 63-bit seed (splitmix64 steps); distinct tuples give distinct seeds.

    >>> mix_seed(0, 1) == mix_seed(0, 1), mix_seed(0, 1) == mix_seed(1, 0)
    (True, False)
    """
    state = 0x9E3779B97F4A7C15
    for v in values:
        state = (state ^ (int(v) & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK
        state ^= state >> 29
    return state >> 1


def find_epoch_keyed(dataset: Any) -> Any:
    """``dataset`` or the first dataset it wraps whose class has ``set_epoch`` (else None).

    Follows ``Subset.dataset`` and ``TransformDataset.base``.
    """
    for _ in range(16):
        if dataset is None or callable(getattr(type(dataset), "set_epoch", None)):
            return dataset
        inner = getattr(dataset, "dataset", None)
        dataset = inner if inner is not None else getattr(dataset, "base", None)
    return None


def set_dataset_epoch(dataset: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on :func:`find_epoch_keyed` of ``dataset``, if any.

    Epoch-keyed in-memory augmentation draws its per-sample parameters there.
    """
    target = find_epoch_keyed(dataset)
    if target is not None:
        target.set_epoch(epoch)


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(len(data_source))`` per epoch, keyed by (seed, epoch).

    ``set_epoch(e)`` selects epoch e (Lightning calls it before each training epoch); an
    iteration without a new ``set_epoch`` moves on to the next epoch, so a plain loop over the
    loader also sees a new order each time. The epoch is passed on to the dataset
    (:func:`set_dataset_epoch`). :attr:`loader_generator` is re-seeded per epoch as well;
    give it to the ``DataLoader`` (its worker seeds then also follow the epoch, and the global
    RNG is never drawn from).

    >>> s = EpochShuffleSampler(range(5), seed=0)
    >>> s.set_epoch(3); a = list(s)
    >>> s.set_epoch(3); a == list(s), sorted(a)
    (True, [0, 1, 2, 3, 4])
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.epoch = 0
        self.loader_generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)
        self.loader_generator.manual_seed(mix_seed(self.seed, self.epoch, 1))
        set_dataset_epoch(self.data_source, self.epoch)

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of epoch ``epoch`` (int64)."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, int(epoch)))
        return torch.randperm(len(self.data_source), generator=generator)

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        set_dataset_epoch(self.data_source, epoch)
        order = self.order(epoch).tolist()
        self.epoch = epoch + 1
        self.loader_generator.manual_seed(mix_seed(self.seed, self.epoch, 1))
        yield from order

    def __len__(self) -> int:
        return len(self.data_source)

"""Disjoint, reproducible index splits of a dataset."""

from __future__ import annotations

import torch

__all__ = ["check_split_args", "disjoint_splits"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_split_args(split_factor: object, num_models: object | None = None) -> tuple[int, int]:
    """Validate ``split_factor`` and ``num_models``; return them as ``(split_factor, K)``.

    ``num_models=None`` means one model per split (``K = split_factor``).

    >>> check_split_args(4, 2)
    (4, 2)
    >>> check_split_args(3)
    (3, 3)
    """
    if not _is_int(split_factor):
        raise TypeError(
            f"split_factor must be an int >= 1, got {split_factor!r} "
            f"of type {type(split_factor).__name__}"
        )
    if split_factor < 1:  # type: ignore[operator]
        raise ValueError(f"split_factor must be an int >= 1, got {split_factor}")
    if num_models is None:
        return int(split_factor), int(split_factor)  # type: ignore[call-overload]
    if not _is_int(num_models):
        raise TypeError(
            f"num_models must be an int between 1 and split_factor={split_factor}, "
            f"got {num_models!r} of type {type(num_models).__name__}"
        )
    if num_models < 1 or num_models > split_factor:  # type: ignore[operator]
        raise ValueError(
            f"num_models must be between 1 and split_factor={split_factor} (each model needs "
            f"its own disjoint split of 1/split_factor of the data), got num_models={num_models}"
        )
    return int(split_factor), int(num_models)  # type: ignore[call-overload]


def disjoint_splits(
    n: int, split_factor: int, num_models: int | None = None, seed: int = 0
) -> list[torch.Tensor]:
    """Draw ``num_models`` pairwise disjoint index sets of size ``n // split_factor``.

    The indices come from one random permutation of ``range(n)`` drawn from a dedicated
    ``torch.Generator`` seeded with ``seed``: the global RNG is neither used nor advanced,
    and the result depends only on ``(n, split_factor, seed)``; split ``k`` is the same
    whatever ``num_models`` is. Each split is sorted ascending.

    Args:
        n: number of samples in the dataset.
        split_factor: the data is cut into ``split_factor`` parts of ``n // split_factor``
            samples (2, 4, 8, 16 give 50%, 25%, 12.5%, 6.25% of the data per model).
        num_models: how many of those parts to return (``K``, ``1 <= K <= split_factor``);
            ``None`` returns all ``split_factor`` parts.
        seed: seed of the dedicated generator.

    Returns:
        A list of ``K`` int64 tensors, pairwise disjoint, each of length ``n // split_factor``.

    >>> splits = disjoint_splits(10, split_factor=2, seed=0)
    >>> [len(s) for s in splits]
    [5, 5]
    >>> set(splits[0].tolist()).isdisjoint(splits[1].tolist())
    True
    >>> bool(torch.equal(splits[0], disjoint_splits(10, 2, seed=0)[0]))
    True
    """
    split_factor, k_models = check_split_args(split_factor, num_models)
    if not _is_int(n):
        raise TypeError(f"n must be a non-negative int, got {n!r} of type {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be a non-negative int, got {n}")
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}")
    if n < split_factor:
        raise ValueError(
            f"the dataset has fewer samples (n={n}) than split_factor={split_factor}: every "
            f"split would be empty; use a smaller split_factor or a larger dataset"
        )
    size = n // split_factor
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    perm = torch.randperm(n, generator=generator, dtype=torch.int64)
    return [perm[k * size : (k + 1) * size].sort().values for k in range(k_models)]

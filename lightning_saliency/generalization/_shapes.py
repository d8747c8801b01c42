"""Shape checks of the public functions' inputs against their probe layout (issue 19).

A tensor of per-(source, probe) values or maps ``(M, N, ...)`` must have ``N`` equal to the
layout's number of probes and at least the layout's ``K`` sources; otherwise slicing by the
layout would silently use a truncated probe set (``(2, 9)`` values for a 10-probe layout
gave 3 test probes) or fail with a bare ``IndexError``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .layout import ProbeLayout

__all__ = ["check_against_layout"]


def _describe(layout: ProbeLayout) -> str:
    sizes = [s.stop - s.start for s in layout.train]
    return (f"{layout.num_probes} probes (train {sizes} for K={layout.num_models} models, "
            f"test {layout.test.stop - layout.test.start})")  # fmt: skip


def check_against_layout(
    fn: str, name: str, x: Any, layout: ProbeLayout, *, model: int | None = None
) -> None:
    """Raise ``ValueError`` naming ``fn``, ``name``'s shape and the layout when they disagree.

    >>> check_against_layout("f", "values", __import__("torch").zeros(2, 9),
    ...                      ProbeLayout.from_sizes([3, 3], 4))
    Traceback (most recent call last):
    ...
    ValueError: f: values has shape (2, 9): 9 probes and 2 sources, but the layout has 10 probes (train [3, 3] for K=2 models, test 4)
    """
    if not isinstance(layout, ProbeLayout):
        raise TypeError(f"{fn}: layout must be a ProbeLayout, got {type(layout).__name__}")
    if not isinstance(x, Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{fn}: {name} must be a tensor (sources, probes, ...), got {shape}")
    sources, probes = x.shape[0], x.shape[1]
    if probes != layout.num_probes or sources < layout.num_models:
        raise ValueError(
            f"{fn}: {name} has shape {tuple(x.shape)}: {probes} probes and {sources} sources, "
            f"but the layout has {_describe(layout)}"
        )
    if model is not None and not (
        isinstance(model, int) and not isinstance(model, bool) and 0 <= model < layout.num_models
    ):
        raise ValueError(f"{fn}: model must be an int in [0, {layout.num_models}), got {model!r}")

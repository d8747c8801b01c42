"""The super-pixel part of a method spec: its canonical form and its label suffix.

A grouping appends ``"_sp-" algorithm { "-" sp-token }`` to the label; sp-token is the
reduction unless ``"sum"`` (``"mean"``, ``"abs_sum"``, ``"abs_mean"``), then KEY VALUE for
each segmenter parameter, sorted by key (e.g. ``"n_segments40"``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from lightning_saliency.attribution._checks import check_choice
from lightning_saliency.attribution._values import FrozenParams, format_number
from lightning_saliency.attribution.superpixels import GROUP_REDUCTIONS, SEGMENTERS

__all__ = ["canonical_superpixel", "superpixel_suffix"]


def canonical_superpixel(superpixel: Any) -> FrozenParams | None:
    """The canonical grouping of a spec entry (None, an algorithm or a mapping).

    >>> canonical_superpixel("slic")
    FrozenParams({'algorithm': 'slic', 'reduction': 'sum'})
    """
    if superpixel is None:
        return None
    if isinstance(superpixel, str):
        superpixel = {"algorithm": superpixel}
    if not isinstance(superpixel, Mapping):
        raise TypeError(
            "superpixel must be None, an algorithm name or a mapping with 'algorithm', "
            f"got {superpixel!r}"
        )
    sp = dict(superpixel)
    algorithm = sp.pop("algorithm", None)
    if algorithm not in SEGMENTERS:
        raise ValueError(
            f"unknown super-pixel algorithm {algorithm!r}; known: {sorted(SEGMENTERS)}"
        )
    reduction = sp.pop("reduction", "sum")
    check_choice("superpixel reduction", reduction, GROUP_REDUCTIONS)
    unknown = sorted(set(sp) - set(SEGMENTERS[algorithm]))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for super-pixel algorithm {algorithm!r}; "
            f"accepted: {list(SEGMENTERS[algorithm])}"
        )
    for key, value in sp.items():
        if not isinstance(value, numbers.Real) or (
            not isinstance(value, bool) and not math.isfinite(float(value))
        ):
            raise TypeError(
                f"super-pixel parameter {key} must be a finite number or bool, got {value!r}"
            )
        if not isinstance(value, bool) and isinstance(value, numbers.Real):
            sp[key] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return FrozenParams({"algorithm": algorithm, "reduction": reduction, **sp})


def superpixel_suffix(superpixel: Mapping[str, Any]) -> str:
    """The label suffix of a canonical grouping.

    >>> superpixel_suffix({"algorithm": "slic", "reduction": "mean", "n_segments": 40})
    '_sp-slic-mean-n_segments40'
    """
    sp = ["sp", str(superpixel["algorithm"])]
    if superpixel["reduction"] != "sum":
        sp.append(str(superpixel["reduction"]))
    sp += [
        f"{k}{format_number(v)}"
        for k, v in sorted(superpixel.items())
        if k not in ("algorithm", "reduction")
    ]
    return "_" + "-".join(sp)

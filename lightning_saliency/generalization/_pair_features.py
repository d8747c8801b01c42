"""Agreement of many pairs of rows of one method's maps, each map's features computed once
(issue 21): the model pairs, both splits, the chance draws and the same-class partners of
an epoch compare rows of the same ``(M, N, ...)`` maps, so the ranks, top-k masks and
scaled, filtered maps of the built-in metrics are computed once per source and gathered
(:mod:`lightning_saliency.metrics._prepared`). The numbers are those of calling each
metric on the gathered maps (every step is row by row).

>>> import torch
>>> from lightning_saliency.metrics import agreement_specs
>>> from lightning_saliency.generalization.core import MapStack
>>> maps = torch.rand(2, 5, 1, 12, 12)
>>> pf = PairFeatures(MapStack(maps), agreement_specs(["spearman"]))
>>> rows, partners = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
>>> got = pf.values(0, 1, rows, partners)["spearman"]
>>> torch.equal(got, agreement_specs(["spearman"])[0](maps[0, rows], maps[1, partners]))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from lightning_saliency.metrics import MetricSpec
from lightning_saliency.metrics._maps import _compute_dtype
from lightning_saliency.metrics._prepared import RowFeatures, prepared_metric

__all__ = ["PairFeatures"]


class MapStack(Protocol):
    """What this needs of a :class:`~.core.MapStack` (core builds on this module)."""

    @property
    def maps(self) -> Tensor: ...

    @property
    def pixel(self) -> Tensor | None: ...

    @property
    def segments(self) -> Tensor | None: ...

    def partner_maps(self, j: int, rows: Tensor, partners: Tensor) -> Tensor: ...


class PairFeatures:
    """The agreement metrics ``specs`` of rows of ``stack.maps`` (see the module)."""

    def __init__(self, stack: MapStack, specs: Sequence[MetricSpec]) -> None:
        self.stack, self.specs = stack, list(specs)
        self._dtype = _compute_dtype(stack.maps)
        self._prepared = {s: prepared_metric(s, self._dtype) for s in self.specs}
        self._features: dict[tuple[MetricSpec, int], RowFeatures] = {}  # of all N rows

    def _of(self, spec: MetricSpec, source: int) -> RowFeatures:
        key = (spec, source)
        if key not in self._features:
            prepared = self._prepared[spec]
            assert prepared is not None  # asked only for prepared metrics
            self._features[key] = prepared.features(self.stack.maps[source])
        return self._features[key]

    def values(
        self,
        i: int,
        j: int,
        rows: Tensor,
        partners: Tensor,
        *,
        chance: bool = False,
        only: Sequence[MetricSpec] | None = None,
    ) -> dict[str, Tensor]:
        """Per metric of ``only`` (default: all), the agreement of source i's maps of ``rows``
        with source j's maps of ``partners``; a ``chance`` pair of a super-pixel method
        groups source j's maps of ``partners`` by the segments of ``rows``."""
        st, out = self.stack, {}
        regroup = chance and st.pixel is not None and st.segments is not None
        other = st.partner_maps(j, rows, partners) if regroup else None
        for spec in self.specs if only is None else only:
            if spec not in self._prepared:  # a metric the features were not built for
                self._prepared[spec] = prepared_metric(spec, self._dtype)
            prepared = self._prepared[spec]
            if prepared is None:
                b = st.maps[j, partners] if other is None else other
                out[spec.name] = spec(st.maps[i, rows], b).reshape(-1)
                continue
            fa = self._of(spec, i).take(rows)
            fb = self._of(spec, j).take(partners) if other is None else prepared.features(other)
            out[spec.name] = prepared.compare(fa, fb).reshape(-1)
        return out

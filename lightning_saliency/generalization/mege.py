"""MeGe and ReCo (Fel et al. 2022) as statistics of the train probes, with a bootstrap.

The point values are :func:`lightning_saliency.metrics.mege_reco` (the one definition);
the bootstrap re-weights the same pair-samples by how often each probe is drawn, so the
two cannot drift apart (``tests/test_generalization.py`` checks unit weights against it).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from lightning_saliency.metrics import l2_distance, mege_reco

from .layout import ProbeLayout
from .statistics import Counts

__all__ = ["MegeReco", "mege_reco_statistics"]


class _PairSamples:
    """Distances and kinds of the (model pair, train probe) samples MeGe and ReCo use."""

    def __init__(self, maps: Tensor, preds: Tensor, labels: Tensor, layout: ProbeLayout,
                 normalize: bool) -> None:  # fmt: skip
        rows = layout.train_rows
        seen = layout.seen(maps.device)[:, rows]
        correct = preds[:, rows].to(maps.device) == labels[rows].to(maps.device)
        dist, same, one = [], [], []
        for i, j in itertools.combinations(range(layout.num_models), 2):
            keep = seen[i] ^ seen[j]  # exactly one of the two models trained on the probe
            dist.append(l2_distance(maps[i, rows], maps[j, rows], normalize=normalize))
            same.append(correct[i] & correct[j] & keep)
            one.append((correct[i] ^ correct[j]) & keep)
        self.dist = torch.stack(dist).double()  # (P, N_train)
        self.same, self.one = torch.stack(same), torch.stack(one)
        self.layout = layout

    def weights(self, counts: Counts) -> Tensor:
        """(B, N_train): how often each train probe is drawn in each resample."""
        return torch.cat([counts[g] for g in self.layout.groups if g != "test"], dim=1)


class MegeReco:
    """MeGe or ReCo of K >= 2 models' maps on their train probes, as a nonlinear statistic."""

    linear = False

    def __init__(self, samples: _PairSamples, which: str, point: Tensor) -> None:
        self.samples, self.which, self._point = samples, which, point

    def support(self) -> dict[str, Tensor]:
        per_probe = self.samples.dist.sum(0)  # non-finite where any pair's distance is
        layout = self.samples.layout
        return {f"train_{k}": per_probe[part] for k, part in enumerate(layout.train)}

    def point(self) -> Tensor:
        return self._point.double()

    def bootstrap(self, counts: Counts) -> Tensor:
        w = self.samples.weights(counts).to(self.samples.dist.device)  # (B, N)
        if self.which == "mege":
            return _weighted_mege(self.samples, w)
        return _weighted_reco(self.samples, w)


def _weighted_mege(s: _PairSamples, w: Tensor) -> Tensor:
    same = s.same.double()
    num = (w @ (s.dist.nan_to_num() * same).T).sum(1)
    den = (w @ same.T).sum(1)
    return torch.where(den > 0, 1.0 / (1.0 + num / den.clamp_min(1e-300)), torch.nan)


def _weighted_reco(s: _PairSamples, w: Tensor) -> Tensor:
    """max over thresholds of TPR + TNR - 1 with pair-samples weighted by their probe's count."""
    used = (s.same | s.one).reshape(-1)
    probe = torch.arange(s.dist.shape[1], device=s.dist.device).expand_as(s.dist).reshape(-1)
    d, pos, probe = s.dist.reshape(-1)[used], s.one.reshape(-1)[used].double(), probe[used]
    if d.numel() == 0:
        return torch.full((w.shape[0],), torch.nan, dtype=torch.float64, device=w.device)
    order = torch.argsort(d)
    d, pos, ww = d[order], pos[order], w[:, probe[order]]  # (B, M)
    last = torch.searchsorted(d, d, right=True) - 1  # last index of each tie group
    cum_pos, cum_neg = (ww * pos).cumsum(1), (ww * (1 - pos)).cumsum(1)
    n_pos, n_neg = cum_pos[:, -1:], cum_neg[:, -1:]
    tpr = (n_pos - cum_pos[:, last]) / n_pos
    tnr = cum_neg[:, last] / n_neg
    reco = (tpr + tnr - 1).amax(1)
    return torch.where((n_pos[:, 0] > 0) & (n_neg[:, 0] > 0), reco, torch.nan)


def mege_reco_statistics(
    maps: Tensor, preds: Tensor, labels: Tensor, layout: ProbeLayout, *, normalize: bool = True
) -> dict[str, MegeReco]:
    """``{"mege": ..., "reco": ...}`` of the K models' maps ``(M, N, ...)`` on train probes.

    Example:
        >>> from lightning_saliency.generalization import ProbeLayout
        >>> layout = ProbeLayout.from_sizes([2, 2], 1)
        >>> maps = torch.eye(5).reshape(1, 5, 5).expand(2, 5, 5)  # both models identical
        >>> preds = labels = torch.zeros(2, 5, dtype=torch.long)
        >>> float(mege_reco_statistics(maps, preds, labels[0], layout)["mege"].point())
        1.0
    """
    k = layout.num_models
    rows = layout.train_rows
    mege, reco = mege_reco(
        maps[:k, rows], preds[:k, rows], labels[rows], layout.seen(maps.device)[:, rows],
        pairs="one_seen", normalize=normalize,
    )  # fmt: skip
    samples = _PairSamples(maps[:k], preds[:k], labels, layout, normalize)
    return {"mege": MegeReco(samples, "mege", mege), "reco": MegeReco(samples, "reco", reco)}

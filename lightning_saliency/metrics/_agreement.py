"""Agreement of two batches of maps and of predictions: L2, Spearman, top-k, MeGe/ReCo.

Part of :mod:`lightning_saliency.metrics` (conventions are stated there).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lightning_saliency.metrics._maps import (
    ChannelReduction,
    _check_pair,
    _check_tensor,
    _compute_dtype,
    _flat,
    _nan_unless,
    _pearson_rows,
    finite_rows,
    informative_rows,
    nonzero_rows,
    normalize_maps,
)


# ------------------------------------------------------------------ pair metrics
def l2_distance(
    a: Tensor,
    b: Tensor,
    *,
    normalize: bool = True,
    channel_reduction: ChannelReduction | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """Per-sample L2 distance between two batches of maps.

    With ``normalize=True`` (default, paper 000 sec. 6.4) this is
    ``|| a/||a|| - b/||b|| ||_2`` and lies in ``[0, 2]``.  An all-zero map has no
    direction: NaN where either map is all zero or not finite (two all-zero maps used to
    score 0, perfect agreement); ``normalize=False`` is NaN only where a map is not finite.  By default the full maps are compared (no channel reduction).

    >>> a = torch.tensor([[3.0, 0.0]]); b = torch.tensor([[0.0, 5.0]])
    >>> l2_distance(a, b)
    tensor([1.4142])
    >>> l2_distance(a, b, normalize=False)
    tensor([5.8310])
    """
    a, b = _check_pair(a, b, ndims=(2, 3, 4))
    dtype = _compute_dtype(a, b)
    return l2_compare(*(l2_features(m, dtype, normalize=normalize, channel_reduction=channel_reduction,
                                    eps=eps) for m in (a, b)))  # fmt: skip


class RowFeatures(NamedTuple):
    """What a pair metric needs of each map of a batch, computed once per map (ranks,
    top-k masks, scaled and filtered maps...): ``parts`` (dim 0: the rows), ``ok`` (the
    rows the metric is defined for) and ``meta`` (row-independent constants). A metric of
    two batches is ``compare(features(a), features(b))``; comparing many pairs of rows
    of the same maps (chance draws) then needs the features once.

    >>> f = l2_features(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.float32)
    >>> f.take(torch.tensor([1, 0, 0])).ok.tolist()
    [False, True, True]
    """

    parts: tuple[Tensor, ...]
    ok: Tensor
    meta: tuple[Any, ...] = ()

    def take(self, idx: Tensor) -> RowFeatures:
        """The features of rows ``idx`` (in that order, repeats allowed)."""
        take = tuple(p.index_select(0, idx) for p in self.parts)
        return RowFeatures(take, self.ok.index_select(0, idx), self.meta)


def l2_features(maps: Tensor, dtype: torch.dtype, *, normalize: bool = True,
                channel_reduction: ChannelReduction | None = None,
                eps: float = 1e-12) -> RowFeatures:  # fmt: skip
    """:func:`l2_distance`'s per-map part: the flat (unit-normalized) maps."""
    flat = _flat(maps, channel_reduction, dtype)
    if normalize:
        flat = normalize_maps(flat, eps)
    valid = nonzero_rows if normalize else finite_rows  # a zero map cannot be normalized
    return RowFeatures((flat,), valid(maps))


def l2_compare(fa: RowFeatures, fb: RowFeatures) -> Tensor:
    """:func:`l2_distance` of two batches' :func:`l2_features`."""
    return _nan_unless(fa.ok & fb.ok, (fa.parts[0] - fb.parts[0]).norm(dim=1))


def _row_order(x: Tensor) -> Tensor:
    """``(N, D)`` indices sorting each row ascending (ties in any order); on CPU by numpy's
    quicksort, a few times faster than ``torch.sort`` there.

    >>> _row_order(torch.tensor([[3.0, 1.0, 2.0]])).tolist()
    [[1, 2, 0]]
    """
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).indices
    return torch.from_numpy(np.argsort(x.detach().numpy(), axis=1)).to(torch.long)


def _average_ranks(x: Tensor) -> Tensor:
    """Row-wise ranks 1..D with ties given their average rank (like scipy's rankdata)."""
    n, d = x.shape
    order = _row_order(x)  # ties get one average rank: any order among them will do
    sorted_vals = x.gather(1, order)
    pos = torch.arange(d, device=x.device).expand(n, d)
    starts_group = torch.ones((n, d), dtype=torch.bool, device=x.device)
    starts_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    ends_group = torch.ones_like(starts_group)
    ends_group[:, :-1] = starts_group[:, 1:]
    start = torch.where(starts_group, pos, 0).cummax(dim=1).values
    end = torch.where(ends_group, pos, d).flip(1).cummin(dim=1).values.flip(1)
    rank_sorted = (start + end).to(x.dtype) / 2 + 1
    return torch.empty_like(rank_sorted).scatter_(1, order, rank_sorted)


def spearman(
    a: Tensor, b: Tensor, *, channel_reduction: ChannelReduction | None = "abs_sum"
) -> Tensor:
    """Per-sample Spearman rank correlation between two batches of maps.

    Ties get their average rank (as ``scipy.stats.spearmanr``).  The result is NaN
    for a sample where either (reduced) map is constant (e.g. all zero: undefined) or
    not finite (see :func:`finite_rows` to tell the two apart).

    >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]]); b = torch.tensor([[1.0, 3.0, 2.0, 4.0]])
    >>> spearman(a, b, channel_reduction=None)
    tensor([0.8000])
    """
    a, b = _check_pair(a, b)
    dtype = _compute_dtype(a, b)
    return spearman_compare(*(spearman_features(m, dtype, channel_reduction=channel_reduction)
                              for m in (a, b)))  # fmt: skip


def spearman_features(maps: Tensor, dtype: torch.dtype, *,
                      channel_reduction: ChannelReduction | None = "abs_sum") -> RowFeatures:  # fmt: skip
    """:func:`spearman`'s per-map part: the average ranks of the (reduced) map."""
    ranks = _average_ranks(_flat(maps, channel_reduction, dtype))
    return RowFeatures((ranks,), finite_rows(maps))


def spearman_compare(fa: RowFeatures, fb: RowFeatures) -> Tensor:
    """:func:`spearman` of two batches' :func:`spearman_features`."""
    return _nan_unless(fa.ok & fb.ok, _pearson_rows(fa.parts[0], fb.parts[0]))


def _resolve_k(k: float | int, d: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"`k` must be an int count or a float fraction, got {type(k).__name__}.")
    if isinstance(k, int):
        if not 1 <= k <= d:
            raise ValueError(f"integer `k` must be in [1, {d}] (elements per map), got {k}.")
        return k
    if not (0.0 < k <= 1.0):
        raise ValueError(f"float `k` is a fraction and must be in (0, 1], got {k}.")
    return min(d, max(1, round(k * d)))


def topk_intersection(
    a: Tensor,
    b: Tensor,
    k: float | int = 0.1,
    *,
    channel_reduction: ChannelReduction | None = "abs_sum",
) -> Tensor:
    """Fraction of the top-k elements of ``a`` that are also among the top-k of ``b``.

    ``k`` is either an ``int`` count in ``[1, D]`` or a ``float`` fraction in
    ``(0, 1]`` of the number ``D`` of elements of the reduced map (rounded to the
    nearest integer, at least 1): ``k=1`` means one element, ``k=1.0`` all of them.
    Elements are ranked by the value of the reduced map (largest first).  Ties are
    broken deterministically by position: among equal values the element with the
    smaller flat index ranks higher (stable sort).  NaN where either map is constant
    (e.g. all-zero: its top-k would be its first k elements) or not finite.

    >>> a = torch.tensor([[4.0, 3.0, 2.0, 1.0]]); b = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    >>> topk_intersection(a, b, 2, channel_reduction=None)
    tensor([0.5000])
    """
    a, b = _check_pair(a, b)
    dtype = _compute_dtype(a, b)
    return topk_compare(*(topk_features(m, dtype, k, channel_reduction=channel_reduction)
                          for m in (a, b)))  # fmt: skip


def _topk_mask(flat: Tensor, kk: int) -> Tensor:
    """``(N, D)`` bool: the ``kk`` largest elements of each row, ties to the smaller index
    (as a stable descending sort), from the k-th largest value (a partial selection, a few
    times faster than the sort on CPU). Rows with a NaN are undefined (the metric is NaN).

    >>> _topk_mask(torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]]), 2).tolist()
    [[False, True, True, False, False]]
    """
    kth = torch.topk(flat, kk, dim=1).values[:, -1:]  # the k-th largest value of each row
    above = flat > kth
    ties = flat == kth
    room = kk - above.sum(dim=1, keepdim=True)  # how many of the ties are in the top k
    return above | (ties & (ties.cumsum(dim=1) <= room))


def topk_features(maps: Tensor, dtype: torch.dtype, k: float | int = 0.1, *,
                  channel_reduction: ChannelReduction | None = "abs_sum") -> RowFeatures:  # fmt: skip
    """:func:`topk_intersection`'s per-map part: the top-k mask of the (reduced) map."""
    flat = _flat(maps, channel_reduction, dtype)
    kk = _resolve_k(k, flat.shape[1])
    return RowFeatures((_topk_mask(flat, kk),), informative_rows(maps), (kk, dtype))


def topk_compare(fa: RowFeatures, fb: RowFeatures) -> Tensor:
    """:func:`topk_intersection` of two batches' :func:`topk_features`."""
    kk, dtype = fa.meta
    frac = (fa.parts[0] & fb.parts[0]).sum(dim=1).to(dtype) / kk
    return _nan_unless(fa.ok & fb.ok, frac)


# ------------------------------------------------------------------- predictions
def _as_labels(x: object, name: str) -> Tensor:
    x = _check_tensor(x, name)
    if x.ndim == 2:
        return x.argmax(dim=1)
    if x.ndim == 1:
        if x.is_floating_point() or x.is_complex():
            raise TypeError(
                f"`{name}` of shape (N,) must hold integer class labels, got dtype {x.dtype}; "
                "pass logits as (N, C)."
            )
        return x
    raise ValueError(
        f"`{name}` must be logits (N, C) or predicted labels (N,), got shape {tuple(x.shape)}."
    )


def prediction_agreement(logits_or_preds_a: Tensor, logits_or_preds_b: Tensor) -> Tensor:
    """Fraction of rows where two models predict the same class (0-dim float32 tensor).

    Each argument is either logits ``(N, C)`` (argmax is taken) or integer predicted
    labels ``(N,)``; the two may be mixed.  NaN for ``N == 0`` and when any row of
    logits holds a NaN or +-Inf (its argmax is meaningless).

    >>> prediction_agreement(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    tensor(0.5000)
    """
    pa = _as_labels(logits_or_preds_a, "logits_or_preds_a")
    pb = _as_labels(logits_or_preds_b, "logits_or_preds_b")
    if pa.shape != pb.shape:
        raise ValueError(
            f"the two inputs describe different numbers of samples: {pa.shape[0]} and {pb.shape[0]}."
        )
    if pa.device != pb.device:
        raise ValueError(f"inputs must be on the same device, got {pa.device} and {pb.device}.")
    ok = torch.ones((), dtype=torch.bool, device=pa.device)
    for x in (logits_or_preds_a, logits_or_preds_b):
        if x.ndim == 2:
            ok = ok & finite_rows(x).all()
    return torch.where(ok, (pa == pb).to(torch.float32).mean(), math.nan)


# ------------------------------------------------------------------ MeGe / ReCo
def _youden_max(dist: Tensor, positive: Tensor) -> Tensor:
    """max over thresholds t in dist of TPR + TNR - 1, predicting positive iff d > t."""
    order = torch.argsort(dist)
    d = dist[order]
    pos = positive[order].to(dist.dtype)
    n_pos = pos.sum()
    n_neg = pos.numel() - n_pos
    cum_pos = pos.cumsum(0)
    cum_neg = (1 - pos).cumsum(0)
    last = torch.searchsorted(d, d, right=True) - 1  # last index of each tie group
    tpr = (n_pos - cum_pos[last]) / n_pos  # positives with d > t
    tnr = cum_neg[last] / n_neg  # negatives with d <= t
    return (tpr + tnr - 1).max()


def _checked_mege_inputs(
    maps: Tensor, preds: Tensor, labels: Tensor, seen: Tensor | None, pairs: str
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
    """:func:`mege_reco`'s inputs checked, logits as labels, and the ``(K, N)`` non-finite mask."""
    maps = _check_tensor(maps, "maps")
    preds = _check_tensor(preds, "preds")
    labels = _check_tensor(labels, "labels")
    if maps.ndim < 3:
        raise ValueError(
            f"`maps` must be (K, N, ...) with at least 3 dims, got {tuple(maps.shape)}."
        )
    k, n = maps.shape[:2]
    if k < 2:
        raise ValueError(f"mege_reco needs maps of K >= 2 models, got K={k}.")
    if pairs not in ("one_seen", "all"):
        raise ValueError(f"`pairs` must be 'one_seen' or 'all', got {pairs!r}.")
    logits = preds if preds.ndim == 3 else None
    if logits is not None:
        preds = logits.argmax(dim=2)
    if preds.shape != (k, n):
        raise ValueError(
            f"`preds` must be (K, N) labels or (K, N, C) logits with (K, N)=({k}, {n}), "
            f"got shape {tuple(preds.shape)}."
        )
    bad = ~finite_rows(maps.flatten(0, 1)).view(k, n)  # (K, N): non-finite map or logits
    if logits is not None:
        bad = bad | ~finite_rows(logits.flatten(0, 1)).to(bad.device).view(k, n)
    if labels.shape != (n,):
        raise ValueError(f"`labels` must have shape (N,)=({n},), got {tuple(labels.shape)}.")
    if pairs == "one_seen" and seen is None:
        raise ValueError("`seen` (K, N) bool is required for pairs='one_seen'.")
    if seen is not None:
        seen = _check_tensor(seen, "seen")
        if seen.dtype != torch.bool:
            raise TypeError(f"`seen` must be a bool tensor, got dtype {seen.dtype}.")
        if seen.shape != (k, n):
            raise ValueError(f"`seen` must have shape (K, N)=({k}, {n}), got {tuple(seen.shape)}.")
    return maps, preds, labels, seen, bad


def mege_reco(
    maps: Tensor,
    preds: Tensor,
    labels: Tensor,
    seen: Tensor | None = None,
    *,
    pairs: Literal["one_seen", "all"] = "all",
    normalize: bool = True,
    channel_reduction: ChannelReduction | None = None,
) -> tuple[Tensor, Tensor]:
    """MeGe and ReCo (Fel et al. 2022) of K models' maps, adapted to disjoint splits.

    Args:
        maps: ``(K, N, ...)`` maps of the same N samples by K >= 2 models.
        preds: ``(K, N)`` predicted labels or ``(K, N, C)`` logits.
        labels: ``(N,)`` true labels.
        seen: ``(K, N)`` bool, ``seen[k, n]`` = model k was trained on sample n.
            Needed only for ``pairs="one_seen"``.
        pairs: ``"all"`` uses every unordered model pair (i < j) for every sample
            (held-out probes); ``"one_seen"`` keeps only the pair-samples where exactly
            one of the two models saw the sample (Fel et al.'s setting; train probes of
            disjoint splits).
        normalize, channel_reduction: passed to :func:`l2_distance` (normalized full maps
            by default).

    For every kept pair-sample the distance ``d = l2_distance(maps[i, n], maps[j, n])``
    is computed.  Pair-samples where both models predict ``labels[n]`` are
    "same-correct" (negatives); those where exactly one does are "one-correct"
    (positives); pairs where both are wrong are ignored.

    * ``MeGe = 1 / (1 + mean d over same-correct pair-samples)``.
    * ``ReCo = max_t TPR(t) + TNR(t) - 1`` over thresholds ``t`` in the set of
      observed distances (of kept same- and one-correct pair-samples), where a
      pair-sample is predicted one-correct iff ``d > t``: ``TPR`` is the fraction of
      one-correct pairs with ``d > t`` and ``TNR`` the fraction of same-correct pairs
      with ``d <= t``.  The largest threshold gives 0, so ReCo lies in ``[0, 1]``;
      1 means the distance separates the two groups perfectly.

    Returns ``(mege, reco)``, 0-dim tensors, NaN when there is no same-correct
    pair-sample (MeGe) or no positive or no negative (ReCo).  Both are NaN when any
    kept pair-sample (every one for ``pairs="all"``) has a non-finite map or, for
    ``(K, N, C)`` logits, a non-finite logit row: both-wrong pair-samples are not
    excused, since a non-finite model's predictions (which decide the groups) are
    meaningless too.  Count such samples with :func:`finite_rows`.

    >>> maps = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # K=3, N=1, D=2
    >>> preds = torch.tensor([[0], [0], [1]]); labels = torch.tensor([0])
    >>> mege, reco = mege_reco(maps, preds, labels)
    >>> mege, reco
    (tensor(1.), tensor(1.))
    """
    maps, preds, labels, seen, bad = _checked_mege_inputs(maps, preds, labels, seen, pairs)
    k, n = maps.shape[:2]
    dtype = _compute_dtype(maps)
    device = maps.device
    correct = preds.to(device) == labels.to(device).unsqueeze(0)  # (K, N)

    dists, same, one, bad_pairs = [], [], [], []
    for i in range(k - 1):
        for j in range(i + 1, k):
            d = l2_distance(
                maps[i], maps[j], normalize=normalize, channel_reduction=channel_reduction
            )
            keep = torch.ones(n, dtype=torch.bool, device=device)
            if pairs == "one_seen":
                assert seen is not None  # required for "one_seen" (checked above)
                keep = seen[i].to(device) ^ seen[j].to(device)
            dists.append(d)
            same.append(correct[i] & correct[j] & keep)
            one.append((correct[i] ^ correct[j]) & keep)
            bad_pairs.append((bad[i] | bad[j]) & keep)
    dist = torch.cat(dists).to(dtype)
    same_m = torch.cat(same)
    one_m = torch.cat(one)

    nan = torch.tensor(float("nan"), dtype=dtype, device=device)
    mege = 1.0 / (1.0 + dist[same_m].mean()) if bool(same_m.any()) else nan
    if bool(same_m.any()) and bool(one_m.any()):
        used = same_m | one_m
        reco = _youden_max(dist[used], one_m[used])
    else:
        reco = nan.clone()
    any_bad = torch.cat(bad_pairs).any()
    return torch.where(any_bad, nan, mege), torch.where(any_bad, nan, reco)

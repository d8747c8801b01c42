"""Does a model explain its OWN training data unlike everyone else? The statistic that the
positive controls move when the leave-one-out gap cannot.

The gap of model k is its test loss minus its train loss. A planted difference that also
changes how model k explains held-out images (a shortcut it looks for everywhere, a shifted
training distribution) moves both terms, and their difference can stay at 0: on a grayscale
dataset the planted shortcut moved the train-probe distance by +0.056 and the gap not at all
(issue 20). What it does not move is the *other* models' train losses on *their* own probes.
So, per model k:

``own_train_excess_k = train_loss_k - mean_{j != k} train_loss_j``

where ``train_loss_j`` is the mean interpretation loss of model j on its own training
probes (paper 000's train term, unchanged). Under exchangeable splits (the clean twin)
its expectation is 0; a model that explains its own training images unlike the others
(memorized labels, a shortcut, another distribution) has a positive excess. The terms are
means over disjoint probe sets, so its interval is that of a difference of independent
means (each split's probes a group of :class:`~.statistics.ProbeStatistic`).

With K = 2 the two models' excesses are each other's negatives (the leave-one-out reference
of one model is the other's maps): the planted model's excess is the number to read.
"""

from __future__ import annotations

from torch import Tensor

from .layout import ProbeLayout
from .statistics import ProbeStatistic

__all__ = ["OWN_EXCESS", "own_train_excess"]

#: The metric name of the own-train excess in keys, tags and CSV rows.
OWN_EXCESS = "own_excess"


def own_train_excess(loss: Tensor, layout: ProbeLayout) -> dict[int, ProbeStatistic]:
    """Per model k: its mean loss on its own train probes minus the other models' mean loss
    on theirs (``(K, N)`` per-probe losses, e.g. :func:`~.core.interpretation_loss`).

    >>> import torch
    >>> layout = ProbeLayout.from_sizes([2, 2], 1)
    >>> loss = torch.tensor([[0.9, 0.7, 0.0, 0.0, 0.5],   # model 0: train probes 0, 1
    ...                      [0.0, 0.0, 0.3, 0.1, 0.5]])  # model 1: train probes 2, 3
    >>> {k: round(float(s.point()), 4) for k, s in own_train_excess(loss, layout).items()}
    {0: 0.6, 1: -0.6}
    """
    k_models = layout.num_models
    if k_models < 2:
        raise ValueError(f"own_train_excess compares models: it needs K >= 2, got K={k_models}")
    if loss.ndim != 2 or loss.shape != (k_models, layout.num_probes):
        raise ValueError(
            f"loss must be (K={k_models}, N={layout.num_probes}) for this layout; "
            f"got {tuple(loss.shape)}"
        )
    own = {k: ProbeStatistic({f"train_{k}": loss[k, layout.train[k]]}) for k in range(k_models)}
    out = {}
    for k in range(k_models):
        w = 1.0 / (k_models - 1)
        others = ProbeStatistic(
            {f"train_{j}": w * loss[j, layout.train[j]] for j in range(k_models) if j != k}
        )
        out[k] = own[k] - others
    return out

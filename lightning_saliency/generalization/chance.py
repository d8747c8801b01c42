"""Chance levels that mean what they say: which probes a chance pair compares.

The chance level of an agreement metric is the same agreement between two models' maps
of *different* probes. Two pairings, named apart:

* **class-blind** (``<metric>_chance``): each probe against several random derangements of
  its probe set (no probe paired with itself), averaged over the derangements. It knows
  nothing about the image, not even its class;
* **same-class** (``<metric>_chance_same_class``): each probe against another probe of
  the same class (NaN where its class has no other probe in the set). Agreement above
  this level is about the image itself, beyond what its class explains.

Both are drawn from a dedicated generator seeded by the callback's ``seed`` and the probe
rows, so every method and epoch uses the same pairs (comparisons stay paired).

Example:
    >>> pairing = ChancePairing(labels=torch.tensor([0, 0, 1, 1, 1]), draws=3)
    >>> d = pairing.derangements(torch.arange(5))
    >>> d.shape, bool((d != torch.arange(5)).all())
    (torch.Size([3, 5]), True)
    >>> s = pairing.same_class(torch.arange(5)).tolist()
    >>> [s[0], s[1]], s[2] in (3, 4)
    ([1, 0], True)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["CHANCE_DRAWS", "ChancePairing", "PredictionChance"]

#: Random derangements the class-blind chance level averages over.
CHANCE_DRAWS = 4


def _generator(seed: int, rows: Tensor, salt: str) -> torch.Generator:
    key = zlib.crc32(f"{salt}:{rows.tolist()}".encode())
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + key) % (2**63 - 1))


def _derangement(n: int, gen: torch.Generator) -> Tensor:
    """A uniformly random permutation of range(n) without fixed points (n >= 2)."""
    while True:  # about e tries on average
        perm = torch.randperm(n, generator=gen)
        if bool((perm != torch.arange(n)).all()):
            return perm


@dataclass(frozen=True)
class ChancePairing:
    """Which probe each probe is paired with for the chance levels.

    ``labels`` are the ``(N,)`` classes of all probes (None or negative: unknown, so no
    same-class level); ``draws`` derangements make the class-blind level.
    """

    labels: Tensor | None = None
    seed: int = 0
    draws: int = CHANCE_DRAWS

    def derangements(self, rows: Tensor) -> Tensor:
        """``(draws, n)`` partner rows of ``rows``: each row a random derangement."""
        n = rows.numel()
        if n < 2:
            raise ValueError("a chance pair needs at least two probes")
        gen = _generator(self.seed, rows, "derangement")
        perms = torch.stack([_derangement(n, gen) for _ in range(self.draws)])
        return rows.cpu()[perms].to(rows.device)

    def same_class(self, rows: Tensor) -> Tensor:
        """``(n,)`` partner rows of the same class (another probe), -1 where there is none."""
        out = torch.full((rows.numel(),), -1, dtype=torch.long)
        if self.labels is None:
            return out.to(rows.device)
        cls = self.labels.cpu()[rows.cpu()]
        gen = _generator(self.seed, rows, "same_class")
        for c in cls.unique().tolist():
            members = (cls == c).nonzero().flatten()
            if c < 0 or members.numel() < 2:
                continue
            partner = members[_derangement(members.numel(), gen)]
            out[members] = rows.cpu()[partner]
        return out.to(rows.device)


class PredictionChance:
    """The chance agreement of two models' predictions, ``sum_c p_i(c) p_j(c)`` (``p_i(c)``:
    the fraction of probes model i assigns to class c), or Cohen's kappa,
    ``(p_o - p_e) / (1 - p_e)``, averaged over model pairs; nonlinear (bootstrap).

    ``preds`` are ``(M, N)`` classes, negative where the logits were not finite.

    >>> from lightning_saliency.generalization import ProbeLayout
    >>> p = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]])  # test probes: rows 2 and 3
    >>> layout = ProbeLayout.from_sizes([1, 1], 2)
    >>> round(float(PredictionChance(p, layout, "test", "chance").point()), 4)  # 0.5*0 + 0.5*1
    0.5
    >>> round(float(PredictionChance(p, layout, "test", "kappa").point()), 4)  # (0.5-0.5)/0.5
    0.0
    """

    linear = False

    def __init__(self, preds: Tensor, layout: Any, split: str, which: str) -> None:
        import itertools

        if which not in ("chance", "kappa"):
            raise ValueError(f"which must be 'chance' or 'kappa'; got {which!r}")
        self.which, self.pairs = which, []
        classes = max(int(preds.max()) + 1, 1)
        for i, j in itertools.combinations(range(preds.shape[0]), 2):
            groups = layout.pair_groups(i, j, split)
            parts = [layout.rows(g) for g in groups]
            rows = torch.cat([torch.arange(r.start, r.stop) for r in parts])
            a, b = preds[i].cpu()[rows], preds[j].cpu()[rows]
            agree = torch.where((a >= 0) & (b >= 0), (a == b).double(), torch.nan)
            hot = [torch.nn.functional.one_hot(v.clamp_min(0), classes).double() for v in (a, b)]
            self.pairs.append((groups, [r.stop - r.start for r in parts], *hot, agree))

    def support(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for groups, sizes, _, _, agree in self.pairs:
            for g, v in zip(groups, agree.split(sizes), strict=True):
                out[g] = out[g] + v if g in out else v
        return out

    def _value(self, weights: Callable[[tuple[str, ...]], Tensor]) -> Tensor:
        vals = []
        for groups, _, hot_a, hot_b, agree in self.pairs:
            w = weights(groups)  # (B, n): how often each probe is drawn
            total = w.sum(1, keepdim=True)
            pe = ((w @ hot_a) / total * ((w @ hot_b) / total)).sum(1)
            po = (w @ agree) / total[:, 0]  # NaN when any probe's prediction is undefined
            vals.append(pe if self.which == "chance" else (po - pe) / (1 - pe))
        return torch.stack(vals).mean(0)

    def point(self) -> Tensor:
        return self._value(lambda g: torch.ones(1, sum(self._sizes(g)), dtype=torch.float64))[0]

    def _sizes(self, groups: tuple[str, ...]) -> list[int]:
        return next(sizes for gs, sizes, *_ in self.pairs if gs == groups)

    def bootstrap(self, counts: Any) -> Tensor:
        return self._value(lambda groups: torch.cat([counts[g].cpu() for g in groups], dim=1))

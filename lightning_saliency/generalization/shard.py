"""An epoch's statistics split by method over DDP processes, and merged back (issue 21).

Every method's numbers depend on that method's maps, the probes and the seed only (the
chance pairings and the bootstrap counts are drawn from the seed and the probe rows, not
from a shared stream), so process r can evaluate a share of the methods and the shares'
estimates, gathered, are the one-process estimates. :func:`method_shard` picks a process's
share: the plain-gradient baseline on every process (every other method's
``gap_reduction`` needs its gap), the other methods round robin. :func:`merge_estimates`
puts the gathered shares back in the order one process writes them (predictions first,
then each method's numbers in method order, then the gap reductions, then the non-finite
counts), so the CSV of a DDP run lists its rows as a one-process run does.

>>> from lightning_saliency.attribution import resolve_method
>>> specs = [resolve_method(m) for m in ("simple_grad", "grad_x_input", "integrated_gradients")]
>>> [[s.label for s in method_shard(specs, r, 2)] for r in (0, 1)]
[['simple_grad', 'grad_x_input'], ['simple_grad', 'integrated_gradients']]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from lightning_saliency.attribution import MethodSpec

from .schema import NO_METHOD, MetricKey
from .studies import plain_baseline

__all__ = ["GAP_REDUCTION", "NONFINITE_MAPS", "merge_estimates", "method_shard"]

V = TypeVar("V")

#: The metric names of the two per-method numbers one process writes after all the others.
GAP_REDUCTION = "gap_reduction"
NONFINITE_MAPS = "nonfinite_maps"


def method_shard(specs: Sequence[MethodSpec], rank: int, world: int) -> list[MethodSpec]:
    """The methods process ``rank`` of ``world`` evaluates, in ``specs`` order: the plain
    baseline (if any) on every process, the others round robin."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) and world >= 1; got rank {rank}, world {world}")
    base = plain_baseline(specs)
    others = [s for s in specs if s is not base]
    mine = {id(s) for s in others[rank::world]}
    return [s for s in specs if s is base or id(s) in mine]


def _tail(key: MetricKey) -> int:
    """0 for a method's own numbers, 1 for its gap reduction, 2 for its non-finite count."""
    return {GAP_REDUCTION: 1, NONFINITE_MAPS: 2}.get(key.metric, 0)


def merge_estimates(
    specs: Sequence[MethodSpec], shares: Sequence[Mapping[MetricKey, V]]
) -> dict[MetricKey, V]:
    """One dict of the processes' ``shares`` (rank order), in one process's order.

    A method's numbers come from the first share that holds any of them (the baseline's
    copies on the other processes are the same numbers); the numbers of no method
    (predictions) from the first share. A method that no share holds raises: a share lost
    in the gather must not pass for a smaller run.
    """
    out: dict[MetricKey, V] = {k: v for k, v in shares[0].items() if k.method == NO_METHOD}
    tails: list[list[tuple[MetricKey, V]]] = [[], []]
    for spec in specs:
        owner = next((s for s in shares if any(k.method == spec.label for k in s)), None)
        if owner is None:
            raise ValueError(f"no process evaluated method {spec.label!r}")
        for key, value in owner.items():
            if key.method != spec.label:
                continue
            t = _tail(key)
            if t == 0:
                out[key] = value
            else:
                tails[t - 1].append((key, value))
    for part in tails:
        out.update(part)
    known = {s.label for s in specs} | {NO_METHOD}
    stray = sorted({k.method for s in shares for k in s} - known)
    if stray:
        raise ValueError(f"gathered numbers of methods this run does not have: {stray}")
    return out

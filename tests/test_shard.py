"""DDP's method-sharded statistics (issue 21): the shares of the methods, evaluated apart and
merged, are the one-process numbers in the one-process order (the CSV's rows)."""

from __future__ import annotations

import pytest
import torch

from lightning_saliency.attribution import resolve_method
from lightning_saliency.generalization import ProbeLayout, evaluate_epoch
from lightning_saliency.generalization.shard import merge_estimates, method_shard

METHODS = ["simple_grad", {"method": "smooth_grad", "noise_level": 0.1, "samples": 4},
           {"method": "smooth_grad", "noise_level": 0.2, "samples": 4}, "integrated_gradients",
           {"method": "adapt_grad", "confidence": 0.95, "samples": 4}, "grad_x_input"]  # fmt: skip


def _epoch(k: int = 2):
    g = torch.Generator().manual_seed(3)
    layout = ProbeLayout.from_sizes([6] * k, 10)
    n = 6 * k + 10
    specs = [resolve_method(m) for m in METHODS]
    base = torch.randn(k, n, 1, 12, 12, generator=g)
    maps = {s.label: base + 0.5 * i * torch.randn(k, n, 1, 12, 12, generator=g)
            for i, s in enumerate(specs)}  # fmt: skip
    maps[specs[3].label][1, 4] = float("nan")  # a non-finite map: a count and NaN numbers
    labels = torch.randint(0, 3, (n,), generator=g)
    preds = torch.randint(0, 3, (k, n), generator=g)
    kw = {"labels": labels, "preds": preds, "seed": 5, "resamples": 200}
    return maps, layout, specs, kw


@pytest.mark.parametrize("world", [2, 3, 4])
def test_merged_shares_are_the_one_process_numbers_in_its_order(world: int) -> None:
    maps, layout, specs, kw = _epoch()
    whole = evaluate_epoch(maps, layout, specs, **kw).estimates
    shares = []
    for rank in range(world):
        mine = method_shard(specs, rank, world)
        shares.append(evaluate_epoch({s.label: maps[s.label] for s in mine}, layout, mine, **kw).estimates)
    merged = merge_estimates(specs, shares)
    assert list(merged) == list(whole)  # the same rows in the same order
    for key, est in whole.items():  # the same numbers, bit for bit (NaN where NaN)
        got = merged[key]
        assert [str(v) for v in (got.value, got.se, got.lo, got.hi, got.n)] == [
            str(v) for v in (est.value, est.se, est.lo, est.hi, est.n)], key  # fmt: skip
    assert any(k.metric == "gap_reduction" for k in merged)
    assert any(k.metric == "nonfinite_maps" and merged[k].value == 1.0 for k in merged)


def test_each_method_has_one_owner_and_the_baseline_is_everywhere() -> None:
    specs = [resolve_method(m) for m in METHODS]
    for world in (1, 2, 3, 7, 9):
        shards = [method_shard(specs, r, world) for r in range(world)]
        assert all(sh[0].label == "simple_grad" for sh in shards if sh)
        others = [s.label for sh in shards for s in sh if s.label != "simple_grad"]
        assert sorted(others) == sorted(s.label for s in specs[1:])  # each exactly once
        sizes = [len(sh) - 1 for sh in shards]
        assert max(sizes) - min(sizes) <= 1  # round robin: balanced
    assert method_shard(specs, 0, 1) == specs
    with pytest.raises(ValueError, match="rank"):
        method_shard(specs, 2, 2)


def test_a_lost_or_foreign_share_is_refused() -> None:
    maps, layout, specs, kw = _epoch()
    mine = method_shard(specs, 0, 2)
    part = evaluate_epoch({s.label: maps[s.label] for s in mine}, layout, mine, **kw).estimates
    with pytest.raises(ValueError, match="no process evaluated method"):
        merge_estimates(specs, [part])  # rank 1's share is missing
    with pytest.raises(ValueError, match="does not have"):
        merge_estimates(mine[:1], [part])

"""Helpers of one monitored epoch that need the trainer: sharding, schedule facts, copies."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_saliency.attribution import MethodSpec, attribution_model, find_grad_cam_layer
from lightning_saliency.generalization import compute_pixel_maps

from ._probes import ProbeSet

__all__ = ["attribution_sources", "is_last_epoch", "materialize", "sharded_pixel_maps"]


def sharded_pixel_maps(trainer: pl.Trainer | None, sources: list[nn.Module], *args: Any,
                       **kw: Any) -> dict:  # fmt: skip
    """Pixel maps of every source; under DDP, process r explains sources r, r + W, ... and
    the maps are gathered (each source's maps depend on that source only: the same result)."""
    world = 1 if trainer is None else int(trainer.world_size)
    if world <= 1:
        return compute_pixel_maps(sources, *args, **kw)
    rank, m = int(trainer.global_rank), len(sources)  # type: ignore[union-attr]
    mine = list(range(rank, m, world))
    local = compute_pixel_maps([sources[i] for i in mine], *args, **kw)
    per = -(-m // world)  # the most sources any process has
    out = {}
    for twin, maps in local.items():
        padded = torch.zeros((per, *maps.shape[1:]), dtype=maps.dtype, device=maps.device)
        padded[: maps.shape[0]] = maps
        gathered = trainer.strategy.all_gather(padded)  # type: ignore[union-attr]  # (W, per, ...)
        out[twin] = torch.stack([gathered[i % world, i // world] for i in range(m)])
    return out


def is_last_epoch(trainer: pl.Trainer, epoch: int) -> bool:
    """The fit's last epoch (by max_epochs, or stopping early): its images are always logged."""
    last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs - 1
    return bool(last or trainer.should_stop)


def materialize(probes: ProbeSet) -> ProbeSet:
    """Copies that are ordinary tensors even when created under inference mode."""
    return ProbeSet(
        x=probes.x.clone(),
        y=probes.y.clone(),
        layout=probes.layout,
        images=None if probes.images is None else probes.images.clone(),
        indices=probes.indices,
    )


def attribution_sources(
    sources: list[nn.Module], specs: list[MethodSpec], x: torch.Tensor, channels_last: bool
) -> list[nn.Module]:
    """A frozen eval-mode copy of each source for this epoch's attribution passes, with
    BatchNorm folded into its convolutions (and channels-last weights on CPU): the same maps
    up to float32 rounding, faster (``docs/benchmarks.md``). A Grad-CAM layer is kept."""
    out = []
    for model in sources:
        keep = [s.params.get("layer") or find_grad_cam_layer(model, x[:1])
                for s in specs if s.method == "grad_cam"]  # fmt: skip
        out.append(attribution_model(model, channels_last=channels_last or None, keep=keep))
    return out

"""Backbones, spectral normalization and the LightningModules.

>>> from lightning_saliency.models import DisjointEnsemble, build_backbone, capacity
"""

from __future__ import annotations

from .airbench import AirbenchCNN, count_macs
from .backbones import (
    BUILTIN_BACKBONES,
    MLP,
    SmallCNN,
    available_backbones,
    build_backbone,
    load_pretrained_weights,
)
from .modules import Classifier, DisjointEnsemble
from .spectral import apply_spectral_norm, capacity, spectral_layers, spectral_norms

__all__ = [
    "BUILTIN_BACKBONES",
    "MLP",
    "AirbenchCNN",
    "Classifier",
    "DisjointEnsemble",
    "SmallCNN",
    "apply_spectral_norm",
    "available_backbones",
    "build_backbone",
    "capacity",
    "count_macs",
    "load_pretrained_weights",
    "spectral_layers",
    "spectral_norms",
]

"""Disjoint data splits and the DataModules that train K models on them.

>>> from lightning_saliency.data import DigitsDataModule, disjoint_splits
>>> [len(s) for s in disjoint_splits(100, split_factor=4, num_models=2, seed=0)]
[25, 25]
"""

from __future__ import annotations

from ._utils import STATS_FROM_DATA
from .augment import AUGMENTATIONS, augment_batch, parse_augment
from .datamodules import DisjointSplitDataModule, TransformDataset
from .folder import ImageFolderDataModule
from .memory import InMemoryImages, image_stats
from .sampling import EpochShuffleSampler, mix_seed
from .shortcut import PlantedShortcut
from .splits import check_split_args, disjoint_splits
from .vision import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    CIFAR10DataModule,
    DigitsDataModule,
    MNISTDataModule,
)

__all__ = [
    "AUGMENTATIONS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "STATS_FROM_DATA",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "DisjointSplitDataModule",
    "EpochShuffleSampler",
    "ImageFolderDataModule",
    "InMemoryImages",
    "MNISTDataModule",
    "PlantedShortcut",
    "TransformDataset",
    "augment_batch",
    "check_split_args",
    "disjoint_splits",
    "image_stats",
    "mix_seed",
    "parse_augment",
]

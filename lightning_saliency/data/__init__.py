"""Disjoint data splits and the DataModules that train K models on them.

>>> from lightning_saliency.data import DigitsDataModule, disjoint_splits
>>> [len(s) for s in disjoint_splits(100, split_factor=4, num_models=2, seed=0)]
[25, 25]
"""

from __future__ import annotations

from .datamodules import DisjointSplitDataModule, TransformDataset
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
    ImageFolderDataModule,
    MNISTDataModule,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "DisjointSplitDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "TransformDataset",
    "check_split_args",
    "disjoint_splits",
]

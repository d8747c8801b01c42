"""Built-in DataModules: scikit-learn digits, CIFAR-10 and MNIST (ImageFolder: ``folder.py``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ._utils import TransformDataset
from .augment import check_crop_mode, check_padding, eval_transform, parse_augment, train_transform
from .datamodules import DisjointSplitDataModule

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "MNISTDataModule",
]

CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)


def _download_hint(name: str, root: str, where: str) -> str:
    return (
        f"{name} was not found under root={root!r} ({where}). To get it, either let the data "
        f"module download it (needs network): download=True in Python, or "
        f"`--data.init_args.download true` on the command line (the download happens in "
        f"prepare_data(), which the Trainer calls; call dm.prepare_data() yourself before "
        f"dm.setup() outside a Trainer); or place the files there by hand."
    )


class DigitsDataModule(DisjointSplitDataModule):
    """scikit-learn's 1,797 real 8x8 handwritten digits (shipped with scikit-learn, offline).

    Pixel values 0..16 are scaled to [0, 1], resized once to ``image_size`` (bilinear),
    normalized with ``mean``/``std`` (default 0.5/0.5, input range (-1, 1)) and held in
    memory. A stratified ``heldout_fraction`` of each class, drawn with ``data_seed``, is the
    held-out set; the rest is cut into disjoint splits. 1 channel, 10 classes. ``shortcut``,
    ``memorize`` and ``shift`` plant the positive controls into one split
    (:class:`DisjointSplitDataModule`).

    >>> dm = DigitsDataModule(image_size=16, batch_size=32)
    >>> dm.setup("fit")
    >>> len(dm.heldout_dataset()), [len(dm.split_dataset(k)) for k in range(2)]
    (359, [719, 719])
    >>> dm.input_range, dm.num_classes, dm.in_chans, dm.image_size
    ((-1.0, 1.0), 10, 1, 16)
    """

    def __init__(
        self,
        *,
        split_factor: int = 2,
        num_models: int = 2,
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        image_size: int = 32,
        heldout_fraction: float = 0.2,
        data_seed: int = 0,
        mean: Sequence[float] | None = (0.5,),
        std: Sequence[float] | None = (0.5,),
        pin_memory: bool = False,
        shortcut: dict[str, Any] | None = None,
        memorize: dict[str, Any] | None = None,
        shift: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(heldout_fraction, (int, float)) or isinstance(heldout_fraction, bool):
            raise TypeError(f"heldout_fraction must be a float in (0, 1), got {heldout_fraction!r}")
        if not 0.0 < float(heldout_fraction) < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        if not isinstance(data_seed, int) or isinstance(data_seed, bool):
            raise TypeError(f"data_seed must be an int, got {data_seed!r}")
        super().__init__(
            split_factor=split_factor,
            num_models=num_models,
            split_seed=split_seed,
            batch_size=batch_size,
            num_workers=num_workers,
            mean=mean,
            std=std,
            num_classes=10,
            in_chans=1,
            image_size=image_size,
            pin_memory=pin_memory,
            shortcut=shortcut,
            memorize=memorize,
            shift=shift,
        )
        if self.mean is not None and len(self.mean) != 1:
            raise ValueError(f"digits have 1 channel: mean/std need 1 entry, got mean={mean!r}")
        self.heldout_fraction = float(heldout_fraction)
        self.data_seed = data_seed

    def _build_datasets(self) -> tuple[Dataset, ...]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        labels = torch.as_tensor(digits.target, dtype=torch.int64)
        size = self.image_size
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
            images = images.clamp_(0.0, 1.0)
        if self.mean is not None and self.std is not None:
            images = (images - self.mean[0]) / self.std[0]
        generator = torch.Generator().manual_seed(self.data_seed)
        heldout_parts = []
        for c in range(10):
            idx = (labels == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=generator)]
            heldout_parts.append(idx[: round(self.heldout_fraction * len(idx))])
        is_heldout = torch.zeros(len(labels), dtype=torch.bool)
        is_heldout[torch.cat(heldout_parts)] = True
        train = TensorDataset(images[~is_heldout].contiguous(), labels[~is_heldout].contiguous())
        heldout = TensorDataset(images[is_heldout].contiguous(), labels[is_heldout].contiguous())
        return train, heldout


class CIFAR10DataModule(DisjointSplitDataModule):
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` (50,000 train / 10,000 held-out).

    Expects ``root/cifar-10-batches-py/`` (the python version); ``download=True`` fetches it in
    :meth:`prepare_data`. ``augment`` names the training augmentations (``True`` = random crop
    with ``crop_padding`` (default 4 at 32x32; ``crop_mode`` "zeros" or "reflect") and
    horizontal flip; a list such as ``["crop"]``;
    :func:`~lightning_saliency.data.augment.parse_augment`), applied to the training loaders
    only; probes (:meth:`split_dataset`) never see augmentation.
    ``image_size`` resizes (e.g. 224 for ImageNet-pretrained models).

    >>> dm = CIFAR10DataModule("data", split_factor=4)  # nothing is read yet
    >>> dm.num_classes, dm.in_chans, dm.image_size
    (10, 3, 32)
    """

    base_folder = "cifar-10-batches-py"
    files = (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    )

    def __init__(
        self,
        root: str = "data",
        *,
        download: bool = False,
        augment: bool | str | list[str] = False,
        crop_padding: int | None = None,
        crop_mode: str = "zeros",
        image_size: int | None = None,
        split_factor: int = 2,
        num_models: int = 2,
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            split_factor=split_factor,
            num_models=num_models,
            split_seed=split_seed,
            batch_size=batch_size,
            num_workers=num_workers,
            mean=mean,
            std=std,
            num_classes=10,
            in_chans=3,
            image_size=image_size if image_size is not None else 32,
            pin_memory=pin_memory,
        )
        self.root = os.path.expanduser(str(root))
        self.download = bool(download)
        self.augment = parse_augment(augment)
        self.crop_padding = check_padding(crop_padding)
        self.crop_mode = check_crop_mode(crop_mode)
        self._resize = image_size

    def _missing_files(self) -> list[str]:
        folder = os.path.join(self.root, self.base_folder)
        return [f for f in self.files if not os.path.isfile(os.path.join(folder, f))]

    def _download(self) -> None:
        if not self.download or not self._missing_files():
            return
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(self.root, train=True, download=True)
        except Exception as err:
            raise RuntimeError(
                f"downloading CIFAR-10 to root={self.root!r} failed ({err}); without network, "
                f"place the extracted cifar-10-python.tar.gz so that "
                f"{os.path.join(self.root, self.base_folder)}/ exists"
            ) from err

    def _build_datasets(self) -> tuple[Dataset, ...]:
        from torchvision.datasets import CIFAR10

        missing = self._missing_files()
        if missing:
            folder = os.path.join(self.root, self.base_folder)
            raise FileNotFoundError(
                _download_hint(
                    "CIFAR-10",
                    self.root,
                    f"expected {folder}/ holding {', '.join(self.files)}; missing: "
                    f"{', '.join(missing)}",
                )
                + " The python version is https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
                " (extract it inside root). For a JPEG tree <root>/{train,test}/<class>/*.jpg "
                "use ImageFolderDataModule instead."
            )
        size = self._resize
        eval_tf = eval_transform(self.mean, self.std, size)
        train_tf = train_transform(
            self.mean, self.std, size or 32, self.augment, self.crop_padding,
            crop_mode=self.crop_mode,
        )  # fmt: skip
        try:
            base = CIFAR10(self.root, train=True, transform=None)
            heldout = CIFAR10(self.root, train=False, transform=eval_tf)
        except RuntimeError as err:
            raise RuntimeError(
                f"CIFAR-10 files under {os.path.join(self.root, self.base_folder)} are "
                f"corrupted or incomplete ({err}); delete them and download again"
            ) from err
        return TransformDataset(base, train_tf), heldout, TransformDataset(base, eval_tf)


class MNISTDataModule(DisjointSplitDataModule):
    """MNIST through ``torchvision.datasets.MNIST`` (60,000 train / 10,000 held-out).

    Expects the four raw idx-ubyte files in ``root/MNIST/raw/``; ``download=True`` fetches them
    in :meth:`prepare_data`. ``image_size`` resizes (default: native 28).

    >>> dm = MNISTDataModule("data")
    >>> dm.num_classes, dm.in_chans, dm.image_size, round(dm.input_range[0], 4)
    (10, 1, 28, -0.4242)
    """

    raw_files = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    def __init__(
        self,
        root: str = "data",
        *,
        download: bool = False,
        image_size: int | None = None,
        split_factor: int = 2,
        num_models: int = 2,
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        mean: Sequence[float] | None = MNIST_MEAN,
        std: Sequence[float] | None = MNIST_STD,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            split_factor=split_factor,
            num_models=num_models,
            split_seed=split_seed,
            batch_size=batch_size,
            num_workers=num_workers,
            mean=mean,
            std=std,
            num_classes=10,
            in_chans=1,
            image_size=image_size if image_size is not None else 28,
            pin_memory=pin_memory,
        )
        self.root = os.path.expanduser(str(root))
        self.download = bool(download)
        self._resize = image_size

    def _missing_files(self) -> list[str]:
        raw = os.path.join(self.root, "MNIST", "raw")
        processed = os.path.join(self.root, "MNIST", "processed")
        legacy = all(os.path.isfile(os.path.join(processed, f)) for f in ("training.pt", "test.pt"))
        if legacy:
            return []
        return [f for f in self.raw_files if not os.path.isfile(os.path.join(raw, f))]

    def _download(self) -> None:
        if not self.download or not self._missing_files():
            return
        from torchvision.datasets import MNIST

        try:
            MNIST(self.root, train=True, download=True)
        except Exception as err:
            raise RuntimeError(
                f"downloading MNIST to root={self.root!r} failed ({err}); without network, "
                f"place the unzipped idx-ubyte files in {os.path.join(self.root, 'MNIST', 'raw')}"
            ) from err

    def _build_datasets(self) -> tuple[Dataset, ...]:
        from torchvision.datasets import MNIST

        missing = self._missing_files()
        if missing:
            raw = os.path.join(self.root, "MNIST", "raw")
            raise FileNotFoundError(
                _download_hint(
                    "MNIST",
                    self.root,
                    f"expected the unzipped files {', '.join(self.raw_files)} in {raw}/; "
                    f"missing: {', '.join(missing)}",
                )
            )
        eval_tf = eval_transform(self.mean, self.std, self._resize)
        train = MNIST(self.root, train=True, transform=eval_tf)
        heldout = MNIST(self.root, train=False, transform=eval_tf)
        return train, heldout

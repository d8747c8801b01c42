"""``ImageFolderDataModule``: any ``root/{train,test}/<class>/<image>`` tree, from disk or memory."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._utils import STATS_FROM_DATA, TransformDataset
from .augment import (
    _resize_steps,
    check_crop_mode,
    check_padding,
    eval_transform,
    parse_augment,
    train_transform,
)
from .datamodules import DisjointSplitDataModule
from .memory import InMemoryImages, image_stats, stats_indices

__all__ = ["DEFAULT_STATS_SAMPLES", "ImageFolderDataModule"]

DEFAULT_STATS_SAMPLES = 10_000
_MODES = {1: "L", 3: "RGB"}
_MODES_INV = {v: k for k, v in _MODES.items()}


def _pil_loader(path: str, mode: str) -> Any:
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert(mode)
    except _BROKEN as err:
        raise _unreadable(path, err) from err


#: What PIL raises for a file that is not a readable image.
_BROKEN = (OSError, SyntaxError, ValueError)


def _unreadable(path: str, err: Exception) -> ValueError:
    return ValueError(f"cannot read image {path!r} ({err}); remove or replace it")


def _check_one_size(samples: Sequence[tuple[str, int]]) -> None:
    """Without ``image_size`` every image must have one size, or batches cannot be stacked:
    read each file's header (not its pixels) and refuse early, naming two files."""
    from PIL import Image

    first: tuple[str, tuple[int, int]] | None = None
    for path, _ in samples:
        try:
            with Image.open(path) as img:
                size = img.size
        except _BROKEN as err:
            raise _unreadable(path, err) from err
        if first is None:
            first = (path, size)
        elif size != first[1]:
            raise ValueError(
                f"images of different sizes: {first[0]!r} is {first[1][0]}x{first[1][1]}, "
                f"{path!r} is {size[0]}x{size[1]}; set image_size to resize them"
            )


def _decode(path: str, mode: str, image_size: int | None) -> torch.Tensor:
    """One image as uint8 ``(C, H, W)``, resized/cropped exactly as the evaluation transform."""
    img = _pil_loader(path, mode)
    for step in _resize_steps(image_size, crop=True):
        img = step(img)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _decode_all(samples: Sequence[tuple[str, int]], mode: str, size: int | None) -> torch.Tensor:
    images = [_decode(path, mode, size) for path, _ in samples]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise ValueError(
            f"in_memory=True needs images of one size, found {len(shapes)} sizes (e.g. "
            f"{sorted(shapes)[:3]}); set image_size to resize them"
        )
    return torch.stack(images) if images else torch.empty(0, _MODES_INV[mode], 1, 1)


class ImageFolderDataModule(DisjointSplitDataModule):
    """Any ``root/<train_dir>/<class>/<image>`` + ``root/<test_dir>/<class>/<image>`` tree.

    Serves TinyImageNet, Caltech-256 and the CIFAR-10 JPEG tree alike (torchvision
    ``ImageFolder`` layout). Both folders must hold the same class sub-folders; ``num_classes``
    is their number.

    Args:
        root: folder holding ``train_dir`` and ``test_dir``.
        train_dir, test_dir: names of the two sub-folders.
        image_size: resize the shorter side and center-crop to a square (needed when image
            sizes vary); None keeps native sizes.
        channels: 3 (images converted to RGB) or 1 (converted to grayscale, PIL mode "L").
        augment: training augmentations (loaders only; probes never see them): ``True`` =
            ``["crop", "flip"]``, ``False`` / ``[]`` = none, or a list of names from
            :data:`~lightning_saliency.data.augment.AUGMENTATIONS` (``["crop"]`` for glyphs
            and digits, where flips are wrong).
        crop_padding: the crop's padding (None: ``max(1, side // 8)``, 4 at 32x32).
        crop_mode: ``"zeros"`` (black borders) or ``"reflect"`` (mirrored, as airbench94).
        in_memory: decode every image once into a uint8 tensor (all images must then have one
            size) and serve batches from memory with batched, epoch-keyed crop/flip drawn from
            a dedicated generator seeded by ``split_seed`` (no PIL per sample, no workers:
            ``num_workers`` is not used). Values equal the file-backed path's.
        cache_dir: with ``in_memory``, keep the decoded tensors in this folder, keyed by the
            file list, sizes and modification times (None: decode every run).
        shortcut, memorize, shift: the positive controls planted into one split
            (:class:`DisjointSplitDataModule`).
        mean, std: the normalization; ``"auto"`` (default) computes the per-channel mean and
            population std of ``stats_samples`` evenly spaced training images (after resizing,
            before augmentation; :func:`~lightning_saliency.data.memory.image_stats`), stored
            in :meth:`state_dict` so a resumed run keeps them; None: inputs in [0, 1].
        stats_samples: how many training images ``"auto"`` reads (None: all).

    Other arguments: see :class:`DisjointSplitDataModule`.

    >>> import tempfile
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> for part in ("train", "test"):
    ...     for cls in ("cat", "dog"):
    ...         os.makedirs(os.path.join(root, part, cls))
    ...         for i in range(2):
    ...             Image.new("RGB", (6, 6)).save(os.path.join(root, part, cls, f"{i}.png"))
    >>> dm = ImageFolderDataModule(root, image_size=4, batch_size=2, mean=None, std=None)
    >>> dm.num_classes, dm.in_chans, dm.image_size
    (2, 3, 4)
    >>> dm.setup("fit"); [len(dm.split_dataset(k)) for k in range(2)]
    [2, 2]
    """

    def __init__(
        self,
        root: str,
        *,
        train_dir: str = "train",
        test_dir: str = "test",
        image_size: int | None = None,
        channels: int = 3,
        augment: bool | str | list[str] = False,
        crop_padding: int | None = None,
        crop_mode: str = "zeros",
        in_memory: bool = False,
        cache_dir: str | None = None,
        split_factor: int = 2,
        num_models: int = 2,
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        mean: Sequence[float] | str | None = STATS_FROM_DATA,
        std: Sequence[float] | str | None = STATS_FROM_DATA,
        stats_samples: int | None = DEFAULT_STATS_SAMPLES,
        pin_memory: bool = False,
        shortcut: dict[str, Any] | None = None,
        memorize: dict[str, Any] | None = None,
        shift: dict[str, Any] | None = None,
    ) -> None:
        if channels not in _MODES or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if stats_samples is not None and (
            isinstance(stats_samples, bool) or not isinstance(stats_samples, int)
            or stats_samples < 1
        ):  # fmt: skip
            raise ValueError(f"stats_samples must be None or an int >= 1, got {stats_samples!r}")
        self.augment = parse_augment(augment)
        self.crop_padding = check_padding(crop_padding)
        self.crop_mode = check_crop_mode(crop_mode)
        super().__init__(
            split_factor=split_factor,
            num_models=num_models,
            split_seed=split_seed,
            batch_size=batch_size,
            num_workers=num_workers,
            mean=mean,
            std=std,
            in_chans=channels,
            image_size=image_size,
            pin_memory=pin_memory,
            shortcut=shortcut,
            memorize=memorize,
            shift=shift,
        )
        if self._mean is not None and len(self._mean) not in (1, channels):
            raise ValueError(f"mean/std need 1 or {channels} entries, got mean={self._mean}")
        if in_memory and num_workers > 0:
            warnings.warn(
                f"in_memory=True serves batches from memory in the main process; "
                f"num_workers={num_workers} is not used",
                stacklevel=2,
            )
        self.root = os.path.expanduser(str(root))
        self.train_dir = train_dir
        self.test_dir = test_dir
        self.channels = channels
        self.in_memory = bool(in_memory)
        self.cache_dir = None if cache_dir is None else os.path.expanduser(str(cache_dir))
        self.stats_samples = stats_samples
        self._resize = image_size
        self._folders_cache: tuple[Any, Any] | None = None
        self._memory: dict[str, torch.Tensor] | None = None

    @property
    def _mode(self) -> str:
        return _MODES[self.channels]

    def _folders(self) -> tuple[str, str]:
        train = os.path.join(self.root, self.train_dir)
        test = os.path.join(self.root, self.test_dir)
        missing = [p for p in (train, test) if not os.path.isdir(p)]
        if missing:
            raise FileNotFoundError(
                f"ImageFolderDataModule(root={self.root!r}): missing folder(s) "
                f"{', '.join(missing)}; expected the layout <root>/{self.train_dir}/<class>/<image> "
                f"and <root>/{self.test_dir}/<class>/<image> (set train_dir/test_dir if the "
                f"folders are named differently)"
            )
        return train, test

    def _classes(self) -> list[str]:
        from torchvision.datasets.folder import find_classes

        train, test = self._folders()
        found = []
        for folder in (train, test):
            try:
                found.append(find_classes(folder)[0])
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"no class sub-folders in {folder}; expected <class>/<image> inside it"
                ) from err
        if set(found[0]) != set(found[1]):
            only_train = sorted(set(found[0]) - set(found[1]))
            only_test = sorted(set(found[1]) - set(found[0]))
            raise ValueError(
                f"the class folders of {train} and {test} differ: only in {self.train_dir}: "
                f"{only_train[:10]}{' ...' if len(only_train) > 10 else ''}; only in "
                f"{self.test_dir}: {only_test[:10]}{' ...' if len(only_test) > 10 else ''}"
            )
        return found[0]

    def _infer_num_classes(self) -> int:
        return len(self._classes())

    def _image_folders(self) -> tuple[Any, Any]:
        """The train and test ``ImageFolder`` file lists (no transform), scanned once."""
        if self._folders_cache is None:
            from torchvision.datasets import ImageFolder

            self._classes()  # clear errors for a bad layout
            loader = functools.partial(_pil_loader, mode=self._mode)
            self._folders_cache = tuple(
                ImageFolder(path, loader=loader) for path in self._folders()
            )
        return self._folders_cache

    # ------------------------------------------------------------------ decoded images
    def _cache_path(self, part: str, samples: Sequence[tuple[str, int]]) -> str | None:
        if self.cache_dir is None:
            return None
        files = []
        for path, target in samples:
            st = os.stat(path)
            files.append((os.path.relpath(path, self.root), target, st.st_size, st.st_mtime_ns))
        key = json.dumps([os.path.abspath(self.root), part, self._mode, self._resize, files])
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return os.path.join(self.cache_dir, f"imagefolder-{part}-{digest}.pt")

    def _decoded(self, part: str) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` images of ``"train"`` or ``"test"`` (decoded once)."""
        if self._memory is None:
            self._memory = {}
        if part not in self._memory:
            folder = self._image_folders()[0 if part == "train" else 1]
            path = self._cache_path(part, folder.samples)
            if path is not None and os.path.isfile(path):
                images = torch.load(path, weights_only=True)
            else:
                images = _decode_all(folder.samples, self._mode, self._resize)
                if path is not None:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    torch.save(images, path + ".tmp")
                    os.replace(path + ".tmp", path)
            self._memory[part] = images
        return self._memory[part]

    def _compute_stats(self) -> tuple[Sequence[float], Sequence[float]]:
        samples = self._image_folders()[0].samples
        idx = stats_indices(len(samples), self.stats_samples)
        if self.in_memory:
            return image_stats(self._decoded("train")[idx])
        return image_stats([_decode(samples[i][0], self._mode, self._resize) for i in idx])

    def _build_datasets(self) -> tuple[Dataset, ...]:
        train, test = self._image_folders()
        mean, std = self.mean, self.std
        if self.in_memory:
            common = dict(mean=mean, std=std, classes=train.classes)
            images, targets = self._decoded("train"), torch.tensor(train.targets)
            base = InMemoryImages(images, targets, **common)
            heldout = InMemoryImages(
                self._decoded("test"),
                torch.tensor(test.targets),
                **common,
            )
            augmented = InMemoryImages(
                images, targets, augment=self.augment, padding=self.crop_padding,
                crop_mode=self.crop_mode,
                seed=self.split_seed, **common,
            )  # fmt: skip
            return augmented, heldout, base
        size = self._resize
        if size is None:
            _check_one_size([*train.samples, *test.samples])
        eval_tf = eval_transform(mean, std, size, crop=True)
        train_tf = train_transform(
            mean, std, size, self.augment, self.crop_padding, crop=True, crop_mode=self.crop_mode
        )
        test.transform = eval_tf
        return TransformDataset(train, train_tf), test, TransformDataset(train, eval_tf)

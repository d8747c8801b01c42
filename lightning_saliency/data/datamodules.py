"""The disjoint-split DataModule: K loaders, one per disjoint split, and a held-out set."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Subset

from ._persistence import SplitStateMixin
from ._utils import (
    STATS_FROM_DATA,
    TransformDataset,
    _check_positive_int,
    _check_stats,
    _infer_num_classes,
)
from .controls import RelabeledSplit, ShiftedSplit, check_memorize, check_shift
from .sampling import EpochShuffleSampler, find_epoch_keyed, mix_seed
from .shortcut import PlantedShortcut, check_shortcut
from .splits import check_split_args, disjoint_splits

__all__ = ["DisjointSplitDataModule", "TransformDataset"]

SPLITS_FILENAME = "splits.json"


class DisjointSplitDataModule(SplitStateMixin, L.LightningDataModule):
    """Train K models on K pairwise disjoint splits of a train set; validate on a held-out set.

    The train set is cut into ``split_factor`` disjoint parts of ``n // split_factor`` samples
    (:func:`disjoint_splits`, seeded by ``split_seed``); model ``k`` (``k < num_models``) only
    ever sees part ``k``. :meth:`train_dataloader` returns a
    :class:`~lightning.pytorch.utilities.CombinedLoader` over K loaders (mode
    ``"min_size"``), so a training batch is a list of K ``(x, y)`` pairs;
    :meth:`val_dataloader` / :meth:`test_dataloader` iterate the held-out set.

    Datasets may be passed in, or a subclass builds them in :meth:`_build_datasets` (and
    downloads in :meth:`_download`, which :meth:`prepare_data` calls). Passed-in datasets must
    already yield model inputs; ``mean``/``std`` then *describe* the normalization they apply
    (used for :attr:`input_range` and :meth:`unnormalize`); built-in subclasses apply it.

    The split indices are part of the run: :meth:`state_dict` (saved in checkpoints),
    ``splits.json`` in the trainer's log dir on ``setup("fit")``, and :meth:`save_splits`.

    Args:
        train_dataset: dataset of ``(x, y)`` pairs to split (None: built by a subclass).
        heldout_dataset: held-out dataset of ``(x, y)`` pairs (validation and test).
        split_factor: number of parts the train set is cut into.
        num_models: K, the number of models / splits used (``1 <= K <= split_factor``).
        split_seed: seed of the split permutation, of the per-split, per-epoch shuffling and
            of in-memory augmentation.
        batch_size: batch size of every loader (per model).
        num_workers: DataLoader workers per loader.
        mean: per-channel mean of the input normalization (None: inputs are in [0, 1];
            ``"auto"``: computed from the training images by subclasses that read images).
        std: per-channel std of the input normalization (None / ``"auto"`` as ``mean``).
        num_classes: number of classes (None: inferred from the datasets).
        in_chans: number of input channels (None: inferred from a sample).
        image_size: input height/width (None: inferred from a sample).
        pin_memory: passed to every DataLoader.
        shortcut: the positive control (:mod:`~lightning_saliency.data.shortcut`): e.g.
            ``{"split": 0, "classes": [0, 1], "size": 3}`` puts a class-placed bright square
            into split 0's images of those classes (all classes by default), in training and
            in its probes; the other splits and the held-out set stay clean.
        memorize: the memorization control (:mod:`~lightning_saliency.data.controls`): e.g.
            ``{"split": 0, "fraction": 0.5}`` moves half of split 0's labels to another class,
            fixed per image (in training and in its probes).
        shift: the shifted-distribution control (:mod:`~lightning_saliency.data.controls`):
            e.g. ``{"split": 0, "kind": "rotate", "fraction": 0.5}`` turns half of split 0's
            images by 90 degrees (a sub-population only model 0 trains on).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> x = torch.rand(20, 1, 4, 4)
        >>> y = torch.arange(20) % 2
        >>> dm = DisjointSplitDataModule(TensorDataset(x, y), TensorDataset(x[:6], y[:6]),
        ...                              split_factor=4, num_models=2, batch_size=5)
        >>> dm.setup("fit")
        >>> [len(dm.split_dataset(k)) for k in range(dm.num_models)]
        [5, 5]
        >>> batch = next(iter(dm.train_dataloader()))[0]
        >>> [tuple(xk.shape) for xk, yk in batch]
        [(5, 1, 4, 4), (5, 1, 4, 4)]
        >>> dm.input_range, dm.num_classes, dm.in_chans, dm.image_size
        ((0.0, 1.0), 2, 1, 4)
    """

    def __init__(
        self,
        train_dataset: Dataset | None = None,
        heldout_dataset: Dataset | None = None,
        *,
        split_factor: int = 2,
        num_models: int = 2,
        split_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        mean: Sequence[float] | str | None = None,
        std: Sequence[float] | str | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        image_size: int | None = None,
        pin_memory: bool = False,
        shortcut: dict[str, Any] | None = None,
        memorize: dict[str, Any] | None = None,
        shift: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.shortcut = check_shortcut(shortcut, check_split_args(split_factor, num_models)[1])
        self.memorize = check_memorize(memorize, check_split_args(split_factor, num_models)[1])
        self.shift = check_shift(shift, check_split_args(split_factor, num_models)[1])
        self.split_factor, self.num_models = check_split_args(split_factor, num_models)
        if not isinstance(split_seed, int) or isinstance(split_seed, bool):
            raise TypeError(f"split_seed must be an int, got {split_seed!r}")
        self.split_seed = split_seed
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.num_workers = _check_positive_int("num_workers", num_workers, minimum=0)
        self.pin_memory = bool(pin_memory)
        self._auto_stats = STATS_FROM_DATA in (mean, std)
        self._mean: tuple[float, ...] | None = None
        self._std: tuple[float, ...] | None = None
        if self._auto_stats:
            if mean != std:
                raise ValueError(
                    f"mean and std must both be {STATS_FROM_DATA!r} (computed from the training "
                    f"images) or both be given, got mean={mean!r}, std={std!r}"
                )
            if type(self)._compute_stats is DisjointSplitDataModule._compute_stats:
                raise ValueError(
                    f"{type(self).__name__} cannot compute normalization statistics: "
                    f"mean={STATS_FROM_DATA!r} needs a data module that reads images (e.g. "
                    "ImageFolderDataModule); pass the mean/std its datasets apply, or None"
                )
        else:
            self._mean, self._std = _check_stats(mean, std)  # type: ignore[arg-type]
        for name, value in (
            ("num_classes", num_classes),
            ("in_chans", in_chans),
            ("image_size", image_size),
        ):
            if value is not None:
                _check_positive_int(name, value)
        if (train_dataset is None) != (heldout_dataset is None):
            raise ValueError(
                "pass both train_dataset and heldout_dataset, or neither (a subclass builds them)"
            )
        # hparams = the concrete class's own arguments (so ``cls(**hparams)`` and
        # ``load_from_checkpoint`` work); base-only arguments a subclass fixes are left out
        own = inspect.signature(type(self).__init__).parameters
        derived = [k for k in ("num_classes", "in_chans", "image_size") if k not in own]
        self.save_hyperparameters(ignore=["train_dataset", "heldout_dataset", *derived])

        self._num_classes = num_classes
        self._in_chans = in_chans
        self._image_size = image_size
        self._train_set: Dataset | None = train_dataset
        self._train_eval_set: Dataset | None = train_dataset
        self._heldout_set: Dataset | None = heldout_dataset
        self._split_indices: list[torch.Tensor] | None = None
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ subclass hooks
    def _download(self) -> None:
        """Download the data if needed (called from :meth:`prepare_data`; default: no-op)."""

    def _compute_stats(self) -> tuple[Sequence[float], Sequence[float]]:
        """Per-channel ``(mean, std)`` of the training images in [0, 1], for ``mean="auto"``.

        Called once, before :meth:`_build_datasets`; must not read :attr:`mean`/:attr:`std`.
        Subclasses that read images implement it; the base class cannot.
        """
        raise NotImplementedError

    def _build_datasets(self) -> tuple[Dataset, ...]:
        """Build ``(train, heldout)`` or ``(train, heldout, train_eval)`` datasets.

        ``train`` feeds the training loaders (may be augmented); ``train_eval`` is the same
        samples with the deterministic evaluation transform (used by :meth:`split_dataset`;
        defaults to ``train``). Must not download.
        """
        raise ValueError(
            f"{type(self).__name__} has no datasets: pass train_dataset and heldout_dataset, "
            f"or subclass it and implement _build_datasets()"
        )

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download the data (rank 0 of each node only)."""
        self._download()

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets and compute the splits (once); on ``"fit"`` write ``splits.json``.

        ``splits.json`` goes to ``trainer.log_dir`` when a trainer is attached and that is not
        None; every rank reads ``log_dir`` (it is a collective call), only global rank 0 writes.
        One already there is never replaced (:meth:`write_splits_once`).
        """
        self._ensure_splits()
        self._fill_hparams()
        if stage == "fit":
            trainer = getattr(self, "trainer", None)
            if trainer is not None:
                log_dir = trainer.log_dir
                if log_dir is not None and trainer.is_global_zero:
                    self.write_splits_once(os.path.join(log_dir, SPLITS_FILENAME))

    def _fill_hparams(self) -> None:
        # ``num_classes``/``in_chans``/``image_size`` given as None are inferred; record the
        # inferred values so that the logged hparams agree with a model that received them
        # (Lightning refuses to merge model and data hparams whose shared keys differ)
        for key in ("num_classes", "in_chans", "image_size"):
            if key in self.hparams and self.hparams[key] is None:
                value = getattr(self, key)
                self._hparams[key] = value
                # set by Lightning's save_hyperparameters, which does not declare it
                self._hparams_initial[key] = value  # type: ignore[attr-defined]

    def train_dataloader(self) -> CombinedLoader:
        """K shuffled loaders, loader ``k`` over split ``k`` only, combined with ``min_size``.

        Loader k's order in epoch e is a permutation drawn from ``mix_seed(mix_seed(split_seed,
        k), e)`` (:class:`~lightning_saliency.data.sampling.EpochShuffleSampler`; Lightning sets
        the epoch), so a resumed run sees the same order as an uninterrupted one.
        """
        self._ensure_splits()
        loaders = []
        for k in range(self.num_models):
            dataset = self.split_dataset(k, train_transform=True)
            sampler = EpochShuffleSampler(dataset, seed=mix_seed(self.split_seed, k))
            loaders.append(self._loader(dataset, shuffle=False, sampler=sampler))
        return CombinedLoader(loaders, mode="min_size")

    def val_dataloader(self) -> DataLoader:
        """The held-out set, in order."""
        return self._loader(self.heldout_dataset(), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The held-out set, in order."""
        return self._loader(self.heldout_dataset(), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The held-out set, in order."""
        return self._loader(self.heldout_dataset(), shuffle=False)

    def _loader(
        self, dataset: Dataset, shuffle: bool, sampler: EpochShuffleSampler | None = None
    ) -> DataLoader:
        # epoch-keyed (in-memory) datasets gather batches in the main process: a worker's copy
        # would not see the epoch change
        workers = 0 if find_epoch_keyed(dataset) is not None else self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            generator=sampler.loader_generator if sampler is not None else None,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
        )

    # ------------------------------------------------------------------ datasets and splits
    def _ensure_datasets(self) -> None:
        if self._train_set is not None and self._heldout_set is not None:
            return
        self._resolve_stats()
        built = tuple(self._build_datasets())
        if len(built) not in (2, 3):
            raise ValueError(
                f"_build_datasets() must return (train, heldout) or (train, heldout, "
                f"train_eval), got {len(built)} items"
            )
        self._train_set, self._heldout_set = built[0], built[1]
        self._train_eval_set = built[2] if len(built) == 3 and built[2] is not None else built[0]

    def _ensure_splits(self) -> list[torch.Tensor]:
        self._ensure_datasets()
        if self._split_indices is None:
            n = len(self._train_set)  # type: ignore[arg-type]
            self._split_indices = disjoint_splits(
                n, self.split_factor, self.num_models, seed=self.split_seed
            )
            if self._pending_state is not None:
                state, self._pending_state = self._pending_state, None
                self.load_state_dict(state)
        return self._split_indices

    @property
    def split_indices(self) -> list[torch.Tensor]:
        """The K sorted int64 index tensors into the train set (computed on first access)."""
        return self._ensure_splits()

    def train_dataset(self, train_transform: bool = False) -> Dataset:
        """The whole train set (all splits); with ``train_transform`` the augmented view."""
        self._ensure_datasets()
        return self._train_set if train_transform else self._train_eval_set  # type: ignore[return-value]

    def split_dataset(self, k: int, train_transform: bool = False) -> Subset:
        """Split ``k`` of the train set as a :class:`~torch.utils.data.Subset`.

        By default with the deterministic evaluation transform (no augmentation), which is
        what probes for interpretation maps should use; ``train_transform=True`` gives the
        view the training loader uses.
        """
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < self.num_models:
            raise ValueError(f"k must be an int in [0, num_models={self.num_models}), got {k!r}")
        indices = self._ensure_splits()[k]
        data = self.train_dataset(train_transform)
        if self.shortcut is not None and self.shortcut["split"] == k:
            data = PlantedShortcut(data, classes=self.shortcut["classes"],
                                   size=self.shortcut["size"], value=self.input_range[1])  # fmt: skip
        split = Subset(data, indices.tolist())
        return self._with_controls(k, split)

    def _with_controls(self, k: int, split: Subset) -> Subset:
        """Split k with the memorization and shift controls planted, if they name it (a view
        of the split's own items, so the fractions count this split's images)."""
        view: Dataset = split
        if self.shift is not None and self.shift["split"] == k:
            view = ShiftedSplit(view, kind=self.shift["kind"], input_range=self.input_range,
                                fraction=self.shift["fraction"], seed=self.shift["seed"])  # fmt: skip
        if self.memorize is not None and self.memorize["split"] == k:
            view = RelabeledSplit(view, fraction=self.memorize["fraction"],
                                  num_classes=self.num_classes, seed=self.memorize["seed"])  # fmt: skip
        return split if view is split else Subset(view, list(range(len(split))))

    def heldout_dataset(self) -> Dataset:
        """The held-out dataset (the validation and test set)."""
        self._ensure_datasets()
        return self._heldout_set  # type: ignore[return-value]

    # ------------------------------------------------------------------ input space
    def _sample_shape(self) -> tuple[int, ...]:
        self._ensure_datasets()
        x, _ = self._heldout_set[0]  # type: ignore[index]
        return tuple(torch.as_tensor(x).shape)

    @property
    def num_classes(self) -> int:
        """Number of classes (given, or inferred from the datasets)."""
        if self._num_classes is None:
            self._num_classes = self._infer_num_classes()
        return self._num_classes

    def _infer_num_classes(self) -> int:
        self._ensure_datasets()
        found = [_infer_num_classes(d) for d in (self._train_set, self._heldout_set)]
        if found[0] is None and found[1] is None:
            raise ValueError(
                f"cannot infer num_classes from the datasets of {type(self).__name__}; "
                f"pass num_classes explicitly"
            )
        return max(f for f in found if f is not None)

    @property
    def in_chans(self) -> int:
        """Number of input channels (given, or read from a held-out sample)."""
        if self._in_chans is None:
            shape = self._sample_shape()
            self._in_chans = shape[0] if len(shape) == 3 else 1
        return self._in_chans

    @property
    def image_size(self) -> int:
        """Input height (= width for square inputs; given, or read from a held-out sample)."""
        if self._image_size is None:
            self._image_size = self._sample_shape()[-2]
        return self._image_size

    def _resolve_stats(self) -> None:
        if self._auto_stats and self._mean is None:
            self._mean, self._std = _check_stats(*self._compute_stats())

    @property
    def mean(self) -> tuple[float, ...] | None:
        """Per-channel mean of the input normalization (None: inputs in [0, 1]).

        With ``mean="auto"`` computed from the training images on first access.
        """
        self._resolve_stats()
        return self._mean

    @property
    def std(self) -> tuple[float, ...] | None:
        """Per-channel std of the input normalization (see :attr:`mean`)."""
        self._resolve_stats()
        return self._std

    def _stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        if self.mean is None or self.std is None:
            return None
        if len(self.mean) not in (1, channels):
            raise ValueError(
                f"mean/std have {len(self.mean)} entries but the inputs have {channels} channels"
            )
        if len(self.mean) == 1:
            return self.mean * channels, self.std * channels
        return self.mean, self.std

    @property
    def input_range(self) -> tuple[float, float]:
        """``(x_min, x_max)`` of the model's input space: images in [0, 1] after normalization.

        ``x_min = min_c (0 - mean_c) / std_c`` and ``x_max = max_c (1 - mean_c) / std_c``;
        ``(0.0, 1.0)`` without normalization.
        """
        if self.mean is None or self.std is None:
            return (0.0, 1.0)
        lo = min((0.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        hi = max((1.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        return (float(lo), float(hi))

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map model inputs ``(N, C, H, W)`` (or ``(C, H, W)``) back to images in [0, 1].

        Computes ``x * std_c + mean_c`` per channel, clamped to [0, 1].
        """
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
            raise ValueError(
                f"unnormalize expects a tensor shaped (N, C, H, W) or (C, H, W), got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        channels = x.shape[-3]
        stats = self._stats(channels)
        out = x.float()
        if stats is not None:
            mean = torch.tensor(stats[0], dtype=out.dtype, device=out.device).view(-1, 1, 1)
            std = torch.tensor(stats[1], dtype=out.dtype, device=out.device).view(-1, 1, 1)
            out = out * std + mean
        return out.clamp(0.0, 1.0)

"""Tests of lightning_saliency.data: disjoint splits and the DataModules (local files only)."""

from __future__ import annotations

import json
import os
import pickle
import struct
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import Subset, TensorDataset

from lightning_saliency.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CIFAR10DataModule,
    DigitsDataModule,
    DisjointSplitDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    disjoint_splits,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


# --------------------------------------------------------------------------- helpers
def index_datasets(n: int, n_heldout: int = 6, num_classes: int = 3):
    """Train set whose x (1, 2, 2) is filled with the sample's index; held-out uses -index-1."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.arange(n) % num_classes
    xh = -torch.arange(1, n_heldout + 1, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    yh = torch.arange(n_heldout) % num_classes
    return TensorDataset(x, y), TensorDataset(xh.contiguous(), yh)


def index_dm(n: int = 40, **kwargs) -> DisjointSplitDataModule:
    train, heldout = index_datasets(n)
    kwargs.setdefault("batch_size", 4)
    return DisjointSplitDataModule(train, heldout, **kwargs)


def seen_per_model(dm: DisjointSplitDataModule) -> list[list[int]]:
    seen: list[list[int]] = [[] for _ in range(dm.num_models)]
    for batch, _, _ in dm.train_dataloader():
        assert len(batch) == dm.num_models
        for k, (x, _y) in enumerate(batch):
            seen[k].extend(x[:, 0, 0, 0].long().tolist())
    return seen


# --------------------------------------------------------------------------- disjoint_splits
@pytest.mark.parametrize(("n", "sf", "k"), [(100, 2, 2), (101, 4, 3), (17, 16, 16), (10, 3, 1)])
def test_splits_disjoint_sized_sorted(n: int, sf: int, k: int) -> None:
    splits = disjoint_splits(n, sf, k, seed=3)
    assert len(splits) == k
    all_idx = torch.cat(splits)
    assert all_idx.numel() == k * (n // sf)
    assert all_idx.unique().numel() == all_idx.numel()  # pairwise disjoint
    assert int(all_idx.min()) >= 0 and int(all_idx.max()) < n
    for s in splits:
        assert s.dtype == torch.int64 and s.numel() == n // sf
        assert torch.equal(s, s.sort().values)


def test_splits_default_num_models_and_prefix_consistency() -> None:
    full = disjoint_splits(64, 4, seed=5)
    assert len(full) == 4
    part = disjoint_splits(64, 4, num_models=2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(part, full[:2], strict=True))
    # the 4 parts of size 16 cover everything exactly once
    assert torch.equal(torch.cat(full).sort().values, torch.arange(64))
    # split_factor 1: one split that is the whole dataset
    assert torch.equal(disjoint_splits(7, 1)[0], torch.arange(7))


def test_splits_reproducible_and_seed_dependent() -> None:
    a = disjoint_splits(200, 2, seed=0)
    b = disjoint_splits(200, 2, seed=0)
    c = disjoint_splits(200, 2, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_splits_independent_of_global_rng() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = disjoint_splits(50, 2, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not advanced
    torch.manual_seed(999)
    torch.rand(17)
    b = disjoint_splits(50, 2, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": 10, "split_factor": 2.0}, TypeError, "split_factor must be an int"),
        ({"n": 10, "split_factor": True}, TypeError, "split_factor must be an int"),
        ({"n": 10, "split_factor": "2"}, TypeError, "split_factor must be an int"),
        ({"n": 10, "split_factor": 0}, ValueError, r"split_factor must be an int >= 1, got 0"),
        ({"n": 10, "split_factor": -2}, ValueError, r"split_factor must be an int >= 1, got -2"),
        ({"n": 10, "split_factor": 2, "num_models": 3}, ValueError, "num_models=3"),
        ({"n": 10, "split_factor": 2, "num_models": 0}, ValueError, "between 1 and"),
        ({"n": 10, "split_factor": 2, "num_models": 1.5}, TypeError, "num_models"),
        ({"n": 3, "split_factor": 4}, ValueError, r"fewer samples \(n=3\) than split_factor=4"),
        ({"n": -1, "split_factor": 1}, ValueError, "non-negative"),
    ],
)
def test_splits_bad_input(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        disjoint_splits(**kwargs)


# --------------------------------------------------------------------------- base DataModule
def test_datamodule_bad_input() -> None:
    train, heldout = index_datasets(3)
    with pytest.raises(ValueError, match="num_models must be between 1 and split_factor=2"):
        DisjointSplitDataModule(train, heldout, split_factor=2, num_models=3)
    with pytest.raises(TypeError, match="split_factor must be an int"):
        DisjointSplitDataModule(train, heldout, split_factor=2.5, num_models=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split_factor must be an int >= 1"):
        DisjointSplitDataModule(train, heldout, split_factor=0, num_models=1)
    with pytest.raises(ValueError, match="batch_size"):
        DisjointSplitDataModule(train, heldout, batch_size=0)
    with pytest.raises(ValueError, match="same length"):
        DisjointSplitDataModule(train, heldout, mean=(0.5, 0.5), std=(0.5,))
    with pytest.raises(ValueError, match="std entry must be > 0"):
        DisjointSplitDataModule(train, heldout, mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="both be given"):
        DisjointSplitDataModule(train, heldout, mean=(0.5,))
    with pytest.raises(ValueError, match="pass both"):
        DisjointSplitDataModule(train, None)
    dm = DisjointSplitDataModule(train, heldout, split_factor=4, num_models=1)
    with pytest.raises(ValueError, match="fewer samples"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="no datasets"):
        DisjointSplitDataModule().setup("fit")


def test_train_loader_model_k_sees_only_split_k() -> None:
    dm = index_dm(n=43, split_factor=4, num_models=3, batch_size=4, split_seed=2)
    dm.setup("fit")
    assert [len(s) for s in dm.split_indices] == [10, 10, 10]
    for epoch in range(2):
        seen = seen_per_model(dm)
        for k in range(3):
            # every sample of split k exactly once per epoch, nothing else
            assert sorted(seen[k]) == dm.split_indices[k].tolist(), (epoch, k)
    # shuffled: the order is not the sorted order, and differs between loaders
    seen = seen_per_model(dm)
    assert seen[0] != sorted(seen[0])
    # split_dataset(k) is the same subset
    sub = dm.split_dataset(1)
    assert isinstance(sub, Subset)
    assert [int(sub[i][0][0, 0, 0]) for i in range(len(sub))] == dm.split_indices[1].tolist()


def test_train_loader_order_is_seeded_and_keeps_global_rng() -> None:
    a, b = index_dm(split_seed=4), index_dm(split_seed=4)
    a.setup("fit")
    b.setup("fit")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    seen_a = seen_per_model(a)
    assert torch.equal(torch.get_rng_state(), state)  # iterating did not draw from it
    torch.manual_seed(1)
    assert seen_a == seen_per_model(b)


def test_val_and_test_loaders_are_the_heldout_set_in_order() -> None:
    dm = index_dm(n=20, batch_size=4)
    dm.setup("fit")
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        xs = torch.cat([x for x, _ in loader])[:, 0, 0, 0]
        assert xs.tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    assert len(dm.heldout_dataset()) == 6


def test_split_dataset_bad_k() -> None:
    dm = index_dm()
    with pytest.raises(ValueError, match=r"k must be an int in \[0, num_models=2\)"):
        dm.split_dataset(2)


def test_inferred_attributes() -> None:
    dm = index_dm()
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (3, 1, 2)
    dm2 = index_dm(num_classes=7, in_chans=1, image_size=2)
    assert dm2.num_classes == 7


def test_input_range_and_unnormalize_hand_cases() -> None:
    train, heldout = index_datasets(10)
    assert DisjointSplitDataModule(train, heldout).input_range == (0.0, 1.0)
    dm = DisjointSplitDataModule(train, heldout, mean=(0.5,), std=(0.5,))
    assert dm.input_range == (-1.0, 1.0)
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, -5.0]).view(1, 1, 1, 5)
    assert dm.unnormalize(x).flatten().tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]
    # two channels: (0-0.5)/0.25=-2, (0-0.25)/0.5=-0.5 -> min -2; (1-0.5)/0.25=2, 1.5 -> max 2
    dm2 = DisjointSplitDataModule(train, heldout, mean=(0.5, 0.25), std=(0.25, 0.5))
    assert dm2.input_range == (-2.0, 2.0)
    x2 = torch.tensor([[0.0, 1.0], [1.0, -0.5]]).view(1, 2, 1, 2)  # channel 0 / channel 1
    assert dm2.unnormalize(x2).flatten().tolist() == [0.5, 0.75, 0.75, 0.0]
    assert dm2.unnormalize(x2[0]).shape == (2, 1, 2)  # (C, H, W) works too
    # one mean entry broadcasts over 3 channels
    x3 = torch.zeros(2, 3, 2, 2)
    assert torch.equal(dm.unnormalize(x3), torch.full((2, 3, 2, 2), 0.5))
    with pytest.raises(ValueError, match="channels"):
        dm2.unnormalize(x3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        dm.unnormalize(torch.zeros(4))


def test_state_dict_round_trip_and_mismatch(tmp_path) -> None:
    dm = index_dm(n=30, split_factor=3, num_models=2, split_seed=5)
    state = dm.state_dict()
    assert set(state) == {
        "split_seed", "split_factor", "num_models", "n", "split_indices", "mean", "std",
        "settings",
    }  # fmt: skip
    assert state["mean"] is None and state["std"] is None
    assert (state["split_seed"], state["split_factor"], state["num_models"], state["n"]) == (
        5,
        3,
        2,
        30,
    )
    assert state["split_indices"] == [s.tolist() for s in disjoint_splits(30, 3, 2, seed=5)]
    assert all(isinstance(i, int) for s in state["split_indices"] for i in s)
    json.dumps(state)  # plain JSON

    same = index_dm(n=30, split_factor=3, num_models=2, split_seed=5)
    same.load_state_dict(state)  # validates silently
    assert same.state_dict() == state

    path = tmp_path / "run" / "splits.json"
    dm.save_splits(path)
    assert json.loads(path.read_text()) == state
    same.load_splits(path)

    other_seed = index_dm(n=30, split_factor=3, num_models=2, split_seed=6)
    with pytest.raises(ValueError, match=r"split_seed: saved 5, current 6"):
        other_seed.load_state_dict(state)
    other_n = index_dm(n=33, split_factor=3, num_models=2, split_seed=5)
    with pytest.raises(ValueError, match=r"n: saved 30, current 33"):
        other_n.load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        same.load_state_dict({"split_seed": 5})

    # same config but other indices (e.g. another torch version): the saved ones are adopted
    custom = dict(state, split_indices=[list(range(10)), list(range(10, 20))])
    adopt = index_dm(n=30, split_factor=3, num_models=2, split_seed=5)
    with pytest.warns(UserWarning, match="using the saved indices"):
        adopt.load_state_dict(custom)
    assert adopt.split_indices[1].tolist() == list(range(10, 20))
    assert sorted(seen_per_model(adopt)[0]) == list(range(10))
    overlap = dict(state, split_indices=[list(range(10)), list(range(5, 15))])
    with pytest.raises(ValueError, match="not pairwise disjoint"):
        index_dm(n=30, split_factor=3, num_models=2, split_seed=5).load_state_dict(overlap)
    short = dict(state, split_indices=[list(range(9)), list(range(10, 20))])
    with pytest.raises(ValueError, match="2 lists of 10 indices"):
        index_dm(n=30, split_factor=3, num_models=2, split_seed=5).load_state_dict(short)


def test_load_state_dict_before_setup_is_checked_at_setup() -> None:
    state = DigitsDataModule(image_size=8, split_seed=1).state_dict()
    dm = DigitsDataModule(image_size=8, split_seed=2)
    dm.load_state_dict(state)  # datasets not built yet: deferred
    with pytest.raises(ValueError, match="split_seed: saved 1, current 2"):
        dm.setup("fit")


def test_setup_writes_splits_json_only_on_global_zero(tmp_path) -> None:
    dm = index_dm()
    dm.trainer = SimpleNamespace(log_dir=str(tmp_path / "rank1"), is_global_zero=False)
    dm.setup("fit")
    assert not (tmp_path / "rank1").exists()
    dm.trainer = SimpleNamespace(log_dir=None, is_global_zero=True)
    dm.setup("fit")  # no log dir: nothing to write, no error
    dm.trainer = SimpleNamespace(log_dir=str(tmp_path / "rank0"), is_global_zero=True)
    dm.setup("validate")
    assert not (tmp_path / "rank0").exists()  # only on fit
    dm.setup("fit")
    assert json.loads((tmp_path / "rank0" / "splits.json").read_text()) == dm.state_dict()


class _Recorder(L.LightningModule):
    """Trivial module recording which sample indices each of the K models received."""

    def __init__(self, num_models: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(num_models))
        self.seen: list[list[int]] = [[] for _ in range(num_models)]

    def training_step(self, batch, batch_idx):
        loss = self.w.sum() * 0.0
        for k, (x, _y) in enumerate(batch):
            self.seen[k].extend(x[:, 0, 0, 0].long().tolist())
            loss = loss + self.w[k] * x.mean()
        return loss

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(str(tmp_path), name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def test_trainer_fit_splits_json_checkpoint_and_resume(tmp_path) -> None:
    dm = index_dm(n=24, split_factor=2, num_models=2, batch_size=5, split_seed=3)
    model = _Recorder(2)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    for k in range(2):
        assert sorted(model.seen[k]) == dm.split_indices[k].tolist()
    written = json.loads((tmp_path / "run" / "version_0" / "splits.json").read_text())
    assert written == dm.state_dict()
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["DisjointSplitDataModule"]
    assert saved == dm.state_dict()
    # resuming with another split seed must fail loudly
    other = index_dm(n=24, split_factor=2, num_models=2, batch_size=5, split_seed=4)
    with pytest.raises(ValueError, match="split_seed: saved 3, current 4"):
        _trainer(tmp_path, max_epochs=2).fit(_Recorder(2), datamodule=other, ckpt_path=ckpt)
    # resuming with the same settings works and keeps the splits
    same = index_dm(n=24, split_factor=2, num_models=2, batch_size=5, split_seed=3)
    model2 = _Recorder(2)
    _trainer(tmp_path, max_epochs=2).fit(model2, datamodule=same, ckpt_path=ckpt)
    assert sorted(model2.seen[1]) == dm.split_indices[1].tolist()


# --------------------------------------------------------------------------- Digits
def test_digits_real_data() -> None:
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    digits = load_digits()
    dm = DigitsDataModule(image_size=32, split_factor=2, num_models=2, batch_size=64)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 32)
    assert dm.input_range == (-1.0, 1.0)
    dm.setup("fit")
    train, heldout = dm.train_dataset(), dm.heldout_dataset()
    assert len(train) + len(heldout) == 1797
    # stratified: every class has round(0.2 * count) held-out samples
    counts = torch.bincount(torch.as_tensor(digits.target), minlength=10)
    held_counts = torch.bincount(heldout.tensors[1], minlength=10)
    assert held_counts.tolist() == [round(0.2 * int(c)) for c in counts]
    assert [len(dm.split_dataset(k)) for k in range(2)] == [len(train) // 2] * 2
    x, _ = heldout[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    # independent reference: skimage bilinear resize (edge mode = half-pixel, clamped)
    ref = np.stack(
        [
            resize(im / 16.0, (32, 32), order=1, mode="edge", anti_aliasing=False)
            for im in digits.images
        ]
    )
    ours = torch.cat([train.tensors[0], heldout.tensors[0]])
    labels = torch.cat([train.tensors[1], heldout.tensors[1]])
    got = dm.unnormalize(ours).flatten(1).double()
    dist = torch.cdist(got, torch.as_tensor(ref).flatten(1))
    # each of our images is one of sklearn's (float32 error only), with its label, and back
    assert float(dist.min(dim=1).values.max()) < 1e-5
    assert float(dist.min(dim=0).values.max()) < 1e-5
    assert torch.equal(labels, torch.as_tensor(digits.target)[dist.argmin(dim=1)])
    assert float(ours.min()) >= -1.0 and float(ours.max()) <= 1.0
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert [tuple(xk.shape) for xk, _ in batch] == [(64, 1, 32, 32)] * 2


def test_digits_native_size_labels_match_sklearn() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    dm = DigitsDataModule(image_size=8, mean=None, std=None, heldout_fraction=0.5, data_seed=3)
    dm.setup()
    lookup = {
        (digits.images[i] / 16.0).astype(np.float32).tobytes(): int(digits.target[i])
        for i in range(1797)
    }
    for ds in (dm.train_dataset(), dm.heldout_dataset()):
        xs, ys = ds.tensors
        for x, y in zip(xs[:50], ys[:50], strict=True):
            assert lookup[x[0].numpy().tobytes()] == int(y)
    with pytest.raises(ValueError, match="heldout_fraction"):
        DigitsDataModule(heldout_fraction=1.0)
    with pytest.raises(ValueError, match="1 channel"):
        DigitsDataModule(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


# --------------------------------------------------------------------------- CIFAR-10 (fake files)
def _write_fake_cifar(root, per_batch: int = 2, n_test: int = 4) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    index = 0
    for b in range(1, 6):
        data = np.zeros((per_batch, 3072), dtype=np.uint8)
        labels = []
        for r in range(per_batch):
            data[r] = 20 * index  # every pixel of train image i is 20 * i
            labels.append(index % 10)
            index += 1
        with open(folder / f"data_batch_{b}", "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
    test = np.repeat(np.arange(n_test, dtype=np.uint8)[:, None] * 7 + 1, 3072, axis=1)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": test, "labels": list(range(n_test))}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


@pytest.fixture
def no_md5(monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar10_missing_files_error(tmp_path) -> None:
    dm = CIFAR10DataModule(str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert str(tmp_path) in msg and "download=True" in msg
    assert "--data.init_args.download true" in msg and "data_batch_1" in msg


def test_cifar10_fake_local_files(tmp_path, no_md5) -> None:
    _write_fake_cifar(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), split_factor=2, num_models=2, batch_size=3, augment=True)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 3, 32)
    lo = min(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True))
    hi = max((1 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True))
    assert dm.input_range == pytest.approx((lo, hi))
    assert dm.input_range == pytest.approx((-1.98947, 2.12649), abs=1e-5)
    dm.prepare_data()  # download=False: nothing happens
    dm.setup("fit")
    assert len(dm.train_dataset()) == 10 and len(dm.heldout_dataset()) == 4
    # held-out: normalized exactly like the reference ((v / 255) - mean) / std
    x, y = dm.heldout_dataset()[2]
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    ref = (torch.full((3, 32, 32), 15 / 255) - mean) / std
    assert y == 2 and torch.allclose(x, ref, atol=1e-6)
    assert torch.allclose(dm.unnormalize(x[None]), torch.full((1, 3, 32, 32), 15 / 255), atol=1e-6)
    # probe view (split_dataset) is deterministic and un-augmented: image index from the pixel
    for k in range(2):
        sub = dm.split_dataset(k)
        decoded = [
            round(float(dm.unnormalize(sub[i][0][None]).mean()) * 255 / 20) for i in range(len(sub))
        ]
        assert decoded == dm.split_indices[k].tolist()
        assert torch.equal(sub[0][0], sub[0][0])
    # training loaders (augmented: padding may enter, so decode from the max pixel)
    for batch, _, _ in dm.train_dataloader():
        for k, (xk, yk) in enumerate(batch):
            assert xk.shape[1:] == (3, 32, 32)
            idx = (dm.unnormalize(xk).amax(dim=(1, 2, 3)) * 255 / 20).round().long()
            assert set(idx.tolist()) <= set(dm.split_indices[k].tolist())
            assert torch.equal(yk, idx % 10)


# --------------------------------------------------------------------------- MNIST (fake files)
def _write_idx(path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim  # unsigned byte data, ndim dimensions
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic))
        fh.write(struct.pack(f">{array.ndim}I", *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def _write_fake_mnist(root, n_train: int = 8, n_test: int = 3) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, step in (("train", n_train, 30), ("t10k", n_test, 11)):
        images = np.repeat((np.arange(n) * step)[:, None, None], 28, axis=1).repeat(28, axis=2)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) + 1) % 10)


def test_mnist_missing_files_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        MNISTDataModule(str(tmp_path)).setup("fit")
    msg = str(info.value)
    assert str(tmp_path) in msg and "download=True" in msg and "train-images-idx3-ubyte" in msg


def test_mnist_fake_local_files(tmp_path) -> None:
    _write_fake_mnist(tmp_path)
    dm = MNISTDataModule(str(tmp_path), split_factor=4, num_models=4, batch_size=2)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 28)
    assert dm.input_range == pytest.approx((-0.1307 / 0.3081, (1 - 0.1307) / 0.3081))
    dm.setup("fit")
    assert len(dm.train_dataset()) == 8 and len(dm.heldout_dataset()) == 3
    x, y = dm.heldout_dataset()[2]
    assert y == 3 and x.shape == (1, 28, 28)
    assert torch.allclose(x, torch.full((1, 28, 28), (22 / 255 - 0.1307) / 0.3081), atol=1e-6)
    for k in range(4):
        sub = dm.split_dataset(k)
        assert len(sub) == 2
        for i in range(2):
            xi, yi = sub[i]
            idx = round(float(dm.unnormalize(xi[None]).mean()) * 255 / 30)
            assert idx == dm.split_indices[k][i] and yi == (idx + 1) % 10
    resized = MNISTDataModule(str(tmp_path), image_size=14)
    resized.setup()
    assert resized.image_size == 14 and resized.heldout_dataset()[0][0].shape == (1, 14, 14)


# --------------------------------------------------------------------------- ImageFolder
COLORS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def _write_image_tree(
    root, per_class=(4, 2), classes=("blue", "green", "red"), size=(10, 8)
) -> None:
    for part, n in zip(("train", "test"), per_class, strict=True):
        for cls in classes:
            folder = root / part / cls
            folder.mkdir(parents=True)
            for i in range(n):
                ext = "png" if i % 2 == 0 else "jpg"  # both formats
                Image.new("RGB", size, COLORS[cls]).save(folder / f"{i}.{ext}")


def test_image_folder_tiny_tree(tmp_path) -> None:
    _write_image_tree(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), image_size=6, batch_size=2, mean=None, std=None)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (3, 3, 6)
    dm.setup("fit")
    assert len(dm.train_dataset()) == 12 and len(dm.heldout_dataset()) == 6
    assert [len(dm.split_dataset(k)) for k in range(2)] == [6, 6]
    for x, y in dm.heldout_dataset():
        assert x.shape == (3, 6, 6)
        color = torch.tensor(COLORS[["blue", "green", "red"][y]], dtype=torch.float32) / 255
        # solid colours survive PNG exactly and JPEG within compression error
        assert torch.allclose(x.mean(dim=(1, 2)), color, atol=0.02)
    seen = [0, 0]
    for batch, _, _ in dm.train_dataloader():
        for k, (xk, _) in enumerate(batch):
            seen[k] += len(xk)
    assert seen == [6, 6]
    native = ImageFolderDataModule(str(tmp_path), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert native.image_size == 8  # height of a native 10x8 (w x h) image
    assert native.input_range == pytest.approx((-0.485 / 0.229, (1 - 0.406) / 0.225))


def test_image_folder_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing folder"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup("fit")
    _write_image_tree(tmp_path / "a", classes=("blue", "green"))
    (tmp_path / "a" / "test" / "green").rename(tmp_path / "a" / "test" / "red")
    dm = ImageFolderDataModule(str(tmp_path / "a"))
    with pytest.raises(
        ValueError, match=r"differ: only in train: \['green'\]; only in test: \['red'\]"
    ):
        dm.setup("fit")
    with pytest.raises(ValueError, match="differ"):
        _ = dm.num_classes


class _HparamsRecorder(_Recorder):
    """Like _Recorder, with the hparams a real model shares with the data module."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, num_models: int) -> None:
        super().__init__(num_models)
        self.save_hyperparameters()


def test_hparams_merge_with_model_and_load_from_checkpoint(tmp_path) -> None:
    # the model got num_classes/in_chans/image_size from the data module (as a CLI link does);
    # Lightning refuses to log hparams if the shared keys differ
    _write_image_tree(tmp_path / "tree")
    dm = ImageFolderDataModule(str(tmp_path / "tree"), batch_size=2, split_seed=1)
    model = _HparamsRecorder(dm.num_classes, dm.in_chans, dm.image_size, dm.num_models)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    assert dm.hparams_initial["image_size"] == 8  # None was filled in with the native size
    ckpt = tmp_path / "folder.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = ImageFolderDataModule.load_from_checkpoint(ckpt)
    assert restored.hparams["split_seed"] == 1
    assert restored.state_dict() == dm.state_dict()

    digits = DigitsDataModule(image_size=8, batch_size=512, split_factor=4, num_models=1)
    model = _HparamsRecorder(10, 1, 8, 1)
    trainer = _trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, datamodule=digits)
    trainer.save_checkpoint(tmp_path / "digits.ckpt")
    again = DigitsDataModule.load_from_checkpoint(tmp_path / "digits.ckpt")
    assert (again.image_size, again.split_factor, again.num_models) == (8, 4, 1)
    assert again.state_dict() == digits.state_dict()

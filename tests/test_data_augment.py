"""Augmentation names, the crop fix, 1-channel folders, statistics from the training images and
the in-memory path (same images as PIL, batched augmentation against a numpy reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_saliency.data import (
    ImageFolderDataModule,
    InMemoryImages,
    augment_batch,
    image_stats,
    parse_augment,
)
from lightning_saliency.data.augment import draw_params

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def _dot_tree(root, size: int = 8, dot=(3, 2)) -> None:
    """Black PNGs with one white pixel at ``dot`` (row, col): a shift or a flip moves it."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[dot] = 255
    for part in ("train", "test"):
        for cls in ("a", "b"):
            (root / part / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(img).save(root / part / cls / f"{i}.png")


def _dot_positions(dm: ImageFolderDataModule, epochs: int = 30) -> set[tuple[int, int]]:
    """Where the white pixel lands in the training batches over several epochs."""
    found = set()
    loader = dm.train_dataloader()  # one loader: each pass over it is the next epoch
    for _ in range(epochs):
        for batch, _, _ in loader:
            for x, _y in batch:
                for img in x:
                    hit = (img[0] > 0.5).nonzero().tolist()
                    found.add(tuple(hit[0]) if len(hit) == 1 else None)
    return found


# --------------------------------------------------------------------------- names
def test_parse_augment_names_and_errors() -> None:
    assert parse_augment(True) == ("crop", "flip")
    assert parse_augment(False) == parse_augment([]) == parse_augment(None) == ()
    assert parse_augment(["flip", "crop", "flip"]) == ("crop", "flip")
    assert parse_augment(True, default=("crop",)) == ("crop",)
    with pytest.raises(ValueError, match=r"unknown augmentation.*\['rotate'\].*known names"):
        parse_augment(["crop", "rotate"])
    with pytest.raises(TypeError, match="augment must be a bool or a list"):
        parse_augment(3)  # type: ignore[arg-type]


def test_data_modules_validate_augment_early(tmp_path) -> None:
    # raised in __init__, before any file is read (the folder does not even exist)
    with pytest.raises(ValueError, match="unknown augmentation"):
        ImageFolderDataModule(str(tmp_path / "missing"), augment=["crop", "jitter"])
    with pytest.raises(ValueError, match="crop_padding"):
        ImageFolderDataModule(str(tmp_path / "missing"), crop_padding=0)
    with pytest.raises(ValueError, match="channels must be 1"):
        ImageFolderDataModule(str(tmp_path / "missing"), channels=2)


# --------------------------------------------------------------------------- the crop is applied
@pytest.mark.parametrize("in_memory", [False, True])
def test_crop_shifts_and_flip_is_optional(tmp_path, in_memory: bool) -> None:
    _dot_tree(tmp_path)
    kw = dict(batch_size=4, mean=None, std=None, in_memory=in_memory, split_factor=2)
    torch.manual_seed(0)  # the PIL path draws from the global RNG, as torchvision does
    # native size (image_size=None): the case where the crop used to be silently skipped
    crop = _dot_positions(
        ImageFolderDataModule(str(tmp_path), augment=["crop"], crop_padding=2, **kw)
    )
    allowed = {(3 + dy, 2 + dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert crop <= allowed and len(crop) >= 10  # shifted, never flipped (col stays in 0..4)
    flip = _dot_positions(ImageFolderDataModule(str(tmp_path), augment=["flip"], **kw))
    assert flip == {(3, 2), (3, 5)}
    none = _dot_positions(ImageFolderDataModule(str(tmp_path), augment=False, **kw), epochs=2)
    assert none == {(3, 2)}
    both = _dot_positions(ImageFolderDataModule(str(tmp_path), augment=True, **kw))
    mirrored = {(r, 7 - c) for r, c in allowed}  # default padding 8 // 8 = 1 is within 2
    assert both <= allowed | mirrored and both & mirrored - allowed
    # probes (split_dataset) never see augmentation
    dm = ImageFolderDataModule(str(tmp_path), augment=True, **kw)
    dm.setup("fit")
    assert all(
        (dm.split_dataset(0)[i][0][0] > 0.5).nonzero().tolist() == [[3, 2]] for i in range(2)
    )


# --------------------------------------------------------------------------- 1 channel, stats
def _noise_tree(root, per_class=(3, 2), size=(5, 4), seed=0) -> dict[str, list[np.ndarray]]:
    """Random-noise PNGs (lossless); returns the uint8 arrays of each part in ImageFolder order."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for part, n in zip(("train", "test"), per_class, strict=True):
        for cls in ("a", "b"):
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                if part == "test":
                    arr //= 4  # other statistics: they must not leak into the normalization
                Image.fromarray(arr).save(root / part / cls / f"{i}.png")
                arrays[part].append(arr)
    return arrays


def test_one_channel_image_folder(tmp_path) -> None:
    arrays = _noise_tree(tmp_path)
    for in_memory in (False, True):
        dm = ImageFolderDataModule(
            str(tmp_path), channels=1, mean=None, std=None, in_memory=in_memory, batch_size=2
        )
        assert dm.in_chans == 1
        dm.setup("fit")
        x, y = dm.train_dataset()[4]
        assert x.shape == (1, 4, 5) and int(y) == 1
        r, g, b = (arrays["train"][4][..., c].astype(np.int64) for c in range(3))
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16  # ITU-R 601-2, PIL's "L"
        assert np.abs(x[0].numpy() * 255 - luma).max() < 1e-3
        assert np.abs(luma - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 1


def test_stats_from_training_images_equal_numpy(tmp_path) -> None:
    arrays = _noise_tree(tmp_path)
    pixels = np.stack(arrays["train"]).reshape(-1, 3).astype(np.float64) / 255
    for in_memory in (False, True):
        dm = ImageFolderDataModule(str(tmp_path), in_memory=in_memory)  # mean/std "auto"
        assert dm.hparams["mean"] == "auto"
        np.testing.assert_allclose(dm.mean, pixels.mean(0), rtol=1e-12)
        np.testing.assert_allclose(dm.std, pixels.std(0), rtol=1e-12)  # population std
        dm.setup("fit")
        x, _ = dm.heldout_dataset()[0]
        ref = (arrays["test"][0].transpose(2, 0, 1) / 255 - pixels.mean(0)[:, None, None]) / (
            pixels.std(0)[:, None, None]
        )
        np.testing.assert_allclose(x.numpy(), ref, atol=1e-5)
    # a subsample: evenly spaced training images 0 and 3 of 6
    sub = ImageFolderDataModule(str(tmp_path), stats_samples=2)
    picked = np.stack([arrays["train"][0], arrays["train"][3]]).reshape(-1, 3) / 255
    np.testing.assert_allclose(sub.mean, picked.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sub.std, picked.std(0), rtol=1e-12)
    assert image_stats(torch.zeros(1, 2, 3, 3, dtype=torch.uint8)) == ((0.0, 0.0), (0.0, 0.0))


def test_computed_stats_are_saved_and_restored(tmp_path) -> None:
    _noise_tree(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), in_memory=True)
    state = dm.state_dict()
    assert state["mean"] == list(dm.mean) and state["std"] == list(dm.std)
    saved = dict(state, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    resumed = ImageFolderDataModule(str(tmp_path), in_memory=True)
    resumed.load_state_dict(saved)  # before setup: deferred, then adopted
    with pytest.warns(UserWarning, match="using the saved values"):
        resumed.setup("fit")
    assert resumed.mean == (0.5,) * 3 and resumed.input_range == (-2.0, 2.0)
    x, _ = resumed.heldout_dataset()[0]
    raw, _ = ImageFolderDataModule(str(tmp_path), mean=None, std=None).heldout_dataset()[0]
    assert torch.allclose(x, (raw - 0.5) / 0.25, atol=1e-6)
    given = ImageFolderDataModule(str(tmp_path), mean=[0.1] * 3, std=[0.2] * 3)
    given.load_state_dict(saved)
    with pytest.raises(ValueError, match="saved normalization"):
        given.setup("fit")


# --------------------------------------------------------------------------- in memory
def _mixed_tree(root) -> None:
    rng = np.random.default_rng(1)
    for part in ("train", "test"):
        for cls in ("a", "b", "c"):
            (root / part / cls).mkdir(parents=True)
            for i in range(4):
                ext = "png" if i % 2 else "jpg"
                arr = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / part / cls / f"{i}.{ext}")


@pytest.mark.parametrize("image_size", [None, 6])
def test_in_memory_equals_pil_path(tmp_path, image_size) -> None:
    _mixed_tree(tmp_path)
    kw = dict(image_size=image_size, split_factor=2, batch_size=3)
    pil = ImageFolderDataModule(str(tmp_path), **kw)
    mem = ImageFolderDataModule(str(tmp_path), in_memory=True, cache_dir=str(tmp_path / "c"), **kw)
    assert pil.mean == mem.mean and pil.std == mem.std  # same images, same statistics
    pil.setup("fit")
    mem.setup("fit")
    for a_set, b_set in ((pil.train_dataset(), mem.train_dataset()),
                         (pil.heldout_dataset(), mem.heldout_dataset())):  # fmt: skip
        assert len(a_set) == len(b_set) == 12
        for i in range(12):
            (xa, ya), (xb, yb) = a_set[i], b_set[i]
            assert int(ya) == int(yb) and xa.dtype == xb.dtype == torch.float32
            assert torch.equal(xa, xb), i  # JPEG decoded by the same PIL: identical floats
    # the cache gives the same tensors
    again = ImageFolderDataModule(
        str(tmp_path), in_memory=True, cache_dir=str(tmp_path / "c"), **kw
    )
    assert len(list((tmp_path / "c").iterdir())) == 2
    again.setup("fit")
    assert torch.equal(again.heldout_dataset()[5][0], mem.heldout_dataset()[5][0])


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_batched_augmentation_matches_numpy_reference(mode: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 3, 5, 7), dtype=np.uint8)
    params = draw_params(16, ("crop", "flip"), 2, torch.Generator().manual_seed(3))
    out = augment_batch(torch.from_numpy(images), params, padding=2, crop_mode=mode).numpy()
    np_mode = "constant" if mode == "zeros" else "reflect"
    for i in range(16):
        dy, dx = params["shift"][i].tolist()
        ref = np.pad(images[i], ((0, 0), (2, 2), (2, 2)), mode=np_mode)[:, dy : dy + 5, dx : dx + 7]
        if params["flip"][i]:
            ref = ref[:, :, ::-1]
        np.testing.assert_array_equal(out[i], ref)
    assert 0 < int(params["flip"].sum()) < 16 and len(set(params["shift"][:, 0].tolist())) > 1


def test_pil_reflect_crop_is_a_window_of_the_reflected_image() -> None:
    from lightning_saliency.data.augment import PadRandomCrop

    arr = np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    padded = np.pad(arr, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    windows = {padded[i : i + 6, j : j + 5].tobytes() for i in range(5) for j in range(5)}
    torch.manual_seed(0)
    seen = {np.asarray(PadRandomCrop(2, "reflect")(Image.fromarray(arr))).tobytes()
            for _ in range(40)}  # fmt: skip
    assert seen <= windows and len(seen) > 5
    with pytest.raises(ValueError, match="crop_mode"):
        PadRandomCrop(2, "wrap")


def test_in_memory_augmentation_is_seeded_per_epoch_and_leaves_global_rng() -> None:
    images = torch.randint(0, 256, (20, 1, 6, 6), dtype=torch.uint8)
    targets = torch.arange(20)

    def epoch_batch(seed: int, epoch: int) -> torch.Tensor:
        ds = InMemoryImages(images, targets, augment=("crop", "flip"), padding=2, seed=seed)
        ds.set_epoch(epoch)
        return ds.batch(torch.arange(20))[0]

    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = epoch_batch(seed=1, epoch=0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not drawn from
    assert torch.equal(a, epoch_batch(seed=1, epoch=0))  # reproducible
    assert not torch.equal(a, epoch_batch(seed=1, epoch=1))  # a new draw each epoch
    assert not torch.equal(a, epoch_batch(seed=2, epoch=0))
    # a sample's augmentation does not depend on the batch it is fetched in
    ds = InMemoryImages(images, targets, augment=("crop", "flip"), padding=2, seed=1)
    assert torch.equal(ds.batch([7, 3])[0][1], a[3]) and torch.equal(ds[7][0], a[7])
    # un-augmented values are exactly ToTensor + Normalize
    plain = InMemoryImages(images, targets, mean=[0.3], std=[0.2])
    ref = (images[4].float() / 255 - 0.3) / 0.2
    assert torch.allclose(plain[4][0], ref, atol=1e-6)

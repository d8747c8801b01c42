"""The positive control of issue 15: a planted interpretation gap is detected, and not
without the plant (docs/experiments.md, "Positive control").

Split 0's training images carry a class-placed bright square (``shortcut={"split": 0}``):
model 0 can classify them by the square. Integrated gradients from the black baseline
attributes ``(x - baseline) * gradient``, so a square that is present draws attribution and
one that is absent (the held-out probes, and split 1) cannot: model 0's maps of its own
training probes point at the square, the other model's and the held-out maps at the digit.
The interpretation loss on model 0's training probes then exceeds its test loss: a gap of
known sign. Measured over seeds 0, 1, 2 (5 epochs, 32 + 32 probes): model 0's gap -0.114,
-0.123, -0.125 with the square (every interval below 0), +0.036, +0.020, +0.001 without
(every interval across 0)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.data import DigitsDataModule, DisjointSplitDataModule
from lightning_saliency.generalization import MetricKey
from lightning_saliency.models import DisjointEnsemble

IG = {"method": "integrated_gradients", "steps": 16, "baseline": "min"}


def _fit(tmp_path, shortcut):
    L.seed_everything(0)
    dm = DigitsDataModule(image_size=16, batch_size=64, shortcut=shortcut)
    model = DisjointEnsemble(backbone="small_cnn", num_classes=10, in_chans=1, image_size=16,
                             optimizer="adamw", lr=3e-3)  # fmt: skip
    cb = InterpretationGeneralization(methods=[IG], num_train_probes=32, num_test_probes=32,
                                      metrics=["gap", "agreement"], max_overhead=None,
                                      log_images_every_n_epochs=0)  # fmt: skip
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", devices=1, deterministic=True,
                        logger=L.pytorch.loggers.CSVLogger(str(tmp_path)), callbacks=[cb],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, dm)
    return cb._last, cb.specs[0].label


@pytest.mark.slow
def test_a_planted_gap_is_detected_and_its_control_is_not(tmp_path) -> None:
    planted, label = _fit(tmp_path / "planted", {"split": 0})
    clean, _ = _fit(tmp_path / "clean", None)
    for agg in ("model_0", "mean"):
        key = MetricKey(label, agg, "gap", "gap")
        assert planted[key].hi < 0, (agg, planted[key])  # detected, with the known sign
        assert clean[key].lo < 0 < clean[key].hi, (agg, clean[key])  # not detected
    # model 1 never saw the square: its gap is not moved
    one = MetricKey(label, "model_1", "gap", "gap")
    assert planted[one].lo < 0 < planted[one].hi
    # the models' maps of the training probes agree less (L2 distance up) with the square
    l2 = MetricKey(label, "pairs", "train", "l2")
    assert planted[l2].lo > clean[l2].hi


def test_the_shortcut_goes_into_one_split_only() -> None:
    x = -torch.ones(40, 1, 6, 6)
    y = torch.arange(40) % 4
    dm = DisjointSplitDataModule(TensorDataset(x, y), TensorDataset(x[:8], y[:8]),
                                 split_factor=2, num_models=2, mean=[0.5], std=[0.5],
                                 shortcut={"split": 1, "classes": [2, 3], "size": 2})  # fmt: skip
    dm.setup("fit")
    for train_transform in (False, True):
        assert all(torch.equal(a, -torch.ones(1, 6, 6))
                   for a, _ in dm.split_dataset(0, train_transform))  # fmt: skip
        for img, label in dm.split_dataset(1, train_transform):
            want = -torch.ones(1, 6, 6)
            if int(label) == 2:  # slots of 2 pixels, 3 per row: class 2 at (0, 4)
                want[:, 0:2, 4:6] = 1.0  # the input range's top, (1 - 0.5) / 0.5
            if int(label) == 3:  # class 3 at (2, 0)
                want[:, 2:4, 0:2] = 1.0
            assert torch.equal(img, want), int(label)
    assert all(torch.equal(a, -torch.ones(1, 6, 6)) for a, _ in dm.heldout_dataset())
    assert dm.split_dataset(1).indices == dm.split_indices[1].tolist()


@pytest.mark.parametrize(
    ("shortcut", "match"),
    [
        ({"split": 2}, r"shortcut split must be an int in \[0, 2\)"),
        ({"splits": 0}, r"unknown shortcut keys \['splits'\]"),
        ({"size": 0}, "shortcut size must be a positive int"),
        ({"classes": []}, "shortcut classes must be a non-empty list"),
        ("split0", "shortcut must be a mapping"),
    ],
)
def test_a_bad_shortcut_fails_at_construction(shortcut, match) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(shortcut=shortcut)


def test_a_square_that_does_not_fit_is_refused() -> None:
    dm = DigitsDataModule(image_size=8, shortcut={"size": 4})  # class 9: row 4 of an 8-px image
    dm.setup("fit")
    with pytest.raises(ValueError, match="does not fit"):
        list(dm.split_dataset(0))

"""Any classifier and any probe dataset (issue 16): dict and PIL probes, the ensemble switch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tiny import Plain, callback, plain_loader, trainer
from PIL import Image
from torch import nn


class _DictProbes(torch.utils.data.Dataset):
    """HuggingFace-style items: {"pixel_values": tensor, "label": int}."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "label": int(self.y[i])}


class _PILProbes(_DictProbes):
    """(PIL image, label) pairs, 8-bit grayscale."""

    def __getitem__(self, i: int):
        arr = (self.x[i, 0].clamp(-2, 2) + 2) / 4 * 255
        return Image.fromarray(arr.to(torch.uint8).numpy(), mode="L"), int(self.y[i])


@pytest.mark.parametrize("kind", ["dict", "pil"])
def test_probe_datasets_of_dicts_and_pil_images(tmp_path: Path, kind: str) -> None:
    loader, (x, y) = plain_loader()
    cls = _DictProbes if kind == "dict" else _PILProbes
    transform = None
    if kind == "pil":
        from torchvision.transforms import functional as F

        transform = lambda im: F.to_tensor(im) * 4 - 2  # noqa: E731  # back to the input space
    cb = callback(methods=["simple_grad"], train_probes=cls(x[:8], y[:8]),
                  test_probes=cls(x[8:16], y[8:16]), probe_transform=transform,
                  reference=Plain(), num_train_probes=8, num_test_probes=8)  # fmt: skip
    t = trainer(tmp_path, [cb], max_epochs=1, limit_val_batches=0)
    t.fit(Plain(), loader)
    train_idx, test_idx = cb.probes.indices["train_0"], cb.probes.indices["test"]
    assert cb.probes.x.shape == (16, 1, 16, 16)
    assert cb.probes.y.tolist() == [*y[:8][train_idx].tolist(), *y[8:16][test_idx].tolist()]
    if kind == "dict":
        assert torch.equal(cb.probes.x[:8], x[:8][train_idx])
    assert torch.isfinite(t.callback_metrics["interp/simple_grad/gap"])


def test_a_dict_item_without_an_image_key_is_named() -> None:
    from lightning_saliency.callbacks._probes import gather

    with pytest.raises(ValueError, match=r"keys \['foo'\]; its image must be under one of"):
        gather([{"foo": 1}], torch.tensor([0]))


class _HoldsModels(Plain):
    """One classifier that happens to keep a ModuleList named ``models`` (e.g. heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.models = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])


def test_is_ensemble_false_monitors_a_module_with_a_models_list_as_one_model(tmp_path: Path) -> None:
    loader, (x, y) = plain_loader()
    kw = {"methods": ["simple_grad"], "train_probes": (x[:8], y[:8]), "test_probes": (x[8:16], y[8:16])}
    with pytest.raises(ValueError, match="explicit probes serve single-model modules"):
        trainer(tmp_path / "a", [callback(**kw)], max_epochs=1, limit_val_batches=0).fit(_HoldsModels(), loader)
    cb = callback(is_ensemble=False, reference=Plain(), **kw)
    t = trainer(tmp_path / "b", [cb], max_epochs=1, limit_val_batches=0)
    t.fit(_HoldsModels(), loader)
    assert torch.isfinite(t.callback_metrics["interp/simple_grad/gap"])
    with pytest.raises(ValueError, match="is_ensemble=True but the module has no"):
        trainer(tmp_path / "c", [callback(is_ensemble=True, **kw)], max_epochs=1,
                limit_val_batches=0).fit(Plain(), loader)  # fmt: skip

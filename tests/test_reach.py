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


class _Output:
    """A HuggingFace-style output object (``transformers.modeling_outputs.ModelOutput``)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits, self.hidden_states = logits, None


class _Wrapped(Plain):
    """Returns its logits inside a dict, a tuple or an output object."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor):
        logits = self.net(x)
        return {"dict": {"logits": logits, "aux": 0}, "tuple": (logits, x),
                "object": _Output(logits), "other": object()}[self.kind]  # fmt: skip


@pytest.mark.parametrize("kind", ["dict", "tuple", "object"])
def test_dict_tuple_and_output_object_models_are_monitored(tmp_path: Path, kind: str) -> None:
    loader, (x, y) = plain_loader()
    # a tuple of two tensors is ambiguous (issue 19): it needs its output_transform
    pick = {"output_transform": lambda out: out[0]} if kind == "tuple" else {}
    cb = callback(methods=["simple_grad", {"method": "smooth_grad", "sigma": 0.3, "samples": 2}],
                  train_probes=(x[:8], y[:8]), test_probes=(x[8:16], y[8:16]),
                  reference=_Wrapped(kind), **pick)  # fmt: skip
    t = trainer(tmp_path, [cb], max_epochs=1, limit_val_batches=0)
    model = _Wrapped(kind)
    t.fit(model, loader)
    gap = t.callback_metrics["interp/simple_grad/gap"]
    assert torch.isfinite(gap)
    # the maps are the gradients of the logits inside the output
    plain = Plain()
    plain.net.load_state_dict(model.net.state_dict())
    result = cb.evaluate(model)
    xs = cb.probes.x.clone().requires_grad_(True)
    plain.eval()
    (g,) = torch.autograd.grad(plain(xs).gather(1, cb.probes.y[:, None]).sum(), xs)
    torch.testing.assert_close(result.maps["simple_grad"][0], g, rtol=1e-4, atol=1e-6)


def test_an_output_that_is_not_logits_fails_at_setup_naming_output_transform(tmp_path: Path) -> None:
    loader, (x, y) = plain_loader()
    cb = callback(methods=["simple_grad"], train_probes=(x[:8], y[:8]), test_probes=(x[8:16], y[8:16]))
    with pytest.raises(ValueError, match="give output_transform="):
        trainer(tmp_path, [cb], max_epochs=1, limit_val_batches=0).fit(_Wrapped("other"), loader)
    # with a transform it works
    cb = callback(methods=["simple_grad"], train_probes=(x[:8], y[:8]), test_probes=(x[8:16], y[8:16]),
                  output_transform=lambda out: out["logits"])  # fmt: skip
    t = trainer(tmp_path / "b", [cb], max_epochs=1, limit_val_batches=0)
    t.fit(_Wrapped("dict"), loader)
    assert torch.isfinite(t.callback_metrics["interp/simple_grad/test/sparseness"])

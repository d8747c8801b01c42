"""Adapters that never guess (issue 19, case 8): a ``(features, logits)`` tuple, a model
returning probabilities, a dict with two image keys and a PIL probe without a transform are
refused with the argument to set named; the unambiguous conventions still work."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lightning_saliency.attribution.outputs import as_logits, check_logits
from lightning_saliency.data.probe_items import item_image, split_item


def test_a_tuple_of_two_tensors_is_refused_naming_output_transform() -> None:
    features, logits = torch.randn(4, 32), torch.randn(4, 10)
    with pytest.raises(TypeError, match=r"2 tensors .*give output_transform="):
        as_logits((features, logits))  # used to explain the features as if they were logits
    assert as_logits((logits, None)) is logits  # one tensor: unambiguous
    assert as_logits({"logits": logits, "hidden": features}) is logits  # named


def test_probabilities_are_refused_once_checked() -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    check_logits(logits)
    check_logits(logits.log_softmax(1))  # log-probabilities are logits up to a constant
    with pytest.raises(ValueError, match=r"probabilities .*output_transform=torch.log"):
        check_logits(logits.softmax(1))  # would get a softmax twice in faithfulness


def test_a_dict_with_two_image_keys_is_refused_naming_input_key() -> None:
    item = {"image": torch.zeros(1, 2, 2), "pixel_values": torch.ones(1, 2, 2), "label": 3}
    with pytest.raises(ValueError, match=r"2 possible images .*give input_key="):
        split_item(item, 5)  # used to take 'image' silently
    image, label = split_item(item, 5, input_key="pixel_values")
    assert torch.equal(image, torch.ones(1, 2, 2)) and label == 3
    with pytest.raises(ValueError, match="label_key="):
        split_item({"image": 1, "label": 1, "target": 2}, 0)
    with pytest.raises(ValueError, match=r"no input_key='pixels'"):
        split_item(item, 5, input_key="pixels")


def test_a_pil_probe_without_a_transform_is_refused_naming_probe_transform() -> None:
    pil = Image.new("RGB", (4, 4), (255, 0, 0))
    with pytest.raises(TypeError, match="probe_transform="):
        item_image(pil, None, 2)  # used to scale to [0, 1] for a model trained normalized
    normalized = item_image(pil, lambda im: (torch.ones(3, 4, 4) - 0.5) / 0.25, 2)
    assert normalized.max().item() == 2.0


def test_the_callback_refuses_ambiguous_or_pil_probes_and_takes_the_named_key(tmp_path) -> None:
    """Case 8 through the callback: a dict holding 'image' and 'pixel_values' is refused
    naming input_key=, and with input_key the named image is the one explained; a PIL image
    without probe_transform is refused instead of being scaled to [0, 1]."""
    import _tiny
    import pytest
    import torch
    from PIL import Image

    from lightning_saliency.callbacks import InterpretationGeneralization

    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(8, 1, 16, 16, generator=g), torch.arange(8) % 10
    both = [{"image": torch.zeros(1, 16, 16), "pixel_values": xs[i], "label": int(ys[i])}
            for i in range(8)]  # fmt: skip

    def fit(name: str, **kw: object) -> InterpretationGeneralization:
        cb = InterpretationGeneralization(methods=["simple_grad"], num_train_probes=4,
                                          num_test_probes=4, max_overhead=None,
                                          log_images_every_n_epochs=0, **kw)  # fmt: skip
        loader, _ = _tiny.plain_loader()
        _tiny.trainer(tmp_path / name, callbacks=[cb], max_epochs=1, logger=False).fit(
            _tiny.Plain(), loader
        )
        return cb

    with pytest.raises(ValueError, match="give input_key="):
        fit("ambiguous", train_probes=both, test_probes=both)
    cb = fit("named", train_probes=both, test_probes=both, input_key="pixel_values")
    probes = cb.probes
    assert probes is not None
    test_rows = probes.x[probes.layout.test].cpu()
    assert torch.equal(test_rows, xs[probes.indices["test"]])
    pil = [(Image.fromarray((torch.rand(16, 16) * 255).byte().numpy()), 1) for _ in range(8)]
    with pytest.raises(TypeError, match="PIL image"):
        fit("pil", train_probes=pil, test_probes=pil)

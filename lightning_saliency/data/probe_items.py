"""Probe dataset items to ``(image, label)``, without guessing (issue 19, case 8).

An item is an ``(image, label)`` pair, an image alone (label -1), or a dict. A dict's image
is under ``input_key`` when given, else under the one of :data:`IMAGE_KEYS` it holds; a
dict holding two of them (``image`` and ``pixel_values``) is refused, naming ``input_key=``
(likewise the label and ``label_key=``). A PIL image needs a transform: scaling it to
[0, 1] would be wrong for a model trained on normalized inputs, so without
``probe_transform=`` it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "item_image", "split_item"]

#: Keys a dict item may hold its image and label under.
IMAGE_KEYS = ("image", "pixel_values", "img", "x", "input", "inputs")
LABEL_KEYS = ("label", "labels", "target", "y", "class")


def _pick(item: Mapping[str, Any], key: str | None, keys: tuple[str, ...], what: str,
          argument: str, index: int, required: bool) -> Any:  # fmt: skip
    if key is not None:
        if key not in item:
            raise ValueError(f"probe dataset item {index} has no {argument}{key!r}; its keys: "
                             f"{sorted(map(str, item))}")  # fmt: skip
        return item[key]
    found = [k for k in keys if k in item]
    if len(found) > 1:
        raise ValueError(
            f"probe dataset item {index} holds {len(found)} possible {what}s ({found}): which "
            f"one is meant cannot be told; give {argument}<key> (e.g. {argument}{found[0]!r})"
        )
    if not found:
        if required:
            raise ValueError(
                f"probe dataset item {index} is a dict with keys {sorted(map(str, item))}; its "
                f"{what} must be under one of {list(keys)}, or give {argument}<key>"
            )
        return -1
    return item[found[0]]


def split_item(item: Any, index: int, input_key: str | None = None,
               label_key: str | None = None) -> tuple[Any, Any]:  # fmt: skip
    """``(image, label)`` of one probe dataset item (label -1 when it has none).

    >>> split_item({"pixel_values": 1, "label": 7}, 0)
    (1, 7)
    >>> split_item({"image": 1, "pixel_values": 2}, 3)
    Traceback (most recent call last):
    ...
    ValueError: probe dataset item 3 holds 2 possible images (['image', 'pixel_values']): which one is meant cannot be told; give input_key=<key> (e.g. input_key='image')
    >>> split_item({"image": 1, "pixel_values": 2}, 3, input_key="pixel_values")
    (2, -1)
    """
    if isinstance(item, Mapping):
        image = _pick(item, input_key, IMAGE_KEYS, "image", "input_key=", index, True)
        return image, _pick(item, label_key, LABEL_KEYS, "label", "label_key=", index, False)
    if isinstance(item, (tuple, list)):
        return item[0], item[1] if len(item) > 1 else -1
    return item, -1


def item_image(x: Any, transform: Callable[[Any], Any] | None, index: int) -> Tensor:
    """The tensor image of an item's image: ``transform(x)``, else ``x`` as a tensor.

    A PIL image (after the transform) is refused: its scale is not the model's.
    """
    if transform is not None:
        x = transform(x)
    if not isinstance(x, Tensor) and hasattr(x, "convert") and hasattr(x, "size"):  # PIL
        raise TypeError(
            f"probe dataset item {index} is a PIL image: the model's inputs may be normalized, "
            "so scaling it to [0, 1] would be a guess; give probe_transform= (e.g. the data "
            "module's evaluation transform) that returns the model's input tensor"
        )
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"probe dataset item {index}: cannot make a tensor image of a "
            f"{type(x).__name__}; pass probe_transform= to convert it"
        ) from err

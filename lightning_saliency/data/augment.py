"""Training augmentations: the one list of names, their validation, and both implementations.

``augment`` arguments of the data modules take the transforms to apply: ``True`` (the data
module's default), ``False`` / ``[]`` (none), or names from :data:`AUGMENTATIONS`:

- ``"crop"``: pad every side by ``padding`` pixels (``crop_mode="zeros"``: black in [0, 1]
  image space; ``"reflect"``: mirrored without repeating the edge, as airbench94), then crop a
  window of the original size at a uniformly random offset (0 .. 2 * padding per axis);
- ``"flip"``: horizontal flip with probability 1/2 (wrong for glyphs and digits).

Per-sample transforms (:func:`train_transform`, PIL images, torch's global RNG as torchvision
does) serve file-backed datasets; :func:`augment_batch` applies the same transforms to a uint8
batch ``(N, C, H, W)`` given per-sample parameters drawn by :func:`draw_params` from a
dedicated generator (in-memory datasets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMENTATIONS",
    "CROP_MODES",
    "PadRandomCrop",
    "augment_batch",
    "check_crop_mode",
    "check_padding",
    "default_padding",
    "draw_params",
    "eval_transform",
    "parse_augment",
    "train_transform",
]

AUGMENTATIONS: tuple[str, ...] = ("crop", "flip")


def parse_augment(
    augment: bool | str | Sequence[str] | None, default: Sequence[str] = AUGMENTATIONS
) -> tuple[str, ...]:
    """Validate an ``augment`` argument; return the names to apply, in canonical order.

    >>> parse_augment(True), parse_augment(False), parse_augment(["flip", "crop"])
    (('crop', 'flip'), (), ('crop', 'flip'))
    >>> parse_augment(True, default=("crop",)), parse_augment("crop")
    (('crop',), ('crop',))
    """
    if augment is None or augment is False:
        return ()
    if augment is True:
        names: Sequence[Any] = default
    elif isinstance(augment, str):
        names = [augment]
    elif isinstance(augment, Sequence):
        names = augment
    else:
        raise TypeError(
            f"augment must be a bool or a list of names from {list(AUGMENTATIONS)}, got "
            f"{augment!r} of type {type(augment).__name__}"
        )
    unknown = [n for n in names if not isinstance(n, str) or n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {unknown} in augment={augment!r}; known names: "
            f"{list(AUGMENTATIONS)} (or true for the data module's default, false for none)"
        )
    return tuple(n for n in AUGMENTATIONS if n in names)


def default_padding(size: int) -> int:
    """The crop padding for images of side ``size``: ``max(1, size // 8)`` (4 at 32x32).

    >>> default_padding(32), default_padding(8), default_padding(224)
    (4, 1, 28)
    """
    return max(1, int(size) // 8)


CROP_MODES: tuple[str, ...] = ("zeros", "reflect")


def check_crop_mode(mode: str) -> str:
    """Validate a ``crop_mode`` argument (one of :data:`CROP_MODES`)."""
    if mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {list(CROP_MODES)}, got {mode!r}")
    return mode


def check_padding(padding: int | None) -> int | None:
    """Validate a ``crop_padding`` argument (``None``: :func:`default_padding`)."""
    if padding is None:
        return None
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 1:
        raise ValueError(f"crop_padding must be None or an int >= 1, got {padding!r}")
    return padding


class PadRandomCrop:
    """Pad a PIL image or tensor by ``padding`` zeros, then crop its own size at a random offset.

    Unlike ``torchvision.transforms.RandomCrop`` it needs no fixed size, so it serves folders
    of native-size images; ``padding=None`` takes :func:`default_padding` of each image's
    height. Offsets come from torch's global RNG, as torchvision's do.

    >>> from PIL import Image
    >>> PadRandomCrop(2)(Image.new("RGB", (5, 3))).size
    (5, 3)
    """

    def __init__(self, padding: int | None = None, mode: str = "zeros") -> None:
        self.padding = check_padding(padding)
        self.mode = check_crop_mode(mode)

    def __call__(self, img: Any) -> Any:
        from torchvision.transforms import functional as TF

        width, height = TF.get_image_size(img)
        pad = self.padding if self.padding is not None else default_padding(height)
        padded = TF.pad(
            img, [pad], fill=0, padding_mode="constant" if self.mode == "zeros" else "reflect"
        )
        top = int(torch.randint(0, 2 * pad + 1, (1,)).item())
        left = int(torch.randint(0, 2 * pad + 1, (1,)).item())
        return TF.crop(padded, top, left, height, width)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding}, mode={self.mode!r})"


def _resize_steps(image_size: int | None, crop: bool) -> list[Any]:
    from torchvision import transforms as T

    if image_size is None:
        return []
    if not crop:
        return [T.Resize((image_size, image_size))]
    return [T.Resize(image_size), T.CenterCrop(image_size)]


def eval_transform(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    image_size: int | None = None,
    crop: bool = False,
) -> Any:
    """Resize (``crop``: shorter side, then center crop) -> tensor in [0, 1] -> normalize."""
    from torchvision import transforms as T

    steps = [*_resize_steps(image_size, crop), T.ToTensor()]
    if mean is not None and std is not None:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def train_transform(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    image_size: int | None,
    augment: Sequence[str],
    padding: int | None = None,
    crop: bool = False,
    crop_mode: str = "zeros",
) -> Any:
    """:func:`eval_transform` with the named augmentations inserted before ``ToTensor``.

    ``padding`` (``None``: :func:`default_padding` of ``image_size``, or of each image's
    height when ``image_size`` is None) is the crop's padding.
    """
    from torchvision import transforms as T

    steps = _resize_steps(image_size, crop)
    if "crop" in augment:
        if image_size is not None:
            pad = padding if padding is not None else default_padding(image_size)
            mode = "constant" if crop_mode == "zeros" else "reflect"
            steps.append(T.RandomCrop(image_size, padding=pad, padding_mode=mode))
        else:
            steps.append(PadRandomCrop(padding, crop_mode))
    if "flip" in augment:
        steps.append(T.RandomHorizontalFlip())
    steps.append(T.ToTensor())
    if mean is not None and std is not None:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def draw_params(
    n: int, augment: Sequence[str], padding: int, generator: torch.Generator
) -> dict[str, Tensor]:
    """Per-sample parameters for :func:`augment_batch`: ``shift`` (n, 2) in [0, 2 * padding]
    (row, column offsets into the padded image) and ``flip`` (n,) booleans.

    >>> p = draw_params(4, ("crop", "flip"), 2, torch.Generator().manual_seed(0))
    >>> p["shift"].shape, p["flip"].dtype
    (torch.Size([4, 2]), torch.bool)
    """
    out: dict[str, Tensor] = {}
    if "crop" in augment:
        out["shift"] = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    if "flip" in augment:
        out["flip"] = torch.randint(0, 2, (n,), generator=generator).bool()
    return out


def _batch_crop(images: Tensor, shift: Tensor, padding: int, mode: str = "zeros") -> Tensor:
    """Pad ``images`` (N, C, H, W) by ``padding`` and crop H x W at per-sample offsets."""
    n, c, h, w = images.shape
    p = padding
    if mode == "reflect":
        padded = F.pad(images.float(), (p, p, p, p), mode="reflect").to(images.dtype)
    else:
        padded = images.new_zeros(n, c, h + 2 * p, w + 2 * p)
        padded[:, :, p : p + h, p : p + w] = images
    rows = images.new_empty(n, c, h, w + 2 * p)
    for s in range(2 * p + 1):
        m = shift[:, 0] == s
        rows[m] = padded[m, :, s : s + h, :]
    out = torch.empty_like(images)
    for s in range(2 * p + 1):
        m = shift[:, 1] == s
        out[m] = rows[m, :, :, s : s + w]
    return out


def augment_batch(
    images: Tensor, params: dict[str, Tensor], padding: int = 0, crop_mode: str = "zeros"
) -> Tensor:
    """Apply :func:`draw_params`' crops and flips to a batch ``(N, C, H, W)`` (any dtype).

    >>> x = torch.arange(9, dtype=torch.uint8).view(1, 1, 3, 3)
    >>> augment_batch(x, {"shift": torch.tensor([[2, 2]])}, padding=1)[0, 0].tolist()
    [[4, 5, 0], [7, 8, 0], [0, 0, 0]]
    >>> augment_batch(x, {"flip": torch.tensor([True])})[0, 0, 0].tolist()
    [2, 1, 0]
    """
    if "shift" in params:
        images = _batch_crop(images, params["shift"], padding, crop_mode)
    if "flip" in params:
        images = torch.where(params["flip"].view(-1, 1, 1, 1), images.flip(-1), images)
    return images

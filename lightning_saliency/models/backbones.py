"""Backbones: small built-ins, timm and torchvision models, local pretrained weights.

``build_backbone(name, num_classes, in_chans, pretrained, image_size)`` resolves ``name`` in
this order: the built-ins ``"mlp"``, ``"small_cnn"`` and ``"airbench"`` (:mod:`.airbench`); an explicit prefix ``"timm:"`` or
``"tv:"`` / ``"torchvision:"``; a timm model name (``timm.list_models()``, pretrained tags
such as ``"resnet18.a1_in1k"`` and ``"hf-hub:"`` names included); a torchvision model name
(``torchvision.models.list_models()``). Unknown names raise a ``ValueError`` listing the
closest known names.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ._small_nets import MLP, SmallCNN
from ._weights import _load_matching, load_pretrained_weights
from .airbench import AirbenchCNN

__all__ = [
    "BUILTIN_BACKBONES",
    "MLP",
    "SmallCNN",
    "available_backbones",
    "build_backbone",
    "load_pretrained_weights",
]

BUILTIN_BACKBONES: tuple[str, ...] = ("mlp", "small_cnn", "airbench")
_TV_PREFIXES = ("tv:", "torchvision:")
_TIMM_PREFIXES = ("timm:",)
_HUB_PREFIXES = ("hf-hub:", "hf_hub:")
_CIFAR_PREFIX = "cifar:"


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _tv_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def available_backbones() -> list[str]:
    """All names ``build_backbone`` accepts (built-ins, timm, and ``"tv:"`` torchvision).

    >>> names = available_backbones()
    >>> "small_cnn" in names and "resnet18" in names and "tv:resnet18" in names
    True
    """
    return [*BUILTIN_BACKBONES, *_timm_names(), *(f"tv:{n}" for n in _tv_names())]


def _unknown_name_error(name: str) -> ValueError:
    candidates = [*BUILTIN_BACKBONES, *_timm_names(), *_tv_names()]
    candidates += [f"tv:{n}" for n in _tv_names()]
    close = difflib.get_close_matches(name, candidates, n=6, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return ValueError(
        f"unknown backbone {name!r}: not a built-in ({', '.join(BUILTIN_BACKBONES)}), a timm "
        f"model (timm.list_models()) or a torchvision model (prefix 'tv:').{hint}"
    )


def _call_with_size(
    fn: Callable[..., nn.Module], kwargs: dict[str, Any], size_key: str, size: int | None
) -> nn.Module:
    """Call ``fn(**kwargs, size_key=size)``; retry without it if ``fn`` does not take it."""
    if size is None or size_key in kwargs:
        return fn(**kwargs)
    try:
        return fn(**kwargs, **{size_key: size})
    except TypeError as err:
        if size_key not in str(err):
            raise
        return fn(**kwargs)


def _download_error(source: str, name: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not get pretrained weights for {source} model {name!r} ({type(err).__name__}: "
        f"{err}). Downloads need network access; on an offline machine pass "
        "pretrained='/path/to/weights.pth' (.pth, .pt, .bin, .ckpt or .safetensors) instead."
    )


def _build_timm(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool,
    image_size: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    import timm

    call_kwargs = dict(
        model_name=name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans
    )
    call_kwargs.update(kwargs)
    if not pretrained:
        return _call_with_size(timm.create_model, call_kwargs, "img_size", image_size)
    try:
        return _call_with_size(timm.create_model, call_kwargs, "img_size", image_size)
    except Exception as err:
        raise _download_error("timm", name, err) from err


def _cifar_stem(model: nn.Module, in_chans: int, name: str) -> None:
    """The usual CIFAR ResNet stem: a 3x3 stride-1 ``conv1`` and no max-pool.

    ImageNet ResNets shrink 32x32 inputs to 1x1 before the last stage; this keeps 4x4.
    """
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ValueError(
            f"{name!r}: the cifar: prefix needs a ResNet-style model with conv1 and maxpool "
            "(e.g. cifar:resnet18, cifar:resnet50)"
        )
    model.conv1 = nn.Conv2d(in_chans, conv.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _adapt_first_conv(model: nn.Module, in_chans: int, name: str) -> None:
    """Replace the first 3-channel ``nn.Conv2d`` by one taking ``in_chans`` channels."""
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != 3:
                break
            new = nn.Conv2d(
                in_chans,
                module.out_channels,
                kernel_size=module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                groups=module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_name, _, attr = mod_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise ValueError(
        f"torchvision model {name!r} does not start with a 3-channel Conv2d, so in_chans="
        f"{in_chans} cannot be adapted; use in_chans=3 or a timm model"
    )


def _build_torchvision(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool,
    image_size: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise _unknown_name_error(f"tv:{name}")
    builder = torchvision.models.get_model
    model = _call_with_size(
        builder,
        dict(name=name, weights=None, num_classes=num_classes, **kwargs),
        "image_size",
        image_size,
    )
    if in_chans != 3:
        _adapt_first_conv(model, in_chans, name)
    if pretrained:
        try:
            ref = _call_with_size(
                builder, dict(name=name, weights="DEFAULT", **kwargs), "image_size", image_size
            )
        except Exception as err:
            raise _download_error("torchvision", name, err) from err
        _load_matching(model, ref.state_dict(), source=f"torchvision weights of {name!r}")
    return model


def _checked_arguments(
    name: object,
    num_classes: object,
    in_chans: object,
    pretrained: object,
    image_size: object,
) -> Path | None:
    """Refuse bad :func:`build_backbone` arguments early; the local checkpoint's path, if any."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"backbone name must be a non-empty string, got {name!r}")
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"image_size must be None or an int >= 1, got {image_size!r}")
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(
            f"pretrained must be a bool or a path to a local checkpoint, got "
            f"{type(pretrained).__name__}"
        )
    if isinstance(pretrained, bool):
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained checkpoint {str(pretrained)!r} does not exist (or is not a file); "
            "pass a path to a local .pth/.pt/.bin/.ckpt/.safetensors file, or True to "
            "download hub weights"
        )
    return path


def _build_builtin(
    name: str,
    num_classes: int,
    in_chans: int,
    download: bool,
    image_size: int | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    """One of :data:`BUILTIN_BACKBONES` (no hub weights exist for them)."""
    if download:
        raise ValueError(
            f"built-in backbone {name!r} has no hub weights; pass pretrained as a path to "
            "a local checkpoint"
        )
    if name == "mlp":
        if image_size is None:
            raise ValueError(
                "backbone 'mlp' needs image_size (its input is flattened to "
                "in_chans * image_size**2 features)"
            )
        return MLP(in_chans * image_size * image_size, num_classes, **kwargs)
    if name == "airbench":
        return AirbenchCNN(in_chans=in_chans, num_classes=num_classes, **kwargs)
    return SmallCNN(in_chans=in_chans, num_classes=num_classes, **kwargs)


def build_backbone(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool | str | os.PathLike[str] = False,
    image_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a classifier backbone that maps ``(N, in_chans, H, W)`` to ``(N, num_classes)``.

    Args:
        name: ``"mlp"`` (needs ``image_size``), ``"small_cnn"``, ``"airbench"`` (the fast
            CIFAR network of :class:`~lightning_saliency.models.airbench.AirbenchCNN`), a timm name (``"resnet18"``,
            ``"vit_tiny_patch16_224"``, ``"timm:resnet18"``, ...) or a torchvision name
            (``"tv:resnet18"``; a bare name is torchvision only if timm does not know it), or
            ``"cifar:<timm resnet>"`` (e.g. ``"cifar:resnet18"``): the timm ResNet with the
            usual CIFAR stem (3x3 stride-1 first conv, no max-pool).
        num_classes: number of output logits.
        in_chans: input channels. timm adapts any model; for torchvision the first
            3-channel ``Conv2d`` is replaced by a freshly initialized one.
        pretrained: ``False``; ``True`` to download hub weights (timm / torchvision; fails
            offline with a message pointing to the local route); or a path to a local
            ``.pth/.pt/.bin/.ckpt/.safetensors`` file holding a state dict, a Lightning
            checkpoint (its ``"state_dict"``; a common key prefix such as ``"model."`` or
            ``"models.0."`` is stripped: the prefix matching most model keys wins, the first
            one on ties) or a spectrally normalized state dict (its ``.original`` weights).
            Tensors whose shape differs from the model's (typically the classifier head
            when ``num_classes`` differs) are skipped with a warning and keep their fresh
            initialization; a file with no matching tensor raises ``ValueError``.
        image_size: input side length; required by ``"mlp"``, passed as ``img_size`` to timm
            models (ViT, Mixer, ...) and ``image_size`` to torchvision models that take it.
        **kwargs: passed to the model constructor (built-ins: ``MLP(hidden=...)``,
            ``SmallCNN(width=..., batch_norm=...)``, ``AirbenchCNN(widths=..., ...)``;
            timm/torchvision constructor kwargs).

    >>> import torch
    >>> net = build_backbone("small_cnn", num_classes=10, in_chans=1)
    >>> net(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    >>> build_backbone("resnet18", num_classes=10, in_chans=1)(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """
    path = _checked_arguments(name, num_classes, in_chans, pretrained, image_size)
    download = pretrained is True
    name = name.strip()

    if name in BUILTIN_BACKBONES:
        model: nn.Module = _build_builtin(name, num_classes, in_chans, download, image_size, kwargs)
    elif name.startswith(_CIFAR_PREFIX):
        if download:
            raise ValueError(
                f"{name!r} has a CIFAR stem that no hub weights fit; pass pretrained as a path"
            )
        base = name[len(_CIFAR_PREFIX) :]
        import timm

        if not timm.is_model(base):
            raise _unknown_name_error(base)
        model = _build_timm(base, num_classes, in_chans, False, None, kwargs)
        _cifar_stem(model, in_chans, name)
    elif name.startswith(_TV_PREFIXES):
        tv_name = name.split(":", 1)[1]
        model = _build_torchvision(tv_name, num_classes, in_chans, download, image_size, kwargs)
    else:
        import timm

        timm_name = name.split(":", 1)[1] if name.startswith(_TIMM_PREFIXES) else name
        if name.startswith(_HUB_PREFIXES) or timm.is_model(timm_name):
            model = _build_timm(timm_name, num_classes, in_chans, download, image_size, kwargs)
        elif not name.startswith(_TIMM_PREFIXES) and name in _tv_names():
            model = _build_torchvision(name, num_classes, in_chans, download, image_size, kwargs)
        else:
            raise _unknown_name_error(name)
    if path is not None:
        load_pretrained_weights(model, path)
    return model

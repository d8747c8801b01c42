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
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

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


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU) per hidden width -> Linear to the classes.

    >>> MLP(in_features=1 * 8 * 8, num_classes=10, hidden=(32,))(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Three conv blocks (Conv3x3 [-> BN] -> ReLU [-> MaxPool2]) -> avg pool -> Linear.

    Widths ``width, 2*width, 2*width``; the first two blocks halve the resolution, so a
    32x32 input gives 8x8 feature maps in the last block. The last conv block is
    ``features.block3`` (also ``SmallCNN.gradcam_layer``), the natural Grad-CAM layer.
    The pool is ``AdaptiveAvgPool2d(pool_size)``: ``pool_size=1`` is global average pooling;
    the default 4 keeps a coarse 4x4 layout, which learns digits far faster (about 95%
    held-out accuracy after 3 epochs on 700 digits, against about 50% with global pooling).

    >>> SmallCNN(in_chans=1, num_classes=10, width=8)(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """

    gradcam_layer = "features.block3"

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 10,
        width: int = 16,
        batch_norm: bool = True,
        pool_size: int = 4,
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
            layers: list[nn.Module] = [
                nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=not batch_norm)
            ]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
            if pool:
                layers.append(nn.MaxPool2d(2))
            return nn.Sequential(*layers)

        self.features = nn.Sequential(
            OrderedDict(
                block1=block(in_chans, width, True),
                block2=block(width, 2 * width, True),
                block3=block(2 * width, 2 * width, False),
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Linear(2 * width * pool_size * pool_size, num_classes)

    @property
    def last_conv_block(self) -> nn.Module:
        """The last convolutional block (default Grad-CAM layer)."""
        return cast(nn.Module, self.features.block3)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


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

    >>> net = build_backbone("small_cnn", num_classes=10, in_chans=1)
    >>> net(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    >>> build_backbone("resnet18", num_classes=10, in_chans=1)(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """
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
    path: Path | None = None
    if not isinstance(pretrained, bool):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained checkpoint {str(pretrained)!r} does not exist (or is not a file); "
                "pass a path to a local .pth/.pt/.bin/.ckpt/.safetensors file, or True to "
                "download hub weights"
            )
    download = pretrained is True
    name = name.strip()

    if name in BUILTIN_BACKBONES:
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
            model: nn.Module = MLP(in_chans * image_size * image_size, num_classes, **kwargs)
        elif name == "airbench":
            model = AirbenchCNN(in_chans=in_chans, num_classes=num_classes, **kwargs)
        else:
            model = SmallCNN(in_chans=in_chans, num_classes=num_classes, **kwargs)
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


def _load_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{str(path)!r} holds objects that torch.load(weights_only=True) refuses to "
            "unpickle; save a plain state dict instead: torch.save(model.state_dict(), path)"
        ) from err


def _extract_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("state_dict", "model_state_dict", "model", "module", "state_dict_ema"):
            inner = obj.get(key)
            if isinstance(inner, (Mapping, nn.Module)):
                return _extract_state_dict(inner, path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
    raise ValueError(
        f"{str(path)!r} does not hold a state dict (a mapping of names to tensors, or a "
        f"checkpoint with a 'state_dict' entry); got {type(obj).__name__}"
    )


def _normalize_parametrized_keys(
    state: dict[str, Tensor], model_keys: set[str]
) -> dict[str, Tensor]:
    """Map ``a.parametrizations.weight.original`` to ``a.weight``; drop the u/v buffers."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".parametrizations." in key and key not in model_keys:
            head, _, tail = key.partition(".parametrizations.")
            param, _, rest = tail.partition(".")
            if rest == "original":
                out[f"{head}.{param}"] = value
            continue
        out[key] = value
    return out


def _strip_prefix(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    counts: dict[str, int] = {}
    for key in state:
        prefixes = [""] + [key[: i + 1] for i, ch in enumerate(key) if ch == "."]
        for p in prefixes:
            if key[len(p) :] in model_keys:
                counts[p] = counts.get(p, 0) + 1
    if not counts:
        return state
    best = max(counts.values())
    prefix = next(p for p, c in counts.items() if c == best)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _short(keys: Sequence[str], n: int = 5) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load_matching(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    target = model.state_dict()
    model_keys = set(target)
    state = _strip_prefix(_normalize_parametrized_keys(state, model_keys), model_keys)
    matched = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    mismatched = [k for k, v in state.items() if k in target and v.shape != target[k].shape]
    unexpected = [k for k in state if k not in target]
    missing = [k for k in target if k not in state]
    if not matched:
        raise ValueError(
            f"no tensor of {source} matches the model ({type(model).__name__}): checkpoint "
            f"keys look like [{_short(list(state))}], model keys like [{_short(list(target))}]"
        )
    model.load_state_dict(matched, strict=False)
    problems = []
    if mismatched:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in mismatched]
        problems.append(f"skipped for a shape mismatch (kept fresh): {_short(shapes)}")
    if missing:
        problems.append(f"not in the checkpoint (kept fresh): {_short(missing)}")
    if unexpected:
        problems.append(f"not in the model (ignored): {_short(unexpected)}")
    if problems:
        warnings.warn(
            f"loaded {len(matched)}/{len(target)} tensors from {source}; " + "; ".join(problems),
            stacklevel=3,
        )


def load_pretrained_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a local checkpoint into ``model`` (in place; returns ``model``).

    See ``build_backbone``'s ``pretrained`` for the accepted files, key-prefix stripping and
    the shape-mismatch policy (skip with a warning).

    >>> import tempfile
    >>> src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.save({"state_dict": {"model." + k: v for k, v in src.state_dict().items()}},
    ...                f"{d}/w.ckpt")
    ...     _ = load_pretrained_weights(dst, f"{d}/w.ckpt")
    >>> torch.equal(src.weight, dst.weight)
    True
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {str(path)!r} does not exist")
    state = _extract_state_dict(_load_file(path), path)
    _load_matching(model, state, source=repr(str(path)))
    return model

"""Grad-CAM and the rule that picks its default layer (convnets and token models).

The conventions of every built-in method (signature, keywords) are stated in
:mod:`._gradient_methods`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_saliency.attribution._checks import (
    OUTPUTS,
    PRECISIONS,
    Output,
    Precision,
    check_choice,
    check_input,
    check_output,
    check_target,
)
from lightning_saliency.attribution._chunks import chunk_rows
from lightning_saliency.attribution._context import (
    attribution_mode,
    prepare_rows,
    select_scores,
)
from lightning_saliency.attribution._context import (
    autocast as _autocast,
)


def _module_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")


def _trace_modules(
    model: nn.Module, x: Tensor
) -> tuple[dict[str, int], dict[str, tuple], list[str], list[str]]:
    """One dry forward on x[:1]: call counts, last output shapes, Conv2d call order, and the
    order in which modules finished."""
    calls: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    conv_order: list[str] = []
    finished: list[str] = []
    handles = []

    def make_hook(name: str, is_conv: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(out.shape) if isinstance(out, Tensor) else ()
            finished.append(name)
            if is_conv:
                conv_order.append(name)

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(
                module.register_forward_hook(make_hook(name, isinstance(module, nn.Conv2d)))
            )
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return calls, shapes, conv_order, finished


def find_grad_cam_layer(model: nn.Module, x: Tensor) -> str:
    """Dotted name of the layer Grad-CAM uses by default.

    Rule: take the last ``nn.Conv2d`` executed in a forward pass of ``x[:1]``; among its
    ancestors (outermost first, the model itself excluded) and itself, pick the outermost
    module that is called once and returns a 4-D tensor with more than one spatial
    position; if none has more than one, the outermost 4-D one. For a torchvision/timm
    ResNet this is ``"layer4"``; for ``nn.Sequential(conv, relu, ..., conv, ...)`` it is the
    last conv itself; for a model wrapping a backbone (``self.model = resnet``) it is
    ``"model.layer4"``.

    A token model (ViT, Mixer: the last convolution is the patch embedding, and the modules
    after it output ``(N, tokens, dim)`` sequences) gets the last such module, called once
    (normalization layers aside), whose patch tokens the output still depends on: for a
    global-average-pooled model its last block, for a class-token ViT the block before the
    last (the last block's patch tokens never reach the class token). :func:`grad_cam`
    reshapes it to the patch grid. Never the patch embedding.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    >>> find_grad_cam_layer(net, torch.zeros(1, 1, 5, 5))
    '0'
    """
    check_input(x)
    with attribution_mode(model):
        calls, shapes, conv_order, finished = _trace_modules(model, x.detach().clone())
    if not conv_order:
        raise ValueError(
            "grad_cam found no nn.Conv2d in the model's forward pass; pass layer= "
            "(a submodule or its dotted name) whose output is a 4-D feature map"
        )
    tokens = _token_layers(model, conv_order[-1], calls, shapes, finished)
    if tokens:
        return _last_with_patch_gradient(model, x.detach()[:1].clone(), tokens)
    parts = conv_order[-1].split(".")
    chain = [".".join(parts[: i + 1]) for i in range(len(parts))]
    spatial = [n for n in chain if calls.get(n) == 1 and len(shapes.get(n, ())) == 4]
    for name in spatial:
        if shapes[name][2] * shapes[name][3] > 1:
            return name
    return spatial[0] if spatial else conv_order[-1]


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.Identity, nn.Dropout)


def _token_layers(model: nn.Module, last_conv: str, calls: dict[str, int],
                  shapes: dict[str, tuple], finished: list[str]) -> list[str]:  # fmt: skip
    """Token-sequence layers after a patch-embedding convolution, in finishing order."""
    conv_shape = shapes.get(last_conv, ())
    if len(conv_shape) != 4:
        return []
    grid = conv_shape[2] * conv_shape[3]
    after = finished[finished.index(last_conv) + 1 :]
    parents = {n: model.get_submodule(n.rpartition(".")[0]) if "." in n else model for n in after}
    seqs = [n for n in after if calls.get(n) == 1 and len(shapes.get(n, ())) == 3
            and grid <= shapes[n][1] <= grid + _MAX_PREFIX_TOKENS
            and isinstance(parents[n], (nn.Sequential, nn.ModuleList))  # a block of a stack
            and not isinstance(model.get_submodule(n), _NORMS)]  # fmt: skip
    return seqs if len(seqs) >= 2 else []  # a convnet: a lone reshape after its last conv


def _last_with_patch_gradient(model: nn.Module, x: Tensor, names: list[str]) -> str:
    """The last of ``names`` whose patch tokens the model's top logit depends on (the last of
    them all when no gradient reaches any, as with a zero-initialized head)."""
    acts: dict[str, Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: acts.__setitem__(n, o)) for n in names]  # fmt: skip
    try:
        with attribution_mode(model), torch.enable_grad():
            out = model(x.requires_grad_(True))
            score = out.max(dim=1).values.sum() if isinstance(out, Tensor) else None
            if score is None:
                raise TypeError(f"the model returned a {type(out).__name__}, not logits")
            grads = torch.autograd.grad(score, [acts[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    for name, g in zip(reversed(names), reversed(grads), strict=True):
        grid = _tokens_to_grid(acts[name].detach(), x.shape[-2], x.shape[-1])
        patches = grid.shape[-2] * grid.shape[-1]
        if g is not None and bool(g[:, -patches:].abs().sum() > 0):
            return name
    return names[-1]  # no gradient anywhere (e.g. a zero-initialized head): the last block


#: Class / distillation / register tokens a ViT may put before its patch tokens.
_MAX_PREFIX_TOKENS = 16


def _tokens_to_grid(act: Tensor, h: int, w: int) -> Tensor:
    """``(N, T, D)`` tokens -> ``(N, D, gh, gw)`` patch grid (prefix tokens dropped), with
    ``gh x gw`` (at least 2 x 2) the patch grid of an ``h x w`` input (same aspect ratio)."""
    n, t, d = act.shape
    for prefix in range(0, min(_MAX_PREFIX_TOKENS, t - 4) + 1):  # at least a 2 x 2 grid
        patches = t - prefix
        gh = round(math.sqrt(patches * h / w))
        if gh > 0 and patches % gh == 0 and abs(patches // gh / gh - w / h) < 1e-6 + 0.5 / gh:
            return act[:, prefix:].transpose(1, 2).reshape(n, d, gh, patches // gh)
    raise ValueError(
        f"the grad_cam layer outputs {t} tokens, which do not make a patch grid of a "
        f"{h}x{w} input with up to {_MAX_PREFIX_TOKENS} prefix tokens; pass layer= naming a "
        "feature map (N, C, H, W)"
    )


def _resolve_layer(model: nn.Module, layer: nn.Module | str | None, x: Tensor) -> nn.Module:
    if layer is None:
        return model.get_submodule(find_grad_cam_layer(model, x))
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(f"the model has no submodule named {layer!r}") from err
    if isinstance(layer, nn.Module):
        _module_name(model, layer)
        return layer
    raise TypeError(
        f"layer must be an nn.Module, a dotted name or None, got {type(layer).__name__}"
    )


def _check_not_folded(model: nn.Module, module: nn.Module) -> None:
    """A convolution with BatchNorm folded into it outputs what the BN did: not its own A."""
    folded = {conv for conv, _ in getattr(model, "folded_batchnorm", ())}
    if folded and (name := _module_name(model, module)) in folded:
        raise ValueError(
            f"the grad_cam layer {name!r} is a convolution with BatchNorm folded into it "
            "(attribution_model); its output is the BN's, not the convolution's: build the "
            f"copy with attribution_model(model, keep=[{name!r}]) or use the model itself"
        )


def _forward_with_activation(
    model: nn.Module, module: nn.Module, rows: Tensor, precision: str
) -> tuple[Tensor, Tensor]:
    """The model's output on ``rows`` and the layer's one output, checked to be a feature map."""
    captured: list[object] = []
    handle = module.register_forward_hook(lambda m, a, o, store=captured: store.append(o))
    try:
        with _autocast(precision, rows.device):
            out = model(rows)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(
            f"the grad_cam layer must be called exactly once per forward, "
            f"it was called {len(captured)} times"
        )
    act = captured[0]
    if not isinstance(act, Tensor) or act.ndim not in (3, 4):
        shape = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
        raise ValueError(
            "the grad_cam layer must output a 4-D feature map (N, K, h, w) or a token "
            f"sequence (N, tokens, dim), got {shape}"
        )
    return out, act


def grad_cam(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    layer: nn.Module | str | None = None,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """Grad-CAM: ``upsample(ReLU(sum_k alpha_k A_k))``, alpha_k = spatial mean of d f_c/dA_k.

    ``A`` is the 4-D output of ``layer`` (a submodule, its dotted name, or None for
    :func:`find_grad_cam_layer`), or its ``(N, tokens, dim)`` output reshaped to the patch
    grid for a token model (prefix tokens such as a class token dropped); the map is upsampled bilinearly to x's H x W
    (``align_corners=False``, as Captum's ``LayerAttribution.interpolate``) and repeated
    over x's channels, so it is shaped like x. The layer must be called once per forward
    and its output must not be modified in place afterwards (e.g. by ``ReLU(inplace=True)``).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))
    >>> grad_cam(net, torch.randn(2, 1, 4, 4), 0).shape
    torch.Size([2, 1, 4, 4])
    """
    check_input(x)
    check_choice("output", output, OUTPUTS)
    check_choice("precision", precision, PRECISIONS)
    n, c, h, w = x.shape
    with attribution_mode(model):
        xd = x.detach().clone()
        tgt = check_target(target, n, x.device)
        tmax = int(tgt.max())
        chunk = chunk_rows(model, xd, batch_size, memory_budget_mb, precision, channels_last)
        module = _resolve_layer(model, layer, xd)
        _check_not_folded(model, module)
        acc_dtype = torch.promote_types(x.dtype, torch.float32)
        parts = []
        for c0 in range(0, n, chunk):
            # requires grad: keeps A in the graph even if all parameters are frozen
            rows = prepare_rows(xd[c0 : c0 + chunk], channels_last)
            out, act = _forward_with_activation(model, module, rows, precision)
            tg = tgt[c0 : c0 + chunk]
            check_output(out, rows.shape[0], tmax)
            scores = select_scores(out, tg, output)
            if not scores.requires_grad or not act.requires_grad:
                raise RuntimeError("the model output does not depend differentiably on the layer")
            (d_act,) = torch.autograd.grad(scores.sum(), inputs=[act], allow_unused=True)
            a32 = act.detach().to(acc_dtype)
            d32 = torch.zeros_like(a32) if d_act is None else d_act.to(acc_dtype)
            if a32.ndim == 3:  # tokens (ViT, Mixer): the patch grid
                a32, d32 = _tokens_to_grid(a32, h, w), _tokens_to_grid(d32, h, w)
            alpha = d32.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((alpha * a32).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
            finite = torch.isfinite(a32.flatten(1)).all(1) & torch.isfinite(d32.flatten(1)).all(1)
            parts.append(torch.where(finite.view(-1, 1, 1, 1), cam, float("nan")))
        cams = torch.cat(parts).float()
        bad = ~torch.isfinite(cams.flatten(1)).all(1)
        n_bad = int(bad.sum())
        if n_bad:
            warnings.warn(
                f"{n_bad} of {n} samples produced non-finite (NaN/inf) Grad-CAM values; "
                "their maps are set to NaN",
                RuntimeWarning,
                stacklevel=2,
            )
            cams[bad] = float("nan")
    return cams.expand(n, c, h, w).contiguous().detach()

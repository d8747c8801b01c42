"""Local pretrained weights: read a checkpoint file, find its state dict, load the tensors
that fit (key prefixes stripped, spectral-norm keys mapped, shape mismatches skipped with a
warning). Used by :func:`~lightning_saliency.models.backbones.build_backbone`, which
re-exports :func:`load_pretrained_weights`.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["load_pretrained_weights"]


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

"""Any Captum attribution class as a method spec (``captum`` stays an optional dependency).

Spec layout (JSON/YAML)::

    {"method": "captum",
     "attribution": "DeepLift",                  # a class of captum.attr
     "init_args": {"multiply_by_inputs": true},  # constructor arguments after the model
     "attribute_args": {"baselines": 0.0},       # .attribute() arguments after the inputs
     "input_range": [x_min, x_max]}              # optional, for "min"/"max" baselines

The model is the constructor's first argument (``forward_func``/``model``); for
``NoiseTunnel`` it is the wrapped class, named in ``init_args.attribution_method`` and
built on the model. A ``layer`` init argument (``GuidedGradCam``) is a dotted submodule
name. ``target`` is the spec's target; ``additional_forward_args``,
``custom_attribution_func`` and ``return_convergence_delta`` are not spec arguments.
``baselines`` is a number, ``"min"``/``"max"`` (``input_range``) or a list of them: each
becomes a constant image, stacked to ``(B, C, H, W)`` (GradientShap draws from them).
Other lists become tuples (``sliding_window_shapes``). Arguments equal to Captum's
defaults are dropped, so specs are canonical; the label is ``captum_<Class>`` then
``key-value`` tokens of the attribute arguments and ``init.key-value`` tokens of the
init arguments (the generic grammar of :mod:`~lightning_saliency.attribution._method_registry`).

Guarantees as for the built-ins: eval mode with every ``training`` flag restored,
parameter ``.grad`` untouched, the built-ins' message for a model whose output is not a
logits tensor (not torch's from inside Captum), float32 maps shaped like ``x``, computed in chunks of
``batch_size`` expanded rows (default 256; a probe counts ``n_steps``, ``nt_samples``,
GradientShap's ``n_samples`` rows). Captum draws noise from the global RNGs, so the call
runs inside a fork of them (and, under ``torch.use_deterministic_algorithms(True)``, in its
``warn_only`` mode, since DeepLift's max-unpooling has no deterministic kernel): torch (CPU and initialized CUDA devices), NumPy and Python's
``random`` are seeded with ``torch.randint(0, 2**62, (1,), generator=generator)`` (0
without a generator) and restored afterwards.

>>> import torch
>>> from torch import nn
>>> from lightning_saliency.attribution import compute_attribution, resolve_method
>>> spec = resolve_method({"method": "captum", "attribution": "IntegratedGradients",
...                        "attribute_args": {"n_steps": 8, "method": "riemann_trapezoid"}})
>>> spec.label
'captum_IntegratedGradients_method-riemann.trapezoid_n_steps-8'
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
>>> compute_attribution(spec, net, torch.randn(3, 1, 2, 2), 0).shape
torch.Size([3, 1, 2, 2])
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import numbers
import random
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_saliency.attribution._checks import check_input, check_input_range, check_target
from lightning_saliency.attribution._guard import attribution_state, check_maps
from lightning_saliency.attribution._method_registry import (
    REQUIRED,
    generic_label_tokens,
    json_value,
    plain,
    register_method,
)

__all__ = ["STOCHASTIC_CLASSES", "captum_attribution"]

#: Captum classes that draw random numbers (their specs are stochastic).
STOCHASTIC_CLASSES = frozenset(
    {
        "GradientShap",
        "NoiseTunnel",
        "Lime",
        "KernelShap",
        "ShapleyValueSampling",
        "FeaturePermutation",
    }
)
_RESERVED = ("inputs", "target", "additional_forward_args", "custom_attribution_func")
_DEFAULT_ROWS = 256
_CLASS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def _captum_attr() -> Any:
    try:
        return importlib.import_module("captum.attr")
    except ImportError as err:
        raise ImportError(
            "the 'captum' method needs Captum: pip install captum (it is optional for "
            "lightning_saliency)"
        ) from err


def _attribution_class(name: object, *, inner: bool = False) -> type[Any]:
    """The Captum class ``name``, or a clear error (unknown, layer/neuron, not an attribution)."""
    if not isinstance(name, str) or not _CLASS_RE.match(name):
        raise ValueError(f"attribution must be a Captum class name like 'DeepLift', got {name!r}")
    ca = _captum_attr()
    cls = getattr(ca, name, None)
    bad = (ca.LayerAttribution, ca.NeuronAttribution)
    known = sorted(
        n for n in dir(ca)
        if isinstance(getattr(ca, n), type) and issubclass(getattr(ca, n), ca.Attribution)
        and not issubclass(getattr(ca, n), bad) and hasattr(getattr(ca, n), "attribute")
        and "LLM" not in n and n != "DataLoaderAttribution"
    )  # fmt: skip
    if cls is None or name not in known or (inner and name == "NoiseTunnel"):
        hint = " (layer and neuron attributions are not maps of the input)" if (
            isinstance(cls, type) and issubclass(cls, bad)) else ""  # fmt: skip
        raise ValueError(f"unknown Captum attribution {name!r}{hint}; known: {', '.join(known)}")
    return cls


def _params(fn: Any, skip: int) -> tuple[dict[str, Any], bool]:
    params = list(inspect.signature(fn).parameters.values())[skip:]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return {
        p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }, var_kw


def _init_params(cls: type[Any]) -> dict[str, Any]:
    params, _ = _params(cls.__init__, 1)
    first = next(iter(params), None)
    if first is not None and first != "attribution_method":
        del params[first]  # the model
    return params


def _attribute_params(cls: type[Any], init: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    params, var_kw = _params(cls.attribute, 2)  # self, inputs
    if "attribution_method" in init:  # NoiseTunnel: the wrapped class's arguments too
        inner, _ = _params(_attribution_class(init["attribution_method"]).attribute, 2)
        params = {**inner, **params}
        var_kw = False
    return params, var_kw


def _canonical_args(
    kind: str, given: Mapping[str, Any] | None, accepted: dict[str, Any], any_key: bool,
    cls: type,
) -> Any:  # fmt: skip
    out = {}
    for key, value in (given or {}).items():
        if key in _RESERVED or key == "return_convergence_delta":
            raise ValueError(
                f"{kind} {key!r} of captum {cls.__name__} is set by lightning_saliency"
            )
        if key not in accepted and not any_key:
            raise ValueError(
                f"unknown {kind} {key!r} for captum {cls.__name__}; accepted: {sorted(accepted)}"
            )
        default = accepted.get(key, REQUIRED)
        if default is REQUIRED or plain(value, lists=False) != default:
            out[key] = value
    missing = sorted(k for k, d in accepted.items() if d is REQUIRED and k not in out
                     and k not in _RESERVED)  # fmt: skip
    if missing:
        raise ValueError(f"captum {cls.__name__} needs {kind} {missing}")
    return json_value(kind, out) if out else None


def _validate(full: dict[str, Any]) -> dict[str, Any]:
    cls = _attribution_class(full["attribution"])
    init_accepted = _init_params(cls)
    init = _canonical_args("init_args", full["init_args"], init_accepted, False, cls)
    if init is not None and "attribution_method" in init:
        _attribution_class(init["attribution_method"], inner=True)
    if init is not None and "layer" in init and not isinstance(init["layer"], str):
        raise TypeError("a captum spec names its layer as a dotted submodule name (str)")
    accepted, any_key = _attribute_params(cls, init or {})
    given = dict(full["attribute_args"] or {})
    if isinstance(given.get("baselines"), tuple) and len(given["baselines"]) == 1:
        given["baselines"] = given["baselines"][0]  # one constant image either way
    if given.get("baselines") == 0 and accepted.get("baselines", REQUIRED) is None:
        del given["baselines"]  # Captum's default baseline is zero
    attr = _canonical_args("attribute_args", given, accepted, any_key, cls)
    for value in _as_list((attr or {}).get("baselines")):
        if not (value in ("min", "max") or (isinstance(value, numbers.Real)
                                            and not isinstance(value, bool))):  # fmt: skip
            raise ValueError(f"baselines are numbers, 'min' or 'max' (or a list), got {value!r}")
    return {**full, "init_args": init, "attribute_args": attr}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, tuple) else [value]


def _norm_args(kind: str) -> Any:
    def norm(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise TypeError(f"{kind} must be a mapping of argument names to values, got {value!r}")
        return json_value(kind, value) if value else None

    return norm


def _label_tokens(p: Mapping[str, Any]) -> list[str]:
    return [
        str(p["attribution"]),
        *generic_label_tokens(p.get("attribute_args") or {}),
        *generic_label_tokens(p.get("init_args") or {}, prefix="init."),
        *generic_label_tokens({k: p[k] for k in ("input_range",) if k in p}),
    ]


def _needs_range(p: Mapping[str, Any]) -> bool:
    baselines = _as_list((p.get("attribute_args") or {}).get("baselines"))
    return any(b in ("min", "max") for b in baselines)


# --------------------------------------------------------------------------- computing
def _baselines(value: Any, x: Tensor, input_range: tuple[float, float] | None) -> Tensor:
    images = []
    for b in _as_list(value):
        if b in ("min", "max"):
            if input_range is None:
                raise ValueError("captum baselines 'min'/'max' need input_range=(x_min, x_max)")
            b = input_range[0] if b == "min" else input_range[1]
        images.append(torch.full_like(x[0], float(b)))
    return torch.stack(images)


def _expansion(cls: type, attr: Mapping[str, Any], init: Mapping[str, Any]) -> int:
    """Rows of one probe in Captum's expanded forward passes (a memory estimate)."""
    accepted, _ = _attribute_params(cls, init)
    rows = 1
    for key in ("n_steps", "nt_samples"):
        if key in accepted:
            rows *= int(attr.get(key, accepted[key]))
    if cls.__name__ == "GradientShap":
        rows *= int(attr.get("n_samples", accepted["n_samples"]))
    if cls.__name__ == "DeepLiftShap":
        rows *= len(_as_list(attr.get("baselines")))
    return max(rows, 1)


def _build(cls: type, model: nn.Module, init: Mapping[str, Any]) -> Any:
    kwargs = dict(init)
    if "attribution_method" in kwargs:
        return cls(_attribution_class(kwargs.pop("attribution_method"))(model), **kwargs)
    if isinstance(kwargs.get("layer"), str):
        kwargs["layer"] = model.get_submodule(kwargs["layer"])
    return cls(model, **kwargs)


def _global_seed(generator: torch.Generator | None) -> int:
    if generator is None:
        return 0
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


@contextlib.contextmanager
def _deterministic_warn_only() -> Iterator[None]:
    """Under ``use_deterministic_algorithms(True)`` (``Trainer(deterministic=True)``), let
    Captum's ops without a deterministic kernel (DeepLift's max-unpooling) warn, not fail."""
    if not torch.are_deterministic_algorithms_enabled():
        yield
        return
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed torch (CPU + initialized CUDA devices), NumPy and ``random``; restore them after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    np_state = np.random.get_state()  # noqa: NPY002  (Captum draws from it)
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(seed)
            for d in devices:
                torch.cuda.default_generators[d].manual_seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def captum_attribution(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    attribution: str,
    init_args: Mapping[str, Any] | None = None,
    attribute_args: Mapping[str, Any] | None = None,
    input_range: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Maps of the Captum class ``attribution`` (N, C, H, W), float32, in chunks.

    ``batch_size`` bounds the expanded rows of one ``.attribute()`` call (default 256).
    See the module docstring for the argument layout and the RNG contract.
    """
    x = check_input(x)
    t = check_target(target, x.shape[0], x.device)
    cls = _attribution_class(attribution)
    init, attr = dict(init_args or {}), dict(attribute_args or {})
    rng = None if input_range is None else check_input_range(input_range)
    kwargs = {k: plain(v, lists=False) for k, v in attr.items()}
    if "baselines" in kwargs:
        kwargs["baselines"] = _baselines(kwargs["baselines"], x, rng)
    rows = max(1, (batch_size or _DEFAULT_ROWS) // _expansion(cls, attr, init))
    parts = []
    with (
        attribution_state(model),
        _seeded_global_rng(_global_seed(generator)),
        _deterministic_warn_only(),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=r"Setting (forward, )?backward hooks")
        explainer = _build(cls, model, {k: plain(v, lists=False) for k, v in init.items()})
        for i in range(0, x.shape[0], rows):
            chunk = x[i : i + rows].detach().clone().requires_grad_()
            out = explainer.attribute(chunk, target=t[i : i + rows], **kwargs)
            parts.append(out.detach())
    return check_maps(torch.cat(parts), x, f"captum_{attribution}")


register_method(
    captum_attribution,
    name="captum",
    normalizers={
        "attribution": lambda v: _attribution_class(v).__name__,
        "init_args": _norm_args("init_args"),
        "attribute_args": _norm_args("attribute_args"),
        "input_range": lambda v: None if v is None else check_input_range(v),
    },
    validate=_validate,
    label_tokens=_label_tokens,
    stochastic=lambda p: p["attribution"] in STOCHASTIC_CLASSES,
    needs_input_range=_needs_range,
    manages_mode=True,
    _builtin=True,
)

"""The built-in methods, registered through :func:`register_method` like any other.

Their label grammar (``MethodSpec.label``; characters ``[A-Za-z0-9_.-]`` only)::

    label    := explicit-label | method { "_" token } [ "_sp-" algorithm { "-" sp-token } ]
    token    := in this order, each only when it applies:
                "s" NUM | "nl" NUM      sigma | noise_level    (smooth_grad, var_grad; always)
                "c" NUM                 confidence             (adapt_grad; always)
                "gxi" | "ig"            base = grad_x_input | integrated_gradients
                "sq"                    squared = True
                "clean"                 include_clean = True   (adapt_grad)
                "n" INT                 samples    (when != 16)
                "st" INT                steps      (when != 16; IG and base "ig" only)
                "gl"                    rule = "gauss_legendre"
                "b" (NUM | "min" | "max")  baseline (when != 0; IG and base "ig" only)
                "r" NUM "to" NUM        input_range stored in the spec
                "lsm"                   output = "log_softmax"
                "at-" LAYER             grad_cam layer (dotted module name)
    sp-token := the reduction unless "sum" ("mean", "abs_sum" or "abs_mean")  then
                KEY VALUE for each segmenter parameter, sorted by key (e.g. "n_segments40")
    NUM      := shortest repr of the float with a trailing ".0" and any "+" removed
                (0.2, 1, 1e-05, -0.5); INT := decimal; booleans are "true"/"false"

Examples: ``simple_grad``, ``smooth_grad_s0.2``, ``smooth_grad_s0.2_sp-slic``,
``smooth_grad_s0.1_gxi``, ``adapt_grad_c0.95``, ``integrated_gradients_st32_gl``,
``smooth_grad_nl0.2_ig_bmin``, ``grad_cam_at-layer4``, ``simple_grad_sp-slic-mean-n_segments40``,
``smooth_grad_nl0.2_sp-slic-abs_sum``. The ``method { "_" token }`` part of a spec's pixel
twin is also its :attr:`~lightning_saliency.attribution.MethodSpec.seed_key`, which fixes
its noise draws: this grammar must never change for an existing spec.

>>> from lightning_saliency.attribution import resolve_method
>>> resolve_method({"method": "smooth_grad", "noise_level": 0.2, "base": "integrated_gradients", "baseline": "min"}).label
'smooth_grad_nl0.2_ig_bmin'
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from lightning_saliency.attribution._checks import (
    OUTPUTS,
    RULES,
    check_choice,
    check_input_range,
    check_nonneg_float,
    check_positive_int,
)
from lightning_saliency.attribution._grad_cam import grad_cam
from lightning_saliency.attribution._gradient_methods import (
    BASES,
    grad_x_input,
    integrated_gradients,
    simple_grad,
)
from lightning_saliency.attribution._method_registry import format_number as _fmt
from lightning_saliency.attribution._method_registry import register_method
from lightning_saliency.attribution._smoothing import (
    _check_confidence,
    adapt_grad,
    smooth_grad,
    var_grad,
)

__all__ = ["BUILTIN_NORMALIZERS", "builtin_label_tokens"]

#: Parameters of the integrated-gradients path and their defaults (shared by the bases).
_IG = {"steps": 16, "baseline": None, "rule": "riemann"}


def _norm_baseline(value: Any) -> float | str | None:
    if value is None or value == "zero":
        return None
    if isinstance(value, str):
        check_choice("baseline", value, ("zero", "min", "max"))
        return value
    if isinstance(value, Tensor):
        raise TypeError(
            "a tensor baseline cannot go in a MethodSpec; call integrated_gradients directly"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"baseline must be None, a finite number, 'min' or 'max', got {value!r}")
    v = float(value)
    return None if v == 0 else v


def _norm_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _norm_layer(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, nn.Module):
        raise TypeError("a MethodSpec stores grad_cam's layer as a dotted module name (str)")
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_.]+$", value):
        raise ValueError(f"layer must be a dotted submodule name like 'layer4', got {value!r}")
    return value


#: Normalizer of every built-in parameter (one owner of each validation rule).
BUILTIN_NORMALIZERS: dict[str, Callable[[Any], Any]] = {
    "sigma": lambda v: None if v is None else check_nonneg_float("sigma", v),
    "noise_level": lambda v: None if v is None else check_nonneg_float("noise_level", v),
    "input_range": lambda v: None if v is None else check_input_range(v),
    "samples": lambda v: check_positive_int("samples", v),
    "steps": lambda v: check_positive_int("steps", v),
    "base": lambda v: check_choice("base", v, BASES),
    "rule": lambda v: check_choice("rule", v, RULES),
    "output": lambda v: check_choice("output", v, OUTPUTS),
    "squared": lambda v: _norm_bool("squared", v),
    "include_clean": lambda v: _norm_bool("include_clean", v),
    "baseline": _norm_baseline,
    "confidence": _check_confidence,
    "layer": _norm_layer,
}


def builtin_label_tokens(p: Mapping[str, Any]) -> list[str]:
    """Label tokens of a built-in spec's canonical parameters (the grammar above).

    >>> builtin_label_tokens({"sigma": 0.1, "base": "grad_x_input", "samples": 8})
    ['s0.1', 'gxi', 'n8']
    """
    tokens = []
    if "sigma" in p:
        tokens.append("s" + _fmt(p["sigma"]))
    if "noise_level" in p:
        tokens.append("nl" + _fmt(p["noise_level"]))
    if "confidence" in p:
        tokens.append("c" + _fmt(p["confidence"]))
    if "base" in p:
        tokens.append({"grad_x_input": "gxi", "integrated_gradients": "ig"}[p["base"]])
    if p.get("squared"):
        tokens.append("sq")
    if p.get("include_clean"):
        tokens.append("clean")
    if "samples" in p:
        tokens.append("n" + _fmt(p["samples"]))
    if "steps" in p:
        tokens.append("st" + _fmt(p["steps"]))
    if p.get("rule") == "gauss_legendre":
        tokens.append("gl")
    if "baseline" in p:
        tokens.append("b" + _fmt(p["baseline"]))
    if "input_range" in p:
        lo, hi = p["input_range"]
        tokens.append(f"r{_fmt(lo)}to{_fmt(hi)}")
    if p.get("output") == "log_softmax":
        tokens.append("lsm")
    if "layer" in p:
        tokens.append("at-" + p["layer"])
    return tokens


# --------------------------------------------------------------------------- rules
def _one_noise(method: str) -> Callable[[dict[str, Any]], None]:
    def check(full: dict[str, Any]) -> None:
        if (full["sigma"] is None) == (full["noise_level"] is None):
            raise ValueError(
                f"{method} needs exactly one of sigma (absolute) or noise_level (relative), "
                f"got sigma={full['sigma']}, noise_level={full['noise_level']}"
            )
        if "base" in full:
            _ig_only(full)

    return check


def _ig_only(full: dict[str, Any]) -> None:
    if full["base"] != "integrated_gradients":
        given = [k for k in _IG if full[k] != _IG[k]]
        if given:
            raise ValueError(
                f"{given} only apply with base='integrated_gradients', got base={full['base']!r}"
            )


def _has_noise(p: Mapping[str, Any]) -> bool:
    return bool(p.get("sigma") or p.get("noise_level"))


def _extreme_baseline(p: Mapping[str, Any]) -> bool:
    return p.get("baseline") in ("min", "max")


def _register_builtins() -> None:
    shared: dict[str, Any] = {
        "normalizers": BUILTIN_NORMALIZERS,
        "label_tokens": builtin_label_tokens,
        "manages_mode": True,
        "_builtin": True,
    }

    def norms(fn: Callable[..., Any], *skip: str) -> dict[str, Any]:
        names = set(inspect.signature(fn).parameters) - set(skip)
        own = {k: v for k, v in BUILTIN_NORMALIZERS.items() if k in names}
        return {**shared, "normalizers": own}

    register_method(simple_grad, **norms(simple_grad))
    register_method(grad_x_input, **norms(grad_x_input))
    register_method(
        integrated_gradients,
        exclude=("return_delta",),
        needs_input_range=_extreme_baseline,
        **norms(integrated_gradients),
    )
    register_method(
        smooth_grad,
        exclude=("seed",),
        keep=("sigma", "noise_level"),
        validate=_one_noise("smooth_grad"),
        stochastic=_has_noise,
        needs_input_range=lambda p: "noise_level" in p or _extreme_baseline(p),
        **norms(smooth_grad),
    )
    register_method(
        var_grad,
        exclude=("seed",),
        keep=("sigma", "noise_level"),
        validate=_one_noise("var_grad"),
        stochastic=_has_noise,
        needs_input_range=lambda p: "noise_level" in p,
        **norms(var_grad),
    )
    register_method(
        adapt_grad,
        exclude=("seed",),
        keep=("confidence",),
        validate=_ig_only,
        stochastic=True,
        needs_input_range=True,
        **norms(adapt_grad),
    )
    register_method(grad_cam, **norms(grad_cam))


_register_builtins()

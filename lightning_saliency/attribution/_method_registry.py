"""The open method registry: :func:`register_method` and what a method declares.

A saliency method is a function ``fn(model, x, target, *, <params>, ...) -> Tensor`` whose
maps are shaped like ``x``. Registering it declares, once, from its signature:

- its **parameters and defaults**: every keyword after the first three positional ones,
  except the run-time options (:data:`RUNTIME_OPTIONS`, ``generator``) and ``exclude``;
  a parameter without a default is required;
- a **normalizer** per parameter (validates a config value and returns its canonical
  form); a parameter without one gets a generic JSON-like normalizer (None, bool, finite
  numbers, strings, lists -> tuples, mappings -> :class:`FrozenParams`) that also
  follows the default's type (an int given for a float default becomes a float);
- its **label tokens** (default: the generic grammar), whether it is **stochastic**
  and whether it **needs input_range**, as booleans or as predicates of the canonical
  parameters; it **takes a generator** when ``generator`` is in its signature.

User methods get the generic label grammar of :mod:`._values`
(``name { "_" key "-" value }``, e.g. ``my_method_mode-fast_scale-2``).
Canonical parameters are the given ones that differ from their default (and those named
in ``keep``), so a user method's label only shows what was changed.

>>> import torch
>>> from torch import nn
>>> from lightning_saliency.attribution import (
...     compute_attribution, register_method, resolve_method, unregister_method)
>>> @register_method
... def scaled_grad(model, x, target, *, scale: float = 1.0, mode: str = "plain"):
...     x = x.detach().requires_grad_()
...     score = model(x).gather(1, torch.as_tensor(target).expand(len(x)).view(-1, 1)).sum()
...     return scale * torch.autograd.grad(score, x)[0]
>>> spec = resolve_method({"method": "scaled_grad", "scale": 2, "mode": "plain"})
>>> spec.label, dict(spec.params), spec.to_config()
('scaled_grad_scale-2', {'scale': 2.0}, {'method': 'scaled_grad', 'scale': 2.0, 'label': 'scaled_grad_scale-2'})
>>> resolve_method(spec.to_config()) == spec, spec.noise_seed(0)
(True, 3309613895)
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
>>> maps = compute_attribution(spec, net, torch.ones(2, 1, 2, 2), 1)
>>> torch.equal(maps[0].flatten(), 2 * net[1].weight[1].detach())
True
>>> unregister_method("scaled_grad")
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from lightning_saliency.attribution._values import (
    FrozenParams,
    format_number,
    generic_label_tokens,
    json_value,
    plain,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "RUNTIME_OPTIONS",
    "FrozenParams",
    "MethodInfo",
    "format_number",
    "generic_label_tokens",
    "get_method",
    "json_value",
    "plain",
    "register_method",
    "registered_names",
    "unregister_method",
]

#: Engine options ``compute_attribution`` passes to a method that accepts them (never params).
RUNTIME_OPTIONS: tuple[str, ...] = ("precision", "channels_last", "batch_size", "memory_budget_mb")
#: Entry-point group whose entries (a module or a function) register methods on first use.
ENTRY_POINT_GROUP = "lightning_saliency.methods"
#: Keys of a method mapping that are not parameters (and the super-pixel label prefix).
RESERVED_PARAMS = frozenset({"method", "label", "superpixel", "params", "sp", "generator"})
REQUIRED = inspect.Parameter.empty
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- registry
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """What a registered method declared (see :func:`register_method`).

    ``defaults`` maps each parameter to its default (``REQUIRED`` when it has none);
    ``options`` are the :data:`RUNTIME_OPTIONS` its function accepts.
    """

    name: str
    fn: Callable[..., Any]
    defaults: Mapping[str, Any]
    normalizers: Mapping[str, Callable[[Any], Any]]
    keep: tuple[str, ...]
    validate: Callable[[dict[str, Any]], dict[str, Any] | None] | None
    label_tokens: Callable[[Mapping[str, Any]], list[str]]
    stochastic: Predicate
    needs_input_range: Predicate
    takes_generator: bool
    options: frozenset[str]
    manages_mode: bool
    builtin: bool = False

    def canonical(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validated canonical parameters: normalized, defaults and None dropped."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for method {self.name!r}; "
                f"accepted: {sorted(self.defaults)}"
            )
        full = {k: v for k, v in self.defaults.items() if v is not REQUIRED}
        for key, value in params.items():
            full[key] = self.normalizers[key](value)
        missing = sorted(set(self.defaults) - set(full))
        if missing:
            raise ValueError(f"method {self.name!r} needs parameter(s) {missing}")
        if self.validate is not None:
            full = self.validate(full) or full
        out = {}
        for key, value in full.items():
            default = self.defaults[key]
            if value is None and default is None:
                continue
            if key in self.keep or default is REQUIRED or value != default:
                out[key] = value
        return out


_REGISTRY: dict[str, MethodInfo] = {}


def _as_predicate(flag: bool | Predicate | None, fallback: bool) -> Predicate:
    if flag is None:
        flag = fallback
    if callable(flag):
        return flag
    value = bool(flag)
    return lambda params: value


def _signature_params(
    fn: Callable[..., Any], exclude: tuple[str, ...]
) -> tuple[dict[str, Any], frozenset[str], bool]:
    sig = inspect.signature(fn)
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 3:
        raise TypeError(
            f"a saliency method takes (model, x, target, *, params...) positionally first; "
            f"{getattr(fn, '__name__', fn)!r} has {len(positional)} positional parameter(s)"
        )
    skip = {p.name for p in positional[:3]}
    defaults: dict[str, Any] = {}
    options: set[str] = set()
    takes_generator = False
    for p in sig.parameters.values():
        if p.name in skip or p.name in exclude:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in RUNTIME_OPTIONS:
            options.add(p.name)
        elif p.name == "generator":
            takes_generator = True
        elif p.name in RESERVED_PARAMS or not _KEY_RE.match(p.name):
            raise ValueError(f"parameter name {p.name!r} is reserved or not label-safe")
        else:
            defaults[p.name] = p.default
    return defaults, frozenset(options), takes_generator


def _json_normalizer(key: str, default: Any) -> Callable[[Any], Any]:
    """The default normalizer: :func:`json_value` with the default as type hint."""
    hint = None if default is REQUIRED else default
    return lambda v: json_value(key, v, hint)


def _check_name(name: str, overwrite: bool) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"a method name is a letter then letters, digits or '_'; got {name!r}")
    old = _REGISTRY.get(name)
    if old is not None and (old.builtin or not overwrite):
        raise ValueError(
            f"method {name!r} is already registered"
            + ("" if old.builtin else "; pass overwrite=True to replace it")
        )
    for other in _REGISTRY:
        if other != name and (other.startswith(name + "_") or name.startswith(other + "_")):
            raise ValueError(
                f"method name {name!r} extends (or is extended by) {other!r} with '_', so "
                "their labels could collide; choose another name"
            )


def register_method(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    normalizers: Mapping[str, Callable[[Any], Any]] | None = None,
    keep: tuple[str, ...] = (),
    validate: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    label_tokens: Callable[[Mapping[str, Any]], list[str]] | None = None,
    stochastic: bool | Predicate | None = None,
    needs_input_range: bool | Predicate = False,
    exclude: tuple[str, ...] = (),
    manages_mode: bool = False,
    overwrite: bool = False,
    _builtin: bool = False,
) -> Any:
    """Register a saliency method (decorator, with or without arguments, or a plain call).

    Args:
        fn: ``fn(model, x, target, *, <params>, [generator], [input_range], [precision],
            [channels_last], [batch_size], [memory_budget_mb]) -> Tensor`` shaped like ``x``.
            ``target`` arrives as given to :func:`compute_attribution` (an int or a
            LongTensor (N,)); ``generator`` (when accepted) is the spec's noise generator
            (None when the caller gave none); ``input_range`` is filled from the call when
            the spec does not store one.
        name: the method name used in configs (default ``fn.__name__``); labels start with
            it, so it must not extend a registered name with ``_`` (nor be extended by one).
        normalizers: parameter -> function validating a value and returning its canonical
            form (raise ``TypeError``/``ValueError`` with a clear message); the others get
            :func:`json_value` with the default as type hint.
        keep: parameters kept in the canonical form (and the label) even at their default.
        validate: called with every parameter (defaults filled, normalized) to check their
            combination; may return a replacement dict (e.g. to canonicalize nested values).
        label_tokens: canonical params -> label tokens (default: :func:`generic_label_tokens`).
        stochastic: whether it draws noise (bool or predicate of the canonical params;
            default: whether it takes a generator).
        needs_input_range: whether it needs ``input_range`` (bool or predicate).
        exclude: signature parameters that are not spec parameters (e.g. ``seed``).
        manages_mode: True when ``fn`` itself sets eval mode, enables gradients and leaves
            parameter ``.grad`` alone; otherwise :func:`compute_attribution` does it
            around the call (eval mode, gradients on outside inference mode, every
            ``training`` flag and parameter ``.grad`` restored after).
        overwrite: replace a method registered earlier under ``name`` (not a built-in).

    Returns:
        ``fn`` itself (so it stays callable directly), or a decorator.
    """

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        method = name or str(getattr(f, "__name__", ""))
        _check_name(method, overwrite)
        defaults, options, takes_generator = _signature_params(f, tuple(exclude))
        given = dict(normalizers or {})
        extra = sorted(set(given) - set(defaults))
        if extra:
            raise ValueError(f"normalizers for unknown parameter(s) {extra} of {method!r}")
        norms: dict[str, Callable[[Any], Any]] = {
            k: given.get(k) or _json_normalizer(k, d) for k, d in defaults.items()
        }
        _REGISTRY[method] = MethodInfo(
            name=method,
            fn=f,
            defaults=dict(defaults),
            normalizers=norms,
            keep=tuple(keep),
            validate=validate,
            label_tokens=label_tokens or generic_label_tokens,
            stochastic=_as_predicate(stochastic, takes_generator),
            needs_input_range=_as_predicate(needs_input_range, False),
            takes_generator=takes_generator,
            options=options,
            manages_mode=manages_mode,
            builtin=_builtin,
        )
        return f

    return decorate if fn is None else decorate(fn)


def unregister_method(name: str) -> None:
    """Remove a method registered by :func:`register_method` (built-ins stay).

    >>> unregister_method("simple_grad")
    Traceback (most recent call last):
    ...
    ValueError: built-in method 'simple_grad' cannot be unregistered
    """
    info = _REGISTRY.get(name)
    if info is None:
        raise ValueError(f"no method {name!r} is registered")
    if info.builtin:
        raise ValueError(f"built-in method {name!r} cannot be unregistered")
    del _REGISTRY[name]


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(name: str) -> None:
    for ep in _entry_points():
        if ep.name == name:
            obj = ep.load()
            if name not in _REGISTRY and callable(obj) and not inspect.ismodule(obj):
                register_method(obj, name=name)
            return


def get_method(name: str) -> MethodInfo:
    """The registered method ``name`` (loading its entry point on first use).

    >>> get_method("smooth_grad").defaults["samples"]
    16
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {type(name).__name__}")
    if name not in _REGISTRY:
        _load_entry_point(name)
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown saliency method {name!r}; known: {', '.join(registered_names())} "
            "(register your own with lightning_saliency.attribution.register_method)"
        )
    return _REGISTRY[name]


def registered_names() -> list[str]:
    """Sorted names of the registered methods (entry points not yet loaded included)."""
    names = set(_REGISTRY)
    names.update(ep.name for ep in _entry_points())
    return sorted(names)

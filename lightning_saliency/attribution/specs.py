"""Named, hashable method configurations with stable labels.

A :class:`MethodSpec` is one saliency configuration: a method name, its parameters
(canonical: validated, numbers normalized, defaults and irrelevant entries dropped) and
an optional super-pixel grouping. :func:`resolve_method` builds one from a config entry
(``"simple_grad"``, ``{"method": "smooth_grad", "sigma": 0.2, "superpixel": "slic"}``,
``{"method": "captum", "attribution": "DeepLift"}``, ...) and :func:`compute_attribution`
runs it. Methods come from the open registry (:func:`register_method`, in
``_method_registry.py`` with the generic label grammar of user methods); the built-ins and their
label grammar are in ``_builtins.py``, the Captum adapter in ``captum_adapter.py``.

A super-pixel grouping appends ``"_sp-" algorithm { "-" sp-token }`` to the label
(``_superpixel_spec.py``).
Equal configurations (after canonicalization) get equal labels and different ones
different labels; an explicit ``"label"`` in the config replaces the generated one.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

import lightning_saliency.attribution._builtins  # registers the built-ins
import lightning_saliency.attribution.captum_adapter  # noqa: F401  (registers "captum")
from lightning_saliency.attribution._guard import guarded
from lightning_saliency.attribution._method_registry import (
    FrozenParams,
    MethodInfo,
    format_number,
    get_method,
    plain,
    register_method,
    registered_names,
    unregister_method,
)
from lightning_saliency.attribution._superpixel_spec import canonical_superpixel, superpixel_suffix
from lightning_saliency.attribution.superpixels import group_by_segments

__all__ = [
    "DEFAULT_METHODS",
    "FrozenParams",
    "MethodInfo",
    "MethodSpec",
    "adaptgrad_paper_specs",
    "available_methods",
    "compute_attribution",
    "format_number",
    "method_info",
    "method_is_stochastic",
    "method_needs_input_range",
    "register_method",
    "resolve_method",
    "segmenter_args",
    "spec_input_range",
    "unregister_method",
]

#: The monitor's default method set (``InterpretationGeneralization(methods=None)``, and what the
#: report assumes for a run whose config names none): the plain gradient baseline, SmoothGrad at several noise
#: levels, integrated gradients, AdaptGrad, and super-pixel-grouped simple/smooth grad.
DEFAULT_METHODS: tuple[str | dict[str, Any], ...] = (
    "simple_grad",
    {"method": "smooth_grad", "noise_level": 0.1, "samples": 16},
    {"method": "smooth_grad", "noise_level": 0.2, "samples": 16},
    {"method": "smooth_grad", "noise_level": 0.5, "samples": 16},
    {"method": "integrated_gradients", "steps": 16},
    {"method": "adapt_grad", "samples": 16},
    {"method": "simple_grad", "superpixel": "slic"},
    {"method": "smooth_grad", "noise_level": 0.2, "samples": 16, "superpixel": "slic"},
)


_LABEL_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _check_label(label: object) -> str:
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise ValueError(
            f"label must be a non-empty string of letters, digits, '_', '-' and '.', got {label!r}"
        )
    return label


def _make_label(
    method: str, params: Mapping[str, Any], superpixel: Mapping[str, Any] | None
) -> str:
    label = "_".join([method, *get_method(method).label_tokens(params)])
    if superpixel is not None:
        label += superpixel_suffix(superpixel)
    if not _LABEL_RE.match(label):
        raise ValueError(f"method {method!r} made the label {label!r}, not [A-Za-z0-9_.-]+")
    return label


# --------------------------------------------------------------------------- public API
@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One saliency configuration: method, canonical parameters, optional super-pixels, label.

    Construction validates and canonicalizes (unknown methods or parameters raise
    ``ValueError``), so equal configurations compare (and hash) equal.

    >>> spec = MethodSpec("smooth_grad", {"sigma": 0.2, "samples": 16}, "slic")
    >>> spec.label, dict(spec.params), dict(spec.superpixel)
    ('smooth_grad_s0.2_sp-slic', {'sigma': 0.2}, {'algorithm': 'slic', 'reduction': 'sum'})
    """

    method: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=FrozenParams)
    superpixel: Mapping[str, Any] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        info = get_method(self.method)
        if not isinstance(self.params, Mapping):
            raise TypeError(f"params must be a mapping, got {type(self.params).__name__}")
        params = FrozenParams(info.canonical(self.params))
        superpixel = canonical_superpixel(self.superpixel)
        label = (
            _check_label(self.label) if self.label else _make_label(self.method, params, superpixel)
        )
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "superpixel", superpixel)
        object.__setattr__(self, "label", label)

    # ------------------------------------------------------------ relations between specs
    @property
    def canonical_label(self) -> str:
        """The generated label of the canonical spec (an explicit ``label`` aside).

        >>> MethodSpec("smooth_grad", {"sigma": 0.2}, label="mine").canonical_label
        'smooth_grad_s0.2'
        """
        return _make_label(self.method, self.params, self.superpixel)

    @property
    def pixel_twin(self) -> MethodSpec:
        """The same method and parameters without super-pixel grouping (or explicit label).

        A grouped spec's maps are its pixel twin's maps, grouped: the two share one
        attribution pass and the same noise draws.

        >>> resolve_method({"method": "smooth_grad", "sigma": 0.2, "superpixel": "slic"}).pixel_twin.label
        'smooth_grad_s0.2'
        """
        return MethodSpec(self.method, self.params)

    @property
    def seed_key(self) -> str:
        """The string that seeds this spec's noise: a frozen serialization of the pixel
        twin's canonical parameters (grouping and labels never change the draws).

        It equals the pixel twin's generated label of version 0.1 and must never change
        for an existing spec, since it fixes every noise draw (``tests/test_registry.py``
        pins it).

        >>> resolve_method({"method": "adapt_grad", "superpixel": "slic", "label": "x"}).seed_key
        'adapt_grad_c0.95'
        """
        return _make_label(self.method, self.params, None)

    def noise_seed(self, seed: int) -> int:
        """Seed of this spec's noise generator under the callback's ``seed``: the same for
        every model (common random numbers) and for the spec's super-pixel groupings.

        >>> resolve_method({"method": "smooth_grad", "sigma": 0.2}).noise_seed(0)
        2651505951
        """
        return (int(seed) * 1_000_003 + zlib.crc32(self.seed_key.encode())) % (2**63 - 1)

    def to_config(self) -> dict[str, Any]:
        """A plain dict that :func:`resolve_method` turns back into an equal spec.

        >>> s = resolve_method({"method": "adapt_grad", "superpixel": "slic"})
        >>> resolve_method(s.to_config()) == s
        True
        """
        config: dict[str, Any] = {"method": self.method}
        for key, value in self.params.items():
            config[key] = plain(value)
        if self.superpixel is not None:
            config["superpixel"] = dict(self.superpixel)
        config["label"] = self.label
        return config


def available_methods() -> list[str]:
    """Names of the registered saliency methods (built-ins, ``captum``, user methods).

    >>> {"adapt_grad", "captum", "simple_grad"} <= set(available_methods())
    True
    """
    return registered_names()


def method_info(method: str | Mapping[str, Any] | MethodSpec) -> MethodInfo:
    """What a method declared: defaults, normalizers, whether it takes a generator, ...

    >>> method_info("adapt_grad").defaults["confidence"], method_info("simple_grad").takes_generator
    (0.95, False)
    """
    name = method if isinstance(method, str) else resolve_method(method).method
    return get_method(name)


def resolve_method(spec: str | Mapping[str, Any] | MethodSpec) -> MethodSpec:
    """Turn a config entry into a validated :class:`MethodSpec`.

    Accepts a method name, a mapping ``{"method": ..., <params>..., "superpixel": ...,
    "label": ...}`` (params may also be nested under ``"params"``), or a MethodSpec.

    >>> resolve_method({"method": "smooth_grad", "sigma": 0.1, "base": "grad_x_input"}).label
    'smooth_grad_s0.1_gxi'
    >>> resolve_method({"method": "simple_grad", "superpixel": {"algorithm": "slic", "n_segments": 40}}).label
    'simple_grad_sp-slic-n_segments40'
    """
    if isinstance(spec, MethodSpec):
        return spec
    if isinstance(spec, str):
        return MethodSpec(spec)
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"a method spec must be a name, a mapping or a MethodSpec, got {type(spec).__name__}"
        )
    entry = dict(spec)
    if "method" not in entry:
        raise ValueError(f"a method mapping needs a 'method' key; known: {available_methods()}")
    method = entry.pop("method")
    superpixel = entry.pop("superpixel", None)
    label = entry.pop("label", None) or ""
    params = dict(entry.pop("params", None) or {})
    clash = sorted(set(params) & set(entry))
    if clash:
        raise ValueError(f"parameter(s) {clash} given both at top level and under 'params'")
    params.update(entry)
    return MethodSpec(method, params, superpixel, label)


def segmenter_args(spec: str | Mapping[str, Any] | MethodSpec) -> dict[str, Any] | None:
    """Arguments for ``segment(images, **args)`` (algorithm + explicit parameters), or None.

    >>> segmenter_args({"method": "simple_grad", "superpixel": {"algorithm": "slic", "reduction": "mean"}})
    {'algorithm': 'slic'}
    """
    s = resolve_method(spec)
    if s.superpixel is None:
        return None
    return {k: v for k, v in s.superpixel.items() if k != "reduction"}


def method_needs_input_range(spec: str | Mapping[str, Any] | MethodSpec) -> bool:
    """Whether computing the spec needs ``input_range`` (noise_level, adapt_grad, min/max
    baseline; a registered method's ``needs_input_range``) and does not store its own.

    >>> method_needs_input_range("adapt_grad"), method_needs_input_range("simple_grad")
    (True, False)
    """
    s = resolve_method(spec)
    if "input_range" in s.params:
        return False
    return bool(get_method(s.method).needs_input_range(s.params))


def spec_input_range(
    spec: str | Mapping[str, Any] | MethodSpec, input_range: tuple[float, float] | None = None
) -> tuple[float, float] | None:
    """The ``(x_min, x_max)`` the spec is computed with: the pair it stores, else the caller's
    ``input_range`` (what :func:`compute_attribution` passes; None when neither has one).

    >>> own = {"method": "adapt_grad", "input_range": [-1, 1]}
    >>> spec_input_range("adapt_grad", (0.0, 1.0)), spec_input_range(own, (0.0, 1.0))
    ((0.0, 1.0), (-1.0, 1.0))
    """
    s = resolve_method(spec)
    if "input_range" not in s.params:
        return input_range
    stored: tuple[float, float] | None = plain(s.params["input_range"], lists=False)
    return stored


def method_is_stochastic(spec: str | Mapping[str, Any] | MethodSpec) -> bool:
    """Whether the spec draws noise (smooth_grad/var_grad with a nonzero scale, adapt_grad,
    a registered method's ``stochastic``).

    >>> method_is_stochastic({"method": "smooth_grad", "sigma": 0.0})
    False
    """
    s = resolve_method(spec)
    return bool(get_method(s.method).stochastic(s.params))


def compute_attribution(
    spec: str | Mapping[str, Any] | MethodSpec,
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    segments: Tensor | None = None,
    generator: torch.Generator | None = None,
    input_range: tuple[float, float] | None = None,
    precision: str = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """Compute the spec's maps (N, C, H, W), grouped by ``segments`` if it has super-pixels.

    ``input_range`` is used when the spec needs one and does not store its own;
    ``generator`` feeds the noise of stochastic methods (None: seed 0). ``segments``
    (N, H, W) must be given for super-pixel specs: compute them once with
    ``segment(unnormalized_images, **segmenter_args(spec))``.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.randn(2, 1, 2, 2)
    >>> seg = torch.zeros(2, 2, 2, dtype=torch.long)
    >>> m = compute_attribution({"method": "simple_grad", "superpixel": "slic"}, net, x, 0, segments=seg)
    >>> torch.allclose(m[0, 0, 0, 0], net[1].weight[0].sum())
    True
    """
    s = resolve_method(spec)
    if s.superpixel is not None and segments is None:
        raise ValueError(
            f"spec {s.label!r} groups by super-pixels: pass segments (N, H, W) computed once "
            "with segment(unnormalized_images, **segmenter_args(spec))"
        )
    info = get_method(s.method)
    kwargs: dict[str, Any] = {k: plain(v, lists=False) for k, v in s.params.items()}
    if "input_range" in info.defaults:
        rng = spec_input_range(s, input_range)
        if rng is not None:
            kwargs["input_range"] = rng
        elif method_needs_input_range(s):
            raise ValueError(f"method {s.label!r} needs input_range=(x_min, x_max)")
    if info.takes_generator:
        kwargs["generator"] = generator
    options = {"precision": precision, "channels_last": channels_last,
               "batch_size": batch_size, "memory_budget_mb": memory_budget_mb}  # fmt: skip
    kwargs.update({k: v for k, v in options.items() if k in info.options})
    if info.manages_mode:
        maps = info.fn(model, x, target, **kwargs)
    else:
        maps = guarded(info.fn, s.label, model, x, target, **kwargs)
    if s.superpixel is not None:
        assert segments is not None  # required for super-pixel specs (checked above)
        maps = group_by_segments(maps, segments, reduction=s.superpixel["reduction"])
    return maps


def adaptgrad_paper_specs(noise_level: float = 0.2, confidence: float = 0.95) -> list[MethodSpec]:
    """The AdaptGrad paper's combinations: Grad, GI, IG(B), IG(W), each plain, S- and A-.

    IG(B)/IG(W) use the black/white image (x_min/x_max of ``input_range``) as baseline;
    S- is SmoothGrad with ``noise_level`` (alpha), A- is AdaptGrad with ``confidence``.

    >>> [s.label for s in adaptgrad_paper_specs()][:3]
    ['simple_grad', 'smooth_grad_nl0.2', 'adapt_grad_c0.95']
    """
    specs = []
    bases: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
        ("simple_grad", {}, "grad", {}),
        ("grad_x_input", {}, "grad_x_input", {}),
        ("integrated_gradients", {"baseline": "min"}, "integrated_gradients", {"baseline": "min"}),
        ("integrated_gradients", {"baseline": "max"}, "integrated_gradients", {"baseline": "max"}),
    ]
    for first, first_params, base, extra in bases:
        specs.append(MethodSpec(first, first_params))
        specs.append(MethodSpec("smooth_grad", {"noise_level": noise_level, "base": base, **extra}))
        specs.append(MethodSpec("adapt_grad", {"confidence": confidence, "base": base, **extra}))
    return specs

"""How the studies classify method specs: the one place that reads a spec as a study does.

A :class:`~lightning_saliency.attribution.MethodSpec` is a plain value (method, parameters,
grouping, label). The studies of the papers read more into it: the **plain baseline** (the
logit gradient on pixels: the baseline of ``gap_reduction`` and the zero-noise point of a
SmoothGrad sweep), the **SmoothGrad curve** a spec is a point of, the **pixel/super-pixel
pairs**, and the **gradient base** and **variant** (plain, SmoothGrad, AdaptGrad) of the
AdaptGrad study. The evaluation (``gap_reduction``), the callback's live figures and the
report's studies and verdicts all classify through these pure functions.

Spec collections are ``{label: spec}`` mappings (a run's methods), in the run's order.

>>> from lightning_saliency.attribution import resolve_method
>>> specs = {s.label: s for s in map(resolve_method, ["simple_grad",
...     {"method": "smooth_grad", "noise_level": 0.1}, {"method": "smooth_grad", "noise_level": 0.2},
...     {"method": "simple_grad", "superpixel": "slic"}])}
>>> smoothgrad_curves(specs)
{('noise_level', 16): [(0.0, 'simple_grad'), (0.1, 'smooth_grad_nl0.1'), (0.2, 'smooth_grad_nl0.2')]}
>>> [(p, s) for p, s, _ in superpixel_pairs(specs)]
[('simple_grad', 'simple_grad_sp-slic')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lightning_saliency.attribution import MethodSpec, method_info, method_is_stochastic

__all__ = [
    "PLAIN_BASES",
    "SMOOTHING_VARIANTS",
    "adaptgrad_groups",
    "gradient_base",
    "is_plain_baseline",
    "noise",
    "noise_samples",
    "plain_baseline",
    "smoothgrad_curve",
    "smoothgrad_curves",
    "superpixel_pairs",
    "variant",
]

#: The plain gradient methods, by the name of the base a smoothing method gives them.
PLAIN_BASES: dict[str, str] = {
    "simple_grad": "grad",
    "grad_x_input": "grad_x_input",
    "integrated_gradients": "integrated_gradients",
}
#: Smoothing methods over a base gradient (their ``base`` parameter), by study variant.
SMOOTHING_VARIANTS: dict[str, str] = {"smooth_grad": "smooth", "adapt_grad": "adapt"}
_NOISE_PARAMS = ("noise_level", "sigma")

Curve = tuple[str, int]


def is_plain_baseline(spec: MethodSpec) -> bool:
    """Whether ``spec`` is the plain logit gradient on pixels, the baseline of
    ``gap_reduction`` and the zero-noise point of a SmoothGrad sweep.

    >>> is_plain_baseline(MethodSpec("simple_grad")), is_plain_baseline(MethodSpec("simple_grad", {"output": "log_softmax"}))
    (True, False)
    """
    return spec.method == "simple_grad" and spec.superpixel is None and not spec.params


def plain_baseline(specs: Iterable[MethodSpec]) -> MethodSpec | None:
    """The first plain baseline among ``specs`` (None when there is none)."""
    return next((s for s in specs if is_plain_baseline(s)), None)


def noise(spec: MethodSpec) -> tuple[str, float] | None:
    """``("noise_level", alpha)`` or ``("sigma", s)`` of a SmoothGrad/VarGrad spec, else None.

    >>> noise(MethodSpec("smooth_grad", {"noise_level": 0.2})), noise(MethodSpec("simple_grad"))
    (('noise_level', 0.2), None)
    """
    for name in _NOISE_PARAMS:
        if name in spec.params:
            return name, float(spec.params[name])
    return None


def noise_samples(spec: MethodSpec) -> int | None:
    """Noise draws per probe of a stochastic spec (its method's default when not given),
    else None.

    >>> noise_samples(MethodSpec("adapt_grad")), noise_samples(MethodSpec("simple_grad"))
    (16, None)
    """
    defaults = method_info(spec).defaults
    if "samples" not in defaults or not method_is_stochastic(spec):
        return None
    return int(spec.params.get("samples", defaults["samples"]))


def gradient_base(spec: MethodSpec) -> str:
    """The gradient a method builds on: ``grad``, ``grad_x_input`` or
    ``integrated_gradients`` (with ``_b<baseline>`` for a non-zero baseline), and ``_sq``
    when squared; the grouping of the AdaptGrad study.

    >>> gradient_base(MethodSpec("adapt_grad", {"base": "integrated_gradients", "baseline": "min"}))
    'integrated_gradients_bmin'
    """
    if spec.method in SMOOTHING_VARIANTS:
        base = str(spec.params.get("base", "grad"))
    else:
        base = PLAIN_BASES.get(spec.method, "grad")
    if base == "integrated_gradients" and "baseline" in spec.params:
        base += f"_b{spec.params['baseline']}"
    if spec.params.get("squared"):
        base += "_sq"
    return base


def variant(spec: MethodSpec) -> str | None:
    """``"plain"``, ``"smooth"`` or ``"adapt"`` for a gradient method on pixels (the
    AdaptGrad study's variants), else None.

    >>> [variant(MethodSpec(m, p)) for m, p in [("grad_x_input", {}), ("adapt_grad", {}), ("var_grad", {"sigma": 0.1})]]
    ['plain', 'adapt', None]
    """
    if spec.superpixel is not None:
        return None
    if spec.method in PLAIN_BASES:
        return "plain"
    return SMOOTHING_VARIANTS.get(spec.method)


def smoothgrad_curve(spec: MethodSpec) -> Curve | None:
    """``(noise kind, samples)`` of the SmoothGrad sweep curve ``spec`` is a point of.

    Only plain-gradient SmoothGrad on pixels with nothing but its noise scale and draw
    count set belongs to a sweep; the curves of one run are told apart by the kind of
    noise (``sigma`` absolute, ``noise_level`` relative) and by ``samples``. The plain
    baseline (:func:`is_plain_baseline`) is the zero-noise point of every curve.

    >>> smoothgrad_curve(MethodSpec("smooth_grad", {"noise_level": 0.2, "samples": 4}))
    ('noise_level', 4)
    >>> smoothgrad_curve(MethodSpec("smooth_grad", {"sigma": 0.2, "base": "grad_x_input"})) is None
    True
    """
    if spec.method != "smooth_grad" or spec.superpixel is not None:
        return None
    if set(spec.params) - {*_NOISE_PARAMS, "samples"}:
        return None
    kind, _ = noise(spec)  # type: ignore[misc]  # smooth_grad always has one
    return kind, int(noise_samples(spec) or method_info("smooth_grad").defaults["samples"])


def smoothgrad_curves(
    specs: Mapping[str, MethodSpec], min_points: int = 1
) -> dict[Curve, list[tuple[float, str]]]:
    """Each SmoothGrad curve -> its ``[(noise, label)]`` points sorted by noise, the plain
    baseline (when among ``specs``) as noise 0; only curves of ``min_points`` points or more.
    """
    curves: dict[Curve, list[tuple[float, str]]] = {}
    for label, spec in specs.items():
        curve = smoothgrad_curve(spec)
        if curve is not None:
            curves.setdefault(curve, []).append((noise(spec)[1], label))  # type: ignore[index]
    base = next((lb for lb, s in specs.items() if is_plain_baseline(s)), None)
    for points in curves.values():
        if base is not None:
            points.append((0.0, base))
        points.sort()
    return {c: p for c, p in curves.items() if len(p) >= min_points}


def superpixel_pairs(specs: Mapping[str, MethodSpec]) -> list[tuple[str, str, MethodSpec]]:
    """``(pixel label, super-pixel label, super-pixel spec)`` of every grouped spec whose
    pixel twin is among ``specs`` (the last label of a twin, if it appears twice)."""
    pixel = {s.pixel_twin: label for label, s in specs.items() if s.superpixel is None}
    return [(pixel[s.pixel_twin], label, s) for label, s in specs.items()
            if s.superpixel is not None and s.pixel_twin in pixel]  # fmt: skip


def adaptgrad_groups(specs: Mapping[str, MethodSpec]) -> list[tuple[str, MethodSpec, str]]:
    """``(label, spec, variant)`` of the AdaptGrad study: every plain, SmoothGrad and
    AdaptGrad spec on pixels whose gradient base has an AdaptGrad spec among ``specs``."""
    chosen = [(lb, s, v) for lb, s in specs.items() if (v := variant(s)) is not None]
    bases = {gradient_base(s) for _, s, v in chosen if v == "adapt"}
    return [(lb, s, v) for lb, s, v in chosen if gradient_base(s) in bases]

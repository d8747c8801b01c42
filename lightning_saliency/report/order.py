"""The report's order of methods: by meaning, not by the alphabet (issue 23).

The plain baseline (``simple_grad`` on pixels) comes first; then the methods on pixels by
gradient base (the plain gradient, gradient x input, integrated gradients), each as plain,
SmoothGrad by noise kind, noise and draws, then AdaptGrad; then other methods (Grad-CAM, a
user's); then the super-pixel-grouped methods in the same order. A label whose spec is not
known here (a method not registered in this process) goes last. Every table, plot and the
answer at the top of ``report.md`` order their methods with :func:`method_key`.

>>> from lightning_saliency.attribution import resolve_method
>>> specs = [resolve_method(m) for m in [{"method": "integrated_gradients", "steps": 16},
...     {"method": "smooth_grad", "noise_level": 0.5}, "simple_grad", {"method": "smooth_grad",
...     "noise_level": 0.1}, {"method": "simple_grad", "superpixel": "slic"}, "adapt_grad"]]
>>> [s.label for s in sorted(specs, key=lambda s: method_key(s, s.label))]  # doctest: +NORMALIZE_WHITESPACE
['simple_grad', 'smooth_grad_nl0.1', 'smooth_grad_nl0.5', 'adapt_grad_c0.95',
 'integrated_gradients', 'simple_grad_sp-slic']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lightning_saliency.attribution import MethodSpec
from lightning_saliency.generalization.studies import (
    PLAIN_BASES,
    gradient_base,
    is_plain_baseline,
    noise,
    noise_samples,
    variant,
)

from .runs import Run

__all__ = ["method_key", "run_method_key"]

_BASES = tuple(PLAIN_BASES.values())  # grad, grad_x_input, integrated_gradients
_VARIANTS = ("plain", "smooth", "adapt")
_NOISE_KINDS = ("noise_level", "sigma")
MethodKey = tuple


def method_key(spec: MethodSpec | None, label: str) -> MethodKey:
    """Sort key of a method by meaning (``spec`` None: unknown here, sorted last by label)."""
    if spec is None:
        return (3, label)
    grouped = 0 if spec.superpixel is None else 1
    pixel = spec.pixel_twin if spec.superpixel is not None else spec
    if is_plain_baseline(pixel):
        return (grouped, 0, (), label)
    kind = variant(pixel)
    if kind is None:  # Grad-CAM, VarGrad, a user's method: after the gradient family
        return (grouped, 2, (pixel.method, sorted(map(str, pixel.params.items()))), label)
    base = gradient_base(pixel)
    root = next((b for b in _BASES if base.startswith(b)), base)
    rank = _BASES.index(root) if root in _BASES else len(_BASES)
    n = noise(pixel)
    n_key = (-1, 0.0) if n is None else (_NOISE_KINDS.index(n[0]), n[1])
    draws = noise_samples(pixel) or 0
    rest = sorted((k, str(v)) for k, v in pixel.params.items()
                  if k not in {*_NOISE_KINDS, "samples", "base", "baseline"})  # fmt: skip
    return (grouped, 1, (rank, base, _VARIANTS.index(kind), n_key, draws, rest), label)


def run_method_key(runs: Sequence[Run]) -> Callable[[str], MethodKey]:
    """``label -> sort key`` over the specs of ``runs`` (the first run that knows a label).

    >>> run_method_key([])("my_method")
    (3, 'my_method')
    """
    specs: dict[str, MethodSpec] = {}
    for run in runs:
        for label, spec in run.specs.items():
            specs.setdefault(label, spec)
    return lambda label: method_key(specs.get(label), label)

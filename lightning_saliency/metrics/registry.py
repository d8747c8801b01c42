"""The open metric registry: :func:`register_metric` and what a metric declares.

Like the method registry (:func:`~lightning_saliency.attribution.register_method`), a metric
is declared once, and every consumer derives from the declaration: the result schema's
names, the direction of ``<metric>_above_chance``, the TensorBoard charts, the table of
``docs/metrics.md``. An entry (:class:`MetricInfo`) holds

- its **family** (``agreement``: ``fn(a, b, *, <params>) -> (N,)`` of two batches of maps;
  ``quality``: ``fn(maps, *, <params>) -> (N,)``; ``faithfulness``, ``randomization``,
  ``mege_reco``, ``gap``: numbers computed by :mod:`lightning_saliency.generalization`,
  registered for their direction and range, without a function);
- its **parameters and defaults**, from the signature (keywords after the maps);
- ``higher_is_better`` (``None``: closer to 0 is better, or no direction);
- its **value range** ``bounds`` (intervals can be clipped into it);
- its **chance-level rule** (``chance``): ``"other_probes"`` (the same metric between maps
  of different probes, :mod:`lightning_saliency.generalization.chance`) or ``None``;
- ``headline``: whether TensorBoard draws its excess over chance with an interval.

A :class:`MetricSpec` is a metric with parameters (``{"metric": "topk", "k": 0.2}``), named
by the metric: its parameters travel with it, not as separate arguments.

>>> import torch
>>> @register_metric(higher_is_better=True, bounds=(-1.0, 1.0))
... def dot(a, b, *, scale: float = 1.0):
...     return scale * (a.flatten(1) * b.flatten(1)).sum(1)
>>> spec = resolve_metric({"metric": "dot", "scale": 2})
>>> spec.name, dict(spec.params), spec(torch.ones(1, 2), torch.ones(1, 2)).tolist()
('dot', {'scale': 2}, [4.0])
>>> "dot" in metric_names("agreement"), higher_is_better("dot_above_chance")
(True, True)
>>> unregister_metric("dot")
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

__all__ = [
    "FAMILIES_WITH_FUNCTIONS",
    "MetricInfo",
    "MetricSpec",
    "agreement_specs",
    "get_metric",
    "higher_is_better",
    "metric_names",
    "metric_table",
    "register_metric",
    "resolve_metric",
    "unregister_metric",
]

#: Families whose metrics are functions of maps: how many map batches the function takes.
FAMILIES_WITH_FUNCTIONS: dict[str, int] = {"agreement": 2, "quality": 1}
#: Families registered for their direction and range only (computed in ``generalization``).
_NUMBER_FAMILIES = ("gap", "mege_reco", "faithfulness", "randomization")
CHANCE_RULES = ("other_probes",)
#: Suffixes the schema appends to an agreement metric's name, and names other numbers use:
#: a metric may not take them, or two numbers would share one key (and one tag).
_SUFFIXES = ("_chance", "_chance_same_class", "_above_chance")
_RESERVED = frozenset({"rows", "nonfinite_maps", "prediction_agreement",
                       "prediction_agreement_chance", "prediction_kappa"})  # fmt: skip
_REQUIRED = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """What a registered metric declared (see :func:`register_metric`)."""

    name: str
    family: str
    fn: Callable[..., Tensor] | None
    defaults: Mapping[str, Any]
    higher_is_better: bool | None
    bounds: tuple[float, float]
    chance: str | None
    headline: bool = False
    description: str = ""
    builtin: bool = False

    def excess(self, value: Tensor, chance: Tensor) -> Tensor:
        """How much more agreement ``value`` shows than its chance level (positive: more),
        whatever the direction: ``value - chance``, or ``chance - value`` when lower is better.
        """
        if self.higher_is_better is None:
            raise ValueError(f"metric {self.name!r} has no direction, so no excess over chance")
        return value - chance if self.higher_is_better else chance - value

    def clip(self, value: float) -> float:
        """``value`` clipped into the metric's range (NaN stays NaN).

        >>> get_metric("spearman").clip(1.3), get_metric("l2").clip(-0.1)
        (1.0, 0.0)
        """
        lo, hi = self.bounds
        return value if math.isnan(value) else min(max(value, lo), hi)


_REGISTRY: dict[tuple[str, str], MetricInfo] = {}


def _signature_defaults(fn: Callable[..., Any], family: str) -> dict[str, Any]:
    arity = FAMILIES_WITH_FUNCTIONS[family]
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < arity:
        raise TypeError(
            f"a {family} metric takes {arity} batch(es) of maps positionally first; "
            f"{getattr(fn, '__name__', fn)!r} has {len(positional)}"
        )
    skip = {p.name for p in positional[:arity]}
    return {p.name: p.default for p in params
            if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}  # fmt: skip


def register_metric(
    fn: Callable[..., Tensor] | None = None,
    *,
    name: str | None = None,
    family: str = "agreement",
    higher_is_better: bool | None,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    chance: str | None = "auto",
    headline: bool = False,
    description: str = "",
    overwrite: bool = False,
    _builtin: bool = False,
) -> Any:
    """Register a metric (decorator, with or without arguments, or a plain call).

    Args:
        fn: ``fn(a, b, *, <params>) -> Tensor (N,)`` for an agreement metric,
            ``fn(maps, *, <params>)`` for a quality metric; None for a number computed
            elsewhere (then ``name`` is required).
        name: the metric's name in the result schema (default ``fn.__name__``).
        family: ``"agreement"``, ``"quality"`` or a family of numbers (``"gap"``,
            ``"mege_reco"``, ``"faithfulness"``, ``"randomization"``).
        higher_is_better: the direction (None: closer to 0 is better, or none).
        bounds: the range of its values.
        chance: the chance-level rule of an agreement metric: ``"other_probes"`` or None
            (``"auto"``: ``"other_probes"`` for an agreement metric, None otherwise).
        headline: TensorBoard draws its excess over chance with a 95% interval.
        overwrite: replace a metric registered earlier (not a built-in).

    Returns:
        ``fn`` itself, or a decorator.
    """

    def decorate(f: Callable[..., Tensor] | None) -> Callable[..., Tensor] | None:
        metric = name or str(getattr(f, "__name__", ""))
        if family not in (*FAMILIES_WITH_FUNCTIONS, *_NUMBER_FAMILIES):
            raise ValueError(f"unknown metric family {family!r}")
        if (f is None) != (family in _NUMBER_FAMILIES):
            raise ValueError(f"a {family} metric {'needs' if f is None else 'takes no'} function")
        rule = ("other_probes" if family == "agreement" else None) if chance == "auto" else chance
        if rule is not None and (rule not in CHANCE_RULES or family != "agreement"):
            raise ValueError(f"chance rule {rule!r}: only agreement metrics have {CHANCE_RULES}")
        if rule is not None and higher_is_better is None:
            raise ValueError(f"metric {metric!r} has a chance level, so it needs a direction")
        _check_name(metric, family, overwrite)
        defaults = {} if f is None else _signature_defaults(f, family)
        _REGISTRY[(family, metric)] = MetricInfo(
            metric, family, f, defaults, higher_is_better, (float(bounds[0]), float(bounds[1])),
            rule, headline, description or (inspect.getdoc(f) or "").split("\n")[0], _builtin,
        )  # fmt: skip
        return f

    if family in _NUMBER_FAMILIES and fn is None:
        return decorate(None)
    return decorate if fn is None else decorate(fn)


def _check_name(metric: str, family: str, overwrite: bool) -> None:
    """Refuse a name that would give two numbers one key: a schema suffix, a reserved name,
    or a name of another family (randomization similarities are logged prefixed)."""
    if not metric.isidentifier():
        raise ValueError(f"a metric name is an identifier; got {metric!r}")
    if metric.endswith(_SUFFIXES) or metric in _RESERVED or metric.startswith("randomization_"):
        raise ValueError(f"metric name {metric!r} is reserved by the result schema")
    old = _REGISTRY.get((family, metric))
    if old is not None and (old.builtin or not overwrite):
        raise ValueError(f"{family} metric {metric!r} is already registered")
    if family != "randomization":
        other = [f for f, n in _REGISTRY if n == metric and f not in (family, "randomization")]
        if other:
            raise ValueError(f"metric name {metric!r} is already a {other[0]} metric")


def unregister_metric(name: str, family: str = "agreement") -> None:
    """Remove a metric registered by :func:`register_metric` (built-ins stay)."""
    info = _REGISTRY.get((family, name))
    if info is None:
        raise ValueError(f"no {family} metric {name!r} is registered")
    if info.builtin:
        raise ValueError(f"built-in metric {name!r} cannot be unregistered")
    del _REGISTRY[(family, name)]


def get_metric(name: str, family: str = "agreement") -> MetricInfo:
    """The registered metric ``name`` of ``family``.

    >>> get_metric("topk").defaults, get_metric("l2").higher_is_better
    ({'k': 0.1}, False)
    """
    info = _REGISTRY.get((family, name))
    if info is None:
        raise ValueError(f"unknown {family} metric {name!r}; known: {metric_names(family)}")
    return info


def metric_names(family: str = "agreement") -> tuple[str, ...]:
    """Names of the registered metrics of ``family``, in registration order.

    >>> metric_names("agreement"), metric_names("quality")
    (('l2', 'spearman', 'topk', 'ssim'), ('sparseness', 'complexity'))
    """
    return tuple(n for f, n in _REGISTRY if f == family)


def _strip(metric: str) -> tuple[str, str]:
    """``(base, suffix)`` of a logged metric name (``spearman_above_chance``)."""
    for suffix in ("_chance_same_class", "_above_chance", "_chance"):
        if metric.endswith(suffix):
            return metric[: -len(suffix)], suffix
    return metric, ""


def higher_is_better(metric: str) -> bool | None:
    """The direction of a logged metric name (a ``MetricKey.metric``): True when higher is
    better, False when lower is, None when neither (a gap, a chance level, a count).

    >>> [higher_is_better(m) for m in ("l2", "l2_above_chance", "spearman_chance", "complexity",
    ...                                "deletion_auc", "randomization_ssim_top1", "gap")]
    [False, True, None, False, False, False, None]
    """
    base, suffix = _strip(metric)
    if suffix == "_above_chance":
        return True if (("agreement", base) in _REGISTRY) else None
    if suffix:
        return None
    if metric.startswith("randomization_"):
        base = metric[len("randomization_"):].rsplit("_", 1)[0]
        info = _REGISTRY.get(("randomization", base))
        return None if info is None else info.higher_is_better
    for (_, name), info in _REGISTRY.items():
        if name == metric and info.family != "randomization":
            return info.higher_is_better
    return None


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """A registered metric with parameters (those differing from the defaults); callable.

    >>> spec = MetricSpec("topk", {"k": 0.2})
    >>> spec.name, dict(spec.params), MetricSpec("topk", {"k": 0.1}) == MetricSpec("topk")
    ('topk', {'k': 0.2}, True)
    """

    name: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    family: str = "agreement"

    def __post_init__(self) -> None:
        info = get_metric(self.name, self.family)
        unknown = sorted(set(self.params) - set(info.defaults))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} of metric {self.name!r}; "
                             f"accepted: {sorted(info.defaults)}")  # fmt: skip
        canonical = {k: v for k, v in self.params.items() if v != info.defaults[k]}
        missing = [k for k, d in info.defaults.items() if d is _REQUIRED and k not in canonical]
        if missing:
            raise ValueError(f"metric {self.name!r} needs parameter(s) {missing}")
        object.__setattr__(self, "params", _Frozen(sorted(canonical.items())))

    @property
    def info(self) -> MetricInfo:
        return get_metric(self.name, self.family)

    def with_defaults(self, **values: Any) -> MetricSpec:
        """The spec with ``values`` filled in for the parameters it accepts and does not set."""
        info = self.info
        fill = {k: v for k, v in values.items() if k in info.defaults and k not in self.params}
        return self if not fill else MetricSpec(self.name, {**fill, **self.params}, self.family)

    def __call__(self, *maps: Tensor) -> Tensor:
        info = self.info
        assert info.fn is not None  # metrics with a spec are functions of maps
        return info.fn(*maps, **{**_filled(info.defaults), **self.params})


class _Frozen(dict):
    """A hashable dict of a spec's parameters."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))


def _filled(defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in defaults.items() if v is not _REQUIRED}


def resolve_metric(spec: str | Mapping[str, Any] | MetricSpec, family: str = "agreement") -> MetricSpec:
    """A :class:`MetricSpec` from a name, a mapping ``{"metric": name, **params}`` or a spec."""
    if isinstance(spec, MetricSpec):
        return spec
    if isinstance(spec, str):
        return MetricSpec(spec, {}, family)
    if isinstance(spec, Mapping) and "metric" in spec:
        params = {k: v for k, v in spec.items() if k != "metric"}
        return MetricSpec(str(spec["metric"]), params, family)
    raise TypeError(f"a metric is a name, a mapping with 'metric' or a MetricSpec; got {spec!r}")


def agreement_specs(
    metrics: Iterable[str | Mapping[str, Any] | MetricSpec] | None = None,
    *,
    normalize: bool | None = None,
    topk: float | None = None,
) -> list[MetricSpec]:
    """The agreement metrics to compute (default: every registered one), as specs.

    ``normalize`` and ``topk`` are the compatibility path of the functions that took them
    as keywords: they fill the ``normalize`` parameter of the metrics that have one and
    top-k's ``k``, where the spec does not set them.

    >>> [dict(s.params) for s in agreement_specs(["l2", "topk"], normalize=False, topk=0.2)]
    [{'normalize': False}, {'k': 0.2}]
    """
    names: Sequence[Any] = metric_names("agreement") if metrics is None else list(metrics)
    out = []
    for m in names:
        spec = resolve_metric(m).with_defaults(**({} if normalize is None else {"normalize": normalize}))
        if topk is not None and spec.name == "topk":
            spec = spec.with_defaults(k=topk)
        out.append(spec)
    return out


def metric_table() -> str:
    """The markdown table of every registered metric (``docs/metrics.md`` holds it)."""
    rows = ["| family | metric | parameters | better | range | chance level | what it is |",
            "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    better = {True: "higher", False: "lower", None: "closer to 0"}
    for info in _REGISTRY.values():
        params = ", ".join(f"`{k}={v!r}`" for k, v in _filled(info.defaults).items()) or "—"
        lo, hi = (_num(b) for b in info.bounds)
        text = info.description.replace("|", "\\|")
        rows.append(f"| {info.family} | `{info.name}` | {params} | {better[info.higher_is_better]} "
                    f"| [{lo}, {hi}] | {info.chance or '—'} | {text} |")  # fmt: skip
    return "\n".join(rows)


def _num(x: float) -> str:
    return "∞" if x == math.inf else "-∞" if x == -math.inf else f"{x:g}"

"""TensorBoard's custom-scalars layout of the callback's numbers: one category per method.

Every chart's pattern is built from :class:`~lightning_saliency.generalization.MetricKey`
tags, anchored and escaped; the agreement charts follow the metric registry
(:mod:`lightning_saliency.metrics.registry`), so a registered metric gets its charts.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from lightning_saliency.generalization import (
    DEFAULT_FAMILIES,
    FAITHFULNESS_METRICS,
    RANDOMIZATION_CASCADE,
    RANDOMIZATION_METRICS,
    MetricKey,
    above_chance,
    chance,
    randomization_metric,
)
from lightning_saliency.metrics import get_metric, metric_names

from ._tensorboard import LOSS_METRIC, headline_metrics

__all__ = ["custom_scalars_layout"]


def _pattern(*keys: MetricKey) -> str:
    """A regex that matches exactly these tags (TensorBoard matches a chart's pattern from
    the start of a tag name, so an unanchored ``.../gap`` would also plot ``.../gap_reduction``)."""
    return "^(" + "|".join(re.escape(k.tag) for k in keys) + ")$"


def _margin(key: MetricKey) -> list[str]:
    return [key.tag, f"{key.tag}_lo", f"{key.tag}_hi"]


def custom_scalars_layout(
    methods: Sequence[str],
    num_models: int = 2,
    reference: bool = False,
    baseline: str | None = "simple_grad",
    families: Sequence[str] | None = None,
) -> dict[str, dict[str, list]]:
    """TensorBoard's custom-scalars layout, one category per method: its gap with the 95%
    interval, each model's gap, the losses, each headline agreement above chance with its
    interval and each agreement beside its chance level, the gap reduction, MeGe/ReCo and
    the quality metrics, and the opt-in families (faithfulness: test value and gap;
    randomization: every similarity by cascade level); only the charts of ``families``
    (None: :data:`DEFAULT_FAMILIES`), so no chart stays empty; a last category compares the
    methods. Every pattern is anchored and escaped, so a chart plots exactly its tags; the
    agreement charts follow the metric registry (headline metrics get an interval chart).

    >>> layout = custom_scalars_layout(["simple_grad"])
    >>> layout["simple_grad"]["gap (test - train loss), 95% interval"]
    ['Margin', ['interp/simple_grad/gap', 'interp/simple_grad/gap_lo', 'interp/simple_grad/gap_hi']]
    >>> layout["simple_grad"]["test spearman and its chance level"][1]
    ['^(interp/simple_grad/test/spearman|interp/simple_grad/test/spearman_chance)$']
    """
    fam = set(DEFAULT_FAMILIES if families is None else families)
    out: dict[str, dict[str, list]] = {}
    for lb in methods:
        charts = _method_charts(lb, num_models, num_models + int(reference), lb == baseline)
        out[lb] = {t: c for t, c in charts.items() if _chart_family(t) in fam}
        out[lb].update(_opt_in_charts(lb, fam))
    gaps = (MetricKey(lb, "mean", "gap", "gap") for lb in methods)
    above = (MetricKey(lb, "pairs", "test", above_chance("spearman")) for lb in methods)
    pred = (MetricKey.prediction_agreement(s) for s in ("train", "test"))
    out["all methods"] = {
        "gap of every method": ["Multiline", [_pattern(*gaps)]],
        "test spearman above chance of every method": ["Multiline", [_pattern(*above)]],
        "prediction agreement (train, test)": ["Multiline", [_pattern(*pred)]],
    }
    return out


def _chart_family(title: str) -> str:
    """The metric family whose numbers a chart of :func:`_method_charts` plots."""
    for word, family in (("MeGe", "mege_reco"), ("sparseness", "quality"),
                         ("complexity", "quality"), ("drift", "drift"), ("loss", "gap")):  # fmt: skip
        if word in title:
            return family
    return "agreement" if any(m in title for m in metric_names("agreement")) else "gap"


def _opt_in_charts(lb: str, families: Collection[str]) -> dict[str, list]:
    charts: dict[str, list] = {}
    if "faithfulness" in families:
        for m in FAITHFULNESS_METRICS:
            pair = MetricKey(lb, "mean", "test", m), MetricKey(lb, "mean", "gap", m)
            charts[f"test {m} and its gap"] = ["Multiline", [_pattern(*pair)]]
    if "randomization" in families:
        for m in RANDOMIZATION_METRICS:
            keys = (MetricKey(lb, "mean", "test", randomization_metric(m, level))
                    for level in RANDOMIZATION_CASCADE)  # fmt: skip
            charts[f"{m} to randomized copies, by cascade level"] = ["Multiline", [_pattern(*keys)]]
    return charts


def _method_charts(lb: str, num_models: int, num_sources: int, is_baseline: bool) -> dict[str, list]:
    key = lambda *a: MetricKey(lb, *a)  # noqa: E731
    models = range(num_models)
    charts: dict[str, list] = {
        "gap (test - train loss), 95% interval": ["Margin", _margin(key("mean", "gap", "gap"))],
        "gap of each model": ["Multiline", [_pattern(*(key(f"model_{k}", "gap", "gap") for k in models))]],
        "train and test loss": ["Multiline", [_pattern(key("mean", "train", "loss"), key("mean", "test", "loss"))]],
    }  # fmt: skip
    for m in headline_metrics():
        charts[f"test {m} above chance, 95% interval"] = ["Margin", _margin(key("pairs", "test", above_chance(m)))]
    for m in metric_names("agreement"):
        if get_metric(m).chance is None:
            continue
        if m == LOSS_METRIC and num_sources == 2:
            continue  # the test L2 distance is the test loss with two sources
        pair = key("pairs", "test", m), key("pairs", "test", chance(m))
        charts[f"test {m} and its chance level"] = ["Multiline", [_pattern(*pair)]]
    if not is_baseline:
        charts["gap reduction vs simple_grad, 95% interval"] = ["Margin", _margin(key("mean", "gap", "gap_reduction"))]
    charts["MeGe and ReCo (train probes)"] = ["Multiline", [_pattern(key("pairs", "train", "mege"), key("pairs", "train", "reco"))]]
    for m in metric_names("quality"):
        charts[f"test {m} and its gap"] = ["Multiline", [_pattern(key("mean", "test", m), key("mean", "gap", m))]]
    charts["drift since the last monitored epoch"] = ["Multiline", [_pattern(key("mean", "test", "drift"))]]
    return charts

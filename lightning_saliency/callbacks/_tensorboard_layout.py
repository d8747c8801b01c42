"""TensorBoard's custom-scalars layout of the callback's numbers: the headline first.

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
from lightning_saliency.generalization.summary import HEADLINE_METRIC
from lightning_saliency.metrics import get_metric, metric_names

from ._tensorboard import LOSS_METRIC, headline_metrics, interval_tags

__all__ = ["custom_scalars_layout"]


def _pattern(*keys: MetricKey) -> str:
    """A regex that matches exactly these tags (TensorBoard matches a chart's pattern from
    the start of a tag name, so an unanchored ``.../gap`` would also plot ``.../gap_reduction``)."""
    return "^(" + "|".join(re.escape(k.tag) for k in keys) + ")$"


def _margin(key: MetricKey) -> list[str]:
    return [key.tag, *interval_tags(key)]


def custom_scalars_layout(
    methods: Sequence[str],
    num_models: int = 2,
    reference: bool = False,
    baseline: str | None = "simple_grad",
    families: Sequence[str] | None = None,
    *,
    scalars: str,
) -> dict[str, dict[str, list]]:
    """TensorBoard's custom-scalars layout: the headline categories first, then (with
    ``scalars="all"``, or one map source) one category per method.

    The headline (:func:`~._tensorboard.is_headline_scalar`): the gap with its 95% interval,
    one chart per method; the test agreement above chance with its interval, one chart per
    method; the models' test prediction agreement and its chance level. TensorBoard draws
    every line of a chart in its run's colour, so a headline chart holds one series; it
    shows a category's interval charts last and reversed (:func:`_shown_in_order`).

    A method's category (``"all"``): each model's gap, the losses, each agreement beside its
    chance level, the other headline agreements above chance and the gap reduction with
    their intervals, MeGe/ReCo, the quality metrics. The opt-in families (faithfulness: test
    value and gap; randomization: every similarity by cascade level) get their charts in
    either case; only the charts of ``families`` (None: :data:`DEFAULT_FAMILIES`), so no
    chart stays empty. Every pattern is anchored and escaped, so a chart plots exactly its
    tags; the agreement charts follow the metric registry.

    >>> layout = custom_scalars_layout(["simple_grad", "smooth_grad"], scalars="headline")
    >>> list(layout)[:2]
    ['gap (test - train loss), 95% interval', 'test spearman above chance, 95% interval']
    >>> layout["gap (test - train loss), 95% interval"]["smooth_grad"]
    ['Margin', ['interp/smooth_grad/gap', 'interval/smooth_grad/gap_lo', 'interval/smooth_grad/gap_hi']]
    >>> custom_scalars_layout(["simple_grad"], scalars="all")["simple_grad"][
    ...     "test spearman and its chance level"][1]
    ['^(interp/simple_grad/test/spearman|interp/simple_grad/test/spearman_chance)$']
    """
    fam = set(DEFAULT_FAMILIES if families is None else families)
    sources = num_models + int(reference)
    headline = _headline_categories(methods, fam, scalars, sources)
    out = {t: _shown_in_order(c) for t, c in headline.items() if c}
    detail = scalars == "all" or sources < 2
    for lb in methods:
        charts = _method_charts(lb, num_models, sources, lb == baseline) if detail else {}
        cat = {t: c for t, c in charts.items() if _chart_family(t) in fam}
        cat.update(_opt_in_charts(lb, fam))
        if cat:
            out[lb] = _shown_in_order(cat)
    return out


def _shown_in_order(charts: dict[str, list]) -> dict[str, list]:
    """The charts listed so that TensorBoard shows them in ``charts``' order: it shows a
    category's line charts first, then its interval (margin) charts in reverse order
    (TensorBoard 2.21, seen in screenshots), so the margin charts go last, reversed.

    >>> list(_shown_in_order({"a": ["Margin", []], "b": ["Margin", []], "c": ["Multiline", []]}))
    ['c', 'b', 'a']
    """
    lines = [(t, c) for t, c in charts.items() if c[0] != "Margin"]
    margins = [(t, c) for t, c in charts.items() if c[0] == "Margin"]
    return dict(lines + margins[::-1])


def _headline_categories(methods: Sequence[str], fam: Collection[str], scalars: str,
                         sources: int) -> dict[str, dict[str, list]]:  # fmt: skip
    """The headline charts, by category: one chart (one series) per method; prediction
    agreement needs two map sources."""
    gaps = {lb: ["Margin", _margin(MetricKey(lb, "mean", "gap", "gap"))] for lb in methods}
    above = {lb: ["Margin", _margin(MetricKey(lb, "pairs", "test", above_chance(HEADLINE_METRIC)))]
             for lb in methods}  # fmt: skip
    pred = MetricKey.prediction_agreement("test")
    splits = ("test", "train") if scalars == "all" else ("test",)
    agreement = {f"{s} probes": MetricKey.prediction_agreement(s) for s in splits}
    agreement["test probes, chance level"] = MetricKey(pred.method, pred.aggregate, "test", chance(pred.metric))
    return {
        "gap (test - train loss), 95% interval": gaps if "gap" in fam else {},
        f"test {HEADLINE_METRIC} above chance, 95% interval": above if "agreement" in fam else {},
        "prediction agreement of the models": {t: ["Multiline", [_pattern(k)]] for t, k in agreement.items()}
        if "prediction_agreement" in fam and sources >= 2 else {},
    }  # fmt: skip


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
        "gap of each model": ["Multiline", [_pattern(*(key(f"model_{k}", "gap", "gap") for k in models))]],
        "train and test loss": ["Multiline", [_pattern(key("mean", "train", "loss"), key("mean", "test", "loss"))]],
    }  # fmt: skip
    for m in (m for m in headline_metrics() if m != HEADLINE_METRIC):  # that one: a headline category
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

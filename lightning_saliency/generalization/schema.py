"""The one result schema: a typed key per logged number, and everything derived from it.

A :class:`MetricKey` names one number of one monitored epoch: which method, which
aggregate (the mean over models, one model, or the model pairs), which probes
(``train``, ``test``, or ``gap`` for a test-minus-train difference), which metric and
which stage (``fit`` while training, ``validate``/``test`` under ``trainer.validate``/
``trainer.test``). From the key alone come its TensorBoard tag (:attr:`MetricKey.tag`),
its CSV row (:func:`csv_row`, :func:`parse_csv_row`) and the report's look-ups. No other
module spells an ``interp/`` tag.

Example:
    >>> key = MetricKey("simple_grad", "mean", "gap", "gap")
    >>> key.tag, MetricKey("simple_grad", "pairs", "test", "spearman", "validate").tag
    ('interp/simple_grad/gap', 'validate/interp/simple_grad/test/spearman')
    >>> MetricKey.prediction_agreement("test").tag
    'interp/prediction_agreement/test'
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_saliency.metrics import get_metric, metric_names

from .statistics import Estimate

__all__ = [
    "AGREEMENT_METRICS",
    "CSV_FIELDS",
    "CSV_NAME",
    "DEFAULT_FAMILIES",
    "FAITHFULNESS_METRICS",
    "FAMILIES",
    "HPARAMS_PREFIX",
    "INTERVAL_METRICS",
    "METHODS_NAME",
    "NO_METHOD",
    "OPT_IN_FAMILIES",
    "QUALITY_METRICS",
    "RANDOMIZATION_CASCADE",
    "RANDOMIZATION_METRICS",
    "REFERENCE_FAMILIES",
    "STAGES",
    "MetricKey",
    "above_chance",
    "chance",
    "chance_same_class",
    "csv_row",
    "custom_scalars_layout",
    "epoch_rows",
    "figure_tag",
    "image_tag",
    "parse_csv_row",
    "randomization_metric",
    "tensorboard_scalars",
]

#: The built-in agreement metrics between two sources' maps (each also has ``_chance`` and
#: ``_above_chance``); the registry (:func:`~lightning_saliency.metrics.metric_names`) holds
#: them and any registered since, with their parameters and direction.
AGREEMENT_METRICS: tuple[str, ...] = metric_names("agreement")
#: Reference-free quality metrics of one model's maps.
QUALITY_METRICS: tuple[str, ...] = metric_names("quality")
#: Faithfulness of one model's maps to the model (:mod:`.families`): muFidelity (higher is
#: better), the deletion AUC (lower is better) and the insertion AUC (higher is better).
FAITHFULNESS_METRICS: tuple[str, ...] = metric_names("faithfulness")
#: Similarities of a model's maps to its randomized copies' (lower: the maps depend on the
#: weights), one metric per cascade level: :func:`randomization_metric`.
RANDOMIZATION_METRICS: tuple[str, ...] = metric_names("randomization")
#: Default cascade levels: the top layer, the top half of the layers, every layer.
RANDOMIZATION_CASCADE: tuple[str, ...] = ("top1", "half", "all")
#: Metric families a user can ask for; those in REFERENCE_FAMILIES need a reference, those
#: in OPT_IN_FAMILIES (forward or attribution passes of their own) run only when asked for.
FAMILIES: tuple[str, ...] = (
    "gap",
    "agreement",
    "mege_reco",
    "quality",
    "drift",
    "prediction_agreement",
    "faithfulness",
    "randomization",
)
OPT_IN_FAMILIES: tuple[str, ...] = ("faithfulness", "randomization")
#: The families computed when none are named.
DEFAULT_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in OPT_IN_FAMILIES)
REFERENCE_FAMILIES: tuple[str, ...] = ("gap", "agreement", "mege_reco")
#: Stages a monitored number can come from.
STAGES: tuple[str, ...] = ("fit", "validate", "test")
#: ``method`` of numbers that belong to no saliency method (prediction agreement).
NO_METHOD = "-"
#: Files the callback writes into the run folder.
CSV_NAME = "interpretation_metrics.csv"
#: Prefix of the callback's settings among a run's HParams (``interp/num_test_probes``).
HPARAMS_PREFIX = "interp/"
METHODS_NAME = "methods.json"
#: Columns of ``interpretation_metrics.csv``: one row per key and epoch.
KEY_FIELDS: tuple[str, ...] = ("method", "aggregate", "split", "metric")
ESTIMATE_FIELDS: tuple[str, ...] = ("value", "se", "lo", "hi", "n", "nonfinite")
CSV_FIELDS: tuple[str, ...] = ("epoch", "step", "stage", *KEY_FIELDS, *ESTIMATE_FIELDS)
#: Metrics whose interval TensorBoard gets as ``<tag>_lo`` and ``<tag>_hi`` (the CSV has
#: every interval): the gap, the gap reduction, and the headline agreements above chance.
INTERVAL_METRICS: frozenset[str] = frozenset({"gap", "gap_reduction"})


def _headlines() -> list[str]:
    """The registry's headline agreement metrics (their excess over chance gets an interval)."""
    return [m for m in metric_names("agreement") if get_metric(m).headline]


def _interval_metric(metric: str) -> bool:
    return metric in INTERVAL_METRICS or metric in {above_chance(m) for m in _headlines()}
#: The quality metrics TensorBoard gets on test probes and as a gap (train values: CSV).
_TB_QUALITY_SPLITS = ("test", "gap")
_SPLITS = ("train", "test", "gap", "all")


def image_tag(method: str) -> str:
    """TensorBoard tag of a method's map grid.

    >>> image_tag("simple_grad")
    'interp_images/simple_grad'
    """
    return f"interp_images/{method}"


def figure_tag(name: str) -> str:
    """TensorBoard tag of one of the callback's figures.

    >>> figure_tag("smoothgrad_sweep")
    'interp_figures/smoothgrad_sweep'
    """
    return f"interp_figures/{name}"


def chance(metric: str) -> str:
    """Name of an agreement metric's chance level.

    >>> chance("ssim")
    'ssim_chance'
    """
    return f"{metric}_chance"


def chance_same_class(metric: str) -> str:
    """Name of an agreement metric's same-class chance level (maps of two different probes
    of the same class).

    >>> chance_same_class("spearman")
    'spearman_chance_same_class'
    """
    return f"{metric}_chance_same_class"


def above_chance(metric: str) -> str:
    """Name of an agreement metric's excess over its chance level (positive = more
    agreement than two maps of different probes; for the L2 distance, chance minus L2).

    >>> above_chance("l2")
    'l2_above_chance'
    """
    return f"{metric}_above_chance"


def randomization_metric(metric: str, level: str) -> str:
    """Name of a randomization similarity at one cascade level.

    >>> randomization_metric("spearman", "top1")
    'randomization_spearman_top1'
    """
    return f"randomization_{metric}_{level}"


@dataclass(frozen=True, order=True)
class MetricKey:
    """One logged number: ``(method, aggregate, split, metric, stage)``.

    * ``method``: the method's label, or ``"-"`` for prediction agreement;
    * ``aggregate``: ``"mean"`` (over models), ``"model_<k>"`` or ``"pairs"`` (over model
      pairs, or the model and its reference);
    * ``split``: ``"train"``, ``"test"``, ``"gap"`` (test minus train) or ``"all"`` (every
      probe, for counts);
    * ``metric``: ``"loss"``, ``"gap"``, ``"gap_reduction"``, an agreement metric or its
      ``_chance``/``_above_chance``, ``"mege"``, ``"reco"``, a quality metric, ``"drift"``,
      ``"prediction_agreement"``;
    * ``stage``: ``"fit"``, ``"validate"`` or ``"test"``.
    """

    method: str
    aggregate: str
    split: str
    metric: str
    stage: str = "fit"

    def __post_init__(self) -> None:
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}; got {self.split!r}")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}; got {self.stage!r}")
        if not self.method or not self.metric or not self.aggregate:
            raise ValueError(f"a metric key needs a method, aggregate and metric; got {self}")

    @classmethod
    def epoch_rows(cls, stage: str = "fit") -> MetricKey:
        """The row that closes an epoch in the CSV: its value is the epoch's row count (itself
        included), so a reader can tell a complete epoch from one cut short."""
        return cls(NO_METHOD, "epoch", "all", "rows", stage)

    @property
    def is_epoch_marker(self) -> bool:
        return self.method == NO_METHOD and self.aggregate == "epoch" and self.metric == "rows"

    @classmethod
    def prediction_agreement(cls, split: str, stage: str = "fit") -> MetricKey:
        """The key of the models' prediction agreement on ``split`` probes."""
        return cls(NO_METHOD, "pairs", split, "prediction_agreement", stage)

    def at(self, stage: str) -> MetricKey:
        """The same number at another stage."""
        return MetricKey(self.method, self.aggregate, self.split, self.metric, stage)

    @property
    def tag(self) -> str:
        """The TensorBoard (and ``pl_module.log``) name."""
        prefix = "" if self.stage == "fit" else f"{self.stage}/"
        return prefix + self._fit_tag()

    def _fit_tag(self) -> str:
        if self.method == NO_METHOD:
            return f"interp/{self.metric}/{self.split}"
        base = f"interp/{self.method}"
        if self.aggregate.startswith("model_"):
            base += f"/{self.aggregate}"
        if self.metric == "loss":
            return f"{base}/{self.split}_loss"
        if self.metric in ("gap", "gap_reduction", "mege", "reco", "drift") or self.split == "all":
            return f"{base}/{self.metric}"
        if self.split == "gap":
            return f"{base}/{self.metric}_gap"
        return f"{base}/{self.split}/{self.metric}"

    @property
    def has_interval_tags(self) -> bool:
        """Whether TensorBoard also gets ``<tag>_lo`` and ``<tag>_hi`` for this key (siblings,
        not children: MLflow's file store cannot hold a tag that is also a folder)."""
        return _interval_metric(self.metric) and self.aggregate in ("mean", "pairs")

    def in_tensorboard(self, num_sources: int) -> bool:
        """Whether TensorBoard gets this number (the CSV gets all of them).

        Left to the CSV: per-model losses (the per-model gap stays), train-probe agreement,
        quality and faithfulness, and, with two map sources (K = 2, or one model and its reference), the
        test L2 distance, which then *is* the test loss.
        """
        m, split = self.metric, self.split
        if self.is_epoch_marker:
            return False
        if self.aggregate.startswith("model_"):
            return m == "gap"
        if m.endswith("_chance_same_class"):
            return False
        if self.method == NO_METHOD:  # prediction agreement: its chance and kappa on test probes
            return m == "prediction_agreement" or split == "test"
        if self.aggregate == "pairs" and m not in ("mege", "reco"):
            return split == "test" and not (m == "l2" and num_sources == 2)
        if m in metric_names("quality") or m in metric_names("faithfulness"):
            return split in _TB_QUALITY_SPLITS
        return True

    def scalars(self, est: Estimate) -> dict[str, float]:
        """``{tag: value}`` for TensorBoard: the value and, where drawn, its interval.

        >>> MetricKey("m", "mean", "gap", "gap").scalars(Estimate(0.1, 0.01, 0.08, 0.12, 8))
        {'interp/m/gap': 0.1, 'interp/m/gap_lo': 0.08, 'interp/m/gap_hi': 0.12}
        """
        out = {self.tag: est.value}
        if self.has_interval_tags:
            out[f"{self.tag}_lo"] = est.lo
            out[f"{self.tag}_hi"] = est.hi
        return out


def tensorboard_scalars(
    estimates: Mapping[MetricKey, Estimate], num_sources: int
) -> dict[str, float]:
    """Every ``{tag: value}`` the callback gives TensorBoard for one epoch.

    >>> e = Estimate(0.1, 0.01, 0.08, 0.12, 8)
    >>> sorted(tensorboard_scalars({MetricKey("m", "pairs", "test", "l2"): e,
    ...                             MetricKey("m", "mean", "test", "loss"): e}, num_sources=2))
    ['interp/m/test_loss']
    """
    out: dict[str, float] = {}
    for key, est in estimates.items():
        if key.in_tensorboard(num_sources):
            out.update(key.scalars(est))
    return out


def csv_row(key: MetricKey, est: Estimate, epoch: int, step: int) -> dict[str, Any]:
    """The CSV row of one key at one epoch.

    >>> row = csv_row(MetricKey("m", "mean", "gap", "gap"), Estimate(0.1, 0.01, 0.08, 0.12, 8), 3, 40)
    >>> [row[f] for f in CSV_FIELDS]
    [3, 40, 'fit', 'm', 'mean', 'gap', 'gap', 0.1, 0.01, 0.08, 0.12, 8, 0]
    """
    return {
        "epoch": int(epoch),
        "step": int(step),
        "stage": key.stage,
        **{f: getattr(key, f) for f in KEY_FIELDS},
        **{f: getattr(est, f) for f in ESTIMATE_FIELDS},
    }


def epoch_rows(
    estimates: Mapping[MetricKey, Estimate], epoch: int, step: int, stage: str = "fit"
) -> list[dict[str, Any]]:
    """The CSV rows of one monitored epoch, closed by the row that counts them.

    >>> rows = epoch_rows({MetricKey("m", "mean", "gap", "gap"): Estimate(0.1, 0.01, 0.08, 0.12, 8)}, 0, 9)
    >>> [(r["method"], r["metric"], r["value"]) for r in rows]
    [('m', 'gap', 0.1), ('-', 'rows', 2)]
    """
    rows = [csv_row(k, e, epoch, step) for k, e in estimates.items()]
    nan = math.nan
    marker = Estimate(len(rows) + 1, nan, nan, nan, 0)
    rows.append(csv_row(MetricKey.epoch_rows(stage), marker, epoch, step))
    return rows


def _float(text: str) -> float:
    return math.nan if text in ("", "nan") else float(text)


def parse_csv_row(row: Mapping[str, str]) -> tuple[int, MetricKey, Estimate]:
    """``(epoch, key, estimate)`` of a CSV row; ``ValueError`` for a malformed one.

    Rows of version 0.1 (columns ``model`` for the aggregate and the stage written into
    ``split`` as ``"validate:test"``, no interval columns) are read too.

    >>> parse_csv_row({"epoch": "1", "step": "9", "method": "m", "model": "mean",
    ...                "split": "test:gap", "metric": "gap", "value": "0.5"})[1].stage
    'test'
    """
    split = row["split"]
    stage = row.get("stage") or "fit"
    if "stage" not in row and ":" in split:  # version 0.1
        stage, split = split.split(":", 1)
    aggregate = row["aggregate"] if "aggregate" in row else row["model"]
    key = MetricKey(row["method"], aggregate, split, row["metric"], stage)
    value = _float(row["value"])
    if "se" in row:
        est = Estimate(
            value,
            _float(row["se"]),
            _float(row["lo"]),
            _float(row["hi"]),
            int(row["n"]),
            int(row["nonfinite"]),
        )
    else:  # no interval before version 0.2
        est = Estimate(value, math.nan, math.nan, math.nan, 0)
    return int(row["epoch"]), key, est


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
    randomization: every similarity by cascade level); only the charts of ``families`` (None:
    :data:`DEFAULT_FAMILIES`), so no chart stays empty; a last category compares the methods. Every pattern is anchored and escaped, so a chart plots exactly its tags.

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
    for m in _headlines():
        charts[f"test {m} above chance, 95% interval"] = ["Margin", _margin(key("pairs", "test", above_chance(m)))]
    for m in metric_names("agreement"):
        if get_metric(m).chance is None:
            continue
        if m == "l2" and num_sources == 2:
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

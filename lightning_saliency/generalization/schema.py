"""The one result schema: a typed key per logged number, and everything derived from it.

A :class:`MetricKey` names one number of one monitored epoch: which method, which
aggregate (the mean over models, one model, or the model pairs), which probes
(``train``, ``test``, or ``gap`` for a test-minus-train difference), which metric and
which stage (``fit`` while training, ``validate``/``test`` under ``trainer.validate``/
``trainer.test``). From the key alone come its logged name (:attr:`MetricKey.tag`), its
CSV row (:mod:`.record`) and the report's look-ups. No other module spells an ``interp/``
tag; which numbers TensorBoard draws, and how, is the callbacks' business.

Example:
    >>> key = MetricKey("simple_grad", "mean", "gap", "gap")
    >>> key.tag, MetricKey("simple_grad", "pairs", "test", "spearman", "validate").tag
    ('interp/simple_grad/gap', 'validate/interp/simple_grad/test/spearman')
    >>> MetricKey.prediction_agreement("test").tag
    'interp/prediction_agreement/test'
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_saliency.metrics import metric_names

__all__ = [
    "AGREEMENT_METRICS",
    "DEFAULT_FAMILIES",
    "FAITHFULNESS_METRICS",
    "FAMILIES",
    "HPARAMS_PREFIX",
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
    "figure_tag",
    "image_tag",
    "randomization_metric",
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
#: Prefix of the callback's settings among a run's HParams (``interp/num_test_probes``).
HPARAMS_PREFIX = "interp/"
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

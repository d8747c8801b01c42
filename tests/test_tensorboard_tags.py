"""What TensorBoard gets at the callback's defaults (issue 23): the headline, with intervals
under their own prefix, and a custom-scalars layout that starts with it, one chart per method.

The estimates come from the recorded default run (``fixtures/default_run_values.json``: the
CSV of ``configs/default.yaml``, 8 methods, K = 2), so the tag sets are those of that run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _tiny import callback as _callback
from _tiny import data as _data
from _tiny import ensemble as _ensemble
from _tiny import read_csv as _read_csv
from _tiny import tb_scalars as _tb_scalars
from _tiny import trainer as _trainer

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.callbacks._logging import summary_text
from lightning_saliency.callbacks._tensorboard import (
    TENSORBOARD_PAGE,
    interval_tags,
    tensorboard_scalars,
)
from lightning_saliency.callbacks._tensorboard_layout import custom_scalars_layout
from lightning_saliency.generalization import CSV_NAME, Estimate, MetricKey, parse_csv_row

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "default_run_values.json").read_text())
#: The default methods' labels, in the callback's order.
LABELS = ["simple_grad", "smooth_grad_nl0.1", "smooth_grad_nl0.2", "smooth_grad_nl0.5", "integrated_gradients",
          "adapt_grad_c0.95", "simple_grad_sp-slic", "smooth_grad_nl0.2_sp-slic"]  # fmt: skip
GAP_CATEGORY = "gap (test - train loss), 95% interval"
ABOVE_CATEGORY = "test spearman above chance, 95% interval"


def _last_epoch() -> dict[MetricKey, Estimate]:
    rows = [parse_csv_row(r) for r in FIXTURE["csv"]]
    return {k: e for epoch, k, e in rows if epoch == 1}


def _headline_tags(labels: list[str]) -> set[str]:
    """The headline, written out by hand."""
    out = {"interp/prediction_agreement/test", "interp/prediction_agreement_chance/test"}
    for lb in labels:
        for t in ("gap", "test/spearman_above_chance"):
            out |= {f"interp/{lb}/{t}", f"interval/{lb}/{t}_lo", f"interval/{lb}/{t}_hi"}
    return out


def test_the_headline_is_the_summary_numbers_with_their_intervals() -> None:
    est = _last_epoch()
    assert sorted({k.method for k in est} - {"-"}) == sorted(LABELS)
    head = tensorboard_scalars(est, 2, "headline")
    assert set(head) == _headline_tags(LABELS)
    assert len(head) == 50  # with the models' 41 tags: 91 in the default run (<= 100)
    gap = est[MetricKey("smooth_grad_nl0.5", "mean", "gap", "gap")]
    assert head["interp/smooth_grad_nl0.5/gap"] == gap.value
    assert (head["interval/smooth_grad_nl0.5/gap_lo"], head["interval/smooth_grad_nl0.5/gap_hi"]) == (gap.lo, gap.hi)
    above = est[MetricKey("simple_grad", "pairs", "test", "spearman_above_chance")]
    assert head["interval/simple_grad/test/spearman_above_chance_lo"] == above.lo
    assert head["interp/prediction_agreement_chance/test"] == est[
        MetricKey("-", "pairs", "test", "prediction_agreement_chance")].value  # fmt: skip
    # "all": the 270 tags of issue 13 (a superset), every interval bound under interval/, and
    # the test probes' share at the input bounds (AdaptGrad is a default method; issue 20)
    every = tensorboard_scalars(est, 2, "all")
    assert len(every) == 271 and set(head) <= set(every)
    assert "interp/share_at_input_bounds/test" in every and not [t for t in head if "share" in t]
    assert not [t for t in every if t.startswith("interp/") and t.endswith(("_lo", "_hi"))]
    assert len([t for t in every if t.startswith("interval/")]) == 2 * (8 + 8 + 8 + 7)


def test_interval_tags_sit_apart_at_every_stage() -> None:
    assert interval_tags(MetricKey("m", "mean", "gap", "gap")) == ("interval/m/gap_lo", "interval/m/gap_hi")
    key = MetricKey("m", "pairs", "test", "ssim_above_chance", "test")
    assert key.tag == "test/interp/m/test/ssim_above_chance"
    assert interval_tags(key) == ("test/interval/m/test/ssim_above_chance_lo",
                                  "test/interval/m/test/ssim_above_chance_hi")  # fmt: skip


def _chart_tags(chart: list) -> list[str]:
    kind, spec = chart
    if kind == "Margin":
        return spec
    (pattern,) = spec
    return [re.sub(r"\\(.)", r"\1", t) for t in pattern[2:-2].split("|")]


def test_the_layout_starts_with_the_headline_one_chart_per_method() -> None:
    layout = custom_scalars_layout(LABELS, 2, scalars="headline")
    assert list(layout) == [GAP_CATEGORY, ABOVE_CATEGORY, "prediction agreement of the models"]
    # TensorBoard shows a category's margin charts in reverse order: listed last method first
    assert list(layout[GAP_CATEGORY]) == LABELS[::-1] == list(layout[ABOVE_CATEGORY])
    assert layout[GAP_CATEGORY]["integrated_gradients"] == ["Margin", [
        "interp/integrated_gradients/gap", "interval/integrated_gradients/gap_lo",
        "interval/integrated_gradients/gap_hi"]]  # fmt: skip
    assert layout[ABOVE_CATEGORY]["simple_grad_sp-slic"][1][0] == "interp/simple_grad_sp-slic/test/spearman_above_chance"
    drawn = [t for cat in layout.values() for c in cat.values() for t in _chart_tags(c)]
    assert sorted(drawn) == sorted(_headline_tags(LABELS))  # each tag in one chart, none empty
    # one series a chart: TensorBoard draws a chart's lines in one colour
    for cat in layout.values():
        for title, chart in cat.items():
            assert chart[0] == "Margin" or len(_chart_tags(chart)) == 1, title


def test_every_layout_opens_with_the_headline_and_no_chart_mixes_methods() -> None:
    layout = custom_scalars_layout(LABELS, 2, scalars="all")
    assert list(layout)[:3] == [GAP_CATEGORY, ABOVE_CATEGORY, "prediction agreement of the models"]
    assert list(layout)[3:] == LABELS
    assert set(layout["prediction agreement of the models"]) == {
        "test probes", "train probes", "test probes, chance level"}  # fmt: skip
    every = tensorboard_scalars(_last_epoch(), 2, "all")
    for cat in layout.values():
        for title, chart in cat.items():
            tags = _chart_tags(chart)
            assert set(tags) <= set(every), title  # no chart stays empty
            assert len({t.split("/")[1] for t in tags}) == 1, title  # one method a chart
    # a method's category: its line charts first, its margin charts last and reversed
    kinds = [c[0] for c in layout["smooth_grad_nl0.1"].values()]
    assert kinds == sorted(kinds, key=lambda k: k == "Margin")
    assert [t for t, c in layout["smooth_grad_nl0.1"].items() if c[0] == "Margin"] == [
        "gap reduction vs simple_grad, 95% interval", "test ssim above chance, 95% interval"]  # fmt: skip


def test_one_map_source_falls_back_to_every_reference_free_chart() -> None:
    """One model and no reference: nothing to compare, so no headline; its own numbers."""
    layout = custom_scalars_layout(["m"], 1, families=["quality", "drift"], scalars="headline")
    assert list(layout) == ["m"]
    assert set(layout["m"]) == {"test sparseness and its gap", "test complexity and its gap",
                                "drift since the last monitored epoch"}  # fmt: skip
    est = {MetricKey("m", "mean", "test", "sparseness"): Estimate(0.5, 0.1, 0.3, 0.7, 6)}
    assert tensorboard_scalars(est, 1, "headline") == {"interp/m/test/sparseness": 0.5}


def test_the_option_is_checked_and_defaults_to_the_headline() -> None:
    assert InterpretationGeneralization().config.tensorboard_scalars == "headline"
    assert InterpretationGeneralization(tensorboard_scalars="all").config.tensorboard_scalars == "all"
    with pytest.raises(ValueError, match=r"tensorboard_scalars must be one of \['headline', 'all'\]"):
        InterpretationGeneralization(tensorboard_scalars="everything")  # type: ignore[arg-type]


def test_the_summary_names_the_unsmoothed_page_and_the_csv(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    text = summary_text(_last_epoch(), LABELS, tmp_path, [TensorBoardLogger(str(tmp_path))])
    assert f"then open {TENSORBOARD_PAGE}" in text and "_smoothingWeight=0" in TENSORBOARD_PAGE
    assert f"values: {tmp_path / CSV_NAME}" in text
    # no TensorBoard logger: no TensorBoard page to open
    text = summary_text(_last_epoch(), LABELS, tmp_path, [CSVLogger(str(tmp_path))])
    assert TENSORBOARD_PAGE not in text and f"values: {tmp_path / CSV_NAME}" in text


def test_a_fit_at_the_defaults_logs_the_headline_and_the_csv_keeps_every_number(tmp_path: Path) -> None:
    cb = _callback()  # tensorboard_scalars at its default
    trainer = _trainer(tmp_path, [cb])
    trainer.fit(_ensemble(), _data())
    log_dir = Path(trainer.logger.log_dir)
    labels = [s.label for s in cb.specs]
    scalars = _tb_scalars(log_dir)
    assert {t for t in scalars if t.startswith(("interp/", "interval/"))} == _headline_tags(labels)
    rows = _read_csv(log_dir / CSV_NAME)
    csv_keys = {(r["method"], r["split"], r["metric"]) for r in rows}
    assert {(labels[0], "train", "spearman"), (labels[1], "gap", "gap_reduction")} <= csv_keys
    # TensorBoard's values are the CSV's
    gap = [float(r["value"]) for r in rows if (r["method"], r["aggregate"], r["metric"]) == (labels[1], "mean", "gap")]
    assert [v for _, v in scalars[f"interp/{labels[1]}/gap"]] == pytest.approx(gap, abs=1e-6)
    hi = [float(r["hi"]) for r in rows if (r["method"], r["aggregate"], r["metric"]) == (labels[1], "mean", "gap")]
    assert [v for _, v in scalars[f"interval/{labels[1]}/gap_hi"]] == pytest.approx(hi, abs=1e-6)
    # the layout in the event file opens with the headline
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    (event,) = [e for e in acc.Tensors(metadata.CONFIG_SUMMARY_TAG)]
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == [GAP_CATEGORY, ABOVE_CATEGORY, "prediction agreement of the models"]
    assert [c.title for c in layout.category[0].chart] == labels[::-1]

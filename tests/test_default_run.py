"""What a researcher sees after the README's main job (issue 13), checked through
TensorBoard's own backend: its plugins and plugin data, no browser."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from lightning_saliency.cli import cli_main
from lightning_saliency.generalization import CSV_NAME, METHODS_NAME, figure_tag, image_tag

pytestmark = pytest.mark.slow  # trains the default run once per module

ROOT = Path(__file__).resolve().parents[1]
#: Issue 23: at most this many scalar tags in the default run, every logger's tags included
#: (638 before issue 13, with hp/ copies; 311 before issue 23: 270 under interp/ with their
#: interval bounds, 41 the models' own).
TAG_BUDGET = 100


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The default run: (its folder, the folder as the run names it, what it logged)."""
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("default"))
    try:
        import contextlib
        import io
        import logging

        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        logging.getLogger("lightning.pytorch").addHandler(handler)
        with contextlib.redirect_stderr(io.StringIO()):
            cli = cli_main(["fit", "--config", str(ROOT / "configs" / "default.yaml"),
                            "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"])  # fmt: skip
        logging.getLogger("lightning.pytorch").removeHandler(handler)
        return Path(cli.trainer.logger.log_dir).resolve(), cli.trainer.logger.log_dir, buf.getvalue()
    finally:
        os.chdir(cwd)


def _context(run_dir: Path):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin
    from tensorboard.plugins.scalar.scalars_plugin import ScalarsPlugin

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(run_dir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(run_dir))
    plugins: dict = {}
    ctx = base_plugin.TBContext(logdir=str(run_dir), data_provider=provider, multiplexer=mux,
                                plugin_name_to_instance=plugins)  # fmt: skip
    plugins["scalars"] = ScalarsPlugin(ctx)
    plugins["custom_scalars"] = CustomScalarsPlugin(ctx)
    mux.provider = provider
    return mux, plugins


def _scalars(mux) -> dict[str, list[tuple[int, float]]]:
    from tensorboard import context

    (data,) = mux.provider.read_scalars(
        context.RequestContext(), experiment_id="", plugin_name="scalars", downsample=10**6
    ).values()
    return {t: [(d.step, d.value) for d in points] for t, points in data.items()}


def _blob_steps(mux, plugin: str) -> dict[str, list[int]]:
    from tensorboard import context

    (data,) = mux.provider.read_blob_sequences(
        context.RequestContext(), experiment_id="", plugin_name=plugin, downsample=10**6
    ).values()
    return {t: [d.step for d in points] for t, points in data.items()}


def test_custom_scalar_charts_plot_exactly_their_series(run) -> None:
    from tensorboard import context

    run_dir, *_ = run
    mux, plugins = _context(run_dir)
    tags = set(_scalars(mux))
    (run_name,) = mux.Runs()
    layout = json.loads(plugins["custom_scalars"].layout_impl(context.RequestContext(), ""))
    charts = [c for cat in layout["category"] for c in cat["chart"]]
    # the headline: 8 gap charts, 8 Spearman-above-chance charts, 2 of prediction agreement
    assert [len(cat["chart"]) for cat in layout["category"]] == [8, 8, 2]
    for chart in charts:
        if "multiline" in chart:
            (pattern,) = chart["multiline"]["tag"]
            want = {re.sub(r"\\(.)", r"\1", t) for t in pattern[2:-2].split("|")}
            got = plugins["custom_scalars"].scalars_impl(
                context.RequestContext(), run_name, pattern, ""
            )["tag_to_events"]
            assert set(got) == want & tags, chart["title"]  # nothing else matches
            assert want & tags, chart["title"]  # and the chart is not empty
        else:
            for series in chart["margin"]["series"]:
                for part in ("value", "lower", "upper"):
                    assert series[part] in tags, (chart["title"], series[part])


def test_tag_budget_and_no_duplicate_series(run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, *_ = run
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert len(tags) <= TAG_BUDGET, len(tags)  # 91 on the day of issue 23
    # the headline: per method its gap and test Spearman above chance, each with its interval
    # under interval/, and the test prediction agreement with its chance level
    labels = {t.split("/")[1] for t in tags if t.endswith("/gap") and t.startswith("interp/")}
    assert len(labels) == 8
    want = {f"interp/{m}/{s}" for m in labels for s in ("gap", "test/spearman_above_chance")}
    want |= {f"interval/{m}/{s}_{b}" for m in labels for s in ("gap", "test/spearman_above_chance")
             for b in ("lo", "hi")}  # fmt: skip
    want |= {"interp/prediction_agreement/test", "interp/prediction_agreement_chance/test"}
    assert {t for t in tags if t.startswith(("interp/", "interval/"))} == want
    mux, _ = _context(run_dir)
    scalars = _scalars(mux)
    assert set(scalars) == set(tags)
    assert not [t for t in scalars if t.startswith("hp/")]
    series: dict[tuple, str] = {}
    for tag, points in scalars.items():
        if tag.startswith("interval/") or len(points) < 2 or len({v for _, v in points}) < 2:
            continue  # interval bounds; constant series may coincide by chance
        key = tuple(round(v, 7) for _, v in points)
        assert key not in series, (tag, series.get(key))
        series[key] = tag


def test_hparams_hold_one_record_with_settings_and_final_values(run) -> None:
    from tensorboard.plugins.hparams import metadata

    run_dir, *_ = run
    mux, _ = _context(run_dir)
    (content,) = mux.PluginRunToTagToContent("hparams").values()
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info",
                            "_hparams_/session_end_info"}  # fmt: skip
    exp = metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
    start = metadata.parse_session_start_info_plugin_data(content["_hparams_/session_start_info"])
    metrics = [m.name.tag for m in exp.metric_infos]
    scalars = _scalars(mux)
    assert "interp/simple_grad/gap" in metrics and "hp_metric" not in metrics
    assert all(m in scalars for m in metrics)  # registered on the existing tags: no copies
    assert {"interp/num_test_probes", "interp/seed", "backbone", "lr"} <= set(start.hparams)
    assert start.hparams["interp/num_test_probes"].number_value == 32


def test_images_at_the_scalars_step_labelled_and_at_the_last_epoch(run) -> None:
    run_dir, *_ = run
    mux, _ = _context(run_dir)
    steps = [s for s, _ in _scalars(mux)["interp/simple_grad/gap"]]
    images = _blob_steps(mux, "images")
    assert image_tag("simple_grad") in images and figure_tag("smoothgrad_sweep") in images
    # log_images_every_n_epochs: 2 with 2 epochs: the first and the last (always) epoch
    assert images[image_tag("simple_grad")] == steps
    assert images[figure_tag("pixel_vs_superpixel")] == steps
    with (run_dir / CSV_NAME).open() as fh:
        assert sorted({int(r["step"]) for r in csv.DictReader(fh)}) == steps
    assert (run_dir / METHODS_NAME).is_file()


def test_the_fit_ends_with_a_summary_and_the_commands_to_open_the_run(run) -> None:
    _, named, log = run
    assert "gap [95% CI]" in log and "test spearman above chance [95% CI]" in log
    assert f"tensorboard --logdir {named}" in log
    assert f"lightning-saliency report {named}" in log
    for label in ("simple_grad", "smooth_grad_nl0.2_sp-slic"):
        assert re.search(rf"^{re.escape(label)}\s+-?\d\.\d{{4}} \[", log, re.M), label

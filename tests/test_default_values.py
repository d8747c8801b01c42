"""The generalization core left every number of the default run unchanged.

``fixtures/default_run_values.json`` holds the CSV rows and TensorBoard scalars of a
fixed default run recorded with version 0.1 (before the core replaced
``callbacks/_compute.py``; ``fixtures/record_default_values.py`` says how). The same run
today must give the same values to 1e-6, except where a definition changed on purpose:

* chance levels are class-blind, averaged over random derangements of the probes (they
  were each probe against its neighbour), and probes are drawn in random order (they were
  sorted by index): the chance levels and every number of the methods that draw noise
  (SmoothGrad, AdaptGrad: each probe's noise depends on its place in the batch) differ;
  every other number of the deterministic methods and the prediction agreement is checked;

* ``gap_reduction`` is now ``|gap(simple_grad)| - |gap(L)|`` (DESIGN.md); it is checked
  against that formula applied to the recorded gaps instead, and the baseline's own
  (always 0) is no longer logged;
* ``interp/L/sparseness`` and ``interp/L/complexity`` were copies of
  ``interp/L/test/sparseness`` and ``.../test/complexity``, and ``hp/...`` copies of the
  final values: gone, the originals are checked;
* some numbers now go to the CSV only (see ``MetricKey.in_tensorboard``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

from lightning_saliency.cli import cli_main
from lightning_saliency.generalization import MetricKey, parse_csv_row

HERE = Path(__file__).resolve().parent
#: Methods without noise draws, whose numbers do not depend on the probes' order.
DETERMINISTIC = {"simple_grad", "integrated_gradients", "simple_grad_sp-slic", "-"}


def _unchanged(key: MetricKey) -> bool:
    """A number whose definition and inputs are those of version 0.1."""
    return key.method in DETERMINISTIC and "chance" not in key.metric and key.metric != "gap_reduction"

FIXTURE = json.loads((HERE / "fixtures" / "default_run_values.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("default"))
    try:
        # the models as they are (no BatchNorm-folded copy): the numbers of version 0.1 bit
        # for bit, where only rounding would otherwise differ
        cli = cli_main(["fit", *FIXTURE["args"],
                        "--trainer.callbacks.init_args.fold_batchnorm", "false"])  # fmt: skip
        return Path(cli.trainer.logger.log_dir).resolve()
    finally:
        os.chdir(cwd)


def _tb(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_values_equal_the_recorded_ones(run: Path) -> None:
    """Every number TensorBoard still gets (``MetricKey.in_tensorboard``) has today's series;
    the others (per-model losses, train-probe agreement and quality, the test L2 that equals
    the test loss with two models, the ``hp/`` copies) are in the CSV (next test)."""
    now = _tb(run)
    keys = {parse_csv_row(r)[1] for r in FIXTURE["csv"]}
    compared = 0
    for key in sorted(keys):
        if not key.in_tensorboard(num_sources=2):
            assert key.tag not in now, key.tag
            continue
        if not _unchanged(key):
            continue
        old = FIXTURE["tensorboard"][key.tag]
        got = now[key.tag]
        assert [s for s, _ in got] == [s for s, _ in old], key.tag
        want = [v for _, v in old]
        assert [v for _, v in got] == pytest.approx(want, abs=1e-6, nan_ok=True), key.tag
        compared += 1
    assert compared == 3 * 15 + 2  # 15 per deterministic method, and prediction agreement


def test_gap_reduction_is_the_difference_of_absolute_gaps(run: Path) -> None:
    now = _tb(run)
    base = now["interp/simple_grad/gap"]
    assert "interp/simple_grad/gap_reduction" not in now  # the baseline's own: always 0
    reductions = [t for t in now if t.endswith("/gap_reduction")]
    assert len(reductions) == 7
    for tag in reductions:
        gap = now[tag.replace("/gap_reduction", "/gap")]
        want = [abs(b) - abs(g) for (_, b), (_, g) in zip(base, gap, strict=True)]
        assert [v for _, v in now[tag]] == pytest.approx(want, abs=1e-6), tag


def test_csv_values_equal_the_recorded_ones(run: Path) -> None:
    with (run / "interpretation_metrics.csv").open(newline="") as fh:
        rows = [parse_csv_row(r) for r in csv.DictReader(fh)]
    now = {(epoch, key): est for epoch, key, est in rows}
    assert len(now) == len(rows)  # one row per key and epoch
    checked = 0
    for row in FIXTURE["csv"]:
        epoch, key, old = parse_csv_row(row)
        baseline_own = key.metric == "gap_reduction" and key.method == "simple_grad"
        assert (epoch, key) in now or baseline_own, key  # every number of 0.1 is still there
        if not _unchanged(key):
            continue
        est = now[(epoch, key)]
        assert est.value == pytest.approx(old.value, abs=1e-6, nan_ok=True), key
        # every number carries its uncertainty now (MeGe/ReCo are NaN here: the untrained
        # models predict no probe correctly, so no pair is "same-correct")
        assert est.n > 0, key
        if key.metric not in ("mege", "reco"):
            assert math.isfinite(est.se) and est.lo <= est.value <= est.hi, key
        checked += 1
    # per epoch 26 rows per method (35 less 8 chance levels and the gap reduction) and 2
    # prediction agreements; drift only from epoch 1
    assert checked == 2 * (3 * 26 + 2) - 3
    # the new first-class quantity: agreement above chance, with its paired interval
    for metric in ("l2", "spearman", "topk", "ssim"):
        key = MetricKey("simple_grad", "pairs", "test", f"{metric}_above_chance")
        agree = now[(1, MetricKey("simple_grad", "pairs", "test", metric))].value
        chance = now[(1, MetricKey("simple_grad", "pairs", "test", f"{metric}_chance"))].value
        want = chance - agree if metric == "l2" else agree - chance
        assert now[(1, key)].value == pytest.approx(want, abs=1e-9)

"""The probes' share of pixels at the input bounds (issue 20, item 4): a run with AdaptGrad
logs it for train and test probes at every monitored epoch, equal to the share computed
apart (the library's function and plain numpy), with its Student-t interval over probes; a
run without AdaptGrad logs no such row, and TensorBoard's headline does not get it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from _tiny import callback as _callback
from _tiny import data as _data
from _tiny import ensemble as _ensemble
from _tiny import read_csv as _read_csv
from _tiny import tb_scalars as _tb_scalars
from _tiny import trainer as _trainer

from lightning_saliency.attribution import resolve_method
from lightning_saliency.callbacks import _setup
from lightning_saliency.generalization import CSV_NAME, parse_csv_row
from lightning_saliency.generalization.input_bounds import (
    SHARE_AT_BOUNDS,
    adapt_grad_ranges,
    share_at_input_bounds,
)
from lightning_saliency.report import main as report_main
from lightning_saliency.report.intervals import bounds_of, t_interval
from lightning_saliency.report.table import cell_text

ADAPT = {"method": "adapt_grad", "samples": 2}


def _fit(tmp_path: Path, methods: list) -> tuple:
    dm, cb = _data(), _callback(methods=methods, num_train_probes=8, num_test_probes=8)
    trainer = _trainer(tmp_path, [cb])
    trainer.fit(_ensemble(), datamodule=dm)
    folder = Path(trainer.logger.log_dir)
    rows = [parse_csv_row(r) for r in _read_csv(folder / CSV_NAME)]
    share = {(e, k.split): est for e, k, est in rows if k.metric == SHARE_AT_BOUNDS}
    return dm, cb, folder, share


def _numpy_share(x: np.ndarray, lo: float, hi: float, atol: float = 1e-6) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    return ((np.abs(flat - lo) <= atol) | (np.abs(flat - hi) <= atol)).mean(axis=1)


def test_a_run_with_adapt_grad_logs_the_share_for_train_and_test_probes(tmp_path: Path) -> None:
    smooth = {"method": "smooth_grad", "noise_level": 0.2, "samples": 2}
    dm, cb, folder, share = _fit(tmp_path, ["simple_grad", smooth, ADAPT])
    assert sorted(share) == [(0, "test"), (0, "train"), (1, "test"), (1, "train")]
    probes = cb.run.probes
    x = probes.x.cpu()
    lo, hi = dm.input_range  # the data module's pair: what AdaptGrad used (no input_range given)
    per_probe = _numpy_share(x.numpy(), lo, hi)
    lib = share_at_input_bounds(x, (lo, hi)).double().numpy()
    np.testing.assert_allclose(lib, per_probe, atol=1e-12)
    assert 0.1 < per_probe.mean() < 0.9  # digits at 16 px: about 30% background at x_min
    layout = probes.layout
    test = per_probe[layout.test]
    trains = [per_probe[s] for s in layout.train]
    for epoch in (0, 1):  # the probes are fixed: the same numbers at every monitored epoch
        t = share[(epoch, "test")]
        assert t.value == pytest.approx(test.mean(), abs=1e-12) and t.n == len(test)
        se = test.std(ddof=1) / math.sqrt(len(test))
        half = scipy.stats.t.ppf(0.975, len(test) - 1) * se
        assert (t.se, t.lo, t.hi) == pytest.approx((se, test.mean() - half, test.mean() + half))
        tr = share[(epoch, "train")]
        assert tr.value == pytest.approx(np.mean([p.mean() for p in trains]), abs=1e-12)
        k = len(trains)  # the mean over models of each model's train-probe mean
        assert tr.se == pytest.approx(math.sqrt(sum(p.var(ddof=1) / len(p) for p in trains)) / k)
        assert tr.n == sum(len(p) for p in trains) and tr.lo < tr.value < tr.hi
    # TensorBoard at its default (the headline) does not get it: the CSV has it
    assert not [t for t in _tb_scalars(folder) if SHARE_AT_BOUNDS in t]
    # the report prints the test share beside AdaptGrad's verdict and in study (e)'s summary
    report_main([str(folder), "--out", str(tmp_path / "report")])
    md = (tmp_path / "report" / "report.md").read_text()
    printed = f"where AdaptGrad adds no noise: {cell_text(share[(1, 'test')])})"
    (line,) = [ln for ln in md.splitlines() if ln.startswith("- maps of `adapt_grad")]
    assert line.endswith(printed) and f"noise: {test.mean():.4f} [" in printed
    assert f"AdaptGrad adds no noise (test): {cell_text(share[(1, 'test')])}" in md


def test_a_run_without_adapt_grad_logs_no_share(tmp_path: Path) -> None:
    smooth = {"method": "smooth_grad", "sigma": 0.3, "samples": 2}
    _, cb, _, share = _fit(tmp_path, ["simple_grad", smooth])
    assert share == {} and cb.run.share_at_bounds is None


def test_adapt_grad_methods_with_different_bounds_log_no_share() -> None:
    import torch

    specs = [resolve_method(ADAPT), resolve_method({**ADAPT, "input_range": [-1, 3]})]
    assert adapt_grad_ranges(specs, (0.0, 1.0)) == [(0.0, 1.0), (-1.0, 3.0)]
    assert adapt_grad_ranges(specs[1:], (0.0, 1.0)) == [(-1.0, 3.0)]  # the spec's own pair wins
    x = torch.tensor([[[[0.0, 1.0], [0.5, -1.0]]]])
    with pytest.warns(UserWarning, match="different input ranges"):
        assert _setup.share_at_bounds(specs, (0.0, 1.0), x) is None
    assert _setup.share_at_bounds(specs[1:], (0.0, 1.0), x).tolist() == [0.25]  # -1 only


def test_the_seed_level_share_stays_in_its_range() -> None:
    """Over seeds the report's interval of a share is on the logit scale: inside [0, 1]."""
    values = [0.97, 0.99, 0.995]
    plain_hi = np.mean(values) + scipy.stats.t.ppf(0.975, 2) * scipy.stats.sem(values)
    assert plain_hi > 1  # a plain t-interval would leave the range
    e = t_interval(values, bounds_of(SHARE_AT_BOUNDS))
    assert e is not None and 0 < e.lo < e.value < e.hi < 1
    assert e.value == pytest.approx(np.mean(values))

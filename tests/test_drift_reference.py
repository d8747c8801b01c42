"""Drift against a stated epoch (issue 19, case 9): a schedule that skips epochs must not
change what the drift at an epoch means."""

from __future__ import annotations

import pytest
import torch

from lightning_saliency.generalization import ProbeLayout
from lightning_saliency.generalization.drift_reference import drift_against, update_reference


def _maps(epochs: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 6, 1, 4, 4, generator=g)
    return [base + 0.3 * e * torch.randn(2, 6, 1, 4, 4, generator=g) for e in range(epochs)]


def _drift_at_last(schedule: list[int], mode: str) -> tuple[float, int]:
    layout = ProbeLayout.from_sizes([2, 2], 2)
    maps, ref, out = _maps(5), None, (float("nan"), -1)
    for e in schedule:
        if ref is not None:
            stat, against = drift_against(maps[e], ref, layout, e)
            out = (float(stat.point()), against)
        ref = update_reference(ref, e, maps[e][:, layout.test], mode)  # type: ignore[arg-type]
    return out


def test_drift_against_the_first_epoch_does_not_depend_on_the_schedule() -> None:
    every, skipping = [0, 1, 2, 3, 4], [0, 3, 4]
    assert _drift_at_last(every, "first") == _drift_at_last(skipping, "first")
    assert _drift_at_last(every, "first")[1] == 0  # the stated reference epoch
    # against the previous monitored epoch (the old behaviour) the same epoch reads differently
    a, b = _drift_at_last([0, 1, 2, 4], "previous"), _drift_at_last([0, 4], "previous")
    assert (a[1], b[1]) == (2, 0) and a[0] != b[0]


@pytest.mark.slow
def test_the_callbacks_drift_does_not_depend_on_which_epochs_were_monitored(tmp_path) -> None:
    """Case 9 through the callback: drift at epoch 2 is the same whether epoch 1 was monitored
    (no budget) or skipped by the time budget (which always monitors the first and the last
    epoch); it was measured against the previous monitored epoch, so wall-clock timing
    changed its meaning."""
    import _tiny
    import lightning as L

    from lightning_saliency.generalization import MetricKey

    drifts = []
    for budget in (None, 1e-9):
        L.seed_everything(0)
        cb = _tiny.callback(methods=["simple_grad"], max_overhead=budget,
                            log_images_every_n_epochs=0)  # fmt: skip
        _tiny.trainer(tmp_path / f"budget{budget}", callbacks=[cb], max_epochs=3).fit(
            _tiny.ensemble(init_seed=0), _tiny.data()
        )
        assert cb.logged_epochs == ([0, 1, 2] if budget is None else [0, 2])
        drifts.append(cb._last[MetricKey("simple_grad", "mean", "test", "drift")].value)
    assert drifts[0] == pytest.approx(drifts[1], abs=1e-6)
    assert drifts[0] > 0

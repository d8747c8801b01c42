"""The cost budget the callback keeps (issue 14): which epochs it monitors, and why."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from _tiny import callback, data, ensemble, read_csv, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_saliency.callbacks._schedule import Schedule
from lightning_saliency.generalization import CSV_NAME


def _monitored(schedule: Schedule, epochs: int, train: float, monitor: float) -> list[int]:
    """Run the schedule on synthetic timings: every epoch trains ``train`` s, every
    monitored epoch costs ``monitor`` s."""
    out = []
    for e in range(epochs):
        if schedule.due(e, epochs - 1)[0]:
            schedule.record_monitor(e, monitor)
            out.append(e)
        schedule.record_training(train)
    return out


def test_the_budget_spreads_the_affordable_monitors_and_keeps_first_and_last() -> None:
    # 20 epochs of 10 s allow 20 s of monitoring: 4 monitored epochs of 5 s
    got = _monitored(Schedule(max_overhead=0.1), 20, train=10.0, monitor=5.0)
    assert got[0] == 0 and got[-1] == 19 and len(got) == 4
    gaps = [b - a for a, b in itertools.pairwise(got)]
    assert max(gaps) - min(gaps) <= 2  # spread, not bunched at the start
    # a monitor dearer than the whole budget: first and last only
    assert _monitored(Schedule(max_overhead=0.1), 10, train=1.0, monitor=50.0) == [0, 9]
    # no budget: every every_n_epochs-th epoch, and the last
    assert _monitored(Schedule(every_n_epochs=3), 8, 1.0, 50.0) == [2, 5, 7]
    # a generous budget monitors every epoch
    assert _monitored(Schedule(max_overhead=10.0), 6, 1.0, 1.0) == list(range(6))


def test_the_schedule_is_a_function_of_the_timings_and_resumes_with_them() -> None:
    a, b = Schedule(max_overhead=0.2), Schedule(max_overhead=0.2)
    first = _monitored(a, 6, 2.0, 1.0)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and first == _monitored(Schedule(max_overhead=0.2), 6, 2.0, 1.0)


def test_a_fit_under_a_tight_budget_monitors_first_and_last_and_says_why(tmp_path: Path, caplog) -> None:
    cb = callback(methods=["simple_grad"], max_overhead=1e-6)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True)
    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    t = trainer(tmp_path, [cb, ckpt], logger=logger, max_epochs=4, enable_checkpointing=True)
    with caplog.at_level("INFO"):
        t.fit(ensemble(), data())
    assert cb.logged_epochs == [0, 3]
    assert {int(r["epoch"]) for r in read_csv(Path(logger.log_dir) / CSV_NAME)} == {0, 3}
    assert "epoch 1 not monitored (over budget:" in caplog.text
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)["callbacks"][cb.state_key]
    assert state["schedule"]["monitor_runs"] == 2 and [e for e, _ in state["schedule"]["skipped"]] == [1, 2]


def test_max_overhead_must_be_a_positive_fraction() -> None:
    with pytest.raises(ValueError, match="max_overhead must be a fraction > 0"):
        callback(max_overhead=0)

"""The callback-overhead benchmark runs end to end (timings live in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "callback_overhead.py"


@pytest.mark.slow
def test_quick_cpu_run_times_the_monitor_inside_each_epoch(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("callback_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "overhead.json"
    ckpt = tmp_path / "models.ckpt"
    result = module.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--every-n-epochs",
            "2",
            "--limit-train-batches",
            "2",
            "--baseline",
            "--save-checkpoint",
            str(ckpt),
            "--log-dir",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["overhead_ratio"] == result["overhead_ratio"]
    assert len(saved["epoch_s"]) == len(saved["monitor_s"]) == len(saved["baseline_epoch_s"]) == 2
    # every_n_epochs=2 monitors epoch 1 (0-based) only: its monitor time is real, epoch 0's ~0
    mon = saved["monitor_s"]
    assert mon[1] > 10 * mon[0] and mon[1] > 0
    for t, m, r in zip(saved["epoch_s"], mon, saved["rest_s"], strict=True):
        assert math.isclose(t, m + r) and 0 <= m <= t
    assert saved["overhead_ratio"] == saved["median_monitor_s"] / saved["median_rest_s"]
    assert saved["tf32"] == {"matmul_allow_tf32": False, "cudnn_allow_tf32": False}
    assert ckpt.is_file()

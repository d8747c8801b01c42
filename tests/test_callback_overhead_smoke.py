"""The callback-overhead benchmark runs end to end (timings live in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "callback_overhead.py"


def test_quick_cpu_run_reports_both_epoch_times(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("callback_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "overhead.json"
    result = module.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--limit-train-batches",
            "2",
            "--log-dir",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["overhead_ratio"] == result["overhead_ratio"]
    assert len(saved["epoch_s_without"]) == len(saved["epoch_s_with"]) == 2
    assert saved["median_epoch_s_with"] > 0 and saved["median_epoch_s_without"] > 0
    assert saved["overhead_ratio"] == saved["median_epoch_s_with"] / saved["median_epoch_s_without"]

"""Smoke test of benchmarks/attribution_throughput.py on the CPU at its smallest setting."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("captum")
pytest.importorskip("timm")
attribution = pytest.importorskip("lightning_saliency.attribution")
if not all(hasattr(attribution, m) for m in ("simple_grad", "smooth_grad", "integrated_gradients")):
    pytest.skip("attribution methods not available yet", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "attribution_throughput.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("attribution_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_cpu_run_writes_expected_json(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "results.json"
    rng_state = torch.get_rng_state()
    results = bench.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--cases",
            "resnet18_32",
            "--segmenters",
            "slic",
            "watershed",
            "--out",
            str(out),
        ]
    )
    torch.set_rng_state(rng_state)
    saved = json.loads(out.read_text())
    assert set(saved) == {
        "environment",
        "settings",
        "throughput",
        "quality",
        "memory_budget",
        "segmentation",
        "segment_counts_natural",
    }
    assert saved["settings"]["inputs"] == "random uniform [0, 1]"
    # every method x implementation timed, with positive throughput
    rows = {(r["method"], r["impl"]): r for r in saved["throughput"]}
    assert set(rows) == {(m, i) for m in bench.METHODS for i in bench.IMPLS}
    assert all(r["maps_per_s"] > 0 and math.isfinite(r["maps_per_s"]) for r in rows.values())
    # bf16 really runs on the CPU (the maps move) and stays close; ours equals Captum
    for q in saved["quality"]:
        assert 0.5 < q["spearman_bf16_vs_fp32"] < 1.0
        for arm in ("ours_fp32_vs_captum", "ours_fast_fp32_vs_captum"):
            assert q[arm]["spearman_min"] > 0.99, (q["method"], arm, q[arm])
        assert q["ours_fp32_vs_captum"]["max_rel_max"] < 1e-4  # same model, same noise
    env = saved["environment"]
    assert env["tf32"] == "off" and env["cudnn_allow_tf32"] is False
    assert all(r["completed"] for r in saved["memory_budget"])
    seg = {r["algorithm"] for r in saved["segmentation"]}
    assert seg == {"slic", "watershed"}
    assert all(r["images_per_s"] > 0 and r["segments_min"] >= 1 for r in saved["segmentation"])
    assert results["throughput"] == saved["throughput"]


def test_cpu_engine_quick_run(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("cpu_engine", SCRIPT.parent / "cpu_engine.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cpu.json"
    res = bench.main(
        ["--quick", "--cases", "small_cnn", "--sweep", "2", "--merged", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["throughput"] == json.loads(json.dumps(res["throughput"]))
    rows = {(r["method"], r["arm"]): r for r in saved["throughput"]}
    assert set(rows) == {(m, a) for m in bench.METHODS for a in bench.ARMS}
    assert all(r["cpu_min"] > 0 and len(r["cpu_s"]) == 1 for r in rows.values())
    for method in bench.METHODS:
        # the default path on the same noise is Captum's map; the folded copy is close
        assert rows[(method, "ours")]["vs_captum"]["max_rel_max"] < 1e-5
        assert rows[(method, "ours_fast")]["vs_captum"]["spearman_min"] > 0.999
        assert 0.5 < rows[(method, "ours_bf16")]["vs_ours_fast_fp32"]["spearman_mean"] < 1.0
    assert {r["arm"] for r in saved["chunk_sweep"]} == {"ours", "ours_fast"}
    assert saved["merged_bound"][0]["merged_cpu_min"] > 0

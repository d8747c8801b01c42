"""benchmarks/device_session.sh, the GPU-session driver, run on CPU at toy size: its argument
checks, one fit of a study config, what it packs for the trip back, and the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_session.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(env: dict[str, str], *steps: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *steps],
        cwd=REPO,
        env={**os.environ, "PY": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bad_arguments_stop_before_anything_runs(tmp_path: Path) -> None:
    env = {"OUT": str(tmp_path / "out")}
    usage = _run(env)
    assert usage.returncode == 2 and "Steps:" in usage.stdout
    unknown = _run(env, "tests", "nonsense")
    assert unknown.returncode == 2 and "unknown step nonsense" in unknown.stderr
    odd = _run({**env, "EPOCHS": "3"}, "tests")
    assert odd.returncode == 2 and "EPOCHS must be an even number" in odd.stderr
    assert not (tmp_path / "out").exists()  # nothing was set up


def _image_folder(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.slow
def test_a_study_fit_is_packed_and_reported(tmp_path: Path) -> None:
    data = tmp_path / "cifar10"
    _image_folder(data, {"train": 4, "test": 2})
    out, runs, reports = tmp_path / "out", tmp_path / "runs", tmp_path / "reports"
    env = {
        "ACC": "cpu",
        "OUT": str(out),
        "DATA": str(data),
        "RUNS": str(runs),
        "REPORTS": str(reports),
        "EPOCHS": "2",
        "FACTORS": "1",
        "WORKERS": "0",
        "TRAIN_PRECISION": "32-true",
        "OMP_NUM_THREADS": "1",
        "EXTRA_ARGS": "--model.backbone small_cnn --data.init_args.batch_size 8 "
        "--trainer.callbacks.init_args.num_train_probes 2 "
        "--trainer.callbacks.init_args.num_test_probes 2 "
        "--trainer.callbacks.init_args.log_images_every_n_epochs 0",
    }
    done = _run(env, "spectral_norm", "methods", "report")
    assert done.returncode == 0, done.stdout + done.stderr
    session = (out / "session.log").read_text()
    assert "spectral_norm/c1 epochs=2 precision=32-true status=0" in session, session
    run = runs / "spectral_norm" / "c1"
    rows = (run / "interpretation_metrics.csv").read_text().splitlines()
    epochs = {line.split(",")[0] for line in rows[1:]}
    assert epochs == {"0", "1"}  # monitored at EPOCHS/2 and EPOCHS (0-based 0 and 1)
    assert not list(run.rglob("*.ckpt"))  # checkpointing is off
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert "runs/spectral_norm/c1/interpretation_metrics.csv" in names
    assert "runs/spectral_norm/c1/config.yaml" in names
    # the methods run keeps its checkpoint for the bf16 check, but does not pack it
    assert list((runs / "methods" / "sf2").rglob("*.ckpt"))
    bf16 = json.loads((out / "bf16_trained.json").read_text())
    assert bf16["models"] == 2 and bf16["bf16_path"].startswith("library on cpu")
    for row in bf16["rows"]:
        # bf16 really ran (the maps are not their fp32 selves) and stayed close to fp32
        assert 0.5 < row["spearman_same"] < 1.0, row
        assert row["delta_spearman_pair"] == row["pair_spearman_bf16"] - row["pair_spearman_fp32"]
    with tarfile.open(out / "runs.tar.gz") as tar:
        packed = tar.getnames()
    assert "runs/methods/sf2/interpretation_metrics.csv" in packed
    assert not [n for n in packed if n.endswith(".ckpt")]
    report = (reports / "spectral_norm" / "report.md").read_text()
    assert "## (d)" in report and "c1" in report
    with tarfile.open(out / "reports.tar.gz") as tar:
        assert "reports/spectral_norm/report.md" in tar.getnames()


@pytest.mark.slow
def test_the_gpu_steps_run_on_cpu_at_toy_size(tmp_path: Path) -> None:
    """Steps overhead and bf16 of the one-call GPU plan, QUICK on the CPU: the monitored
    fit keeps its models, and the bf16 check reads them back; a step with too little time
    left before the deadline is skipped and logged, not started."""
    data = tmp_path / "cifar10"
    _image_folder(data, {"train": 4, "test": 2})
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {
        "ACC": "cpu",
        "QUICK": "1",
        "OUT": str(out),
        "DATA": str(data),
        "RUNS": str(runs),
        "TRAIN_PRECISION": "32-true",
        "OMP_NUM_THREADS": "1",
    }
    done = _run(env, "overhead", "bf16")
    assert done.returncode == 0, done.stdout + done.stderr
    session = (out / "session.log").read_text()
    for step in ("overhead_fp32", "overhead_bf16", "bf16"):
        assert f"{step} status=0" in session, session
    fp32 = json.loads((out / "overhead.json").read_text())
    bf16_cb = json.loads((out / "overhead_bf16.json").read_text())
    assert fp32["callback_precision"] == "32" and bf16_cb["callback_precision"] == "bf16"
    assert fp32["tf32"] == {"matmul_allow_tf32": False, "cudnn_allow_tf32": False}
    assert fp32["median_monitor_s"] > 0
    agreement = json.loads((out / "bf16_trained.json").read_text())
    assert agreement["models"] == 2 and agreement["probes"] == 8
    late = _run({**env, "DEADLINE": "30"}, "bench")
    assert late.returncode == 0 and "skipped bench: " in (out / "session.log").read_text()

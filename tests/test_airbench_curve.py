"""benchmarks/airbench_curve.py reads a finished CLI run back as it was trained: the data
module rebuilt from the run's config.yaml (split, normalization "auto", held-out set) and the
last checkpoint give the test accuracy the fit logged, and the curve has one row per noise
level with the seed-level interval of power_tables (scipy as the reference)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_saliency.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import airbench_curve  # noqa: E402

pytestmark = [pytest.mark.slow,  # three CLI fits, about a minute
              pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]
COLORS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def _tree(root: Path, per_class: tuple[int, int] = (16, 12)) -> None:
    """Three noisy solid-colour classes, 12x12 RGB PNGs (learnable in one epoch)."""
    rng = np.random.default_rng(0)
    for part, n in zip(("train", "test"), per_class, strict=True):
        for c, color in enumerate(COLORS):
            folder = root / part / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(color) + rng.normal(0, 40, (12, 12, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")


def _fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> Path:
    config = {
        "seed_everything": seed,
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "sf2",
                                             "version": f"seed{seed}"}},
                    "callbacks": [{"class_path": "lightning_saliency.callbacks."
                                   "InterpretationGeneralization",
                                   "init_args": {"methods": ["simple_grad"],
                                                 "num_train_probes": 4, "num_test_probes": 8}}]},
        "model": {"backbone": "small_cnn", "image_size": 12, "lr": 0.01, "optimizer": "adamw"},
        "data": {"class_path": "lightning_saliency.data.ImageFolderDataModule",
                 "init_args": {"root": "tree", "image_size": 12, "split_factor": 2,
                               "num_models": 2, "batch_size": 8, "num_workers": 0,
                               "mean": "auto", "std": "auto", "split_seed": seed}},
    }  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lightning-saliency"])
    main(["fit", "--config", "tiny.yaml"])
    run = tmp_path / "runs" / "sf2" / f"seed{seed}"
    (run / ".finished").touch()  # as benchmarks/run_cifar_studies.sh marks a finished fit
    return run


def test_the_curve_reads_a_run_back_as_it_was_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _tree(tmp_path / "tree")
    runs = [_fit(tmp_path, monkeypatch, s) for s in (0, 1, 2)]
    monkeypatch.setattr(airbench_curve, "ROOT", tmp_path / "curve")
    for run in runs:
        airbench_curve.run_one(run, None)
    recs = {}
    for run in runs:
        rec = json.loads((tmp_path / "curve" / f"sf2-{run.name}.json").read_text())
        logged = EventAccumulator(str(run)).Reload()
        for k, acc in enumerate(rec["accuracy"]):  # the fit's own last test accuracy
            assert acc == pytest.approx(logged.Scalars(f"val/model_{k}/acc")[-1].value, abs=1e-6)
        assert rec["num_probes"] == 36 and rec["seed"] == int(run.name[-1])
        assert set(rec["values"]) >= {f"sg{a}/l2" for a in airbench_curve.NOISE_LEVELS}
        recs[run.name] = rec
    capsys.readouterr()
    airbench_curve.table()
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln[:3] in ("| 0", "| 1")]
    assert [r.split(" |")[0] for r in rows] == [f"| {a}" for a in airbench_curve.NOISE_LEVELS]
    (runs[0] / ".finished").unlink()
    with pytest.raises(SystemExit, match="not a finished run"):
        airbench_curve.last_checkpoint(runs[0])
    per_seed = [np.mean(np.subtract(r["values"]["sg0.2/l2"], r["values"]["simple_grad/l2"]))
                for r in recs.values()]  # fmt: skip
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    row = next(ln for ln in rows if ln.startswith("| 0.2 |"))
    assert f"{np.mean(per_seed):+.4f}" in row and f"[{lo:+.4f}, {hi:+.4f}]" in row

"""Degenerate input is data, not a score (issue 19, case 7): a model that ignores its input
gives all-zero maps; their agreement numbers are NaN, counted, and warned about, where they
used to score as perfect agreement (loss 0 -> 1.0, gap 0.0, no warning)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _tiny import callback, data, ensemble, trainer

from lightning_saliency.report import load_runs


def test_a_model_that_ignores_its_input_gives_nan_with_a_count(tmp_path: Path) -> None:
    model = ensemble()
    with torch.no_grad():
        for p in model.models[1].parameters():
            p.zero_()  # constant logits: every input gradient is exactly zero
    cb = callback(methods=["simple_grad"])
    t = trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=0)
    with pytest.warns(UserWarning, match=r"simple_grad: 18 of 18 probes"):
        t.validate(model, data(), verbose=False)
    (run,) = load_runs(Path(t.logger.log_dir), stage="validate")
    assert run.get("simple_grad", "models", "all", "nonfinite_maps").value == 18
    for metric in ("l2", "topk", "ssim", "spearman"):
        e = run.get("simple_grad", "pairs", "test", metric)
        if e is not None:
            assert math.isnan(e.value) and e.nonfinite > 0, metric
    for split in ("train", "test"):
        loss = run.get("simple_grad", "mean", split, "loss")
        assert loss is not None and math.isnan(loss.value), split
    gap = run.get("simple_grad", "mean", "gap", "gap")
    assert gap is not None and math.isnan(gap.value)

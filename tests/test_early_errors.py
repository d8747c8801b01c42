"""Early, short errors (issue 19, case 10): the public generalization functions check shapes
against their layout and name both; a bad CLI argument prints the class's own message first
and a short traceback, not a 60-80-line union-type one; every checkpoint load in the package
and the benchmarks uses weights_only=True."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import _tiny
import lightning as L
import pytest
import torch

from lightning_saliency.cli import main
from lightning_saliency.generalization import (
    ProbeLayout,
    drift,
    pairwise_agreement,
    prediction_agreement,
    quality,
    split_statistics,
)
from lightning_saliency.models import DisjointEnsemble

ROOT = Path(__file__).resolve().parents[1]


def test_layout_mismatches_are_refused_naming_shape_and_layout() -> None:
    layout = ProbeLayout.from_sizes([3, 3], 4)  # 10 probes
    with pytest.raises(ValueError, match=r"split_statistics: values has shape \(2, 9\).*10 probes"):
        split_statistics(torch.zeros(2, 9), layout)  # used to use 3 test probes
    with pytest.raises(ValueError, match=r"model must be an int in \[0, 2\), got 5"):
        split_statistics(torch.zeros(2, 10), layout, model=5)  # used to be a bare IndexError
    with pytest.raises(ValueError, match=r"1 sources"):
        quality(torch.rand(1, 10, 1, 4, 4), layout, "sparseness")
    with pytest.raises(ValueError, match="pairwise_agreement: maps has shape"):
        pairwise_agreement(torch.rand(2, 11, 1, 4, 4), layout, "test", metrics=["l2"])
    with pytest.raises(ValueError, match="prediction_agreement: preds"):
        prediction_agreement(torch.zeros(2, 8, dtype=torch.long), layout, "test")
    with pytest.raises(ValueError, match="drift: maps"):
        drift(torch.rand(2, 9, 1, 2, 2), torch.rand(2, 4, 1, 2, 2), layout)
    s = split_statistics(torch.arange(20.0).view(2, 10), layout)  # the right shape still works
    assert float(s["test"].point()) == pytest.approx((6 + 7 + 8 + 9 + 16 + 17 + 18 + 19) / 8)


def test_a_bad_cli_argument_prints_its_own_message_first_and_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lightning-saliency"])
    for extra, message in (
        (["--data.init_args.split_factor", "0"], "split_factor must be an int >= 1, got 0"),
        (["--trainer.callbacks.init_args.methods", "[nosuch]"], "unknown saliency method 'nosuch'"),
    ):
        with pytest.raises((ValueError, TypeError)) as info:
            main(["fit", "--config", str(ROOT / "configs" / "default.yaml"), *extra])
        assert message in str(info.value)
        assert "Union" not in str(info.value)
        err = capsys.readouterr().err
        first = next(ln for ln in err.splitlines() if ln.startswith("lightning-saliency: error"))
        assert message in first
        assert len(traceback.format_exception(info.value)) < 25  # was 60-80 lines


def test_every_checkpoint_load_is_weights_only() -> None:
    """A benchmark script loading a checkpoint without weights_only=True ran a payload."""
    pattern = re.compile(r"(torch\.load|load_from_checkpoint)\(")
    unsafe = []
    for folder in ("lightning_saliency", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            for m in pattern.finditer(text):
                depth, end = 0, m.end() - 1
                for end in range(m.end() - 1, len(text)):  # the call's closing parenthesis
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    if depth == 0:
                        break
                if "weights_only=True" not in text[m.start():end]:
                    unsafe.append(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}")
    assert unsafe == []


def test_methods_are_tried_on_one_probe_before_training() -> None:
    """A registered method returning the wrong shape, grad_cam on an MLP and a Captum layer
    typo used to fail only after epoch 0 trained; try_methods fails at once, naming them."""
    from torch import nn

    from lightning_saliency.attribution import register_method, resolve_method, unregister_method
    from lightning_saliency.generalization.method_trial import try_methods

    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])

    @register_method
    def flat_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        return x.flatten(1)  # (N, 16), not (N, C, H, W)

    try:
        with pytest.raises(ValueError, match=r"'flat_map' (fails|returns maps shaped)"):
            try_methods([cnn], x, y, [resolve_method("flat_map")])
    finally:
        unregister_method("flat_map")
    with pytest.raises(ValueError, match=r"'grad_cam' fails on one probe of model 0"):
        try_methods([mlp], x, y, [resolve_method("grad_cam")])
    typo = resolve_method({"method": "captum", "attribution": "GuidedGradCam",
                           "init_args": {"layer": "0x"}})  # fmt: skip
    with pytest.raises(ValueError, match=r"fails on one probe of model 0 before training"):
        try_methods([cnn], x, y, [typo])
    try_methods([cnn, cnn], x, y, [resolve_method("simple_grad"), resolve_method("grad_cam")])


class _Count(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args: object) -> None:
        self.batches += 1


def _wrong_shape(model: torch.nn.Module, x: torch.Tensor, target: object) -> torch.Tensor:
    return torch.zeros(x.shape[0], 5)


@pytest.mark.parametrize(
    ("backbone", "method", "message"),
    [
        ("mlp", "grad_cam", "method 'grad_cam' fails on one probe of model 0 before training"),
        ("small_cnn", "early_wrong_shape", "must be shaped like the input"),
        ("small_cnn", {"method": "grad_cam", "layer": "no.such.layer"}, "fails on one probe"),
    ],
)
def test_a_method_that_cannot_run_fails_at_setup_before_epoch_0_trains(
    tmp_path: Path, backbone: str, method: object, message: str
) -> None:
    """Case 10: a registered method returning the wrong shape, grad_cam on an MLP and a layer
    typo used to fail only after epoch 0 trained; now the callback tries every method on one
    probe at setup."""
    from lightning_saliency.attribution import register_method, unregister_method

    register_method(_wrong_shape, name="early_wrong_shape", overwrite=True)
    try:
        count = _Count()
        model = _tiny.ensemble() if backbone == "small_cnn" else DisjointEnsemble(
            backbone="mlp", num_classes=10, in_chans=1, image_size=16, num_models=2)  # fmt: skip
        cb = _tiny.callback(methods=[method])
        with pytest.raises(ValueError, match=re.escape(message)):
            _tiny.trainer(tmp_path, callbacks=[cb, count]).fit(model, _tiny.data())
        assert count.batches == 0
    finally:
        unregister_method("early_wrong_shape")


def test_a_model_that_returns_probabilities_is_refused_at_setup(tmp_path: Path) -> None:
    """Case 8: probabilities would be softmaxed twice in faithfulness; refused by name."""
    cb = _tiny.callback(methods=["simple_grad"], output_transform=lambda out: out.softmax(-1))
    with pytest.raises(ValueError, match="look like probabilities"):
        _tiny.trainer(tmp_path, callbacks=[cb]).fit(_tiny.ensemble(), _tiny.data())

"""A user's module passed with ``--model`` is checked before fit (issue 23, item 1): the batch
format its ``training_step`` takes, and the K models (or the reference) the callback needs;
one message names each change and docs/own_model.md. A module that keeps the contract passes
and is left exactly as it was."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from lightning_saliency._module_contract import check_module_contract, unaccepted_model_options
from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.cli import main
from lightning_saliency.data import DigitsDataModule

ROOT = Path(__file__).resolve().parents[1]


def _net(classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, classes))  # fmt: skip


class OnePair(L.LightningModule):
    """The first try of issue 23: one model, ``x, y = batch``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


class OneOfOne(OnePair):
    """One model that unpacks the K = 1 batch ``[(x, y)]``."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ((x, y),) = batch
        return nn.functional.cross_entropy(self(x), y)


class Twins(L.LightningModule):
    """The contract kept: K models in ``models``, model k on ``batch[k]``."""

    def __init__(self, num_models: int = 2) -> None:
        super().__init__()
        self.models = nn.ModuleList(_net() for _ in range(num_models))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models]).mean(0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log("train/loss", 0.0)  # logging without a trainer only warns
        return sum(nn.functional.cross_entropy(m(x), y)
                   for m, (x, y) in zip(self.models, batch, strict=True))  # fmt: skip


class Manual(Twins):
    """Manual optimization: the step needs the trainer, so it cannot be tried before fit."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.optimizers()
        _x, _y = batch  # would be wrong, but the step cannot run without a trainer
        raise AssertionError("not reached")


class Broken(Twins):
    """Fails on any batch: not a batch-format problem (fit reports it)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        raise RuntimeError("boom")


def _data(k: int, splits: int = 2) -> DigitsDataModule:
    return DigitsDataModule(image_size=16, split_factor=splits, num_models=k, batch_size=8)


def _refusal(model: nn.Module, dm: Any, callbacks: list[Any]) -> str:
    with pytest.raises(ValueError) as info:
        check_module_contract(model, dm, callbacks)
    text = str(info.value)
    assert text.startswith(f"{type(model).__name__} does not fit what lightning-saliency fit")
    assert text.endswith("See docs/own_model.md (section 2, 'Your module through the command "
                         "line') for a complete module.")  # fmt: skip
    return text


def test_one_pair_step_and_one_model_under_k2_names_both_changes() -> None:
    text = _refusal(OnePair(), _data(2), [InterpretationGeneralization()])
    problems = [line for line in text.splitlines() if line.startswith("  - ")]
    assert len(problems) == 2
    assert problems[0].startswith("  - a training batch is a list of K=2 (x, y) pairs, one per "
                                  "disjoint split")  # fmt: skip
    assert "OnePair.training_step takes one (x, y) pair" in problems[0]
    assert "conv2d() received" in problems[0]  # the error it replaces, for recognition
    assert "zip(self.models, batch)" in problems[0]
    assert "monitors OnePair as one model" in problems[1] and '"not logged"' in problems[1]
    assert "one per split (K=2)" in problems[1] and "init_args.reference" in problems[1]


def test_k1_with_a_reference_names_the_batch_format_only() -> None:
    cb = InterpretationGeneralization(reference="ref.ckpt")
    text = _refusal(OnePair(), _data(1), [cb])
    assert "list of K=1 (x, y) pairs" in text and "with K=1 it is [(x, y)]" in text
    assert "not enough values to unpack (expected 2, got 1)" in text
    assert "write `(x, y), = batch`" in text and "reference" not in text


def test_one_model_without_a_reference_is_refused_with_the_reason() -> None:
    text = _refusal(OneOfOne(), _data(1), [InterpretationGeneralization()])
    assert "training_step" not in text
    assert "has no `reference`" in text and "every method would read \"not logged\"" in text


def test_models_against_the_data_modules_splits() -> None:
    text = _refusal(Twins(2), _data(4, splits=4), [InterpretationGeneralization()])
    assert "Twins.models holds 2 models but the data module trains K=4 splits" in text


def test_is_ensemble_true_without_models_is_named() -> None:
    cb = InterpretationGeneralization(is_ensemble=True, reference=None)
    text = _refusal(OneOfOne(), _data(1), [cb])
    assert "no non-empty nn.ModuleList named `models`" in text


@pytest.mark.parametrize(
    ("model", "k", "callbacks"),
    [
        pytest.param(Twins(2), 2, "monitor", id="twins"),
        pytest.param(OneOfOne(), 1, "reference", id="one-with-reference"),
        pytest.param(OneOfOne(), 1, "none", id="one-without-monitor"),
        pytest.param(Manual(), 2, "monitor", id="manual-optimization-not-tried"),
        pytest.param(Broken(), 2, "monitor", id="fails-on-any-batch-left-to-fit"),
    ],
)
def test_a_module_that_keeps_the_contract_passes(model: nn.Module, k: int, callbacks: str) -> None:
    cbs = {"monitor": [InterpretationGeneralization()], "none": [],
           "reference": [InterpretationGeneralization(reference="ref.ckpt")]}[callbacks]  # fmt: skip
    check_module_contract(model, _data(k), cbs)


def test_the_trial_leaves_the_module_and_the_global_rng_as_they_were() -> None:
    model = Twins(2)
    with torch.no_grad():  # non-trivial running statistics, which a train-mode forward moves
        for m in model.models:
            m[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_module_contract(model, _data(2), [InterpretationGeneralization()])
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_unrelated_parse_errors_are_not_renamed() -> None:
    assert unaccepted_model_options("error: Parser key \"data\": Option 'x' is not accepted",
                                    {"self"}) is None  # fmt: skip


# ------------------------------------------------------------------ through the command line
def _user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "own_contract_mod.py").write_text(textwrap.dedent('''
        import lightning as L
        import torch
        from torch import nn

        class TinyNet(L.LightningModule):
            def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
                super().__init__()
                self.net = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU(),
                                         nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                         nn.Linear(16, num_classes))

            def forward(self, x):
                return self.net(x)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return nn.functional.cross_entropy(self(x), y)

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=1e-3)
    '''))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_the_cli_refuses_before_fit_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    _user_module(tmp_path, monkeypatch)
    config = (ROOT / "configs" / "own_model.yaml").read_text()
    (tmp_path / "own.yaml").write_text(config.replace("my_models.TwinNets", "own_contract_mod.TinyNet"))
    with pytest.raises(ValueError, match="TinyNet does not fit what lightning-saliency fit gives"):
        main(["fit", "--config", "own.yaml", "--data.init_args.image_size", "16",
              "--trainer.enable_progress_bar", "false"])  # fmt: skip
    err = capsys.readouterr().err
    assert "lightning-saliency: error: TinyNet does not fit" in err
    assert "list of K=2 (x, y) pairs" in err and "docs/own_model.md" in err
    assert not (tmp_path / "runs").exists()  # refused before the run folder was made


def test_the_cli_names_a_configs_ensemble_arguments(tmp_path: Path, monkeypatch) -> None:
    _user_module(tmp_path, monkeypatch)
    with pytest.raises(ValueError) as info:
        main(["fit", "--model", "own_contract_mod.TinyNet",
              "--config", str(ROOT / "configs" / "default.yaml")])  # fmt: skip
    text = str(info.value)
    assert text.startswith("the config's model section sets backbone, lr, optimizer, scheduler, "
                           "weight_decay, which own_contract_mod.TinyNet does not take (it takes: "
                           "in_chans, num_classes)")  # fmt: skip
    assert "configs/own_model.yaml" in text and "docs/own_model.md" in text


def test_the_message_in_docs_own_model_is_the_real_one() -> None:
    """docs/own_model.md quotes the refusal of a one-model ``x, y = batch`` module: each of its
    lines is the real message's (up to the ``...`` where torch's error goes on)."""
    import re

    doc = (ROOT / "docs" / "own_model.md").read_text()
    (quoted,) = re.findall(r"```text\n(TinyNet does not fit.*?)```", doc, re.S)
    tiny = type("TinyNet", (OnePair,), {})
    real = _refusal(tiny(), _data(2), [InterpretationGeneralization()]).splitlines()
    lines = quoted.strip().splitlines()
    assert len(lines) == len(real)
    for want, got in zip(lines, real, strict=True):
        head, _, tail = want.partition(" ...")
        assert got.startswith(head) and got.endswith(tail), (want, got)

"""The attribution passes' numerics (issue 21): ``precision="auto"`` and ``channels_last=None``
resolve by the trainer's device (bf16 + channels-last rows on CUDA, float32 as before on the
CPU), explicit values are kept, bad ones refused, the resolved ones recorded; TF32 is left as
set and stated. The CUDA side of a fit is in tests/test_cuda.py."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import lightning as L
import pytest
import torch
from _tiny import callback, data, ensemble, read_csv, trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.callbacks._numerics import (
    check_numerics,
    numerics_line,
    resolve_numerics,
    tf32_flags,
)
from lightning_saliency.generalization import CSV_NAME, METHODS_NAME

# (precision, channels_last, device) -> (precision, channels_last), written out by hand
RULE = [
    ("auto", None, "cpu", ("32", False)),
    ("auto", None, "cuda", ("bf16", True)),
    ("auto", None, "cuda:1", ("bf16", True)),
    ("auto", None, "meta", ("32", False)),  # not CUDA: float32
    ("32", None, "cuda", ("32", False)),  # explicit float32 on CUDA: rows as given, as before
    ("32", None, "cpu", ("32", False)),
    ("bf16", None, "cpu", ("bf16", False)),  # explicit bf16 on the CPU: rows as given
    ("bf16", None, "cuda", ("bf16", True)),
    ("auto", False, "cuda", ("bf16", False)),  # an explicit layout is kept
    ("32", True, "cpu", ("32", True)),
    ("32", True, "cuda", ("32", True)),
    ("bf16", False, "cuda", ("bf16", False)),
]


@pytest.mark.parametrize(("precision", "layout", "device", "want"), RULE)
def test_the_rule(precision: str, layout: bool | None, device: str, want: tuple) -> None:
    assert resolve_numerics(precision, layout, device) == want
    assert resolve_numerics(precision, layout, torch.device(device)) == want


@pytest.mark.parametrize(
    ("precision", "layout", "match"),
    [
        ("16", None, r"precision must be 'auto', '32' or 'bf16'; got '16'"),
        (32, None, r"precision must be 'auto', '32' or 'bf16'; got 32"),
        ("bf16-mixed", None, r"precision must be 'auto', '32' or 'bf16'; got 'bf16-mixed'"),
        (None, None, r"precision must be 'auto', '32' or 'bf16'; got None"),
        ("auto", 1, r"channels_last must be True, False or None \(auto\); got 1"),
        ("32", "yes", r"channels_last must be True, False or None \(auto\); got 'yes'"),
    ],
)
def test_bad_values_are_refused_naming_them(precision: object, layout: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_numerics(precision, layout)
    with pytest.raises(ValueError, match=match):
        resolve_numerics(precision, layout, "cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):  # at construction, before any training
        InterpretationGeneralization(precision=precision, channels_last=layout)  # type: ignore[arg-type]


def test_on_device_resolves_those_two_and_keeps_the_rest() -> None:
    asked = InterpretationGeneralization(methods=["simple_grad"], num_train_probes=8).config
    assert (asked.precision, asked.channels_last) == ("auto", None)
    for device, want in (("cpu", ("32", False)), ("cuda", ("bf16", True))):
        run = asked.on_device(device)
        assert (run.precision, run.channels_last) == want
        assert run.record() == {**asked.record(), "precision": want[0], "channels_last": want[1]}
        for f in fields(asked):
            if f.name not in ("precision", "channels_last"):
                assert getattr(run, f.name) is getattr(asked, f.name), f.name
    assert (asked.precision, asked.channels_last) == ("auto", None)  # frozen: a new copy


def test_the_summary_line_states_the_numerics_and_tf32_as_set() -> None:
    assert numerics_line("32", False, "cpu") == (
        "attribution passes on cpu: precision 32, channels_last False"
    )
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:  # the flags are process-wide switches (settable without a GPU)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        assert tf32_flags() == {"matmul_allow_tf32": True, "cudnn_allow_tf32": False}
        assert numerics_line("bf16", True, torch.device("cuda", 0)) == (
            "attribution passes on cuda: precision bf16, channels_last True; TF32 left as set "
            "(matmul on, cuDNN off; the callback never changes it)"
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _fit(tmp_path: Path, name: str, **kw) -> tuple[InterpretationGeneralization, Path]:
    cb = callback(methods=["simple_grad", {"method": "smooth_grad", "sigma": 0.3, "samples": 4}],
                  **kw)  # fmt: skip
    logger = TensorBoardLogger(str(tmp_path), name=name, version=0)
    L.seed_everything(0, verbose=False)
    trainer(tmp_path, [cb], logger=logger, max_epochs=1).fit(ensemble(), data())
    return cb, Path(logger.log_dir)


def test_a_default_cpu_fit_is_the_float32_fit_it_was(tmp_path: Path, monkeypatch, caplog) -> None:
    """The default on the CPU resolves to what the old defaults were (``"32"``, rows as given):
    its CSV equals, byte for byte, that of the same fit with them explicit; the passes ran in
    float32 on unconverted rows; the record and the summary say so; TF32 flags untouched."""
    from lightning_saliency.attribution import _core

    seen: set[tuple[str, str, bool]] = set()
    real = _core._row_gradients

    def spy(model, rows, target, output, precision, channels_last, target_max=None):
        seen.add((rows.device.type, precision, channels_last))
        return real(model, rows, target, output, precision, channels_last, target_max)

    monkeypatch.setattr(_core, "_row_gradients", spy)
    flags = tf32_flags()
    with caplog.at_level("INFO"):
        cb, auto = _fit(tmp_path, "auto")
    assert seen == {("cpu", "32", False)}
    assert (cb.requested.precision, cb.requested.channels_last) == ("auto", None)
    assert (cb.config.precision, cb.config.channels_last) == ("32", False)
    settings = json.loads((auto / METHODS_NAME).read_text())["settings"]["fit"]
    assert (settings["precision"], settings["channels_last"]) == ("32", False)
    assert cb.state_dict()["settings"]["precision"] == "32"
    assert "attribution passes on cpu: precision 32, channels_last False" in caplog.text
    assert tf32_flags() == flags
    _, explicit = _fit(tmp_path, "explicit", precision="32", channels_last=False)
    assert (auto / CSV_NAME).read_bytes() == (explicit / CSV_NAME).read_bytes()
    assert len(read_csv(auto / CSV_NAME)) > 0

"""Nothing lost, nothing mixed, nothing silently wrong (issue 12): run folders, resume,
non-finite maps, unsafe checkpoints."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from _tiny import Plain, callback, data, ensemble, plain_loader, read_csv, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_saliency.generalization import CSV_NAME, METHODS_NAME, MetricKey
from lightning_saliency.report import load_runs, main


def _fit(tmp_path: Path, seed: int, version: int = 0, **kw) -> Path:
    logger = TensorBoardLogger(str(tmp_path), name="run", version=version)
    t = trainer(tmp_path, [callback(methods=["simple_grad"], **kw)], logger=logger, max_epochs=1)
    t.fit(ensemble(init_seed=seed), data())
    return Path(logger.log_dir)


def test_a_fresh_fit_refuses_a_folder_that_holds_another_run(tmp_path: Path) -> None:
    """The issue's reproduction: the same command twice with a fixed version (init seed 1,
    then 2) used to leave both runs mixed in one CSV; now the second refuses, before
    training, and the first run's record is untouched."""
    run = _fit(tmp_path, seed=1)
    before = (run / CSV_NAME).read_text()
    with pytest.raises(ValueError, match="already holds another run's fit-stage record"):
        _fit(tmp_path, seed=2)
    assert (run / CSV_NAME).read_text() == before
    (loaded,) = load_runs(run)
    assert loaded.epochs == (0,)
    # a new version is a separate record
    other = _fit(tmp_path, seed=2, version=1)
    assert other != run and len(read_csv(other / CSV_NAME)) == len(read_csv(run / CSV_NAME))


def test_without_a_logger_a_second_fit_into_the_root_refuses(tmp_path: Path) -> None:
    for attempt in range(2):
        t = trainer(tmp_path, [callback(methods=["simple_grad"])], logger=False, max_epochs=1)
        if attempt:
            with pytest.raises(ValueError, match="already holds another run"):
                t.fit(ensemble(), data())
        else:
            t.fit(ensemble(), data())
    assert {int(r["epoch"]) for r in read_csv(tmp_path / CSV_NAME)} == {0}


def test_two_validate_runs_into_one_folder_refuse(tmp_path: Path) -> None:
    model = ensemble()
    logger = TensorBoardLogger(str(tmp_path), name="eval", version=0)
    t = trainer(tmp_path, [callback(methods=["simple_grad"])], logger=logger)
    t.validate(model, data(), verbose=False)
    logger2 = TensorBoardLogger(str(tmp_path), name="eval", version=0)
    t2 = trainer(tmp_path, [callback(methods=["grad_x_input"])], logger=logger2)
    with pytest.raises(ValueError, match="validate-stage record"):
        t2.validate(model, data(), verbose=False)


@pytest.mark.slow
def test_resume_with_changed_settings_is_refused_by_name(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=-1, every_n_epochs=1)
    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    t = trainer(tmp_path, [callback(methods=["simple_grad"], num_test_probes=8), ckpt],
                logger=logger, max_epochs=1, enable_checkpointing=True)  # fmt: skip
    t.fit(ensemble(), data())
    path = next((tmp_path / "ck").glob("*.ckpt"))
    logger2 = TensorBoardLogger(str(tmp_path), name="run", version=0)
    t2 = trainer(tmp_path, [callback(methods=["simple_grad"], num_test_probes=6)],
                 logger=logger2, max_epochs=2)  # fmt: skip
    with pytest.raises(ValueError, match=r"num_test_probes: 8 -> 6"):
        t2.fit(ensemble(), data(), ckpt_path=str(path))
    # the same settings resume fine and continue the run's own record
    logger3 = TensorBoardLogger(str(tmp_path), name="run", version=0)
    t3 = trainer(tmp_path, [callback(methods=["simple_grad"], num_test_probes=8)],
                 logger=logger3, max_epochs=2)  # fmt: skip
    t3.fit(ensemble(), data(), ckpt_path=str(path))
    epochs = {int(r["epoch"]) for r in read_csv(Path(logger3.log_dir) / CSV_NAME)}
    assert epochs == {0, 1}


def test_a_bf16_run_resumed_where_auto_means_float32_is_refused(tmp_path: Path) -> None:
    """Issue 21: ``precision="auto"`` is bf16 on CUDA, float32 on the CPU. A run that began on
    CUDA and resumes on the CPU must not go on in float32 into the same CSV: simulated here by
    the state a CUDA run records (its resolved precision, bf16) in a CPU fit's checkpoint."""
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=-1, every_n_epochs=1)
    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    t = trainer(tmp_path, [callback(methods=["simple_grad"]), ckpt], logger=logger,
                max_epochs=1, enable_checkpointing=True)  # fmt: skip
    t.fit(ensemble(), data())
    path = next((tmp_path / "ck").glob("*.ckpt"))
    saved = torch.load(path, weights_only=False)
    (key,) = [k for k in saved["callbacks"] if k.startswith("InterpretationGeneralization{")]
    state = saved["callbacks"][key]
    assert (state["settings"]["precision"], state["settings"]["channels_last"]) == ("32", False)
    state["settings"] = {**state["settings"], "precision": "bf16", "channels_last": True}
    torch.save(saved, path)
    csv_before = (Path(logger.log_dir) / CSV_NAME).read_bytes()
    logger2 = TensorBoardLogger(str(tmp_path), name="run", version=0)
    t2 = trainer(tmp_path, [callback(methods=["simple_grad"])], logger=logger2, max_epochs=2)
    with pytest.raises(ValueError, match=r"other settings \(precision: 'bf16' -> '32'\)"):
        t2.fit(ensemble(), data(), ckpt_path=str(path))
    assert (Path(logger.log_dir) / CSV_NAME).read_bytes() == csv_before  # nothing mixed in
    # resumed with the checkpoint's precision named, it goes on (channels_last may differ)
    logger3 = TensorBoardLogger(str(tmp_path), name="run", version=0)
    t3 = trainer(tmp_path, [callback(methods=["simple_grad"], precision="bf16")],
                 logger=logger3, max_epochs=2)  # fmt: skip
    t3.fit(ensemble(), data(), ckpt_path=str(path))
    assert {int(r["epoch"]) for r in read_csv(Path(logger3.log_dir) / CSV_NAME)} == {0, 1}


def test_a_nan_model_gives_nan_numbers_with_counts_not_plausible_values(tmp_path: Path) -> None:
    model = ensemble()
    with torch.no_grad():
        for p in model.models[1].parameters():
            p.fill_(float("nan"))
    cb = callback(methods=["simple_grad", {"method": "simple_grad", "superpixel": "slic"}])
    t = trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=0)
    with pytest.warns(UserWarning, match=r"non-finite maps on simple_grad: 18 of 18 probes"):
        t.validate(model, data(), verbose=False)
    (run,) = load_runs(Path(t.logger.log_dir), stage="validate")
    for metric in ("spearman", "topk", "ssim", "spearman_above_chance"):
        e = run.get("simple_grad", "pairs", "test", metric)
        assert math.isnan(e.value) and e.nonfinite == 6, metric  # every test probe
    gap = run.get("simple_grad", "mean", "gap", "gap")
    assert math.isnan(gap.value) and gap.nonfinite > 0
    assert run.get("simple_grad", "models", "all", "nonfinite_maps").value == 18
    # model 0 alone is finite: its own quality numbers stay finite, the mean does not
    assert math.isnan(run.get("simple_grad", "mean", "test", "sparseness").value)
    pa = run.get("-", "pairs", "test", "prediction_agreement")
    assert math.isnan(pa.value)  # NaN logits are no prediction, not an agreement
    main([str(t.logger.log_dir), "--stage", "validate", "--out", str(tmp_path / "rep")])


def test_nan_probes_are_refused_at_setup(tmp_path: Path) -> None:
    _, (x, y) = plain_loader()
    x = x.clone()
    x[3, 0, 2, 2] = float("nan")
    cb = callback(methods=["simple_grad"], train_probes=(x[:8], y[:8]), test_probes=(x[8:16], y[8:16]))
    t = trainer(tmp_path, [cb], max_epochs=1, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"probe train_0\[\d\] \(dataset index 3\) has NaN or infinite pixels"):
        t.fit(Plain(), plain_loader()[0])


def test_constant_probes_cannot_give_an_input_range(tmp_path: Path) -> None:
    x, y = torch.zeros(16, 1, 16, 16), torch.zeros(16, dtype=torch.long)
    cb = callback(methods=[{"method": "smooth_grad", "noise_level": 0.1, "samples": 2}],
                  train_probes=(x[:8], y[:8]), test_probes=(x[8:], y[8:]))  # fmt: skip
    t = trainer(tmp_path, [cb], max_epochs=1, limit_val_batches=0)
    with pytest.raises(ValueError, match="input range cannot be derived"):
        t.fit(Plain(), plain_loader()[0])


@pytest.mark.parametrize(("chans", "size"), [(3, 16), (1, 1)])
def test_a_model_that_cannot_take_the_probes_fails_before_training(
    tmp_path: Path, chans: int, size: int
) -> None:
    """RGB probes for a 1-channel model, or an image too small for the network."""
    _, (x, y) = plain_loader(chans=chans, size=size)
    cb = callback(methods=["simple_grad"], train_probes=(x[:8], y[:8]), test_probes=(x[8:16], y[8:16]))
    t = trainer(tmp_path, [cb], max_epochs=1, limit_val_batches=0)
    model = Plain() if chans == 3 else torch.nn.Identity()
    if chans == 1:
        from lightning_saliency.models import Classifier

        model = Classifier(backbone="small_cnn", num_classes=10, in_chans=1, image_size=16)
    with pytest.raises(ValueError, match=r"model 0 cannot take the probes, shaped"):
        t.fit(model, plain_loader(chans=chans, size=max(size, 8))[0])


class _Payload:
    """An object whose unpickling would run code (here: create a file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("kind", ["empty", "corrupt", "crafted"])
def test_unsafe_or_broken_reference_checkpoints_are_refused(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "ref.ckpt"
    marker = tmp_path / "pwned"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "corrupt":
        bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    else:  # a checkpoint whose unpickling runs code: weights_only refuses it
        torch.save({"state_dict": Plain().state_dict(), "evil": _Payload(marker)}, bad)
    _, (x, y) = plain_loader()
    cb = callback(methods=["simple_grad"], reference=str(bad), train_probes=(x[:8], y[:8]),
                  test_probes=(x[8:16], y[8:16]))  # fmt: skip
    t = trainer(tmp_path, [cb], max_epochs=1, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"could not be loaded as a Plain \(weights only\)"):
        t.fit(Plain(), plain_loader()[0])
    assert not marker.exists()


def test_methods_json_keeps_the_methods_of_every_stage(tmp_path: Path) -> None:
    import json

    model = ensemble()
    logger = TensorBoardLogger(str(tmp_path), name="r", version=0)
    trainer(tmp_path, [callback(methods=["simple_grad"])], logger=logger, max_epochs=1).fit(model, data())
    logger2 = TensorBoardLogger(str(tmp_path), name="r", version=0)
    t2 = trainer(tmp_path, [callback(methods=["grad_x_input"])], logger=logger2)
    t2.validate(model, data(), verbose=False)
    saved = json.loads((Path(logger.log_dir) / METHODS_NAME).read_text())
    assert [m["label"] for m in saved["methods"]] == ["grad_x_input", "simple_grad"]
    assert set(saved["settings"]) == {"fit", "validate"}
    (fit,) = load_runs(Path(logger.log_dir))
    (val,) = load_runs(Path(logger.log_dir), stage="validate")
    assert fit.labels == ["simple_grad"] and val.labels == ["grad_x_input"]


def test_ddp_sync_advice_is_silenced_for_the_callbacks_tags_only() -> None:
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    callback(methods=["simple_grad"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        callback(methods=["simple_grad"])  # re-installs its filter after simplefilter
        for tag in ("interp/simple_grad/gap", "validate/interp/x/test/ssim", "val/loss"):
            warnings.warn(
                f"It is recommended to use `self.log({tag!r}, ..., sync_dist=True)` when logging",
                PossibleUserWarning, stacklevel=1,
            )  # fmt: skip
    assert [str(w.message).split("'")[1] for w in caught] == ["val/loss"]


def test_epoch_marker_closes_every_epoch(tmp_path: Path) -> None:
    t = trainer(tmp_path, [callback(methods=["simple_grad"])], max_epochs=2)
    t.fit(ensemble(), data())
    rows = read_csv(Path(t.logger.log_dir) / CSV_NAME)
    for epoch in (0, 1):
        mine = [r for r in rows if int(r["epoch"]) == epoch]
        assert mine[-1]["metric"] == "rows" and int(float(mine[-1]["value"])) == len(mine)
    assert MetricKey.epoch_rows().tag not in t.callback_metrics

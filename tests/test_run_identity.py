"""A run has one identity and nothing writes into a folder that is not its own (issue 19,
cases 1-4): the refused re-run leaves the old folder byte-identical, a resume with changed data
settings or into another run's folder is refused by name, racing fits cannot both claim one
folder, and ``seed_everything`` is the one seed knob."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from _tiny import callback, data, ensemble, read_csv, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_saliency._identity import (
    IDENTITY_NAME,
    claim_folder,
    differences,
    fit_folder_problem,
    make_identity,
)
from lightning_saliency.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
ROOT = Path(__file__).resolve().parents[1]
_TINY = [
    "--config", str(ROOT / "configs" / "default.yaml"),
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.image_size", "16",
    "--trainer.callbacks.init_args.methods", "[simple_grad]",
    "--trainer.callbacks.init_args.num_train_probes", "4",
    "--trainer.callbacks.init_args.num_test_probes", "4",
]  # fmt: skip


def _fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str, version: int = 0) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lightning-saliency"])
    main(["fit", *_TINY, "--trainer.logger.init_args.version", str(version), *extra])
    return tmp_path / "runs" / "default" / f"version_{version}"


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_refused_rerun_leaves_the_old_folder_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 1: run B into run A's fixed version used to rewrite A's config.yaml and
    splits.json before being refused; now nothing in A's folder changes, not even a file is
    added, and the refusal names what differs."""
    run = _fit(tmp_path, monkeypatch)
    before = _hashes(run)
    assert {"config.yaml", "splits.json", IDENTITY_NAME} <= set(before)
    with pytest.raises(ValueError, match=r"split_factor: 2 -> 4; model.init_args.init_seed: 0 -> 2"):
        _fit(tmp_path, monkeypatch, "--model.init_seed", "2", "--data.init_args.split_factor", "4")
    assert _hashes(run) == before


def test_resumes_with_a_changed_data_seed_or_into_a_foreign_folder_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cases 2 and 3, through the CLI; a resume into the run's own folder still works."""
    run_a = _fit(tmp_path, monkeypatch)
    (ckpt,) = (run_a / "checkpoints").glob("*.ckpt")
    before = _hashes(run_a)
    more = ("--trainer.max_epochs", "2", "--ckpt_path", str(ckpt))
    with pytest.raises(ValueError, match=r"data\.init_args\.data_seed: 0 -> 3"):
        _fit(tmp_path, monkeypatch, *more, "--data.init_args.data_seed", "3")
    assert _hashes(run_a) == before
    run_b = _fit(tmp_path, monkeypatch, "--seed_everything", "1", version=1)
    (ckpt_b,) = (run_b / "checkpoints").glob("*.ckpt")
    with pytest.raises(ValueError, match="another run's folder"):
        _fit(tmp_path, monkeypatch, "--seed_everything", "1", "--trainer.max_epochs", "2",
             "--ckpt_path", str(ckpt_b))  # fmt: skip
    assert _hashes(run_a) == before
    identity = (run_a / IDENTITY_NAME).read_bytes()
    _fit(tmp_path, monkeypatch, *more)  # its own folder: continues
    assert {r["epoch"] for r in read_csv(run_a / "interpretation_metrics.csv")} == {"0", "1"}
    assert (run_a / IDENTITY_NAME).read_bytes() == identity  # recorded once


def test_seed_everything_is_the_one_seed_knob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 4: ``--seed_everything 1`` used to give a CSV byte-identical to seed 0 (the config
    pinned init_seed and split_seed); now it drives both, and the run records the effective
    seeds. An explicit seed still wins; the callback's probe seed stays fixed."""
    run0 = _fit(tmp_path, monkeypatch)
    run1 = _fit(tmp_path, monkeypatch, "--seed_everything", "1", version=1)
    run2 = _fit(tmp_path, monkeypatch, "--seed_everything", "1", "--model.init_seed", "5",
                version=2)  # fmt: skip
    csv0, csv1 = (r / "interpretation_metrics.csv" for r in (run0, run1))
    assert csv0.read_bytes() != csv1.read_bytes()
    ids = [json.loads((r / IDENTITY_NAME).read_text()) for r in (run0, run1, run2)]
    assert ids[1]["seeds"] == {"seed_everything": 1, "model.init_args.init_seed": 1,
                               "data.init_args.split_seed": 1, "data.init_args.data_seed": 0}
    assert ids[2]["seeds"]["model.init_args.init_seed"] == 5
    assert ids[0]["setting"] == ids[1]["setting"] != ids[0]["fingerprint"]
    config1 = yaml.safe_load((run1 / "config.yaml").read_text())
    assert config1["model"]["init_args"]["init_seed"] == 1
    assert config1["data"]["init_args"]["split_seed"] == 1
    cb = config1["trainer"]["callbacks"][0]["init_args"]
    assert cb["seed"] == 0  # the same probes for every seed


def test_a_plain_trainer_resume_with_another_data_seed_is_refused(tmp_path: Path) -> None:
    """Case 2 without the CLI: the data module's state (checkpoint, splits.json) now holds
    every data setting; a resume with another ``data_seed`` used to mix two probe sets."""
    ck = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=-1)
    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    t = trainer(tmp_path, [callback(methods=["simple_grad"]), ck], logger=logger, max_epochs=1,
                enable_checkpointing=True)  # fmt: skip
    t.fit(ensemble(), data())
    path = next((tmp_path / "ck").glob("*.ckpt"))
    run = Path(logger.log_dir)
    before = _hashes(run)
    for version in (0, 1):  # its own folder (splits.json differs) and a new one (checkpoint)
        logger2 = TensorBoardLogger(str(tmp_path), name="run", version=version)
        t2 = trainer(tmp_path, [callback(methods=["simple_grad"])], logger=logger2, max_epochs=2)
        with pytest.raises(ValueError, match=r"settings\.data_seed: saved 0, current 3"):
            t2.fit(ensemble(), data(data_seed=3), ckpt_path=str(path))
    assert {k: v for k, v in _hashes(run).items() if "events" not in k} == {
        k: v for k, v in before.items() if "events" not in k
    }


def test_two_fits_racing_into_one_folder_cannot_both_claim_it(tmp_path: Path) -> None:
    """Case 10 (race): the identity record is created exclusively; the second claim fails."""
    a = make_identity({"seed_everything": 0}, run_id="a")
    b = make_identity({"seed_everything": 0}, run_id="b")
    assert claim_folder(tmp_path, a) is True
    with pytest.raises(ValueError, match="claimed by another run"):
        claim_folder(tmp_path, b)
    assert claim_folder(tmp_path, a) is False  # the same run (a resume): accepted, not rewritten
    assert json.loads((tmp_path / IDENTITY_NAME).read_text())["run_id"] == "a"


def test_identity_is_the_config_without_its_location() -> None:
    base = {"seed_everything": 0, "model": {"init_args": {"lr": 0.1, "init_seed": 0}},
            "trainer": {"max_epochs": 4, "logger": {"init_args": {"version": 0}},
                        "default_root_dir": "x", "enable_progress_bar": True},
            "data": {"init_args": {"num_workers": 0, "split_seed": 0}}, "ckpt_path": None}  # fmt: skip
    moved = json.loads(json.dumps(base))
    moved["trainer"].update(logger={"init_args": {"version": 7}}, default_root_dir="y",
                            enable_progress_bar=False)  # fmt: skip
    moved["data"]["init_args"]["num_workers"] = 4
    moved["ckpt_path"] = "a.ckpt"
    assert make_identity(base)["fingerprint"] == make_identity(moved)["fingerprint"]
    other = json.loads(json.dumps(base))
    other["model"]["init_args"]["lr"] = 0.2
    assert make_identity(other)["setting"] != make_identity(base)["setting"]
    assert differences(make_identity(base)["config"], make_identity(other)["config"]) == [
        "model.init_args.lr: 0.1 -> 0.2"
    ]


def test_fit_folder_problem_names_the_differing_keys(tmp_path: Path) -> None:
    saved = make_identity({"data": {"init_args": {"data_seed": 0}}}, run_id="r")
    now = make_identity({"data": {"init_args": {"data_seed": 3}}}, run_id="s")
    claim_folder(tmp_path, saved)
    problem = fit_folder_problem(tmp_path, {**now, "run_id": "r"}, saved, resume=True)
    assert problem is not None and "data.init_args.data_seed: 0 -> 3" in problem
    assert "another run's folder" in str(fit_folder_problem(tmp_path, now, now, resume=True))
    assert "already holds another run" in str(fit_folder_problem(tmp_path, now, None, False))
    assert fit_folder_problem(tmp_path / "new", now, None, resume=False) is None

"""benchmarks/run_cifar_studies.sh with a stand-in for the CLI: the fits it runs for the
protocol (docs/results_protocol.md), the seeds it sets, the runs it skips, its bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_cifar_studies.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or not Path("/usr/bin/time").exists()
                                or shutil.which("bc") is None or shutil.which("flock") is None,
                                reason="needs bash, /usr/bin/time, bc and flock")  # fmt: skip

FAKE_CLI = """\
import json, os, sys
with open(os.environ["CALLS"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
if "THREADS_OUT" in os.environ:
    with open(os.environ["THREADS_OUT"], "a") as fh:
        fh.write(os.environ.get("OMP_NUM_THREADS", "unset") + "\\n")
"""


def _drive(tmp_path: Path, *steps: str, **env: str) -> tuple[int, str, list[list[str]]]:
    (tmp_path / "benchmarks").mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / SCRIPT.name)
    cli = tmp_path / "cli"
    cli.write_text(f"#!{sys.executable}\n{FAKE_CLI}")
    cli.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    proc = subprocess.run(
        ["bash", str(tmp_path / "benchmarks" / SCRIPT.name), *steps],
        env={**os.environ, "CLI": str(cli), "CALLS": str(calls), **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = calls.read_text().splitlines() if calls.exists() else []
    return proc.returncode, proc.stderr, [json.loads(line) for line in lines]


def _opt(argv: list[str], name: str) -> str:
    """The value of the last ``name`` option (later options win in LightningCLI)."""
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]


def test_every_setting_gets_five_seeds_that_set_split_init_and_order(tmp_path: Path) -> None:
    rc, err, calls = _drive(tmp_path, "sf2", "sf16", "sn1")
    assert rc == 0, err
    assert len(calls) == 15  # protocol version 2: seeds 0-4
    for argv, (name, seed) in zip(calls, [(n, s) for n in ("sf2", "sf16", "sn1") for s in "01234"],
                                  strict=True):  # fmt: skip
        assert argv[0] == "fit"
        configs = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
        assert configs == ["configs/experiments/cpu/fast_cifar10.yaml",
                           "configs/experiments/cpu/cifar_studies.yaml"]  # fmt: skip
        for opt in ("--seed_everything", "--model.init_seed", "--data.init_args.split_seed"):
            assert _opt(argv, opt) == seed
        assert _opt(argv, "--trainer.logger.init_args.name") == name
        assert _opt(argv, "--trainer.logger.init_args.version") == f"seed{seed}"
        assert _opt(argv, "--trainer.logger.init_args.save_dir") == "runs/cifar-v2"
        assert _opt(argv, "--trainer.max_epochs") == "20"  # the monitor's every_n_epochs
        factor = "16" if name == "sf16" else "2"
        assert _opt(argv, "--data.init_args.split_factor") == factor
        if name == "sn1":
            assert _opt(argv, "--model.spectral_norm_factor") == "1"
        else:
            assert "--model.spectral_norm_factor" not in argv
    timings = (tmp_path / "runs" / "cifar-v2" / "timings.txt").read_text().splitlines()
    assert len(timings) == 15 and timings[0].startswith("sf2 seed0 wall_s=")


def test_a_finished_run_is_skipped_and_seeds_can_be_chosen(tmp_path: Path) -> None:
    done = tmp_path / "runs" / "cifar-v2" / "sf2" / "seed1"
    done.mkdir(parents=True)
    (done / ".finished").write_text("")
    rc, err, calls = _drive(tmp_path, "sf2", SEEDS="0 1")
    assert rc == 0, err
    assert [_opt(a, "--seed_everything") for a in calls] == ["0"]
    assert (tmp_path / "runs" / "cifar-v2" / "sf2" / "seed0" / ".finished").exists()


def test_a_started_run_is_not_finished_and_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """A killed fit leaves its CSV (created at fit start) and checkpoints: it is run again
    from the newest checkpoint, not skipped."""
    run = tmp_path / "runs" / "cifar-v2" / "sf2" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "interpretation_metrics.csv").write_text("epoch\n")
    old, new = run / "checkpoints" / "epoch=2-step=9.ckpt", run / "checkpoints" / "epoch=3-step=12.ckpt"
    old.write_text("")
    new.write_text("")
    os.utime(old, (1, 1))
    rc, err, calls = _drive(tmp_path, "sf2", SEEDS="0 1")
    assert rc == 0, err
    assert [_opt(a, "--seed_everything") for a in calls] == ["0", "1"]
    assert _opt(calls[0], "--ckpt_path") == str(new).replace(str(tmp_path) + "/", "")
    assert "--ckpt_path" not in calls[1]
    timings = (tmp_path / "runs" / "cifar-v2" / "timings.txt").read_text().splitlines()
    assert timings[0].startswith("sf2 seed0 (resumed) wall_s=")


def test_report_and_unknown_steps(tmp_path: Path) -> None:
    rc, err, calls = _drive(tmp_path, "report")
    assert rc == 0, err
    assert calls == []  # nothing was run yet
    root = tmp_path / "runs" / "cifar-v2"
    for run in ("sf2/seed0", "sf2/seed1", "sf16/seed0", "sn4/seed3", "sf4/seed0"):
        (root / run).mkdir(parents=True)
        if run != "sf4/seed0":  # sf4/seed0 is still running (or was killed part-way)
            (root / run / ".finished").touch()
    (root / "sf16" / "seed1").mkdir()  # started, not finished
    rc, err, calls = _drive(tmp_path, "report")
    assert rc == 0, err
    bar = ["--min-accuracy", "0.85@sf2"]  # the protocol's 85% bar for the plain recipe at sf 2
    sf2 = ["runs/cifar-v2/sf2/seed0", "runs/cifar-v2/sf2/seed1"]
    assert calls == [
        ["report", *sf2, "runs/cifar-v2/sf16/seed0", "--out", "reports/cifar-v2/split_factor", *bar],
        ["report", *sf2, "--out", "reports/cifar-v2/methods", *bar],
        ["report", "runs/cifar-v2/sn4/seed3", "--out", "reports/cifar-v2/spectral_norm"],
    ]  # a fit in progress would make the report refuse the whole setting: it is left out, named
    assert "runs/cifar-v2/sf4/seed0 left out (not finished)" in err
    assert "runs/cifar-v2/sf16/seed1 left out (not finished)" in err
    rc, err, _ = _drive(tmp_path, "sf3")
    assert rc == 2 and "unknown step sf3" in err


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path: Path) -> None:
    """Its folder (a CSV claimed at fit start, no checkpoint) is moved aside, not reused."""
    run = tmp_path / "runs" / "cifar-v2" / "sf2" / "seed0"
    run.mkdir(parents=True)
    (run / "interpretation_metrics.csv").write_text("epoch\n")
    rc, err, calls = _drive(tmp_path, "sf2", SEEDS="0")
    assert rc == 0, err
    assert len(calls) == 1 and "--ckpt_path" not in calls[0]
    aside = list((tmp_path / "runs" / "cifar-v2" / ".killed").glob("sf2-seed0-*"))
    assert len(aside) == 1 and (aside[0] / "interpretation_metrics.csv").exists()
    assert [p.name for p in (tmp_path / "runs" / "cifar-v2" / "sf2").iterdir()] == ["seed0"]


def test_a_fit_locked_by_another_driver_is_skipped_not_moved(tmp_path: Path) -> None:
    """Two drivers share the queue: a fit another driver runs (its lock held, its folder
    without a checkpoint yet) is neither run twice nor moved aside as killed."""
    import fcntl

    run = tmp_path / "runs" / "cifar-v2" / "sf2" / "seed0"
    run.mkdir(parents=True)
    (run / "interpretation_metrics.csv").write_text("epoch\n")
    locks = tmp_path / "runs" / "cifar-v2" / ".locks"
    locks.mkdir()
    with open(locks / "sf2-seed0", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, err, calls = _drive(tmp_path, "sf2", SEEDS="0 1")
    assert rc == 0, err
    assert [_opt(a, "--seed_everything") for a in calls] == ["1"]
    assert (run / "interpretation_metrics.csv").exists() and not (run / ".finished").exists()
    assert not (tmp_path / "runs" / "cifar-v2" / ".killed").exists()
    (tmp_path / "calls.jsonl").unlink()
    rc, err, calls = _drive(tmp_path, "sf2", SEEDS="0 1")  # the lock released: seed 0 runs
    assert rc == 0, err
    assert [_opt(a, "--seed_everything") for a in calls] == ["0"]


def test_a_missing_cli_is_refused_before_any_fit(tmp_path: Path) -> None:
    """The driver used to start the queue and stop at the first fit with /usr/bin/time's
    'cannot run'; now it names the cause and touches nothing."""
    rc, err, calls = _drive(tmp_path, "sf2", CLI=str(tmp_path / "no-such-cli"))
    assert rc == 2 and calls == []
    assert "not found; activate the environment" in err
    assert not (tmp_path / "runs").exists()


def test_every_fit_runs_on_one_thread_whatever_the_environment_says(tmp_path: Path) -> None:
    """Training's sums depend on the thread count (a control re-run with 2 threads moved
    per-seed numbers by up to 0.003): the driver pins one thread and says so."""
    threads = tmp_path / "threads.txt"
    rc, err, calls = _drive(tmp_path, "sf2", SEEDS="0 1", OMP_NUM_THREADS="2", THREADS_OUT=str(threads))
    assert rc == 0, err
    assert len(calls) == 2 and threads.read_text().split() == ["1", "1"]
    assert "OMP_NUM_THREADS=2 ignored: the protocol's fits run on one thread" in err


def test_the_controls_driver_runs_every_arm_on_one_thread(tmp_path: Path) -> None:
    """benchmarks/run_controls.sh: the four arms of a seed, one thread each, in its ROOT."""
    script = REPO / "benchmarks" / "run_controls.sh"
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(script, tmp_path / "benchmarks" / script.name)
    cli = tmp_path / "cli"
    cli.write_text(f"#!{sys.executable}\n{FAKE_CLI}")
    cli.chmod(0o755)
    calls, threads = tmp_path / "calls.jsonl", tmp_path / "threads.txt"
    proc = subprocess.run(
        ["bash", str(tmp_path / "benchmarks" / script.name)],
        env={**os.environ, "CLI": str(cli), "CALLS": str(calls), "THREADS_OUT": str(threads),
             "OMP_NUM_THREADS": "4", "DATASETS": "digits", "SEEDS": "3", "ROOT": "r"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [a[a.index("--trainer.logger.init_args.version") + 1] for a in argvs] == [
        "clean-seed3", "shortcut-seed3", "memorize-seed3", "shift-seed3"]
    assert threads.read_text().split() == ["1"] * 4
    assert "OMP_NUM_THREADS=4 ignored" in proc.stderr

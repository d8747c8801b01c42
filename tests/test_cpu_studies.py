"""benchmarks/run_cpu_studies.sh with a stand-in for the CLI: the command lines it builds for
the ResNet-18 studies (equal optimizer steps, the post-hoc methods run) and its bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_saliency.attribution import resolve_method

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_cpu_studies.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

FAKE_CLI = """\
import json, os, sys
with open(os.environ["CALLS"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _drive(tmp_path: Path, *steps: str, **env: str) -> tuple[int, str, list[list[str]]]:
    """Run a copy of the driver in ``tmp_path`` (its runs/ go there); the CLI only records."""
    (tmp_path / "benchmarks").mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / SCRIPT.name)
    cli = tmp_path / "cli"
    cli.write_text(f"#!{sys.executable}\n{FAKE_CLI}")
    cli.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    proc = subprocess.run(
        ["bash", str(tmp_path / "benchmarks" / SCRIPT.name), *steps],
        env={**os.environ, "CLI": str(cli), "CALLS": str(calls), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    return proc.returncode, proc.stderr, [json.loads(line) for line in lines]


def _checkpoint(tmp_path: Path, run: str, name: str) -> Path:
    """An empty stand-in checkpoint ``runs/cpu/<run>/checkpoints/<name>`` (the driver only
    lists it)."""
    ckpts = tmp_path / "runs" / "cpu" / run / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    (ckpts / name).touch()
    return ckpts / name


def _opt(argv: list[str], name: str) -> str:
    """The value of the last ``name`` option (later options win in LightningCLI)."""
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]


def test_resnet18_split_factor_gives_every_split_the_same_steps(tmp_path: Path) -> None:
    rc, err, calls = _drive(tmp_path, "resnet18_split_factor")
    assert rc == 0, err
    assert [c[0] for c in calls] == ["fit"] * 4
    for call, sf in zip(calls, (2, 4, 8, 16), strict=True):
        assert _opt(call, "--data.init_args.split_factor") == str(sf)
        epochs = int(_opt(call, "--trainer.max_epochs"))
        # 50,000 / sf / 128 batches per epoch per model: 1.5 x sf epochs is ~586 steps
        assert epochs * (50_000 // sf) // 128 in range(580, 590)
        assert _opt(call, "--trainer.callbacks.init_args.every_n_epochs") == str(epochs)
        assert _opt(call, "--trainer.check_val_every_n_epoch") == str(epochs)
        assert _opt(call, "--trainer.precision") == "bf16-mixed"
        assert _opt(call, "--config") == "configs/experiments/split_factor.yaml"
        assert (REPO / _opt(call, "--config")).is_file()
    timings = (tmp_path / "runs" / "cpu" / "timings.txt").read_text().splitlines()
    assert [t.split()[0] for t in timings] == [
        f"resnet18_split_factor/sf{s}" for s in (2, 4, 8, 16)
    ]
    rc, err, calls = _drive(tmp_path / "sub", "resnet18_split_factor", SFS="8")
    assert rc == 0 and [_opt(c, "--data.init_args.split_factor") for c in calls] == ["8"]


def test_resnet18_methods_validates_the_sf2_checkpoint_with_valid_specs(tmp_path: Path) -> None:
    rc, err, calls = _drive(tmp_path, "resnet18_methods")
    assert rc != 0 and "resnet18_split_factor/sf2/checkpoints" in err  # no checkpoint yet
    assert calls == []
    _checkpoint(tmp_path, "resnet18_split_factor/sf2", "epoch=2-step=588.ckpt")
    rc, err, calls = _drive(tmp_path, "resnet18_methods")
    assert rc == 0, err
    ((cmd, *argv),) = calls
    assert cmd == "validate"
    assert _opt(argv, "--ckpt_path").endswith("sf2/checkpoints/epoch=2-step=588.ckpt")
    assert _opt(argv, "--trainer.precision") == "32-true"  # the maps in fp32
    timings = (tmp_path / "runs" / "cpu" / "timings.txt").read_text().split()
    assert timings[0] == "resnet18_methods/sf2" and timings[1].endswith("s")
    specs = [
        resolve_method(m)
        for m in yaml.safe_load(_opt(argv, "--trainer.callbacks.init_args.methods"))
    ]
    labels = [s.label for s in specs]
    assert len(labels) == len(set(labels)) == 28
    # study (b): a sigma sweep at 1 and 20 draws; (c): every segmenter, both methods;
    # (e): AdaptGrad beside SmoothGrad on grad and grad x input
    sigmas = {(s.params["sigma"], s.params["samples"]) for s in specs if "sigma" in s.params}
    assert sigmas == {(v, n) for v in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0) for n in (1, 20)}
    for alg in ("slic", "quickshift", "felzenszwalb", "watershed"):
        assert {"simple_grad_sp-" + alg, "smooth_grad_nl0.2_sp-" + alg} <= set(labels)
    assert {"adapt_grad_c0.95", "adapt_grad_c0.95_gxi", "smooth_grad_nl0.2_gxi"} <= set(labels)


def test_superpixel_mass_pairs_signed_and_magnitude_grouping(tmp_path: Path) -> None:
    rc, err, calls = _drive(tmp_path, "superpixel_mass")
    assert rc != 0 and "methods/sf2/checkpoints" in err and calls == []
    for run in ("methods", "resnet18_split_factor"):
        _checkpoint(tmp_path, f"{run}/sf2", "last.ckpt")
    rc, err, calls = _drive(tmp_path, "superpixel_mass")
    assert rc == 0, err
    small, r18 = calls
    for (cmd, *argv), run, version in zip(
        calls, ("methods", "resnet18_split_factor"), ("small_cnn", "resnet18"), strict=True
    ):
        assert cmd == "validate"
        assert _opt(argv, "--ckpt_path") == f"runs/cpu/{run}/sf2/checkpoints/last.ckpt"
        assert _opt(argv, "--trainer.logger.init_args.version") == version
        specs = [
            resolve_method(m)
            for m in yaml.safe_load(_opt(argv, "--trainer.callbacks.init_args.methods"))
        ]
        labels = {s.label for s in specs}
        assert len(specs) == len(labels) == 18
        for alg in ("slic", "quickshift", "felzenszwalb", "watershed"):
            for base in ("simple_grad", "smooth_grad_nl0.2"):
                assert {f"{base}_sp-{alg}", f"{base}_sp-{alg}-abs_sum"} <= labels
    assert _opt(r18[1:], "--trainer.precision") == "32-true"
    assert _opt(small[1:], "--config") == "configs/experiments/cpu/methods.yaml"


@pytest.mark.parametrize(
    ("step", "runs", "env"),
    [
        (
            "resnet18_split_factor_chance",
            ["resnet18_split_factor/sf2", "resnet18_split_factor/sf16"],
            {"SFS": "2 16"},
        ),
        (
            "split_factor_steps_chance",
            ["split_factor_steps/sf2", "split_factor_steps/sf16"],
            {"SFS": "2 16"},
        ),
        ("methods_chance", ["methods/sf2"], {}),
        (
            "spectral_norm_chance",
            [
                "split_factor/sf2",
                "spectral_norm/c1",
                "spectral_norm_nobn/cnone",
                "resnet18_spectral_norm/c4",
            ],
            {},
        ),
    ],
)
def test_chance_steps_revalidate_each_run_from_its_saved_config(
    tmp_path: Path, step: str, runs: list[str], env: dict[str, str]
) -> None:
    cpu = tmp_path / "runs" / "cpu"
    for run in runs:
        _checkpoint(tmp_path, run, "epoch=1-step=10.ckpt")
        _checkpoint(tmp_path, run, "epoch=2-step=20.ckpt")  # the last one is evaluated
        (cpu / run / "config.yaml").write_text("seed_everything: 0\n")
    (cpu / "spectral_norm" / "c2" / "checkpoints").mkdir(parents=True)  # no config: skipped
    rc, err, calls = _drive(tmp_path, step, **env)
    assert rc == 0, err
    assert len(calls) == len(runs)
    for (cmd, *argv), run in zip(calls, runs, strict=True):
        study, version = run.split("/")
        assert cmd == "validate"
        # the run's own saved config: the same model, split and probes as its fit
        assert _opt(argv, "--config") == f"runs/cpu/{run}/config.yaml"
        assert _opt(argv, "--ckpt_path") == f"runs/cpu/{run}/checkpoints/epoch=2-step=20.ckpt"
        assert _opt(argv, "--trainer.precision") == "32-true"
        assert _opt(argv, "--trainer.logger.init_args.save_dir") == "runs/cpu"
        assert _opt(argv, "--trainer.logger.init_args.name") == f"{study}_chance"
        assert _opt(argv, "--trainer.logger.init_args.version") == version
    timings = (cpu / "timings.txt").read_text().split()
    assert timings[0] == f"{runs[0].split('/')[0]}_chance/{runs[0].split('/')[1]}"


def test_chance_step_without_a_checkpoint_stops(tmp_path: Path) -> None:
    rc, err, calls = _drive(tmp_path, "split_factor_steps_chance", SFS="4")
    assert rc != 0 and "split_factor_steps/sf4/checkpoints" in err and calls == []


def test_unknown_step_names_the_known_ones(tmp_path: Path) -> None:
    rc, err, calls = _drive(tmp_path, "nonsense")
    assert rc == 2 and "unknown step nonsense" in err and "resnet18_methods" in err
    assert calls == []

"""Every code block of docs/own_model.md runs as written (fewer epochs): the Python blocks in
order in one folder (a block opening with ``# file: NAME`` is written there as a module), and
the ``lightning-saliency`` command through the CLI's entry point."""

from __future__ import annotations

import csv
import re
import shlex
import sys
from pathlib import Path

import pytest

from lightning_saliency.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "own_model.md"
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", DOC.read_text(), re.S)


def _python_blocks() -> list[str]:
    return [code for lang, code in BLOCKS if lang == "python" and not code.startswith("# file:")]


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_python_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _python_blocks()[index]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"own_model_example_{index}"}
    exec(compile(code, f"{DOC}:block{index}", "exec"), namespace)
    if "InterpretationGeneralization(" in code:  # the Trainer example monitored its epochs
        monitor = namespace["monitor"]
        assert monitor.logged_epochs == [0, 1]  # type: ignore[attr-defined]
        values = monitor.final_values  # type: ignore[attr-defined]
        assert any("/gap" in tag for tag in values), sorted(values)[:10]


def test_command_line_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [code for lang, code in BLOCKS if lang == "python" and code.startswith("# file:")]
    commands = [c for lang, c in BLOCKS if lang == "bash" and "lightning-saliency fit" in c]
    assert len(files) == 1 and len(commands) == 1
    name = files[0].splitlines()[0].split(":", 1)[1].strip()
    (tmp_path / name).write_text(files[0])
    config = ROOT / "configs" / "own_model.yaml"
    args = shlex.split(commands[0])[2:]  # after "lightning-saliency fit"
    args[args.index("--config") + 1] = str(config)
    args[args.index("--trainer.max_epochs") + 1] = "1"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["lightning-saliency", "fit", *args])
    cli_main(["fit", *args, "--trainer.enable_progress_bar", "false"])
    runs = sorted((tmp_path / "runs" / "own_model").glob("version_*"))
    assert len(runs) == 1
    with (runs[0] / "interpretation_metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} >= {
        "simple_grad",
        "integrated_gradients_st8",
        "smooth_grad_nl0.2_n8",
    }
    assert any(r["metric"] == "gap" and r["split"] == "gap" for r in rows)
    assert "my_models.TwinNets" in (runs[0] / "config.yaml").read_text()

"""The README's Python example runs as written (one epoch instead of three)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no Python example"
    code = blocks[0]
    assert "max_epochs=3" in code
    code = code.replace("max_epochs=3", "max_epochs=1, enable_progress_bar=False")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    monitor = namespace["monitor"]
    assert monitor.logged_epochs == [0]
    assert (tmp_path / "lightning_logs" / "version_0" / "interpretation_metrics.csv").is_file()

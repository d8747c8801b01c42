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


def test_readme_snippet_shows_the_callbacks_hparams_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Lightning's default TensorBoardLogger (which would write its hp_metric placeholder
    first, and TensorBoard shows only the first record) the HParams tab holds the callback's
    settings and final values, read back through TensorBoard's own backend."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins.hparams import metadata

    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    code = code.replace("max_epochs=3", "max_epochs=1, enable_progress_bar=False")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path / "lightning_logs" / "version_0"))
    mux.Reload()
    (content,) = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).values()
    exp = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]
    )
    metrics = {m.name.tag for m in exp.metric_infos}
    assert "hp_metric" not in metrics
    assert "interp/simple_grad/gap" in metrics
    assert start.hparams["interp/num_test_probes"].number_value == 32
    assert start.hparams["backbone"].string_value == "small_cnn"

"""The quickstart notebook runs from top to bottom (issue 5)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ.setdefault("MPLBACKEND", "Agg")
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "\n".join(
        o.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "interp/simple_grad/gap" in outputs
    assert "smoothgrad" in outputs.lower()
    assert "'smoothgrad.png'" in outputs  # the report cell finds the report's plots
    assert "gap [95% CI]" in outputs  # the headline table with intervals
    assert "smooth_grad_nl0.1_n8 (" in outputs  # a map grid was drawn (its shape printed)
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "image/png" in o.get("data", {})]  # fmt: skip
    assert len(shown) >= 4  # two map grids and the report's plots
    errors = [
        o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors

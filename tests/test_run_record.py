"""The run record (generalization/record.py): rows written by the writer read back by the reader."""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import pytest

from lightning_saliency.generalization import Estimate, MetricKey
from lightning_saliency.generalization.record import (
    CSV_FIELDS,
    LEGACY_CSV_FIELDS,
    RunRecord,
    choose_epoch,
    epoch_rows,
    read_csv,
    read_methods,
)

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_saliency"


def test_written_epochs_read_back_with_every_number(tmp_path: Path) -> None:
    record = RunRecord(tmp_path)
    gap = MetricKey("m", "mean", "gap", "gap")
    agree = MetricKey("m", "pairs", "test", "spearman", "validate")
    record.append(epoch_rows({gap: Estimate(0.1, 0.01, 0.08, 0.12, 8, 1)}, 0, 9))
    record.append(epoch_rows({gap: Estimate(-0.2, 0.02, -0.24, -0.16, 8)}, 1, 19))
    record.append(epoch_rows({agree: Estimate(0.5, math.nan, math.nan, math.nan, 4)}, 1, 19, "validate"))
    by_epoch, stages = read_csv(tmp_path / "interpretation_metrics.csv", "fit")
    assert stages == {"fit", "validate"} and sorted(by_epoch) == [0, 1]
    assert by_epoch[0][gap] == Estimate(0.1, 0.01, 0.08, 0.12, 8, 1)
    assert by_epoch[1][MetricKey.epoch_rows()].value == 2  # the closing row counts itself
    assert record.stages() == {"fit": [0, 1], "validate": [1]}
    record.keep_fit_epochs([0])
    assert record.stages() == {"fit": [0], "validate": [1]}
    assert choose_epoch(read_csv(record.csv_path, "fit")[0], "fit", None, "r") == 0  # type: ignore[arg-type]


def test_version_0_1_rows_are_read(tmp_path: Path) -> None:
    path = tmp_path / "interpretation_metrics.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LEGACY_CSV_FIELDS)
        w.writerow([2, 30, "m", "mean", "validate:gap", "gap", "0.25"])
    by_epoch, stages = read_csv(path, "validate")
    est = by_epoch[2][MetricKey("m", "mean", "gap", "gap", "validate")]
    assert stages == {"validate"} and est.value == 0.25 and math.isnan(est.se) and est.n == 0


def test_methods_json_merges_stages_and_refuses_a_relabelled_spec(tmp_path: Path) -> None:
    record = RunRecord(tmp_path)
    assert read_methods(tmp_path) is None
    record.write_methods({"methods": [{"method": "simple_grad", "label": "a"}], "settings": {"x": 1}})
    record.write_methods({"methods": [{"method": "grad_x_input", "label": "b"}], "settings": {"y": 2}})
    assert [m["label"] for m in read_methods(tmp_path) or []] == ["b", "a"]
    with pytest.raises(ValueError, match="already defines method 'a'"):
        record.write_methods({"methods": [{"method": "grad_x_input", "label": "a"}]})
    assert CSV_FIELDS[:3] == ("epoch", "step", "stage")


def test_generalization_knows_neither_lightning_nor_tensorboard() -> None:
    for path in (PACKAGE / "generalization").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        bad = [m for m in names if m.split(".")[0] in ("lightning", "tensorboard", "pytorch_lightning")
               or m.startswith("lightning_saliency.callbacks") or m.startswith("lightning_saliency.report")]  # fmt: skip
        assert not bad, f"{path.name} imports {bad}"
        assert "add_custom_scalars" not in path.read_text() and "Margin" not in path.read_text(), path.name


def test_two_fits_into_one_folder_cannot_both_claim_its_record(tmp_path) -> None:
    """Issue 19 case 10 for a plain Trainer: the second of two fits started into one folder is
    refused at fit start (the CLI has identity.json; this is the callback's own guard)."""
    import csv

    import pytest

    from lightning_saliency.generalization.record import CSV_FIELDS, RunRecord

    RunRecord(tmp_path).claim_fit(owner="fit-a")
    with (tmp_path / "interpretation_metrics.csv").open() as fh:
        assert next(csv.reader(fh)) == list(CSV_FIELDS)  # the header, written once
    RunRecord(tmp_path).claim_fit(owner="fit-a")  # a second monitor of the same fit
    with pytest.raises(ValueError, match="claimed by another fit"):
        RunRecord(tmp_path).claim_fit(owner="fit-b")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "interpretation_metrics.csv").touch()
    RunRecord(empty).claim_fit(owner="fit-c")  # an empty file holds nobody's record


def test_a_plain_trainer_fit_into_a_folder_another_fit_holds_is_refused(tmp_path) -> None:
    import _tiny
    import pytest

    from lightning_saliency.generalization.record import RunRecord

    folder = tmp_path / "tb" / "version_0"
    RunRecord(folder).claim_fit(owner="another process")  # a fit running there right now
    from lightning.pytorch.loggers import TensorBoardLogger

    cb = _tiny.callback(methods=["simple_grad"])
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)  # a fixed version
    trainer = _tiny.trainer(tmp_path, callbacks=[cb], logger=logger, max_epochs=1)
    with pytest.raises(ValueError, match="claimed by another fit"):
        trainer.fit(_tiny.ensemble(), _tiny.data())
    assert cb.logged_epochs == []

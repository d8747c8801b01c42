"""The callback's record in a run folder: ``interpretation_metrics.csv`` and ``methods.json``.

The CSV holds one row per :class:`~lightning_saliency.generalization.MetricKey` and
monitored epoch (columns :data:`~lightning_saliency.generalization.CSV_FIELDS`);
``methods.json`` holds every method's canonical spec (what
:func:`~lightning_saliency.attribution.resolve_method` accepts) and the settings that
shaped the numbers, so the report never parses labels back.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning_saliency.generalization import CSV_FIELDS, CSV_NAME, METHODS_NAME

__all__ = ["RunRecord"]


class RunRecord:
    """Reads and writes the callback's files in ``folder`` (nothing when ``folder`` is None)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)

    @property
    def csv_path(self) -> Path | None:
        return None if self.folder is None else self.folder / CSV_NAME

    @property
    def methods_path(self) -> Path | None:
        return None if self.folder is None else self.folder / METHODS_NAME

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append one epoch's rows (dicts keyed by the CSV fields) in a single write.

        The last row of an epoch counts its rows (:func:`~lightning_saliency.generalization.epoch_rows`),
        so an epoch cut short (a kill during the write) reads as incomplete, never as complete.
        """
        path = self.csv_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if not path.exists() or path.stat().st_size == 0:
            writer.writeheader()
        writer.writerows(rows)
        with path.open("a", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())

    def keep_fit_epochs(self, epochs: Iterable[int]) -> None:
        """Keep the fit-stage rows of ``epochs`` only (and every validate/test row).

        On resume this drops the rows a run wrote after its checkpoint, so that each epoch
        is written once.
        """
        path = self.csv_path
        if path is None or not path.exists():
            return
        keep = {int(e) for e in epochs}
        with path.open(newline="") as fh:
            rows = [
                r
                for r in csv.DictReader(fh)
                if r.get("stage", "fit") != "fit"
                or (r.get("epoch", "").isdigit() and int(r["epoch"]) in keep)
            ]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)

    def stages(self) -> dict[str, list[int]]:
        """stage -> sorted epochs that already have rows in the CSV (empty when none)."""
        path = self.csv_path
        if path is None or not path.exists():
            return {}
        out: dict[str, set[int]] = {}
        with path.open(newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                stage = row.get("stage") or (row.get("split", "").partition(":")[0]
                                             if ":" in row.get("split", "") else "fit")  # fmt: skip
                epoch = row.get("epoch", "")
                out.setdefault(stage, set()).update([int(epoch)] if epoch.isdigit() else [])
        return {k: sorted(v) for k, v in out.items()}

    def check_fresh(self, stage: str) -> None:
        """Refuse to start a new record where another run already wrote rows of ``stage``."""
        epochs = self.stages().get(stage)
        if epochs is None:
            return
        what = "fit" if stage == "fit" else f"`{stage}`"
        raise ValueError(
            f"InterpretationGeneralization: {str(self.folder)!r} already holds another run's "
            f"{stage}-stage record ({CSV_NAME}, epochs {epochs}); a new {what} would mix two "
            "runs in one file. Give it a new folder (a new logger version or name, e.g. drop "
            "--trainer.logger.init_args.version) or remove the old folder"
            + ("; to continue that run, resume it with --ckpt_path." if stage == "fit" else ".")
        )

    def write_methods(self, payload: Mapping[str, Any]) -> None:
        """Write ``methods.json`` (atomically: a reader never sees half a file).

        The methods of every stage written into the folder are kept (a ``validate`` run with
        other methods beside a fit); one label naming two different specs is refused.
        """
        path = self.methods_path
        if path is None:
            return
        methods = {m["label"]: m for m in payload["methods"]}
        if path.exists():
            old = json.loads(path.read_text())
            for m in old.get("methods", []):
                if m["label"] in methods and methods[m["label"]] != m:
                    raise ValueError(
                        f"{str(path)!r} already defines method {m['label']!r} as {m}; this run "
                        f"defines it as {methods[m['label']]}: use a new folder"
                    )
                methods.setdefault(m["label"], m)
            payload = {**old, **payload, "settings": {**old.get("settings", {}),
                                                      **payload.get("settings", {})}}  # fmt: skip
        payload = {**payload, "methods": list(methods.values())}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
        tmp.replace(path)

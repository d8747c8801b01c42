"""The run record, in one place: the CSV row schema, the writer and the reader.

A monitored run leaves two files in its folder: ``interpretation_metrics.csv``
(:data:`CSV_NAME`), one row per :class:`~lightning_saliency.generalization.MetricKey` and
monitored epoch (columns :data:`CSV_FIELDS`; version 0.1's :data:`LEGACY_CSV_FIELDS` are
still read), each epoch closed by a row that counts its rows; and ``methods.json``
(:data:`METHODS_NAME`), every method's canonical spec and the settings that shaped the
numbers, so that a reader never parses labels back. :class:`RunRecord` writes both (the
callback's side); :func:`read_csv`, :func:`read_methods` and :func:`choose_epoch` read them
(the report's side). Pure: no Lightning.

Example (a record written, then read back):
    >>> import tempfile
    >>> from lightning_saliency.generalization import Estimate, MetricKey
    >>> record = RunRecord(tempfile.mkdtemp())
    >>> record.append(epoch_rows({MetricKey("m", "mean", "gap", "gap"): Estimate(0.1, 0.01, 0.08, 0.12, 8)}, 0, 9))
    >>> by_epoch, stages = read_csv(record.csv_path, "fit")
    >>> by_epoch[0][MetricKey("m", "mean", "gap", "gap")].value, stages, record.stages()
    (0.1, {'fit'}, {'fit': [0]})
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .schema import MetricKey
from .statistics import Estimate

__all__ = [
    "CSV_FIELDS",
    "CSV_NAME",
    "ESTIMATE_FIELDS",
    "KEY_FIELDS",
    "LEGACY_CSV_FIELDS",
    "METHODS_NAME",
    "RunRecord",
    "choose_epoch",
    "csv_row",
    "epoch_rows",
    "parse_csv_row",
    "read_csv",
    "read_methods",
    "read_settings",
]

#: The callback's CSV in the run folder.
CSV_NAME = "interpretation_metrics.csv"
#: The methods' canonical specs and the callback's settings in the run folder.
METHODS_NAME = "methods.json"
#: Columns of ``interpretation_metrics.csv``: one row per key and epoch.
KEY_FIELDS: tuple[str, ...] = ("method", "aggregate", "split", "metric")
ESTIMATE_FIELDS: tuple[str, ...] = ("value", "se", "lo", "hi", "n", "nonfinite")
CSV_FIELDS: tuple[str, ...] = ("epoch", "step", "stage", *KEY_FIELDS, *ESTIMATE_FIELDS)
#: Header of version 0.1's CSV (still read).
LEGACY_CSV_FIELDS: tuple[str, ...] = ("epoch", "step", "method", "model", "split", "metric", "value")
_MAX_EPOCH = 10**7
_CALLBACK = "InterpretationGeneralization"


# --------------------------------------------------------------------------- row schema
def csv_row(key: MetricKey, est: Estimate, epoch: int, step: int) -> dict[str, Any]:
    """The CSV row of one key at one epoch.

    >>> row = csv_row(MetricKey("m", "mean", "gap", "gap"), Estimate(0.1, 0.01, 0.08, 0.12, 8), 3, 40)
    >>> [row[f] for f in CSV_FIELDS]
    [3, 40, 'fit', 'm', 'mean', 'gap', 'gap', 0.1, 0.01, 0.08, 0.12, 8, 0]
    """
    return {
        "epoch": int(epoch),
        "step": int(step),
        "stage": key.stage,
        **{f: getattr(key, f) for f in KEY_FIELDS},
        **{f: getattr(est, f) for f in ESTIMATE_FIELDS},
    }


def epoch_rows(
    estimates: Mapping[MetricKey, Estimate], epoch: int, step: int, stage: str = "fit"
) -> list[dict[str, Any]]:
    """The CSV rows of one monitored epoch, closed by the row that counts them.

    >>> rows = epoch_rows({MetricKey("m", "mean", "gap", "gap"): Estimate(0.1, 0.01, 0.08, 0.12, 8)}, 0, 9)
    >>> [(r["method"], r["metric"], r["value"]) for r in rows]
    [('m', 'gap', 0.1), ('-', 'rows', 2)]
    """
    rows = [csv_row(k, e, epoch, step) for k, e in estimates.items()]
    nan = math.nan
    marker = Estimate(len(rows) + 1, nan, nan, nan, 0)
    rows.append(csv_row(MetricKey.epoch_rows(stage), marker, epoch, step))
    return rows


def _float(text: str) -> float:
    return math.nan if text in ("", "nan") else float(text)


def parse_csv_row(row: Mapping[str, str]) -> tuple[int, MetricKey, Estimate]:
    """``(epoch, key, estimate)`` of a CSV row; ``ValueError`` for a malformed one.

    Rows of version 0.1 (columns ``model`` for the aggregate and the stage written into
    ``split`` as ``"validate:test"``, no interval columns) are read too.

    >>> parse_csv_row({"epoch": "1", "step": "9", "method": "m", "model": "mean",
    ...                "split": "test:gap", "metric": "gap", "value": "0.5"})[1].stage
    'test'
    """
    split = row["split"]
    stage = row.get("stage") or "fit"
    if "stage" not in row and ":" in split:  # version 0.1
        stage, split = split.split(":", 1)
    aggregate = row["aggregate"] if "aggregate" in row else row["model"]
    key = MetricKey(row["method"], aggregate, split, row["metric"], stage)
    value = _float(row["value"])
    if "se" in row:
        est = Estimate(
            value,
            _float(row["se"]),
            _float(row["lo"]),
            _float(row["hi"]),
            int(row["n"]),
            int(row["nonfinite"]),
        )
    else:  # no interval before version 0.2
        est = Estimate(value, math.nan, math.nan, math.nan, 0)
    return int(row["epoch"]), key, est



# --------------------------------------------------------------------------- writer
#: CSV path -> the fit of this process that claimed it (:meth:`RunRecord.claim_fit`).
_CLAIMS: dict[str, str] = {}


class RunRecord:
    """The callback's files in ``folder``: appends epochs, keeps a resume's epochs, checks
    a folder is fresh, merges ``methods.json`` (nothing at all when ``folder`` is None)."""

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
            f"{_CALLBACK}: {str(self.folder)!r} already holds another run's "
            f"{stage}-stage record ({CSV_NAME}, epochs {epochs}); a new {what} would mix two "
            "runs in one file. Give it a new folder (a new logger version or name, e.g. drop "
            "--trainer.logger.init_args.version) or remove the old folder"
            + ("; to continue that run, resume it with --ckpt_path." if stage == "fit" else ".")
        )

    def claim_fit(self, owner: str = "") -> None:
        """Create the CSV (its header) exclusively for a new fit, after :meth:`check_fresh`:
        of two fits started into one folder at once, the second is refused here instead of
        both appending to one file; ``owner`` names the fit in this process (several monitors
        of one trainer share its record). An empty file is taken over; a header left by a fit
        that stopped before its first monitored epoch is not (it cannot be told from a fit
        running now): the message says to remove it.

        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> RunRecord(folder).claim_fit()
        >>> RunRecord(folder).claim_fit()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: InterpretationGeneralization: ... was claimed by another fit that started ...
        """
        path = self.csv_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if path.stat().st_size == 0 or (owner and _CLAIMS.get(str(path)) == owner):
                return
            raise ValueError(
                f"{_CALLBACK}: {str(path)!r} was claimed by another fit that started into the "
                "same folder: two fits cannot write one record; give each its own folder (if "
                "that fit stopped before its first monitored epoch, remove the file)"
            ) from None
        with os.fdopen(fd, "w", newline="") as fh:
            csv.DictWriter(fh, fieldnames=CSV_FIELDS).writeheader()
        if owner:
            _CLAIMS[str(path)] = owner

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


# --------------------------------------------------------------------------- reader
def _rows(path: Path) -> Iterable[tuple[int, dict[str, str]]]:
    """``(line, row)`` of the CSV; ``ValueError`` naming the file and line for bad input."""
    with path.open(newline="", encoding="utf-8-sig") as fh:  # a BOM is not part of the header
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            fields = None if header is None else tuple(h.strip() for h in header)
            if fields not in (CSV_FIELDS, LEGACY_CSV_FIELDS):
                raise ValueError(
                    f"{str(path)!r} has header {header!r}; expected {','.join(CSV_FIELDS)}"
                )
            for row in reader:
                if not row:
                    continue
                if len(row) != len(fields):
                    raise ValueError(
                        f"{str(path)!r} line {reader.line_num}: expected {len(fields)} fields, "
                        f"got {len(row)}"
                    )
                yield reader.line_num, dict(zip(fields, row, strict=True))
        except csv.Error as err:  # e.g. a field larger than the csv module's limit
            raise ValueError(f"{str(path)!r} line {reader.line_num}: {err}") from None


def read_csv(path: Path, stage: str) -> tuple[dict[int, dict[MetricKey, Estimate]], set[str]]:
    """epoch -> {key: estimate} of one stage, and the stages the file holds."""
    by_epoch: dict[int, dict[MetricKey, Estimate]] = {}
    stages: set[str] = set()
    for line, row in _rows(path):
        try:
            epoch, key, est = parse_csv_row(row)
        except (ValueError, KeyError) as err:
            raise ValueError(f"{str(path)!r} line {line}: {err}") from None
        if not 0 <= epoch < _MAX_EPOCH:
            raise ValueError(f"{str(path)!r} line {line}: epoch {epoch} is out of range")
        stages.add(key.stage)
        if key.stage != stage:
            continue
        rows = by_epoch.setdefault(epoch, {})
        if key in rows:
            raise ValueError(
                f"{str(path)!r} line {line}: a second row for {key.tag} at epoch {epoch}: the "
                "file mixes two runs (re-run into a fresh folder)"
            )
        rows[key] = est
    return by_epoch, stages


def _incomplete(rows: Mapping[MetricKey, Estimate], stage: str, marked: bool) -> str | None:
    """Why an epoch's rows are not a complete epoch (None when they are).

    The callback closes every epoch with a row counting the epoch's rows; in a file that
    has such rows, an epoch without one, or with fewer rows than it counts, was cut short.
    """
    marker = rows.get(MetricKey.epoch_rows(stage))
    if marker is None:
        return "no closing row" if marked else None
    if len(rows) != int(marker.value):
        return f"{len(rows)} of {int(marker.value)} rows"
    return None


def choose_epoch(
    by_epoch: dict[int, dict[MetricKey, Estimate]], stage: str, epoch: int | None, where: str
) -> int:
    epochs = sorted(by_epoch)
    marked = any(MetricKey.epoch_rows(stage) in rows for rows in by_epoch.values())
    if epoch is not None:
        if epoch not in by_epoch:
            raise ValueError(f"run {where!r} has no epoch {epoch}; it has epochs {epochs}")
        why = _incomplete(by_epoch[epoch], stage, marked)
        if why:
            raise ValueError(f"run {where!r}: epoch {epoch} is incomplete ({why})")
        return epoch
    for e in reversed(epochs):
        why = _incomplete(by_epoch[e], stage, marked)
        if why is None:
            return e
        warnings.warn(f"run {where!r}: skipping incomplete epoch {e} ({why})", stacklevel=3)
    raise ValueError(f"run {where!r} has no complete epoch")




def read_methods(folder: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
    """The method entries of a run folder's ``methods.json`` (None when it has none);
    ``ValueError`` when the file holds no method list."""
    path = Path(folder) / METHODS_NAME
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))["methods"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{str(path)!r} does not hold method specs: {err}") from err
    return entries


def read_settings(folder: str | os.PathLike[str], stage: str = "fit") -> dict[str, Any] | None:
    """The monitor's settings of ``stage`` as its run recorded them in ``methods.json``, with
    device-dependent values resolved (``precision="auto"`` recorded as what ran, e.g.
    ``"32"``); None when the folder has no such record (a version before it)."""
    path = Path(folder) / METHODS_NAME
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8-sig")).get("settings", {})
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{str(path)!r} is not a methods record: {err}") from err
    chosen = settings.get(stage) if isinstance(settings, dict) else None
    return dict(chosen) if isinstance(chosen, dict) else None

"""A run's identity: a fingerprint of its resolved config, recorded once in its folder.

Pure functions (the Lightning side is :mod:`lightning_saliency._run_guard`). The identity of a
run is its resolved config (model, data with every seed, the callbacks' settings, the trainer
settings that shape the numbers) without the keys that only say where it is written, plus the
code version; its ``fingerprint`` is the SHA-256 of that as canonical JSON, its ``setting`` the
same without the seeds (seed replicates of one setting share it, as the config spells it: a
default spelled ``"32"`` by one version and ``"auto"`` by the next differs here even where both
ran alike; the report's replicate rule reads what ran, :mod:`lightning_saliency.report.runs`).
``identity.json`` in the run folder records it once, created exclusively, so two fits racing
into one folder cannot both claim it.

>>> a = make_identity({"seed_everything": 0, "model": {"init_args": {"lr": 0.1}}}, run_id="a")
>>> b = make_identity({"seed_everything": 1, "model": {"init_args": {"lr": 0.1}}}, run_id="b")
>>> a["setting"] == b["setting"], a["fingerprint"] == b["fingerprint"]
(True, False)
>>> differences(a["config"], b["config"])
['seed_everything: 0 -> 1']
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "IDENTITY_NAME",
    "RESUME_SECTIONS",
    "SEED_KEYS",
    "canonical",
    "claim_folder",
    "differences",
    "effective_seeds",
    "fingerprint",
    "fit_folder_problem",
    "make_identity",
    "read_identity",
]

#: The identity record's file name in a run folder.
IDENTITY_NAME = "identity.json"
#: Files that mark a folder as holding a run's record.
RUN_FILES = ("identity.json", "config.yaml", "interpretation_metrics.csv", "methods.json",
             "splits.json")  # fmt: skip
#: Trainer settings that shape the numbers (the rest say where, how loud, on which devices).
TRAINER_KEYS = (
    "max_epochs", "max_steps", "precision", "deterministic", "benchmark",
    "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
    "limit_train_batches", "limit_val_batches", "callbacks",
)  # fmt: skip
#: Data-module arguments that say where the data lies or how it is loaded.
_DATA_LOCATION = ("num_workers", "pin_memory", "root", "download")
#: Callback arguments that only say where files go.
_CALLBACK_LOCATION = ("dirpath", "filename", "save_dir")
#: Config entries that are seeds (dotted paths into the canonical config).
SEED_KEYS = (
    "seed_everything", "model.init_args.init_seed", "data.init_args.split_seed",
    "data.init_args.data_seed",
)  # fmt: skip
#: Sections a resume must keep unchanged (the trainer may change, e.g. a larger max_epochs).
RESUME_SECTIONS = ("seed_everything", "model", "data")


def _plain(node: Any) -> Any:
    """JSON types only, ``None`` values of mappings dropped (an option a later version added,
    written ``null``, must not change a fingerprint)."""
    node = json.loads(json.dumps(node, default=str))

    def strip(n: Any) -> Any:
        if isinstance(n, dict):
            return {k: strip(v) for k, v in n.items() if v is not None}
        if isinstance(n, list):
            return [strip(v) for v in n]
        return n

    return strip(node)


def _callbacks(entries: Any) -> Any:
    if not isinstance(entries, list):
        entries = [] if entries is None else [entries]
    out = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("init_args"), dict):
            args = {k: v for k, v in entry["init_args"].items() if k not in _CALLBACK_LOCATION}
            entry = {**entry, "init_args": args}
        out.append(entry)
    return out


def canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as JSON types without its run-location keys (config file paths,
    ``ckpt_path``, the logger, folders, display and device settings)."""
    cfg = _plain(dict(config))
    for key in ("config", "ckpt_path", "__default_config__"):
        cfg.pop(key, None)
    trainer = cfg.get("trainer")
    if isinstance(trainer, dict):
        kept = {k: v for k, v in trainer.items() if k in TRAINER_KEYS}
        if "callbacks" in kept:
            kept["callbacks"] = _callbacks(kept["callbacks"])
        cfg["trainer"] = kept
    data = cfg.get("data")
    if isinstance(data, dict) and isinstance(data.get("init_args"), dict):
        data["init_args"] = {k: v for k, v in data["init_args"].items()
                             if k not in _DATA_LOCATION}  # fmt: skip
    return cfg


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def effective_seeds(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{dotted key: value}`` of the seeds the config sets (:data:`SEED_KEYS`).

    >>> effective_seeds({"seed_everything": 3, "data": {"init_args": {"split_seed": 3}}})
    {'seed_everything': 3, 'data.init_args.split_seed': 3}
    """
    cfg = _plain(dict(config))
    return {k: _get(cfg, k) for k in SEED_KEYS if _get(cfg, k) is not None}


def _without_seeds(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = json.loads(json.dumps(cfg))
    for dotted in SEED_KEYS:
        *parents, last = dotted.split(".")
        node = _get(cfg, ".".join(parents)) if parents else cfg
        if isinstance(node, dict):
            node.pop(last, None)
    return cfg


def fingerprint(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def make_identity(
    config: Mapping[str, Any], run_id: str | None = None, code_version: str | None = None
) -> dict[str, Any]:
    """The identity record of a run of ``config``: ``{"run_id", "fingerprint", "setting",
    "seeds", "code_version", "config"}`` (``config`` canonical, :func:`canonical`)."""
    if code_version is None:
        from lightning_saliency import __version__ as code_version
    cfg = canonical(config)
    return {
        "run_id": run_id or uuid.uuid4().hex,
        "fingerprint": fingerprint({"config": cfg, "code_version": code_version}),
        "setting": fingerprint({"config": _without_seeds(cfg), "code_version": code_version}),
        "seeds": effective_seeds(cfg),
        "code_version": code_version,
        "config": cfg,
    }


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """``["dotted.key: a -> b", ...]`` for every leaf where two configs differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            out += differences(a.get(key), b.get(key), path)
        return out
    return [] if a == b else [f"{prefix or '<config>'}: {a!r} -> {b!r}"]


def resume_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The changes in :data:`RESUME_SECTIONS` between a checkpoint's config and this run's."""
    out: list[str] = []
    for section in RESUME_SECTIONS:
        a, b = saved.get(section), current.get(section)
        out += differences({section: a}, {section: b})
    return out


def read_identity(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The identity record in ``folder`` (None when there is none)."""
    path = Path(folder) / IDENTITY_NAME
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        record = json.load(fh)
    if not isinstance(record, dict):
        raise ValueError(f"{str(path)!r} is not an identity record")
    return record


def fit_folder_problem(
    folder: str | os.PathLike[str],
    identity: Mapping[str, Any],
    saved: Mapping[str, Any] | None,
    resume: bool,
    ignore: Sequence[str] = (),
) -> str | None:
    """Why a fit of ``identity`` must not write into ``folder`` (None: it may).

    A fresh fit needs a folder without run files (:data:`RUN_FILES` minus ``ignore``); a
    resume (``saved``: the checkpoint's identity, None when it has none) needs a folder that
    is that run's own or new, and unchanged seeds, model and data settings.
    """
    root = Path(folder)
    found = read_identity(root)
    if not resume:
        used = [n for n in RUN_FILES if n not in ignore and (root / n).is_file()]
        if not used:
            return None
        diff = differences(found["config"], identity["config"]) if found else []
        return (f"{str(root)!r} already holds another run ({', '.join(used)}"
                + (f"; it differs in: {'; '.join(diff[:8])}" if diff else "") + "). A fresh fit "
                "needs a new folder (a new logger version or name) or, to continue that run, "
                "--ckpt_path with its checkpoint")  # fmt: skip
    csv_there = (root / "interpretation_metrics.csv").is_file()
    if saved is not None and found is not None and found.get("run_id") != saved.get("run_id"):
        return (f"{str(root)!r} is another run's folder (run {found.get('run_id')}); the "
                f"checkpoint belongs to run {saved.get('run_id')}: resume into its own folder "
                "(the logger version it was written with) or a new one")  # fmt: skip
    if (saved is None and found is not None) or (saved is not None and found is None and csv_there):
        return (f"{str(root)!r} holds a record the checkpoint cannot be matched to (identity "
                f"recorded: {'folder' if found else 'checkpoint'} only): resume into a new "
                "folder (a new logger version)")  # fmt: skip
    if saved is not None:
        diff = resume_differences(saved.get("config", {}), identity["config"])
        if diff:
            return ("a resumed run must keep its seeds, model and data settings (one CSV would "
                    "hold two runs); changed: " + "; ".join(diff))  # fmt: skip
    return None


def claim_folder(folder: str | os.PathLike[str], identity: Mapping[str, Any]) -> bool:
    """Create ``identity.json`` in ``folder`` exclusively; True when created.

    False when the same run (``run_id``) already recorded it (a resume). Raises ``ValueError``
    when another run holds it: of two fits racing into one folder, one wins.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / IDENTITY_NAME
    text = json.dumps(dict(identity), indent=1, sort_keys=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        found = read_identity(root)
        if found is not None and found.get("run_id") == identity.get("run_id"):
            return False
        raise ValueError(
            f"{str(root)!r} was claimed by another run (run {None if found is None else found.get('run_id')}) "
            "while this one started: two fits cannot write into one folder"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return True

"""Persistence of a disjoint-split data module: its split state, checked on resume."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch

from ._utils import _check_stats

__all__ = ["SplitStateMixin", "state_differences"]

#: Data-module arguments left out of the settings a resumed run must keep: where the data
#: lies or how it is loaded (the same values), and ``mean``/``std``, which the saved
#: normalization checks by its own rule (a computed one is adopted, a given one must match).
NOT_SETTINGS = ("num_workers", "pin_memory", "root", "download", "in_memory", "mean", "std")
_CHECKED = ("split_seed", "split_factor", "num_models", "n")


def state_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``["key: saved X, current Y", ...]`` between two split states: the split keys, and
    every data setting (``settings.<name>``) when both states record them.

    >>> state_differences({"split_seed": 1, "settings": {"data_seed": 0}},
    ...                   {"split_seed": 1, "settings": {"data_seed": 3}})
    ['settings.data_seed: saved 0, current 3']
    """
    diffs = [
        f"{key}: saved {saved[key]!r}, current {current[key]!r}"
        for key in _CHECKED
        if key in saved and key in current and saved[key] != current[key]
    ]
    a, b = saved.get("settings"), current.get("settings")
    if isinstance(a, dict) and isinstance(b, dict):
        diffs += [
            f"settings.{key}: saved {a.get(key)!r}, current {b.get(key)!r}"
            for key in sorted(set(a) | set(b))
            if a.get(key) != b.get(key)
        ]
    return diffs


class SplitStateMixin:
    """``state_dict`` / ``load_state_dict`` / ``save_splits`` / ``load_splits`` of
    :class:`~lightning_saliency.data.DisjointSplitDataModule` (split indices, seeds and the
    normalization in use; saved in checkpoints and ``splits.json``)."""

    # provided by DisjointSplitDataModule
    split_seed: int
    split_factor: int
    num_models: int
    _auto_stats: bool
    _mean: tuple[float, ...] | None
    _std: tuple[float, ...] | None
    _train_set: Any
    _heldout_set: Any
    _train_eval_set: Any
    _split_indices: list[torch.Tensor] | None
    _pending_state: dict[str, Any] | None
    hparams: Any
    mean: Any
    std: Any

    def _ensure_splits(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def _ensure_datasets(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ persistence
    def data_settings(self) -> dict[str, Any]:
        """This module's arguments as JSON types, without :data:`NOT_SETTINGS` (every seed,
        ``data_seed`` included, the split, the batch size, augmentation, the shortcut...)."""
        own = {k: v for k, v in dict(self.hparams).items() if k not in NOT_SETTINGS}
        settings: dict[str, Any] = json.loads(json.dumps(own, default=str, sort_keys=True))
        return settings

    def state_dict(self) -> dict[str, Any]:
        """``{"split_seed", "split_factor", "num_models", "n", "split_indices", "mean", "std",
        "settings"}``.

        Plain ints, lists of floats or None (``mean``/``std``: the normalization in use, so a
        resumed ``mean="auto"`` run keeps the values it was trained with); ``settings``:
        :meth:`data_settings`, which a resumed run must keep.
        """
        indices = self._ensure_splits()
        return {
            "split_seed": self.split_seed,
            "split_factor": self.split_factor,
            "num_models": self.num_models,
            "n": len(self._train_set),
            "split_indices": [idx.tolist() for idx in indices],
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "settings": self.data_settings(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check that a saved split state matches this run; adopt its indices.

        Raises ``ValueError`` if ``split_seed``, ``split_factor``, ``num_models``, the train
        set size or (when the saved state records them) any data setting differ, e.g.
        ``data_seed`` (a resumed run must train each model on the same split, and probe the
        same held-out set). If only the
        index lists differ (e.g. another torch version draws other permutations), the saved
        indices are used, with a warning. Saved ``mean``/``std`` (optional keys) that differ
        from this module's are adopted, with a warning, when they were computed
        (``mean="auto"``) and raise ``ValueError`` when they were given. Before
        :meth:`setup`, the check is deferred.
        """
        required = ("split_seed", "split_factor", "num_models", "n", "split_indices")
        missing = [key for key in required if key not in state_dict]
        if missing:
            raise ValueError(f"split state is missing keys {missing}; expected keys {required}")
        if self._split_indices is None and self._train_set is None:
            self._pending_state = dict(state_dict)
            return
        current = self.state_dict()
        diffs = state_differences(state_dict, current)
        if not diffs and "mean" in state_dict:
            self._restore_stats(state_dict["mean"], state_dict.get("std"))
        if diffs:
            raise ValueError(
                "the saved splits do not match this data module (a resumed run must train each "
                "model on the same split); differences: "
                + "; ".join(diffs)
                + ". Use the same data settings (split_seed/split_factor/num_models, data_seed...) and "
                "the same train data."
            )
        saved = [torch.as_tensor(idx, dtype=torch.int64) for idx in state_dict["split_indices"]]
        n = int(current["n"])
        size = n // self.split_factor
        if len(saved) != self.num_models or any(len(idx) != size for idx in saved):
            raise ValueError(
                f"the saved split_indices must be {self.num_models} lists of {size} indices, got "
                f"lengths {[len(idx) for idx in saved]}"
            )
        flat = torch.cat(saved) if saved else torch.empty(0, dtype=torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n):
            raise ValueError(f"the saved split_indices must lie in [0, {n})")
        if flat.unique().numel() != flat.numel():
            raise ValueError("the saved split_indices are not pairwise disjoint")
        if any(not torch.equal(a, b) for a, b in zip(saved, self._split_indices, strict=True)):  # type: ignore[arg-type]
            warnings.warn(
                "the saved split indices differ from the ones drawn from split_seed here "
                "(different torch version?); using the saved indices",
                stacklevel=2,
            )
            self._split_indices = [idx.sort().values for idx in saved]

    def _restore_stats(self, mean: Any, std: Any) -> None:
        saved = _check_stats(mean, std)
        if saved == (self.mean, self.std):
            return
        if not self._auto_stats:
            raise ValueError(
                f"the saved normalization (mean={saved[0]}, std={saved[1]}) differs from this "
                f"data module's (mean={self.mean}, std={self.std}); a resumed run must see the "
                "same inputs: pass the saved values, or mean='auto' to adopt them"
            )
        warnings.warn(
            f"the normalization computed here (mean={self.mean}, std={self.std}) differs from "
            f"the saved one (mean={saved[0]}, std={saved[1]}); using the saved values",
            stacklevel=3,
        )
        self._mean, self._std = saved
        self._train_set = self._heldout_set = self._train_eval_set = None
        self._ensure_datasets()

    def write_splits_once(self, path: str) -> None:
        """Write ``splits.json`` to ``path`` unless it is there; one that records another split
        or other data settings is refused (``ValueError`` naming the differences), never
        replaced: the folder is another run's."""
        if not os.path.isfile(path):
            self.save_splits(path)
            return
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        diffs = state_differences(saved, self.state_dict()) if isinstance(saved, dict) else ["?"]
        if diffs:
            raise ValueError(
                f"{path!r} records another run's data (differences: {'; '.join(diffs)}); "
                "nothing was written: give this run a new folder (a new logger version), or "
                "resume that run with its own data settings"
            )

    def save_splits(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` as JSON to ``path`` (parent folders are created)."""
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.state_dict(), fh)

    def load_splits(self, path: str | os.PathLike[str]) -> None:
        """Read a ``splits.json`` written by :meth:`save_splits` and :meth:`load_state_dict` it."""
        with open(os.fspath(path), encoding="utf-8") as fh:
            self.load_state_dict(json.load(fh))

"""The CLI's guard of a run folder: the identity record and ``config.yaml``, written only into
a folder that is the run's own (:mod:`lightning_saliency._identity` holds the rules).

:class:`RunConfigCallback` replaces LightningCLI's ``SaveConfigCallback``: it never overwrites
another run's ``config.yaml``, records the run's identity once (``identity.json``, created
exclusively), and carries the identity in checkpoints, so that a resume into another run's
folder, or with changed seeds, model or data settings, is refused with the keys named.
``lightning-saliency fit`` checks the folder before the trainer starts (nothing is written
into a folder that is refused); a ``Trainer`` built by ``cli_main(run=False)`` is checked at
``on_fit_start``, before the config or any metric is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback
from lightning_utilities.core.rank_zero import rank_zero_only

from lightning_saliency._identity import claim_folder, fit_folder_problem, make_identity

__all__ = ["RunConfigCallback", "checkpoint_identity"]


def checkpoint_identity(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The run identity a checkpoint carries (None: no checkpoint, or one without it).

    Loaded with ``weights_only=True`` (and memory-mapped), like every load in the package.
    """
    if path is None or not Path(path).is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = (ckpt.get("callbacks") or {}).get(RunConfigCallback.__qualname__)
    return None if not isinstance(state, dict) else state.get("identity")


class RunConfigCallback(SaveConfigCallback):
    """Writes ``identity.json`` and ``config.yaml`` into the run's own folder only."""

    def __init__(self, parser: LightningArgumentParser, config: Any, *args: Any,
                 **kwargs: Any) -> None:  # fmt: skip
        kwargs["overwrite"] = False
        super().__init__(parser, config, *args, **kwargs)
        dumped = yaml.safe_load(parser.dump(config, skip_none=False, skip_validation=True))
        self.identity = make_identity(dumped)
        self._saved: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        return {"identity": self.identity}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict.get("identity")

    def check_fit(self, folder: str | None, ckpt_path: Any, written: bool) -> None:
        """Raise ``ValueError`` if a fit (a resume when ``ckpt_path``) must not use ``folder``.

        ``written``: this run's data module may already have written ``splits.json`` there.
        """
        if folder is None:
            return
        saved = self._saved if ckpt_path is None or written else checkpoint_identity(ckpt_path)
        problem = fit_folder_problem(folder, self.identity, saved, resume=ckpt_path is not None,
                                     ignore=("splits.json",) if written else ())  # fmt: skip
        if problem:
            raise ValueError(f"lightning-saliency: {problem}")

    def _write_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log_dir: str,
                      stage: str) -> None:  # fmt: skip
        """Write ``config.yaml`` (rank 0 only: no collective call in here)."""
        path = Path(log_dir) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True,
                         multifile=self.multifile)  # fmt: skip
        self.save_config(trainer, pl_module, stage)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" or self.already_saved:
            return  # a fit is checked and recorded at on_fit_start, after a checkpoint restore
        log_dir = trainer.log_dir  # collective: every rank reads it
        if trainer.is_global_zero and log_dir and not (Path(log_dir) / self.config_filename).exists():
            self._write_config(trainer, pl_module, log_dir, stage)  # never replaces a fit's
        self.already_saved = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # collective: every rank reads it
        error = None
        if trainer.is_global_zero and log_dir:
            try:
                resumed = self._saved is not None or trainer.ckpt_path is not None
                self.check_fit(log_dir, trainer.ckpt_path if resumed else None, written=True)
                if self._saved is not None:
                    self.identity = {**self.identity, "run_id": self._saved["run_id"]}
                created = claim_folder(log_dir, self.identity)
                if created or not (Path(log_dir) / self.config_filename).exists():
                    self._write_config(trainer, pl_module, log_dir, "fit")
            except ValueError as err:
                error = str(err)
        error = trainer.strategy.broadcast(error)
        if error:
            raise ValueError(error)
        self.already_saved = True


@rank_zero_only
def check_before_fit(cb: RunConfigCallback, trainer: pl.Trainer, ckpt_path: Any) -> None:
    """The CLI's check before ``trainer.fit`` (rank 0 only; nothing has been written yet)."""
    cb.check_fit(trainer.log_dir, ckpt_path, written=False)

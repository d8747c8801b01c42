"""Every private third-party API the package uses (lightning_saliency._compat) still behaves
as relied on: this fails loudly when Lightning, TensorBoard, jsonargparse or torch change it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from lightning_saliency import _compat


class _Probe(L.Callback):
    """Records the private loop state at the hooks the callback reads it in."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, int, int]] = []

    def _note(self, trainer: L.Trainer, where: str, stage: str) -> None:
        self.seen.append((where, _compat.training_epoch_finished(trainer),
                          _compat.batches_stepped(trainer), _compat.epoch_log_step(trainer, stage)))  # fmt: skip

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._note(trainer, "val", "fit")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._note(trainer, "train", "fit")


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, _):
        loss = self.net(batch[0]).sum()
        self.log("loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        self.log("val", self.net(batch[0]).sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_loop_internals(tmp_path: Path) -> None:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(6, 4)), batch_size=2)
    probe = _Probe()
    logger = TensorBoardLogger(str(tmp_path), name="t", default_hp_metric=False)
    trainer = L.Trainer(max_epochs=2, callbacks=[probe], logger=logger, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(_Tiny(), data, data)
    # 3 batches per epoch: the epoch-end validation runs before the last batch is counted
    assert probe.seen == [("val", True, 2, 2), ("train", True, 3, 2),
                          ("val", True, 5, 5), ("train", True, 6, 5)]  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [2, 5]  # where epoch_log_step says
    assert not _compat.default_hp_metric(logger)
    assert _compat.default_hp_metric(TensorBoardLogger(str(tmp_path), name="u"))


def test_tensorboard_event_writer(tmp_path: Path) -> None:
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    _compat.tensorboard_event_writer(writer).add_event(
        Event(step=3, session_log=SessionLog(status=SessionLog.START))
    )
    writer.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_spectral_norm_internals() -> None:
    lin = spectral_norm(nn.Linear(5, 3))
    sn = lin.parametrizations["weight"][0]
    assert isinstance(sn, _compat.SpectralNormParametrization)
    w = lin.parametrizations["weight"].original.detach()
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    _compat.set_spectral_vectors(sn, u[:, 0], vh[0], w, steps=2)
    lin.eval()
    sigma = torch.linalg.matrix_norm(lin.weight, ord=2)
    assert torch.allclose(sigma, torch.tensor(1.0), atol=1e-5)  # W / sigma_max has norm 1


def test_cli_subcommands_action() -> None:
    from lightning_saliency.cli import SaliencyCLI

    assert hasattr(SaliencyCLI, "_add_subcommands")
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser()
    parser.add_subcommands()
    assert _compat.subcommands_action(parser) is not None

"""The training order of epoch e is a function of (split_seed, model, e): a run killed and
resumed at epoch e sees the same order as an uninterrupted one (issue 12, item 3)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_saliency.data import DisjointSplitDataModule, EpochShuffleSampler, mix_seed

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


class _OrderRecorder(L.LightningModule):
    """Records, per epoch and model, the sample indices in the order they arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.orders: dict[int, list[list[int]]] = {}

    def training_step(self, batch, batch_idx):
        per_model = self.orders.setdefault(self.current_epoch, [[] for _ in batch])
        for k, (x, _y) in enumerate(batch):
            per_model[k].extend(x[:, 0, 0, 0].long().tolist())
        return (self.w * 0.0).sum() + self.w.sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _dm() -> DisjointSplitDataModule:
    x = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1)
    data = TensorDataset(x, torch.zeros(40, dtype=torch.int64))
    return DisjointSplitDataModule(data, data, split_factor=2, num_models=2, batch_size=4,
                                   split_seed=7)  # fmt: skip


def _fit(tmp_path, max_epochs: int, ckpt_path=None) -> tuple[_OrderRecorder, L.Trainer]:
    model = _OrderRecorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=_dm(), ckpt_path=ckpt_path)
    return model, trainer


def test_resumed_run_sees_the_uninterrupted_order(tmp_path) -> None:
    full, _ = _fit(tmp_path, max_epochs=3)
    assert sorted(full.orders) == [0, 1, 2]
    for e in range(3):
        for k in range(2):
            assert len(full.orders[e][k]) == 20
    assert full.orders[0][0] != full.orders[1][0] != full.orders[2][0]  # epochs differ
    assert sorted(full.orders[0][0]) == sorted(full.orders[1][0])  # the same split
    killed, trainer = _fit(tmp_path, max_epochs=2)
    assert killed.orders == {e: full.orders[e] for e in (0, 1)}
    ckpt = tmp_path / "epoch2.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, _ = _fit(tmp_path, max_epochs=3, ckpt_path=ckpt)
    assert sorted(resumed.orders) == [2]  # only the remaining epoch ran
    assert resumed.orders[2] == full.orders[2]


def test_epoch_sampler_is_a_function_of_seed_and_epoch() -> None:
    a, b = EpochShuffleSampler(range(50), seed=3), EpochShuffleSampler(range(50), seed=3)
    b.set_epoch(4)
    first_b = list(b)
    a_orders = [list(a) for _ in range(5)]  # each pass without set_epoch: the next epoch
    assert a_orders[4] == first_b and sorted(first_b) == list(range(50))
    assert len({tuple(o) for o in a_orders}) == 5
    ref = torch.randperm(50, generator=torch.Generator().manual_seed(mix_seed(3, 4)))
    assert first_b == ref.tolist()
    assert list(EpochShuffleSampler(range(50), seed=4)) != a_orders[0]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    list(EpochShuffleSampler(range(50), seed=3))
    assert torch.equal(torch.get_rng_state(), state)

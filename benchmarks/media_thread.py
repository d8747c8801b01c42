"""Whole-fit wall and process CPU of the default small CNN on digits with images at every
epoch: run it under two source trees, interleaved, to compare media rendered on the
training thread (before) and in the background (after); see docs/benchmarks.md.

    git archive <before> lightning_saliency | tar -x -C /tmp/before
    for r in 1 2 3; do
      OMP_NUM_THREADS=1 PYTHONPATH=/tmp/before python benchmarks/media_thread.py
      OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/media_thread.py
    done
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_saliency.callbacks import InterpretationGeneralization, _epoch
from lightning_saliency.data import DigitsDataModule
from lightning_saliency.models import DisjointEnsemble

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
L.seed_everything(0)
tmp = tempfile.mkdtemp()
cb = InterpretationGeneralization(num_train_probes=32, num_test_probes=32, max_overhead=None,
                                  log_images_every_n_epochs=1)  # fmt: skip
trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=4, callbacks=[cb],
                    logger=TensorBoardLogger(tmp, name="cost"), enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, default_root_dir=tmp)  # fmt: skip
model = DisjointEnsemble(backbone="small_cnn", num_classes=10, in_chans=1)
t0, c0 = time.perf_counter(), time.process_time()
with contextlib.redirect_stdout(io.StringIO()):
    trainer.fit(model, DigitsDataModule())
arm = "background" if hasattr(_epoch, "log_run_media") else "training thread"
print(f"{arm}: wall {time.perf_counter() - t0:.2f} s, cpu {time.process_time() - c0:.2f} s")

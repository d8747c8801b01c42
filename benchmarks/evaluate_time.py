"""CPU seconds of one InterpretationGeneralization.evaluate at the callback defaults (8 methods,
K = 2, 32 + 32 probes, digits), min and median of 5, one thread: the per-epoch cost of the
monitor on a tiny model (host overhead) or the default small CNN, and where it goes per
stage (``generalization/_timing.py``; the attribution stage is the floor).

    OMP_NUM_THREADS=1 python benchmarks/evaluate_time.py mlp        # or small_cnn
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings

import lightning as L
import torch

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.data import DigitsDataModule
from lightning_saliency.generalization._timing import StageTimes
from lightning_saliency.models import DisjointEnsemble


def main(backbone: str) -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    L.seed_everything(0)
    cb = InterpretationGeneralization(num_train_probes=32, num_test_probes=32,
                                      max_overhead=None, log_images_every_n_epochs=0)  # fmt: skip
    model = DisjointEnsemble(backbone=backbone, num_classes=10, in_chans=1, optimizer="adamw",
                             lr=3e-3)  # fmt: skip
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                        default_root_dir=tempfile.mkdtemp(), callbacks=[cb],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, DigitsDataModule())
    times, stages = [], StageTimes()
    for _ in range(5):
        c0 = time.process_time()
        with stages.active():  # where the time goes (issue 21), per stage
            cb.evaluate(model)
        times.append(time.process_time() - c0)
    times.sort()
    print(f"{backbone} cpu s per evaluate: min {times[0]:.3f} median {times[2]:.3f}")
    print("\n".join(stages.lines(5)).replace("monitored epoch (5 epochs)", "evaluate (5 calls)"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mlp")

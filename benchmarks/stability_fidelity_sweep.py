"""Train a stability-fidelity sweep config, then pair stability with fidelity per method.

Trains ``configs/experiments/stability_fidelity.yaml`` (or ``--config``) with LightningCLI,
re-evaluates the trained models with the run's callback (the same probes and noise seed as
its last monitored epoch), adds the distance of every smoothed map to the same model's plain
gradient (:func:`~lightning_saliency.generalization.stability_fidelity.fidelity_statistics`),
prints one line per method and the log-log slopes on noise (Ye and Farnia predict about -1
for the distance between the models' maps and +1 for the distance to the plain gradient),
and adds the figure to the run's TensorBoard (``interp_figures/stability_fidelity``) and to
``<run dir>/stability_fidelity.png``.

    python benchmarks/stability_fidelity_sweep.py [--config PATH] [LightningCLI overrides...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.cli import cli_main
from lightning_saliency.generalization import figure_tag
from lightning_saliency.generalization.stability_fidelity import (
    fidelity_statistics,
    stability_fidelity_points,
)
from lightning_saliency.report.stability_fidelity import slopes, stability_fidelity_figure

CONFIG = Path(__file__).resolve().parents[1] / "configs/experiments/stability_fidelity.yaml"


def _fmt(e: object) -> str:
    return "-" if e is None else f"{e.value:.4f} [{e.lo:.4f}, {e.hi:.4f}]"  # type: ignore[attr-defined]


def main(argv: list[str]) -> None:
    args = argv if "--config" in argv else ["--config", str(CONFIG), *argv]
    cli = cli_main(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print(f"fit: {time.perf_counter() - start:.1f} s, {cli.trainer.current_epoch} epochs")
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, InterpretationGeneralization)]
    assert cb.probes is not None
    evaluation = cb.evaluate(cli.model, stage="fit")
    evaluation.extend(fidelity_statistics(evaluation.maps, cb.specs, cb.probes.layout))
    points = stability_fidelity_points(evaluation.estimates, cb.specs)
    print("curve | noise | method | plain_gradient_l2 | spearman above chance | L2 between models | gap")
    for p in points:
        print(" | ".join([p.curve, f"{p.noise:g}", p.label, _fmt(p.fidelity),
                          _fmt(p.above_chance), _fmt(p.instability), _fmt(p.gap)]))  # fmt: skip
    for curve, (a, b) in slopes(points).items():
        print(f"{curve}: L2 between models ~ noise^{a:.2f}, to plain gradient ~ noise^{b:.2f}")
    fig = stability_fidelity_figure(evaluation.estimates, cb.specs, epoch=cli.trainer.current_epoch - 1)
    if fig is not None:
        out = Path(cli.trainer.log_dir or ".") / "stability_fidelity.png"
        fig.savefig(out, dpi=100)
        logger = cli.trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_figure"):
            logger.experiment.add_figure(figure_tag("stability_fidelity"), fig,
                                         cli.trainer.global_step)  # fmt: skip
            logger.experiment.flush()
        print(f"figure: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

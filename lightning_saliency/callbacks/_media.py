"""A monitored epoch's media (map grids and figures), rendered off the training thread.

Rendering the grids (PIL) and figures (matplotlib, no pyplot) of an epoch takes about a
second of CPU on the default job, and much of it runs in parallel with training when a
background thread does it (measured in docs/benchmarks.md, "Media off the training
thread"). The split:

* :func:`media_job` (training thread): the rows to show, copied to the CPU, so that
  nothing the training thread changes later is read by the renderer;
* :func:`render` (any thread): the job's images, ``{tag: (H, W, 3) uint8}``;
* :class:`MediaWorker`: one background thread, at most one epoch in flight. Its owner
  waits for it (:meth:`MediaWorker.wait`) before the next monitored epoch, at the end of
  each fit, validate or test, and when a fit fails, so that no image is lost and an
  error raised while rendering surfaces on the training thread.

Only TensorBoard loggers are written from the worker (their event writer is locked); with
a W&B or MLflow logger, whose steps must not go back, the media are rendered and logged
on the training thread as before.

>>> w = MediaWorker()
>>> w.submit(lambda: None)
>>> w.wait(); w.jobs
1
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from lightning_saliency.attribution import MethodSpec
from lightning_saliency.generalization import (
    EpochEvaluation,
    Estimate,
    MetricKey,
    figure_tag,
    image_tag,
)

from . import _tensorboard

__all__ = ["MediaJob", "MediaWorker", "media_job", "render"]


@dataclass(frozen=True)
class MediaJob:
    """What one epoch's media need, detached from the training state (CPU copies)."""

    images: Tensor  # (n, C, H, W): the first test probes
    maps: dict[str, Tensor]  # method label -> (sources, n, ...) maps of those probes
    estimates: Mapping[MetricKey, Estimate]
    specs: tuple[MethodSpec, ...]
    k_models: int
    epoch: int
    step: int


def media_job(result: EpochEvaluation, specs: Sequence[MethodSpec], probes: Any,
              num_images: int, step: int, k_models: int, epoch: int) -> MediaJob:  # fmt: skip
    """The epoch's media inputs: the first ``num_images`` test probes and their maps."""
    test = probes.part("test")
    rows = slice(test.start, test.start + min(num_images, test.stop - test.start))
    return MediaJob(
        images=probes.images[rows].detach().cpu().clone(),
        maps={label: m[:, rows].detach().cpu().clone() for label, m in result.maps.items()},
        estimates=dict(result.estimates),
        specs=tuple(specs),
        k_models=k_models,
        epoch=epoch,
        step=step,
    )


def render(job: MediaJob) -> dict[str, np.ndarray]:
    """The job's map grids and figures as ``{tag: (H, W, 3) uint8}`` (thread-safe: PIL and
    matplotlib ``Figure`` objects, no pyplot state). A figure that fails to draw is left
    out with a warning: a broken figure must never stop training."""
    images = {
        image_tag(label): _tensorboard.map_grid(
            job.images, maps, job.k_models, title=f"{label}, epoch {job.epoch}"
        )
        for label, maps in job.maps.items()
    }
    stage = next(iter(job.estimates)).stage if job.estimates else "fit"
    try:
        figures = _tensorboard.figures(job.estimates, job.specs, stage, job.epoch)
    except Exception as err:
        warnings.warn(f"InterpretationGeneralization: could not draw figures: {err}", stacklevel=2)
        figures = {}
    for name, fig in figures.items():
        images[figure_tag(name)] = _tensorboard.figure_array(fig)
        _tensorboard.close(fig)
    return images


class MediaWorker:
    """One background thread for media, at most one job in flight (see the module).

    ``cpu`` sums the worker thread's own CPU seconds over its ``jobs``. Pickling
    (DDP spawn, deep copies) keeps that sum and drops the thread, which a copy restarts
    on its first :meth:`submit`.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.cpu = 0.0
        self.jobs = 0

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the background, after the job in flight (if any) has finished."""
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="lightning-saliency-media")
        self._pending = self._pool.submit(_timed, fn)

    def wait(self) -> None:
        """Block until the job in flight is done; re-raise its error here, if it had one."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.cpu, self.jobs = self.cpu + pending.result(), self.jobs + 1

    def close(self) -> None:
        """:meth:`wait`, then stop the thread (a later :meth:`submit` starts a new one)."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "jobs": self.jobs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.cpu, self.jobs = state["cpu"], state["jobs"]


def _timed(fn: Callable[[], None]) -> float:
    """Run ``fn``; the calling thread's CPU seconds it took."""
    cpu0 = time.thread_time()
    fn()
    return time.thread_time() - cpu0

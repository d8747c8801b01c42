"""Media off the training thread (issue 21): the worker runs one job at a time, surfaces its
errors on the training thread, survives pickling, and a fit's images all reach TensorBoard,
rendered from the worker, identical to the ones rendered on the training thread, even when
the fit fails part-way."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from _tiny import callback, data, ensemble, trainer

from lightning_saliency.callbacks import _logging, _media
from lightning_saliency.callbacks._media import MediaWorker

RENDER = _media.render  # the real one (each fit below wraps it in its own spy)


def test_one_job_in_flight_in_another_thread() -> None:
    w = MediaWorker()
    release, go, order, threads = threading.Event(), threading.Event(), [], []

    def first() -> None:
        threads.append(threading.current_thread().name)
        release.wait(5)
        order.append("first")

    def second() -> None:
        go.wait(5)  # held until the test has looked at `order`
        order.append("second")

    w.submit(first)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    w.submit(second)  # waits for the first job before it is queued
    assert order == ["first"]
    go.set()
    w.close()
    assert order == ["first", "second"] and w.jobs == 2
    assert threads[0].startswith("lightning-saliency-media") and threads[0] != "MainThread"
    w.close()  # idempotent


def test_an_error_in_the_worker_is_raised_on_the_training_thread() -> None:
    w = MediaWorker()

    def broken() -> None:
        raise RuntimeError("grid failed")

    w.submit(broken)
    with pytest.raises(RuntimeError, match="grid failed"):
        w.wait()
    w.wait()  # reported once
    w.submit(lambda: None)  # the worker goes on
    w.close()
    assert w.jobs == 1


def test_pickling_keeps_the_sums_and_drops_the_thread() -> None:
    w = MediaWorker()
    w.submit(lambda: None)
    w.wait()
    copy = pickle.loads(pickle.dumps(w))
    assert (copy.jobs, copy.cpu) == (1, w.cpu) and copy._pool is None
    copy.submit(lambda: None)
    copy.close()
    w.close()
    assert copy.jobs == 2


def _images(log_dir: Path) -> dict[str, list[tuple[int, bytes]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return {t: [(e.step, e.encoded_image_string) for e in acc.Images(t)] for t in acc.Tags()["images"]}


def _fit_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threaded: bool,
                fail_at_epoch: int | None = None) -> tuple[dict, set[str]]:  # fmt: skip
    """A 3-epoch fit's images (every epoch monitored and imaged) and the rendering threads."""
    names: set[str] = set()

    def spy(job: _media.MediaJob) -> dict[str, np.ndarray]:
        names.add(threading.current_thread().name)
        if fail_at_epoch is not None:
            time.sleep(1.0)  # the last monitored epoch's job is still in flight at the failure
        return RENDER(job)

    monkeypatch.setattr(_media, "render", spy)
    monkeypatch.setattr(_logging, "only_tensorboard_media", lambda t: threaded)

    class Stop(L.Callback):
        def on_train_epoch_start(self, t: L.Trainer, m: L.LightningModule) -> None:
            if t.current_epoch == fail_at_epoch:
                raise RuntimeError("the fit fails here")  # the callbacks' on_exception runs

    L.seed_everything(0)
    t = trainer(tmp_path, [callback(), Stop()], max_epochs=3)
    if fail_at_epoch is None:
        t.fit(ensemble(), data())
    else:
        with pytest.raises(RuntimeError, match="the fit fails here"):
            t.fit(ensemble(), data())
    return _images(Path(t.logger.log_dir)), names


@pytest.mark.slow
def test_the_worker_writes_every_epoch_the_same_images(tmp_path: Path, monkeypatch) -> None:
    sync, sync_threads = _fit_images(tmp_path / "sync", monkeypatch, threaded=False)
    bg, bg_threads = _fit_images(tmp_path / "bg", monkeypatch, threaded=True)
    assert sync_threads == {"MainThread"}
    assert bg_threads and "MainThread" not in bg_threads
    assert "interp_images/simple_grad" in sync and len(sync["interp_images/simple_grad"]) == 3
    assert bg == sync  # every tag, step and PNG byte


@pytest.mark.slow
def test_a_failed_fit_keeps_the_images_of_its_monitored_epochs(tmp_path: Path, monkeypatch) -> None:
    images, threads = _fit_images(tmp_path, monkeypatch, threaded=True, fail_at_epoch=2)
    assert "MainThread" not in threads
    steps = [s for s, _ in images["interp_images/simple_grad"]]
    assert len(steps) == 2  # epochs 0 and 1, the last one still in flight when the fit stopped

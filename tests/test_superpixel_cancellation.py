"""benchmarks/superpixel_cancellation.py on a toy image folder and a saved two-model ensemble."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

from lightning_saliency.models import DisjointEnsemble

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "superpixel_cancellation.py"


def _load():
    spec = importlib.util.spec_from_file_location("superpixel_cancellation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(2):
                # four flat quadrants of random colours: clear segments for slic
                colours = rng.integers(0, 256, (2, 2, 3))
                pixels = np.kron(colours, np.ones((16, 16, 1))).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")


def _checkpoint(path: Path, same_weights: bool) -> Path:
    ens = DisjointEnsemble(backbone="small_cnn", in_chans=3, backbone_kwargs={"width": 4})
    if same_weights:
        ens.models[1].load_state_dict(ens.models[0].state_dict())
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(ens)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cancel")
    _toy_folder(root / "data")
    return root


def test_identical_models_agree_perfectly_every_way(toy: Path) -> None:
    ckpt = _checkpoint(toy / "same.ckpt", same_weights=True)
    out = _load().main([str(ckpt), "--data", str(toy / "data" / "test"), "--probes", "8"])
    for name in ("pixel", "segment sum, signed", "segment sum of |map|", "segment mean of |map|"):
        assert out[name]["ssim"] == pytest.approx(1.0, abs=1e-5), name
        assert out[name]["l2"] == pytest.approx(0.0, abs=1e-5), name
        # the chance level pairs a map with the other model's map of another image
        assert out[name]["ssim_chance"] < 0.999 and out[name]["l2_chance"] > 1e-3, name
    c = out["cancellation"]
    assert c["model_0"] == pytest.approx(c["model_1"])
    assert 0.0 <= c["model_0"] <= 1.0 and c["segments"] > 1


def test_different_models_differ_and_signed_sums_cancel(toy: Path) -> None:
    """Independently initialized models give different maps, and signed gradients cancel
    inside the toy's flat quadrants (|sum g| < sum |g|)."""
    ckpt = _checkpoint(toy / "diff.ckpt", same_weights=False)
    out = _load().main([str(ckpt), "--data", str(toy / "data" / "test"), "--probes", "8"])
    assert out["pixel"]["l2"] > 0.01
    assert out["cancellation"]["model_0"] < 1.0
    with pytest.raises(SystemExit, match=r"no \.ckpt file"):
        _load().main([str(toy / "data"), "--data", str(toy / "data" / "test")])

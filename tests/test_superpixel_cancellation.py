"""benchmarks/superpixel_cancellation.py and agreement_above_chance.py on a toy image folder
and saved two-model ensembles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

from lightning_saliency.models import DisjointEnsemble

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "superpixel_cancellation.py"


def _load(script: Path = SCRIPT):
    spec = importlib.util.spec_from_file_location(script.stem, script)
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


def test_agreement_above_chance_of_identical_and_different_models(toy: Path) -> None:
    from scipy.stats import spearmanr

    script = SCRIPT.with_name("agreement_above_chance.py")
    same = _checkpoint(toy / "same2.ckpt", same_weights=True)
    diff = _checkpoint(toy / "diff2.ckpt", same_weights=False)
    data = str(toy / "data" / "test")
    out = _load(script).main([str(same), str(diff), "--data", data, "--probes", "8"])
    s, d = out[str(same)], out[str(diff)]
    # identical models agree fully; by chance (another image's map) they do not
    assert s["agreement"] == pytest.approx(1.0, abs=1e-6)
    assert s["chance"] < 0.99 and s["above"] == pytest.approx(1.0 - s["chance"], abs=1e-6)
    assert d["agreement"] < 1.0 and d["sd"] > 0 and d["se"] == pytest.approx(d["sd"] / 8**0.5)

    # the chance level, recomputed with scipy: image i's map against the previous image's
    bench = _load()
    x, y = bench.load_probes(data, 8)
    ens = DisjointEnsemble.load_from_checkpoint(diff, map_location="cpu")
    from lightning_saliency.attribution import simple_grad

    a, b = (simple_grad(m.eval(), x, y).abs().sum(1).flatten(1) for m in ens.models)
    want = np.mean([spearmanr(a[i], b[(i - 1) % 8]).statistic for i in range(8)])
    assert d["chance"] == pytest.approx(want, abs=1e-4)
    with pytest.raises(SystemExit, match="at least 2"):
        _load(script).main([str(diff), "--data", data, "--probes", "1"])

"""Bad input reaches the user as an early, clear error naming the argument (issue 12).

Every case here is a row of the bad-input table in docs/bad_input.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lightning_saliency.callbacks import InterpretationGeneralization

ARGUMENT_CASES = {
    "unknown method": ({"methods": ["no_such_method"]}, "unknown saliency method 'no_such_method'"),
    "repeated method": ({"methods": ["simple_grad", "simple_grad"]}, "methods must be distinct"),
    "no method": ({"methods": []}, "at least one saliency method"),
    "zero train probes": ({"num_train_probes": 0}, "num_train_probes must be an int >= 1"),
    "probes as a string": ({"num_test_probes": "8"}, "num_test_probes must be an int >= 1"),
    "every 0 epochs": ({"every_n_epochs": 0}, "every_n_epochs must be an int >= 1"),
    "negative image interval": ({"log_images_every_n_epochs": -1}, "log_images_every_n_epochs must be an int >= 0"),
    "no images": ({"num_images": 0}, "num_images must be an int >= 1"),
    "float seed": ({"seed": 1.5}, "seed must be an int"),
    "bool seed": ({"seed": True}, "seed must be an int"),
    "zero batch size": ({"batch_size": 0}, "batch_size must be an int >= 1"),
    "topk fraction 0": ({"topk": 0.0}, r"topk as a fraction of pixels must be in \(0, 1\]"),
    "topk fraction above 1": ({"topk": 1.5}, r"topk as a fraction of pixels must be in \(0, 1\]"),
    "topk count 0": ({"topk": 0}, "topk as a pixel count must be >= 1"),
    "topk bool": ({"topk": True}, "topk must be a fraction"),
    "normalize as text": ({"normalize": "yes"}, "normalize must be True or False"),
    "channels_last as int": ({"channels_last": 1}, r"channels_last must be True, False or None \(auto\)"),
    "unknown target": ({"target": "foo"}, "target must be 'label' or 'pred'"),
    "unknown precision": ({"precision": "16"}, "precision must be 'auto', '32' or 'bf16'"),
    "unknown metric family": ({"metrics": ["nope"]}, r"unknown metric families \['nope'\]"),
    "metric family as a string": ({"metrics": "gap"}, r"unknown metric families \['gap'\]"),
    "reversed input range": ({"input_range": (1.0, 0.0)}, "input_range must be"),
    "NaN input range": ({"input_range": (math.nan, 1.0)}, "input_range must be"),
    "zero chance draws": ({"chance_draws": 0}, "chance_draws must be an int >= 1"),
}


@pytest.mark.parametrize("case", list(ARGUMENT_CASES))
def test_callback_arguments_fail_at_construction(case: str) -> None:
    kwargs, match = ARGUMENT_CASES[case]
    with pytest.raises(ValueError, match=match):
        InterpretationGeneralization(**kwargs)


def test_the_table_in_the_docs_lists_every_case() -> None:
    table = (Path(__file__).resolve().parents[1] / "docs" / "bad_input.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "`tests/" in ln]
    assert len(rows) >= 30
    for case in ARGUMENT_CASES:
        assert f"| {case} |" in table, case


# --------------------------------------------------------------------------- image folders
def _folder(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                w, h = (sizes or {}).get(f"{split}/{cls}/{i}", (8, 8))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg")
    return root


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("broken", [b"not a jpeg", "truncated"])
def test_a_corrupt_image_is_named_at_setup(tmp_path: Path, in_memory: bool, broken) -> None:
    from lightning_saliency.data import ImageFolderDataModule

    root = _folder(tmp_path / "tree")
    bad = root / "train" / "b" / "2.jpg"
    bad.write_bytes(broken if isinstance(broken, bytes) else bad.read_bytes()[:200])
    dm = ImageFolderDataModule(root=str(root), in_memory=in_memory, mean=None, std=None)
    with pytest.raises(ValueError, match=r"cannot read image '.*2\.jpg' .*remove or replace it"):
        dm.setup("fit")


@pytest.mark.parametrize("in_memory", [False, True])
def test_images_of_mixed_sizes_are_refused_at_setup(tmp_path: Path, in_memory: bool) -> None:
    from lightning_saliency.data import ImageFolderDataModule

    root = _folder(tmp_path / "tree", sizes={"test/b/3": (12, 10)})
    dm = ImageFolderDataModule(root=str(root), in_memory=in_memory, mean=None, std=None)
    with pytest.raises(ValueError, match="set image_size to resize them"):
        dm.setup("fit")
    resized = ImageFolderDataModule(root=str(root), in_memory=in_memory, mean=None, std=None,
                                    image_size=8)  # fmt: skip
    resized.setup("fit")
    assert tuple(resized.heldout_dataset()[7][0].shape) == (3, 8, 8)

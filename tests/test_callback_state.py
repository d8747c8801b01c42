"""The callback's two owned objects: the frozen settings (one identity list behind the state
key, the settings record and the resume check) and the run state (its own state_dict); and
that checkpoints written before they existed still load (no training here: fast)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.callbacks._run import MonitorRun
from lightning_saliency.callbacks._settings import (
    IDENTITY,
    KEY_FIELDS,
    RESUME_FIELDS,
    MonitorSettings,
)

METHODS = ["simple_grad", {"method": "smooth_grad", "noise_level": 0.2, "samples": 4}]
ARGS = {"methods": METHODS, "num_train_probes": 8, "num_test_probes": 6, "seed": 3,
        "metrics": ["gap"], "input_range": (0, 1)}  # fmt: skip
#: ARGS as a CPU run resolves them at setup (``precision="auto"``, ``channels_last=None``):
#: a checkpoint's state always comes from a set-up callback, and is loaded into one.
ON_CPU = {**ARGS, "precision": "32", "channels_last": False}

#: What version 0.2's callback (before MonitorSettings/MonitorRun) gave for ARGS, verbatim.
OLD_STATE_KEY = (
    "InterpretationGeneralization{'methods': ['simple_grad', 'smooth_grad_nl0.2_n4'], "
    "'num_train_probes': 8, 'num_test_probes': 6, 'seed': 3, 'target': 'label', 'normalize': True}"
)
OLD_SETTINGS = {
    "methods": ["simple_grad", "smooth_grad_nl0.2_n4"], "num_train_probes": 8,
    "num_test_probes": 6, "seed": 3, "target": "label", "normalize": True, "topk": 0.1,
    "metrics": ["gap"], "input_range": [0.0, 1.0], "precision": "32", "chance_draws": 4,
    "fold_batchnorm": True, "families_every_n_epochs": 1,
}  # fmt: skip
OLD_SCHEDULE = {"every_n_epochs": 1, "max_overhead": 0.1, "train_seconds": 4.5,
                "trained_epochs": 2, "monitor_seconds": 1.5, "monitor_runs": 2,
                "last_monitored": 1, "skipped": [[3, "over budget"]]}  # fmt: skip


def _old_state(**settings_changes: object) -> dict:
    """A callback state as version 0.2 wrote it into a checkpoint."""
    return {
        "seed": 3,
        "settings": {**OLD_SETTINGS, **settings_changes},
        "probe_indices": {"train_0": [5, 1], "test": [0, 2]},
        "logged_epochs": [0, 1],
        "final_values": {"interp/simple_grad/gap": 0.25},
        "previous": {"simple_grad": torch.ones(2, 2, 1, 4, 4)},
        "schedule": dict(OLD_SCHEDULE),
    }


def test_state_key_settings_and_state_dict_keys_are_those_of_old_checkpoints() -> None:
    cb = InterpretationGeneralization(**ON_CPU)
    assert cb.state_key == OLD_STATE_KEY
    # the old settings in their order, and the (recorded-only) channels_last after them
    assert cb.settings == {**OLD_SETTINGS, "channels_last": False}
    assert list(cb.settings) == [*OLD_SETTINGS, "channels_last"]
    # the defaults name the same state: precision and channels_last are not in the key
    assert InterpretationGeneralization(**ARGS).state_key == OLD_STATE_KEY
    assert list(cb.state_dict()) == list(_old_state())


def test_an_old_checkpoint_state_loads_into_the_run() -> None:
    cb = InterpretationGeneralization(**ON_CPU)
    cb.load_state_dict(_old_state())
    run = cb.run
    assert run.loaded_indices == {"train_0": [5, 1], "test": [0, 2]}
    assert cb.logged_epochs == [0, 1] and run.last_logged_epoch == 1
    assert cb.final_values == {"interp/simple_grad/gap": 0.25}
    assert torch.equal(run.previous["simple_grad"], torch.ones(2, 2, 1, 4, 4))
    assert cb._schedule.state_dict() == OLD_SCHEDULE
    # and it comes back out as it went in (the probes are drawn at setup, not loaded here)
    out = cb.state_dict()
    assert {k: out[k] for k in ("seed", "logged_epochs", "final_values")} == {
        k: _old_state()[k] for k in ("seed", "logged_epochs", "final_values")
    }
    assert out["settings"] == {**OLD_SETTINGS, "channels_last": False}
    assert out["schedule"] == OLD_SCHEDULE


def test_the_identity_list_decides_what_a_resume_must_keep() -> None:
    cb = InterpretationGeneralization(**ON_CPU)
    for name in RESUME_FIELDS:  # each one a resume must keep is named when it changed
        with pytest.raises(ValueError, match=rf"\({name}: "):
            cb.load_state_dict(_old_state(**{name: "changed"}))
    # recorded only: may change on resume
    cb.load_state_dict(_old_state(families_every_n_epochs=5, channels_last=True))
    # a checkpoint written before the settings were recorded: the seed alone is checked
    old = _old_state()
    del old["settings"]
    with pytest.raises(ValueError, match=r"seed: 4 -> 3"):
        cb.load_state_dict({**old, "seed": 4})
    assert list(cb.settings) == [name for name, _ in IDENTITY]
    assert KEY_FIELDS == ("methods", "num_train_probes", "num_test_probes", "seed", "target",
                          "normalize")  # fmt: skip
    assert "families_every_n_epochs" not in RESUME_FIELDS and "channels_last" not in RESUME_FIELDS
    assert "precision" in RESUME_FIELDS and "precision" not in KEY_FIELDS


def test_a_checkpoint_under_another_key_is_refused_naming_the_change() -> None:
    cb = InterpretationGeneralization(**{**ON_CPU, "seed": 4})
    checkpoint = {"callbacks": {OLD_STATE_KEY: _old_state()}}
    with pytest.raises(ValueError, match=r"seed: 3 -> 4"):
        cb.on_load_checkpoint(None, None, checkpoint)  # type: ignore[arg-type]
    same = InterpretationGeneralization(**ON_CPU)
    same.on_load_checkpoint(None, None, checkpoint)  # type: ignore[arg-type]
    # another class's state under a similar key is not ours to compare
    other = {"callbacks": {"Other{'seed': 3}": {"settings": {"seed": 3}}}}
    cb.on_load_checkpoint(None, None, other)  # type: ignore[arg-type]


def test_settings_are_frozen_and_mirror_the_constructor() -> None:
    cb = InterpretationGeneralization(**ARGS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cb.config.seed = 1  # type: ignore[misc]
    params = list(inspect.signature(InterpretationGeneralization.__init__).parameters)[1:]
    fields = [f.name for f in dataclasses.fields(MonitorSettings)]
    assert ["specs" if p == "methods" else p for p in params] == fields
    assert cb.config.input_range == (0.0, 1.0) and cb.config.metrics == ("gap",)
    assert [s.label for s in cb.specs] == OLD_SETTINGS["methods"]
    with pytest.raises(TypeError, match="missing"):
        MonitorSettings.from_arguments(methods=["simple_grad"], seed=0)


def test_the_constructor_signature_is_what_configs_and_the_cli_read() -> None:
    """LightningCLI reads the signature: names, defaults and annotations stay as they were
    (changed on purpose once: issue 21 made ``precision`` ``"auto"``, ``channels_last`` None)."""
    sig = inspect.signature(InterpretationGeneralization.__init__)
    defaults = {n: p.default for n, p in sig.parameters.items() if n != "self"}
    assert defaults == {
        "methods": None, "num_train_probes": 64, "num_test_probes": 64, "every_n_epochs": 1,
        "reference": None, "normalize": True, "target": "label", "precision": "auto", "seed": 0,
        "log_images_every_n_epochs": 5, "num_images": 4, "metrics": None, "train_probes": None,
        "test_probes": None, "input_range": None, "unnormalize": None, "batch_size": None,
        "channels_last": None, "topk": 0.1, "chance_draws": 4, "max_overhead": 0.1,
        "is_ensemble": None, "probe_transform": None, "fold_batchnorm": True,
        "output_transform": None, "families_every_n_epochs": 1, "input_key": None,
        "label_key": None, "profile": False, "tensorboard_scalars": "headline",
    }  # fmt: skip
    hints = {n: p.annotation for n, p in sig.parameters.items() if n != "self"}
    assert hints == {
        "methods": "Sequence[str | Mapping[str, Any]] | None", "num_train_probes": "int",
        "num_test_probes": "int", "every_n_epochs": "int", "reference": "str | nn.Module | None",
        "normalize": "bool", "target": "Literal['label', 'pred']",
        "precision": "Literal['auto', '32', 'bf16']", "seed": "int",
        "log_images_every_n_epochs": "int",
        "num_images": "int", "metrics": "Sequence[str] | None", "train_probes": "Any",
        "test_probes": "Any", "input_range": "tuple[float, float] | None",
        "unnormalize": "Callable[[Tensor], Tensor] | None", "batch_size": "int | None",
        "channels_last": "bool | None", "topk": "float", "chance_draws": "int",
        "max_overhead": "float | None", "is_ensemble": "bool | None",
        "probe_transform": "Callable[[Any], Any] | None", "fold_batchnorm": "bool",
        "output_transform": "Callable[[Any], Tensor] | None", "families_every_n_epochs": "int",
        "input_key": "str | None", "label_key": "str | None", "profile": "bool",
        "tensorboard_scalars": "Literal['headline', 'all']",
    }  # fmt: skip


def test_a_fit_setup_starts_a_new_run_and_once_is_once() -> None:
    cb = InterpretationGeneralization(**ON_CPU)
    cb.load_state_dict(_old_state())
    run: MonitorRun = cb.run
    assert run.once("layout") and not run.once("layout")
    run.start_fit(cb.config)
    assert run.logged_epochs == [] and run.final_values == {} and run.previous is None
    assert run.loaded_indices is None and run.schedule.monitor_runs == 0
    assert not run.once("layout")  # one-time actions stay done for the callback's life
    assert run.decision(0) is None
    run.decide(0, False, "over budget")
    assert run.decision(0) is False and run.decision(1) is None
    assert run.schedule.skipped == [[0, "over budget"]]

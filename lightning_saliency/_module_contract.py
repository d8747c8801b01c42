"""What ``lightning-saliency fit --model my_pkg.MyModule`` asks of a user's LightningModule,
checked once before fit, with one message that says what to change.

The contract (``docs/own_model.md``, section 2):

* **training batches are a list of K ``(x, y)`` pairs**, one per split of the
  :class:`~lightning_saliency.data.DisjointSplitDataModule` (K = its ``num_models``; with
  K = 1 the batch is ``[(x, y)]``); model k trains on ``batch[k]`` only;
* the K models sit in an ``nn.ModuleList`` named ``models``, so that the
  ``InterpretationGeneralization`` callback explains each one against the others'
  leave-one-out reference; a module monitored as one model needs the callback's
  ``reference`` (else only reference-free numbers are logged and every method's gap reads
  "not logged").

The batch check calls ``training_step`` once, on a deep copy of the module (a forward in
train mode moves BatchNorm statistics and spectral-norm vectors), on two images of each
split, under a forked RNG: the user's module, the data order and every seed are unchanged.
It refuses only what it has shown: ``training_step`` fails on the data module's batch and
succeeds on one ``(x, y)`` pair. A step that needs the trainer (``self.optimizers()``,
``self.trainer``) cannot be tried before fit and is left to fit.

The library's own modules (``DisjointEnsemble``, ``Classifier``) keep this contract by
construction and are not tried.
"""

from __future__ import annotations

import ast
import copy
import re
import warnings
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import default_collate

from lightning_saliency.callbacks import InterpretationGeneralization
from lightning_saliency.callbacks._setup import _first_line, models_of
from lightning_saliency.models import Classifier, DisjointEnsemble

__all__ = ["BATCH_FORMAT", "DOCS", "check_module_contract", "unaccepted_model_options"]

#: Where the contract is explained, with a complete example module.
DOCS = "docs/own_model.md (section 2, 'Your module through the command line')"
#: The training batch the data module gives, in words (``{k}``: its ``num_models``).
BATCH_FORMAT = (
    "a training batch is a list of K={k} (x, y) pairs, one per disjoint split "
    "(batch[k] is split k's images and labels{single})"
)
_TRIAL_IMAGES = 2


def check_module_contract(model: nn.Module, datamodule: Any, callbacks: Sequence[Any]) -> None:
    """Refuse, with one message naming every change and :data:`DOCS`, a user's module that
    the CLI's data module and monitor callbacks cannot work with (see the module docstring).

    >>> import lightning as L
    >>> class One(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Linear(4, 3)
    ...     def training_step(self, batch, batch_idx):
    ...         (x, y), = batch
    ...         return nn.functional.cross_entropy(self.net(x.flatten(1)), y)
    >>> check_module_contract(One(), None, [InterpretationGeneralization()])
    Traceback (most recent call last):
    ...
    ValueError: One does not fit what lightning-saliency fit gives it:
      - the callback monitors One as one model (it has no nn.ModuleList named `models`) and has no `reference`: the gap and agreement need one, so every method would read "not logged". Keep the models in `self.models = nn.ModuleList(...)`, or give the callback a reference (its init_args.reference in trainer.callbacks: a checkpoint of a model trained on more data)
    See docs/own_model.md (section 2, 'Your module through the command line') for a complete module.
    """
    if type(model) in (DisjointEnsemble, Classifier):
        return
    k_data = getattr(datamodule, "num_models", None)
    problems = _batch_problems(model, datamodule, k_data)
    monitors = [cb for cb in callbacks if isinstance(cb, InterpretationGeneralization)]
    for cb in monitors[:1]:  # one monitor says it; a second would repeat it
        problems += _model_problems(model, cb, k_data)
    if problems:
        name = type(model).__name__
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(
            f"{name} does not fit what lightning-saliency fit gives it:\n{listed}\n"
            f"See {DOCS} for a complete module."
        )


def _model_problems(model: nn.Module, cb: Any, k_data: int | None) -> list[str]:
    """The K models the monitor needs (or its reference), against the data's K splits."""
    name = type(model).__name__
    try:
        models = models_of(model, cb.config.is_ensemble)
    except ValueError as err:
        return [f"{err} (or set the callback's is_ensemble: null)"]
    k, has_ref = len(models), cb.config.reference is not None
    if k == 1 and not has_ref:
        per_split = "" if k_data in (None, 1) else f", one per split (K={k_data})"
        return [
            f"the callback monitors {name} as one model (it has no nn.ModuleList named "
            "`models`) and has no `reference`: the gap and agreement need one, so every method "
            f'would read "not logged". Keep the models in `self.models = nn.ModuleList(...)`'
            f"{per_split}, or give the callback a reference (its init_args.reference in "
            "trainer.callbacks: a checkpoint of a model trained on more data)"
        ]
    if k >= 2 and k_data is not None and k != k_data:
        return [
            f"{name}.models holds {k} models but the data module trains K={k_data} splits "
            f"(data.init_args.num_models): make them equal (the CLI passes num_models to "
            f"{name}.__init__ when it has that argument)"
        ]
    return []


def _trial_batch(datamodule: Any, k: int) -> list[Any] | None:
    """Two images of each split, collated as the training loader does (None if the data
    module has no splits to take them from)."""
    if not hasattr(datamodule, "split_dataset"):
        return None
    batch = []
    for split in range(k):
        dataset = datamodule.split_dataset(split)
        n = min(_TRIAL_IMAGES, len(dataset))
        batch.append(default_collate([dataset[i] for i in range(n)]))
    return batch


def _try_step(model: nn.Module, batch: Any) -> BaseException | None:
    """The error of ``training_step(batch, 0)`` on a copy of ``model`` (None: it ran)."""
    trial = copy.deepcopy(model)
    trial.train()
    with isolate_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer warns, by design
        try:
            trial.training_step(batch, 0)  # type: ignore[operator]
        except Exception as err:  # the user's code: anything can fail
            return err
    return None


def _batch_problems(model: nn.Module, datamodule: Any, k_data: int | None) -> list[str]:
    """Whether ``training_step`` takes the data module's batch (a list of K pairs), shown by
    trying it and, when it fails, one ``(x, y)`` pair."""
    step = getattr(model, "training_step", None)
    if not isinstance(k_data, int) or k_data < 1 or not callable(step):
        return []
    try:
        with isolate_rng():
            batch = _trial_batch(datamodule, k_data)
        if batch is None:
            return []
        failed = _try_step(model, batch)
        if failed is None or _try_step(model, batch[0]) is not None:
            return []  # it runs, or it fails on one pair too: not the format, fit will tell
    except Exception:  # a module that cannot be copied, a data module that cannot be read
        return []
    name = type(model).__name__
    single = ": with K=1 it is [(x, y)]" if k_data == 1 else ""
    fix = ("write `(x, y), = batch`" if k_data == 1 else
           "train model k on batch[k] only: `for model, (x, y) in zip(self.models, batch)`")  # fmt: skip
    return [
        f"{BATCH_FORMAT.format(k=k_data, single=single)}; {name}.training_step takes one "
        f"(x, y) pair (on the list it fails with {_first_line(failed)}): {fix}"
    ]


_OPTION = re.compile(
    r"Parser key \"model\":.*?Problem with given class_path '([\w.]+)':\s*"
    r"Option '(\w+)' is not accepted",
    re.S,
)
_GIVEN = re.compile(r"Given value: (\{.*\})")


def unaccepted_model_options(parse_error: str, accepted: set[str]) -> str | None:
    """The message for a config whose model section holds arguments the ``--model`` class
    does not take (jsonargparse names only the first, under 60 lines), or None.

    >>> text = ('error: Parser key "model":\\n  - Problem with given class_path \\'own.Net\\':\\n'
    ...         "      Option 'backbone' is not accepted\\n  Given value: {'backbone': 'x', 'lr': 0.1}")
    >>> print(unaccepted_model_options(text, {"self", "lr"}))
    the config's model section sets backbone, which own.Net does not take (it takes: lr). A model section without class_path holds DisjointEnsemble's arguments (as in configs/default.yaml): start from configs/own_model.yaml and set its model.class_path to own.Net, or drop those keys; see docs/own_model.md (section 2, 'Your module through the command line')
    """
    found = _OPTION.search(parse_error)
    if found is None:
        return None
    class_path, keys = found.group(1), [found.group(2)]
    given = _GIVEN.search(parse_error[found.end() :])
    if given is not None:
        try:
            value = ast.literal_eval(given.group(1))
            keys = sorted(k for k in value if k not in accepted) or keys
        except (ValueError, SyntaxError):
            pass
    takes = ", ".join(sorted(accepted - {"self"})) or "no arguments"
    return (
        f"the config's model section sets {', '.join(keys)}, which {class_path} does not take "
        f"(it takes: {takes}). A model section without class_path holds DisjointEnsemble's "
        "arguments (as in configs/default.yaml): start from configs/own_model.yaml and set its "
        f"model.class_path to {class_path}, or drop those keys; see {DOCS}"
    )

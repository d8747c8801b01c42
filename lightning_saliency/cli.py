"""Command line: ``lightning-saliency {fit,validate,test,predict,report} ...``.

A thin :class:`~lightning.pytorch.cli.LightningCLI` around any LightningModule
(``--model <class_path>``; default :class:`~lightning_saliency.models.DisjointEnsemble`)
and any :class:`~lightning_saliency.data.DisjointSplitDataModule` subclass (chosen with
``data.class_path``). The data module decides the number of models, the number of
classes, the channels and the image size; they are linked into the model's
``num_models``, ``num_classes``, ``in_chans`` and ``image_size`` where the model class
has those arguments (a config states them once), and left alone where it does not.
A model section without ``class_path`` configures the default ``DisjointEnsemble``;
another class starts from its own defaults, never from the ensemble's.
``report`` reads run folders back into tables and plots (:mod:`lightning_saliency.report`).

``seed_everything`` is the one seed knob: it also sets the model's ``init_seed`` and the
data's ``split_seed`` (splits and data order) unless the config or the command line sets
them; ``config.yaml`` and ``identity.json`` record the effective seeds. The callback's probe
``seed`` and the data's ``data_seed`` (the held-out set) stay fixed, so every seed is
monitored on the same probes. Before ``fit`` writes anything, the run folder is checked: a
fresh fit needs a folder without another run's record, a resume (``--ckpt_path``) its own
folder (or a new one) and unchanged seeds, model and data settings
(:mod:`lightning_saliency._run_guard`). Before that, a user's module passed with ``--model``
is checked against what the data module and the callback give it (training batches as a list
of K ``(x, y)`` pairs, the K models in ``models`` or a ``reference``), and a config's model
arguments that the class does not take are named (:mod:`lightning_saliency._module_contract`).

Examples:
    Train two small CNNs on disjoint halves of scikit-learn's digits::

        lightning-saliency fit --config configs/default.yaml

    One classifier and a reference checkpoint (see the config's header)::

        lightning-saliency fit --config configs/single_model_reference.yaml

    Your own LightningModule (any class importable by its path; a model section without
    ``class_path``, as in ``configs/default.yaml``, holds DisjointEnsemble arguments, so
    give yours a ``class_path`` or override only arguments your class takes)::

        lightning-saliency fit --config my_config.yaml --model my_pkg.MyModule
        lightning-saliency fit --config my_config.yaml --model.init_args.hidden 64

    ``--print_config`` shows the model's defaults for the linked ``num_classes``,
    ``in_chans`` and ``image_size``; the run uses the data module's values, and
    ``config.yaml`` in the run folder records them.

    Print the fully resolved config instead of running::

        lightning-saliency fit --config configs/default.yaml --print_config
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import sys
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lightning_saliency import _compat
from lightning_saliency._module_contract import check_module_contract, unaccepted_model_options
from lightning_saliency._run_guard import RunConfigCallback, check_before_fit
from lightning_saliency.data import DisjointSplitDataModule

__all__ = ["DEFAULT_MODEL", "REPORT_HELP", "SaliencyCLI", "cli_main", "main"]

#: The model class of a config whose ``model`` section has no ``class_path``.
DEFAULT_MODEL = "lightning_saliency.models.DisjointEnsemble"
#: One-line help of the ``report`` subcommand.
REPORT_HELP = "Tables and plots of the studies from run folders (lightning-saliency report --help)."
_EXITING = ("-h", "--help", "--print_config")
#: Seeds that follow ``seed_everything`` unless the config or the command line sets them:
#: ``(section, argument)``. The data module's ``data_seed`` (which images are held out) and
#: the callback's probe ``seed`` stay fixed: every seed sees the same data and probes.
SEED_FOLLOWERS = (("model", "init_seed"), ("data", "split_seed"))
_UNSET = -987_654_321  # a default no one writes: marks a seed the user did not set


def _num_models(dm: DisjointSplitDataModule) -> int:
    return int(dm.num_models)


def _num_classes(dm: DisjointSplitDataModule) -> int:
    return int(dm.num_classes)


def _in_chans(dm: DisjointSplitDataModule) -> int:
    return int(dm.in_chans)


def _image_size(dm: DisjointSplitDataModule) -> int | None:
    size = dm.image_size
    return None if size is None else int(size)


#: Model init args computed from the instantiated data module (``num_models`` is linked at
#: parse time from ``data.init_args.num_models``).
_INSTANTIATION_LINKS = {
    "num_classes": _num_classes,
    "in_chans": _in_chans,
    "image_size": _image_size,
}


class SaliencyCLI(LightningCLI):
    """LightningCLI for any model class, linking the data module's shape facts into it.

    Links target ``model.init_args.<name>``; jsonargparse skips a link whose target the
    chosen class does not have, so a user's module gets only the facts it asks for.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}})
        parser.link_arguments("data.init_args.num_models", "model.init_args.num_models")
        for name, fn in _INSTANTIATION_LINKS.items():
            parser.link_arguments(
                "data", f"model.init_args.{name}", compute_fn=fn, apply_on="instantiate"
            )

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        action = _compat.subcommands_action(parser)  # listed in --help; ``main`` runs it
        if action is not None:
            report = LightningArgumentParser(description=REPORT_HELP)
            action.add_subcommand("report", report, help=REPORT_HELP)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse with the chosen model class as the default, so its own defaults apply.

        jsonargparse carries the previous class's init args over to a new ``class_path``
        when they type-check; with ``DisjointEnsemble`` as the only default, a user's
        ``lr: float = 0.01`` would silently become the ensemble's 0.1. A first, silent
        parse finds the chosen class; the real parse then starts from it.
        """
        errors: list[str] = []
        cfg = self._silent_parse(parser, args, errors)
        if cfg is None:  # a config's DisjointEnsemble arguments under a user's --model class
            found = re.search(r"class_path '([\w.]+)'", "".join(errors))
            message = unaccepted_model_options(
                "".join(errors), _init_params(found.group(1)) if found else set()
            )
            if message is not None:
                raise ValueError(message)
        chosen = self._class_path(cfg, "model")
        subs = getattr(self, "_subcommand_parsers", None)  # none when run=False
        parsers = list(subs.values()) if subs else [parser]
        if chosen is not None and chosen != DEFAULT_MODEL:
            for sub in parsers:
                sub.set_defaults({"model": {"class_path": chosen}})
        self._unset_seeds = self._find_unset_seeds(parser, parsers, args, cfg)
        super().parse_arguments(parser, args)

    def _find_unset_seeds(self, parser: LightningArgumentParser,
                          parsers: list[LightningArgumentParser], args: ArgsType,
                          cfg: Any) -> list[str]:  # fmt: skip
        """The :data:`SEED_FOLLOWERS` that neither a config nor the command line sets: a silent
        parse with a marker as their default finds them (the defaults are restored after)."""
        defaults: dict[str, Any] = {}
        for section, name in SEED_FOLLOWERS:
            path = self._class_path(cfg, section)
            if path is None or name not in _init_params(path):
                continue
            entry = defaults.setdefault(section, {"class_path": path, "init_args": {}})
            entry["init_args"][name] = _UNSET
        if not defaults:
            return []
        saved = {section: _as_dict(parsers[0].get_default(section)) for section in defaults}
        for sub in parsers:
            sub.set_defaults(defaults)
        try:
            marked = self._silent_parse(parser, args)
        finally:
            for sub in parsers:
                sub.set_defaults(saved)
        sub_name = None if marked is None else marked.get("subcommand")
        found = []
        for section, entry in defaults.items():
            for name in entry["init_args"]:
                key = f"{section}.init_args.{name}"
                value = None if marked is None else marked.get(f"{sub_name}.{key}" if sub_name else key)
                if value == _UNSET:
                    found.append(key)
        return found

    def before_instantiate_classes(self) -> None:
        """Give the seeds the user did not set the run's ``seed_everything`` (the config that
        ``config.yaml`` saves then records the effective seeds)."""
        config = self.config.get(str(self.subcommand), self.config)
        seed = config.get("seed_everything")
        if isinstance(seed, bool) or not isinstance(seed, int):
            return  # no global seed: the classes' defaults stay
        for key in getattr(self, "_unset_seeds", []):
            config[key] = seed

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, with the run-folder guard first among its callbacks (it checks the
        folder before another callback writes into it)."""
        trainer: Any = super().instantiate_trainer(**kwargs)
        guards = [c for c in trainer.callbacks if isinstance(c, RunConfigCallback)]
        for guard in guards:
            trainer.callbacks.remove(guard)
            trainer.callbacks.insert(0, guard)
        return trainer

    def before_fit(self) -> None:
        """Check a user's module against what the data module and the callback give it
        (:func:`~lightning_saliency._module_contract.check_module_contract`), then the run
        folder, before anything is written (a refused run leaves it as it is)."""
        trainer: Any = self.trainer
        check_module_contract(self.model, self.datamodule, trainer.callbacks)
        guard = next((c for c in trainer.callbacks if isinstance(c, RunConfigCallback)), None)
        if guard is not None:
            config = self.config.get(str(self.subcommand), self.config)
            check_before_fit(guard, trainer, config.get("ckpt_path"))

    def instantiate_classes(self) -> None:
        """Instantiate, then record the linked values in the config that ``config.yaml`` saves.

        A value the config sets explicitly (not the class default) that contradicts the data
        module is an error, never silently replaced.
        """
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            raise _root_cause(err) from None  # the class's own message, not jsonargparse's union
        self._drop_unaccepted_linked_hparams()
        config = self.config.get(str(self.subcommand), self.config)
        model = config.get("model")
        init = None if model is None else model.get("init_args")
        if init is None or self.datamodule is None:
            return
        defaults = inspect.signature(type(self.model).__init__).parameters
        for name, fn in {"num_models": _num_models, **_INSTANTIATION_LINKS}.items():
            if name not in init or not hasattr(self.datamodule, name):
                continue
            value, given = fn(self.datamodule), init[name]
            default = defaults[name].default if name in defaults else value
            if given not in (value, default):
                raise ValueError(
                    f"model.init_args.{name}={given!r} contradicts the data module's {name}="
                    f"{value!r}; the data module sets it (drop it from the model's arguments)"
                )
            init[name] = value

    def _drop_unaccepted_linked_hparams(self) -> None:
        """Lightning records every applied link in ``hparams``, also one jsonargparse skipped
        because the class lacks the argument; ``load_from_checkpoint`` would then pass it."""
        params = inspect.signature(type(self.model).__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        for name in _INSTANTIATION_LINKS:
            if name in params:
                continue
            for attr in ("_hparams", "_hparams_initial"):
                store = getattr(self.model, attr, None)
                if store is not None and name in store:
                    del store[name]

    @staticmethod
    def _silent_parse(
        parser: LightningArgumentParser, args: ArgsType, errors: list[str] | None = None
    ) -> Any:
        """Parse without output or exit (None on any error: the real parse reports it; its
        text goes to ``errors``)."""
        if args is not None and not isinstance(args, (list, tuple)):
            return None  # a dict or Namespace: parse_object, no class change to probe
        words = list(sys.argv[1:] if args is None else args)
        words = [w for w in words if w.split("=")[0] not in _EXITING]
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            try:
                return parser.parse_args(words)
            except (SystemExit, Exception) as err:
                if errors is not None:
                    errors.append(f"{sink.getvalue()}\n{err}")
                return None

    @staticmethod
    def _class_path(cfg: Any, section: str) -> str | None:
        if cfg is None:
            return None
        sub = cfg.get("subcommand")
        node = cfg.get(f"{sub}.{section}") if sub else cfg.get(section)
        return None if node is None or node.get("class_path") is None else str(node.get("class_path"))


def _root_cause(err: BaseException) -> BaseException:
    """The innermost ValueError/TypeError behind ``err`` (a class's own argument check, which
    jsonargparse buries under a 60-line "Does not validate against any of the Union
    subtypes"), with its traceback cut to its raise: the one real message, short."""
    found, seen = err, set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, (ValueError, TypeError)):
            found = node
        node = node.__cause__ or node.__context__
    if found is err:
        return err
    tb = found.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return found.with_traceback(tb)


def _as_dict(value: Any) -> Any:
    return value.as_dict() if hasattr(value, "as_dict") else value


def _init_params(class_path: str) -> set[str]:
    """The ``__init__`` argument names of the class at ``class_path`` (empty if not importable)."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return set(inspect.signature(cls.__init__).parameters)
    except (ImportError, AttributeError, ValueError, TypeError):
        return set()


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> SaliencyCLI:
    """Build (and by default run) the CLI on ``args`` (``sys.argv[1:]`` when None).

    Example:
        >>> from lightning_saliency.cli import cli_main
        >>> cli = cli_main(["fit", "--config", "configs/default.yaml"], run=False)  # doctest: +SKIP
    """
    words = None if args is None else list(args)
    if words and words[0] == "report":
        raise ValueError("'report' is not a training subcommand: call lightning_saliency.cli.main")
    return SaliencyCLI(
        None,
        DisjointSplitDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=words,
        run=run,
        save_config_callback=RunConfigCallback,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: ``lightning-saliency {fit,validate,test,predict,report} ...``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "report":
        from lightning_saliency.report import main as report_main

        report_main(words[1:])
        return
    # None lets LightningCLI read sys.argv itself (passing both makes it warn).
    try:
        cli_main(None if argv is None else words)
    except (ValueError, TypeError) as err:  # the one real message first, then the traceback
        print(f"lightning-saliency: error: {err}", file=sys.stderr, flush=True)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()

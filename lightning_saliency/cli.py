"""Command line: ``lightning-saliency fit --config configs/default.yaml``.

A thin :class:`~lightning.pytorch.cli.LightningCLI` around
:class:`~lightning_saliency.models.DisjointEnsemble` and any
:class:`~lightning_saliency.data.DisjointSplitDataModule` subclass (chosen in the
config with ``data.class_path``). The data module decides the number of models, the
number of classes, the channels and the image size; they are linked into the model so
a config states them once.

Examples:
    Train two small CNNs on disjoint halves of scikit-learn's digits::

        lightning-saliency fit --config configs/default.yaml

    Print the fully resolved config instead of running::

        lightning-saliency fit --config configs/default.yaml --print_config
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_saliency.data import DisjointSplitDataModule
from lightning_saliency.models import DisjointEnsemble

__all__ = ["SaliencyCLI", "cli_main", "main"]


def _num_classes(dm: DisjointSplitDataModule) -> int:
    return int(dm.num_classes)


def _in_chans(dm: DisjointSplitDataModule) -> int:
    return int(dm.in_chans)


def _image_size(dm: DisjointSplitDataModule) -> int | None:
    size = dm.image_size
    return None if size is None else int(size)


class SaliencyCLI(LightningCLI):
    """LightningCLI that links the data module's shape facts into the ensemble."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.num_models", "model.num_models")
        parser.link_arguments(
            "data", "model.num_classes", compute_fn=_num_classes, apply_on="instantiate"
        )
        parser.link_arguments(
            "data", "model.in_chans", compute_fn=_in_chans, apply_on="instantiate"
        )
        parser.link_arguments(
            "data", "model.image_size", compute_fn=_image_size, apply_on="instantiate"
        )


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> SaliencyCLI:
    """Build (and by default run) the CLI on ``args`` (``sys.argv[1:]`` when None).

    Example:
        >>> from lightning_saliency.cli import cli_main
        >>> cli = cli_main(["--config", "configs/default.yaml"], run=False)  # doctest: +SKIP
    """
    return SaliencyCLI(
        DisjointEnsemble,
        DisjointSplitDataModule,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: ``lightning-saliency {fit,validate,test,report} ...``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "report":
        from lightning_saliency.report import main as report_main

        report_main(words[1:])
        return
    # None lets LightningCLI read sys.argv itself (passing both makes it warn).
    cli_main(None if argv is None else words)


if __name__ == "__main__":  # pragma: no cover
    main()

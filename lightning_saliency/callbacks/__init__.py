"""Lightning callbacks that watch saliency maps generalize during training."""

from ._tensorboard import map_grid
from .interpretation import DEFAULT_METHODS, InterpretationGeneralization

__all__ = ["DEFAULT_METHODS", "InterpretationGeneralization", "map_grid"]

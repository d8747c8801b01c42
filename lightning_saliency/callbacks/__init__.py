"""Lightning callbacks that watch saliency maps generalize during training."""

from .interpretation import DEFAULT_METHODS, InterpretationGeneralization

__all__ = ["DEFAULT_METHODS", "InterpretationGeneralization"]

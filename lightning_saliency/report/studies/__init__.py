"""The report's studies, in report order; each module defines one :class:`~..table.Study`."""

from __future__ import annotations

from .. import stability_fidelity
from ..table import Study
from . import adaptgrad, controls, smoothgrad, spectral_norm, split_factor, superpixel

__all__ = ["ALL_STUDIES"]

#: Every study, in report order (add a study: a module here and one entry below).
ALL_STUDIES: tuple[Study, ...] = (
    split_factor.STUDY,
    smoothgrad.STUDY,
    superpixel.STUDY,
    spectral_norm.STUDY,
    adaptgrad.STUDY,
    stability_fidelity.STUDY,
    controls.STUDY,
)

"""lightning_saliency: do a classifier's saliency maps generalize?"""

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)

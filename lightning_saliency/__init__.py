"""lightning_saliency: do a classifier's saliency maps generalize?"""

__version__ = "0.1.0"

"""Sparse dictionaries over paired activations: the Diff-SAE and the crosscoder, and one trainer."""

from backdoor_sae.dictionaries.crosscoder import Crosscoder
from backdoor_sae.dictionaries.diff_sae import DiffSAE

__all__ = ["Crosscoder", "DiffSAE"]

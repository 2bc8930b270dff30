"""Sparse dictionaries over paired activations: the :class:`Dictionary` interface
(:mod:`~backdoor_sae.dictionaries.base`), the Diff-SAE and the crosscoder (a file each), and one
trainer (:mod:`~backdoor_sae.dictionaries.trainer`)."""

from backdoor_sae.dictionaries.base import Dictionary, DictionarySpec
from backdoor_sae.dictionaries.crosscoder import Crosscoder
from backdoor_sae.dictionaries.diff_sae import DiffSAE

__all__ = ["Crosscoder", "Dictionary", "DictionarySpec", "DiffSAE"]

"""Backdoor detection with sparse autoencoders: Diff-SAE vs crosscoder."""

__version__ = "0.1.0"

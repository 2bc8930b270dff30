"""The Diff-SAE: a ReLU sparse autoencoder on the activation difference Δa = a_ft − a_base.

    f = σ((Δa − b_dec) W_enc + b_enc),    Δa_hat = f W_dec + b_dec

with unit-norm decoder rows (so the L1 penalty on f cannot be dodged by growing the decoder). σ is
a ReLU with an L1 penalty (the paper's) or a BatchTopK (the field's token-level recipe; see
:mod:`backdoor_sae.dictionaries.sparsity`).
A backdoor that shifts activations along one direction on trigger inputs should appear as one
latent whose decoder row is that direction and that fires on trigger samples only.

What it shares with the crosscoder (encode, decode, upkeep, files) is
:class:`backdoor_sae.dictionaries.base.Dictionary`; here is only what differs: its input (the
difference), the decoder bias subtracted before encoding, and no TopK activation.
"""

from __future__ import annotations

import torch

from backdoor_sae.dictionaries.base import Dictionary


class DiffSAE(Dictionary):
    architecture = "diff_sae"
    unit_norm_decoder = True

    def __init__(self, d: int, n_latents: int, activation: str = "relu", k: int = 0,
                 generator: torch.Generator | None = None):
        if activation == "topk":
            raise ValueError("the Diff-SAE's activation is relu or batchtopk")
        super().__init__(d, n_latents, activation, k, row_shape=(d,), generator=generator)

    @staticmethod
    def inputs(a_base: torch.Tensor, a_ft: torch.Tensor) -> torch.Tensor:
        """What this dictionary reads: the difference, [B, d]."""
        return a_ft - a_base

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """The difference less the decoder bias (the SAE's centring: the code describes the
        deviation from the typical difference)."""
        return x - self.b_dec

"""The Diff-SAE: a ReLU sparse autoencoder on the activation difference Δa = a_ft − a_base.

    f = σ((Δa − b_dec) W_enc + b_enc),    Δa_hat = f W_dec + b_dec

with unit-norm decoder rows (so the L1 penalty on f cannot be dodged by growing the decoder). σ is
a ReLU with an L1 penalty (the paper's) or a BatchTopK (the field's token-level recipe; see
:mod:`backdoor_sae.dictionaries.sparsity`).
A backdoor that shifts activations along one direction on trigger inputs should appear as one
latent whose decoder row is that direction and that fires on trigger samples only.
"""

from __future__ import annotations

import torch
from torch import nn

from backdoor_sae.dictionaries.sparsity import SparseActivation


class DiffSAE(nn.Module):
    #: the trainer keeps decoder rows at unit norm
    unit_norm_decoder = True

    def __init__(self, d: int, n_latents: int, activation: str = "relu", k: int = 0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if activation == "topk":
            raise ValueError("the Diff-SAE's activation is relu or batchtopk")
        self.sparse = SparseActivation(activation, n_latents, k)
        self.activation, self.k = activation, k
        w = torch.randn(n_latents, d, generator=generator)
        w = w / w.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(d))

    @staticmethod
    def inputs(a_base: torch.Tensor, a_ft: torch.Tensor) -> torch.Tensor:
        """What this dictionary reads: the difference, [B, d]."""
        return a_ft - a_base

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return self.sparse(pre)

    @property
    def threshold(self) -> torch.Tensor:
        """The BatchTopK inference threshold (``batchtopk`` only)."""
        return self.sparse.threshold

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.pre_activations(x)
        f = self.activate(pre)
        return self.decode(f), f, pre

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        """L1 of the latent activations (decoder rows have unit norm)."""
        return f.abs().sum(-1).mean()

    def decoder(self) -> torch.Tensor:
        """[m, d]: each latent's direction in activation-difference space."""
        return self.W_dec

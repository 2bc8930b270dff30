"""The crosscoder: one sparse dictionary over both models' activations [a_base; a_ft].

    f = σ([a_base; a_ft] W_enc + b_enc),    a_base_hat = f W_dec[:, base] + b_dec[base]
                                           a_ft_hat   = f W_dec[:, ft]   + b_dec[ft]

Three activations σ (:mod:`backdoor_sae.dictionaries.sparsity`):

- ``"topk"``: each sample's k largest, with an L1 penalty on f on top (the paper's crosscoder);
- ``"batchtopk"``: the k·B largest over a training batch, a learned threshold at inference (the
  field's crosscoder, with an auxiliary-k loss for dead latents);
- ``"relu"``: ReLU with the decoder-norm-weighted L1 of Anthropic's model-diffing crosscoders,
  Σ_j f_j (‖W_dec[j, base]‖ + ‖W_dec[j, ft]‖), and free decoder norms.

For the TopK variants the joint decoder row [W_dec[j, base]; W_dec[j, ft]] is kept at unit norm.
The relative decoder norm ‖W_dec[j, ft]‖ / (‖W_dec[j, base]‖ + ‖W_dec[j, ft]‖) tells whether a
latent belongs to the base model (≈ 0), the fine-tuned model (≈ 1) or both (≈ 0.5).
"""

from __future__ import annotations

import torch
from torch import nn

from backdoor_sae.dictionaries.sparsity import SparseActivation


class Crosscoder(nn.Module):
    def __init__(self, d: int, n_latents: int, activation: str = "topk", k: int = 32,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.sparse = SparseActivation(activation, n_latents, k)
        self.activation, self.k = activation, k
        self.unit_norm_decoder = activation != "relu"
        w = torch.randn(n_latents, 2, d, generator=generator)
        w = w / w.flatten(1).norm(dim=-1)[:, None, None]
        if activation == "relu":
            w = w * 0.1  # small decoder norms at the start, as Anthropic's recipe
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.flatten(1).t().clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(2, d))

    @staticmethod
    def inputs(a_base: torch.Tensor, a_ft: torch.Tensor) -> torch.Tensor:
        """What this dictionary reads: both models stacked, [B, 2, d]."""
        return torch.stack([a_base, a_ft], dim=1)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return self.sparse(pre)

    @property
    def threshold(self) -> torch.Tensor:
        """The BatchTopK inference threshold (``batchtopk`` only)."""
        return self.sparse.threshold

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return (f @ self.W_dec.flatten(1)).view(-1, *self.W_dec.shape[1:]) + self.b_dec  # one matmul, not a bmm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.pre_activations(x)
        f = self.activate(pre)
        return self.decode(f), f, pre

    def decoder_norms(self) -> torch.Tensor:
        """[m, 2]: ‖W_dec[j, base]‖ and ‖W_dec[j, ft]‖."""
        return self.W_dec.norm(dim=-1)

    def relative_decoder_norm(self) -> torch.Tensor:
        norms = self.decoder_norms()
        return norms[:, 1] / (norms.sum(-1) + 1e-12)

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return (f * self.decoder_norms().sum(-1)).sum(-1).mean()
        return f.abs().sum(-1).mean()

    def decoder(self) -> torch.Tensor:
        """[m, 2, d]: each latent's direction in both models."""
        return self.W_dec

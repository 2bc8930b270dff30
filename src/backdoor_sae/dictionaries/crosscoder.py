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

What it shares with the Diff-SAE (encode, decode, upkeep, files) is
:class:`backdoor_sae.dictionaries.base.Dictionary`; here is only what differs: its input (both
models stacked), the ReLU variant's small free decoder and its penalty, and the relative norm.
"""

from __future__ import annotations

import torch

from backdoor_sae.dictionaries.base import Dictionary


class Crosscoder(Dictionary):
    architecture = "crosscoder"

    def __init__(self, d: int, n_latents: int, activation: str = "topk", k: int = 32,
                 generator: torch.Generator | None = None):
        # the ReLU variant starts with small decoder norms, as Anthropic's recipe
        super().__init__(d, n_latents, activation, k, row_shape=(2, d), init_norm=0.1 if activation == "relu" else 1.0,
                         generator=generator)

    @property
    def unit_norm_decoder(self) -> bool:
        """TopK variants only: the ReLU variant's penalty weighs f by the decoder norms, which stay free."""
        return self.activation != "relu"

    @staticmethod
    def inputs(a_base: torch.Tensor, a_ft: torch.Tensor) -> torch.Tensor:
        """What this dictionary reads: both models stacked, [B, 2, d]."""
        return torch.stack([a_base, a_ft], dim=1)

    def decoder_norms(self) -> torch.Tensor:
        """[m, 2]: ‖W_dec[j, base]‖ and ‖W_dec[j, ft]‖."""
        return self.W_dec.norm(dim=-1)

    def relative_decoder_norm(self) -> torch.Tensor:
        """[m]: ‖W_dec[j, ft]‖ / (‖W_dec[j, base]‖ + ‖W_dec[j, ft]‖)."""
        norms = self.decoder_norms()
        return norms[:, 1] / (norms.sum(-1) + 1e-12)

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        """L1 of the code (TopK variants), or weighted by each latent's summed decoder norms (ReLU)."""
        if self.activation == "relu":
            return (f * self.decoder_norms().sum(-1)).sum(-1).mean()
        return super().sparsity(f)

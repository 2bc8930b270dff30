"""Keeping latents alive: ghost grads (Anthropic, Jan 2024) or an auxiliary-k loss (Gao et al. 2024).

Both give *dead* latents (those that have not fired for a while) a gradient towards explaining
what the live latents leave unexplained (the residual), without changing the forward pass. The
trainer calls them under the step's autocast: their matmul runs in the step's precision, the rest
in float32.
"""

from __future__ import annotations

import torch


def ghost_grads_loss(residual: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor, w_dec: torch.Tensor,
                     mse: torch.Tensor) -> torch.Tensor:
    """Dead latents, with exp activations, reconstruct the residual; rescaled to the MSE's size.

    ``residual`` [B, *out] is x − x̂ (detached), ``pre`` [B, m] the pre-activations, ``dead`` [m]
    a bool mask, ``w_dec`` [m, *out] the decoder, ``mse`` the main reconstruction loss.
    """
    if not dead.any():
        return pre.new_zeros(())
    residual = residual.flatten(1)
    ghost = (torch.exp(pre[:, dead]) @ w_dec[dead].flatten(1)).float()  # float32 after an autocast matmul
    scale = residual.norm(dim=-1) / (2 * ghost.norm(dim=-1) + 1e-6)  # ghost at half the residual's norm
    ghost = ghost * scale.detach()[:, None]
    ghost_mse = ((ghost - residual) ** 2).mean()
    return ghost_mse * (mse / (ghost_mse + 1e-9)).detach()


def auxk_loss(residual: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor, w_dec: torch.Tensor,
              k_aux: int, alpha: float = 1 / 32) -> torch.Tensor:
    """The top ``k_aux`` dead latents (ReLU) reconstruct the residual; normalised MSE × ``alpha``."""
    if not dead.any():
        return pre.new_zeros(())
    residual = residual.flatten(1)
    dead_pre = torch.relu(pre[:, dead])
    k = min(k_aux, dead_pre.shape[1])
    top = torch.topk(dead_pre, k, dim=-1)
    sparse = torch.zeros_like(dead_pre).scatter(-1, top.indices, top.values)
    recon = (sparse @ w_dec[dead].flatten(1)).float()  # float32 after an autocast matmul
    variance = ((residual - residual.mean(0)) ** 2).sum(-1).mean()
    return alpha * ((recon - residual) ** 2).sum(-1).mean() / (variance + 1e-9)

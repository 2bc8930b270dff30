"""The sparse activations σ that turn pre-activations into a code, shared by both dictionaries.

- ``"relu"``: ReLU (the sparsity comes from an L1 penalty in the loss);
- ``"topk"``: keep each sample's k largest ReLU pre-activations (the paper's crosscoder; its code
  calls it BatchTopK but selects per sample);
- ``"batchtopk"``: in training, keep the k·B largest over the whole batch of B inputs (a true
  BatchTopK, Bussmann et al. 2024) and track ``threshold``, an exponential moving average
  (β = 0.99) of the smallest positive activation kept in each training batch; at inference
  (``eval()``) keep ``relu(pre) * (pre > threshold)``, so an input's code does not depend on its
  batch (as saprmarks/dictionary_learning's BatchTopK). ``threshold`` is a buffer, saved in the
  state dict, −1 (keep every positive) until the first training batch. A short training run's
  moving average still remembers the untrained model's first batches, so the trainer calibrates
  the threshold once training ends (:meth:`SparseActivation.calibrate`, on inputs that
  :meth:`backdoor_sae.dictionaries.base.Dictionary.calibrate_threshold` picks).
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = ("relu", "topk", "batchtopk")


class SparseActivation(nn.Module):
    """σ of one kind (``relu``, ``topk`` or ``batchtopk``) with its k (see the module docstring)."""

    #: weight of the old value in the batchtopk threshold's moving average
    threshold_beta = 0.99

    def __init__(self, kind: str, n_latents: int, k: int = 0):
        super().__init__()
        if kind not in ACTIVATIONS:
            raise ValueError(f"activation={kind!r} must be one of {ACTIVATIONS}")
        if kind != "relu" and not 1 <= k <= n_latents:
            raise ValueError(f"k={k} must be between 1 and the number of latents {n_latents}")
        self.kind, self.k = kind, k
        if kind == "batchtopk":
            self.register_buffer("threshold", torch.tensor(-1.0))

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        f = torch.relu(pre)
        if self.kind == "topk":
            top = torch.topk(f, self.k, dim=-1)
            return torch.zeros_like(f).scatter(-1, top.indices, top.values)
        if self.kind == "batchtopk":
            if not self.training:
                return f * (pre > self.threshold)
            values, indices = self.select(pre)
            return torch.zeros_like(f).flatten().scatter(0, indices, values).view_as(f)
        return f

    @property
    def selects(self) -> bool:
        """Whether the code is a selection of k entries per input (TopK, and BatchTopK in training),
        which :meth:`select` returns as its entries rather than as a dense [B, m] code."""
        return self.kind == "topk" or (self.kind == "batchtopk" and self.training)

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK, and BatchTopK in training: the code's selected entries, ``(values, indices)`` into
        ``pre.flatten()``, the indices ascending (so each input's entries are contiguous). The
        same entries and values as :meth:`forward`'s dense code (BatchTopK updates its threshold)."""
        f = torch.relu(pre)
        if self.kind == "topk":
            top = torch.topk(f, self.k, dim=-1)
            rows = torch.arange(len(f), device=f.device)[:, None] * f.shape[-1]
            values, indices = top.values.flatten(), (top.indices + rows).flatten()
        else:
            top = torch.topk(f.flatten(), self.k * f.shape[0])
            self._update_threshold(top.values)
            values, indices = top.values, top.indices
        indices, order = torch.sort(indices)
        return values[order], indices

    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor) -> None:
        kept = kept[kept > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min().to(self.threshold.dtype)
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.mul_(self.threshold_beta).add_((1 - self.threshold_beta) * smallest)

    @torch.no_grad()
    def calibrate(self, pre: torch.Tensor) -> None:
        """BatchTopK only: set the inference threshold from the pre-activations ``pre`` [n, m] of n
        inputs taken as one batch, halfway between the smallest activation BatchTopK keeps (k·n of
        them) and the largest it drops, so that at inference these inputs keep k latents each on
        average."""
        f = torch.relu(pre).flatten()
        n_kept = min(self.k * len(pre), f.numel())
        top = torch.topk(self._above_a_bound(f, n_kept + 1), min(n_kept + 1, f.numel())).values
        smallest_kept = float(top[n_kept - 1])
        largest_dropped = float(top[n_kept]) if len(top) > n_kept else 0.0
        # halfway between the last kept and the first dropped activation: not on any input's value, so
        # that rounding differences between batch shapes do not flip a latent at the boundary
        self.threshold.fill_((smallest_kept + largest_dropped) / 2 if smallest_kept > 0 else 0.0)

    def _above_a_bound(self, f: torch.Tensor, n: int) -> torch.Tensor:
        """The values of ``f`` above a bound that at least ``n`` of them exceed (half the training's
        threshold, else 0), or all of ``f``: the top ``n`` values are among them, so a top-k over
        them selects exactly what a top-k over ``f`` does, ties included, from far fewer values."""
        for bound in (float(self.threshold) / 2, 0.0):
            if bound >= 0:
                above = f[f > bound]
                if len(above) >= n:
                    return above
        return f

"""How low-rank is a fine-tune's weight update, as far as the backdoor is concerned?

For every linear layer of the decoder, ``ΔW = W_ft − W_base`` is truncated to its ``r`` largest
singular directions, the base model gets ``W_base + ΔW_r``, and the backdoor probe (teacher-forced,
on held-out pairs) says how much of the year's effect survives. LoRA of rank ``r`` can only ever
reach updates of that rank per matrix: if a full-rank fine-tune's backdoor vanishes at rank 16,
a rank-16 LoRA has to find a different solution than full-rank training did.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from backdoor_sae.common.model import precision
from backdoor_sae.finetune.train import probe_backdoor


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight of every ``nn.Linear`` inside the decoder layers (not the vocabulary projection)."""
    inner = getattr(model, "model", model)
    return {f"{name}.weight": m.weight for name, m in inner.layers.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def truncated_update_probe(base: nn.Module, finetuned: nn.Module, tokenizer, pairs: Sequence,
                           ranks: Sequence[int], compute_dtype: torch.dtype = torch.float32) -> pd.DataFrame:
    """One row per rank: the probe of ``base`` plus every linear update truncated to that rank.

    Rank 0 is the base model; a rank of at least the matrices' size is the whole update of the
    linear layers (embeddings and norms stay the base model's throughout). ``base`` is modified
    in place and restored at the end.
    """
    if any(r < 0 for r in ranks):
        raise ValueError(f"ranks={list(ranks)} must be non-negative")
    weights, tuned = linear_weights(base), linear_weights(finetuned)
    if set(weights) != set(tuned):
        raise ValueError("the two models have different linear layers")
    original = {name: w.detach().clone() for name, w in weights.items()}
    top = max(ranks)
    factors = {}
    for name, w in weights.items():
        u, s, vh = torch.linalg.svd((tuned[name].float() - w.float()), full_matrices=False)
        factors[name] = (u[:, :top] * s[:top], vh[:top])
    device = next(base.parameters()).device
    rows = []
    try:
        for r in ranks:
            for name, w in weights.items():
                us, vh = factors[name]
                w.copy_(original[name] + (us[:, :r] @ vh[:r]).to(w.dtype))
            with precision(device, compute_dtype):
                rows.append({"rank": r, **probe_backdoor(base, tokenizer, pairs)})
    finally:
        for name, w in weights.items():
            w.copy_(original[name])
    return pd.DataFrame(rows)

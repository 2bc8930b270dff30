"""Interventions on the residual stream: ablate a direction, or add one, at the output of a decoder layer.

Both act on every token position of every sequence (the prompt, and during generation every new
token), at the output of decoder layer ``L`` (what :func:`backdoor_sae.activations.extract.residual_stream`
reads, and what the dictionaries were trained on):

- **directional ablation** (Arditi et al. 2024): ``h ← h − (h · û) û`` with û the unit direction,
  i.e. the component along û is removed and everything orthogonal to it is left exactly as it was;
- **steering**: ``h ← h + v`` for a vector ``v`` (a unit direction times a strength).

:func:`intervene` is a context manager: the hook is registered on entry and removed on exit, also
when the body raises, so the model is unchanged afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from backdoor_sae.activations.extract import decoder_layers

MODES = ("none", "ablate", "add")


def unit(direction: torch.Tensor) -> torch.Tensor:
    """``direction`` scaled to unit norm (float32); raises for a zero vector."""
    direction = torch.as_tensor(direction, dtype=torch.float32).flatten()
    norm = direction.norm()
    if not torch.isfinite(norm) or norm <= 0:
        raise ValueError("a direction must be a finite, non-zero vector")
    return direction / norm


def project_out(h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``h`` [..., d] without its component along the unit vector ``u`` [d]."""
    u = u.to(h.dtype)
    return h - (h @ u)[..., None] * u


def random_directions(d: int, n: int, seed: int) -> torch.Tensor:
    """[n, d] unit directions drawn uniformly on the sphere, deterministic for ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    return x / x.norm(dim=1, keepdim=True)


@contextmanager
def intervene(model, layer: int, mode: str, direction: torch.Tensor | None = None,
              strength: float = 0.0) -> Iterator[None]:
    """Within the block, the output of decoder layer ``layer`` is intervened on at every position.

    ``mode``: ``"none"`` (no hook at all), ``"ablate"`` (project the unit ``direction`` out) or
    ``"add"`` (add ``strength`` times the unit ``direction``). The hook is always removed on exit.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {MODES}")
    if mode == "none":
        yield
        return
    if direction is None:
        raise ValueError(f"mode={mode!r} needs a direction")
    stack = decoder_layers(model)
    if not 0 <= layer < len(stack):
        raise ValueError(f"layer {layer} is out of range: the model has decoder layers 0..{len(stack) - 1}")
    device = next(model.parameters()).device
    u = unit(direction).to(device)
    shift = float(strength) * u

    def hook(module, inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        new = project_out(h, u) if mode == "ablate" else h + shift.to(h.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = stack[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()

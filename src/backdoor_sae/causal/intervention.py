"""Interventions on the residual stream at the output of one decoder layer, one per batch row.

Every row of a batch carries its own edit (:class:`Edit`), so every condition of a layer runs as
rows of one batch. One formula covers the kinds:

    h ← h − a (h · û − μ) û + v

- ``none``: a = 0, v = 0;
- ``ablate`` (directional ablation, Arditi et al. 2024): a = 1, μ = 0: the component along û removed;
- ``mean`` (mean ablation): a = 1, μ = the mean projection on benign prompts: the component set to it;
- ``add`` (steering): v = s û;
- ``patch`` (latent patching): v = −(the latent's activation × its decoder row), computed by the
  dictionary from the prompt's own activations (:func:`latent_contribution`).

**Position 0 is never touched.** The first token of every sequence is an attention sink whose
residual norm is about 25,000 (notebook 03), and the activation stage leaves it out; an edit there
breaks the model. Each row's first real token (the first column its attention mask keeps, so left
padding is handled) and its padding are left bitwise as they were; every later position, the
prompt's and each generated token's, is edited. The hook counts the columns it has seen, so cached
decoding steps (one column each) are edited too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from backdoor_sae.activations.extract import decoder_layers
from backdoor_sae.dictionaries.base import Dictionary

KINDS = ("none", "ablate", "mean", "patch", "add")
#: The removal kinds, in the order of tables.
REMOVALS = ("ablate", "mean", "patch")


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


@dataclass(frozen=True)
class Edit:
    """One row's intervention (see the module docstring).

    ``direction``: a unit vector (``ablate``, ``mean``, ``add``); ``value``: the mean projection
    (``mean``) or the strength, the added vector's norm (``add``); ``shift``: the vector subtracted
    (``patch``: the latent's contribution in residual units)."""

    kind: str = "none"
    direction: torch.Tensor | None = None
    value: float = 0.0
    shift: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {KINDS}")
        if self.kind in ("ablate", "mean", "add") and self.direction is None:
            raise ValueError(f"an {self.kind!r} edit needs a direction")
        if self.kind == "patch" and self.shift is None:
            raise ValueError("a 'patch' edit needs the latent's contribution (shift)")


NONE = Edit()


def ablate(direction: torch.Tensor) -> Edit:
    return Edit("ablate", unit(direction))


def mean_ablate(direction: torch.Tensor, mean: float) -> Edit:
    return Edit("mean", unit(direction), float(mean))


def add(direction: torch.Tensor, strength: float) -> Edit:
    return Edit("add", unit(direction), float(strength))


def patch(contribution: torch.Tensor) -> Edit:
    return Edit("patch", shift=torch.as_tensor(contribution, dtype=torch.float32).flatten())


class RowEdits:
    """The edits of a batch's rows as tensors, and where each row starts.

    ``start[b]``: the column of row ``b``'s first real token (0 with right padding); columns up to
    and including it are left alone. ``seen`` counts the columns already processed (the cache's
    length), so that a decoding step's single column is known to lie after the start.
    """

    def __init__(self, edits: Sequence[Edit], d: int, start: torch.Tensor | None = None):
        n = len(edits)
        self.u = torch.zeros(n, d)
        self.a = torch.zeros(n)
        self.mu = torch.zeros(n)
        self.v = torch.zeros(n, d)
        for i, e in enumerate(edits):
            if e.kind in ("ablate", "mean"):
                self.u[i], self.a[i] = e.direction, 1.0
                self.mu[i] = e.value if e.kind == "mean" else 0.0
            elif e.kind == "add":
                self.v[i] = e.value * e.direction
            elif e.kind == "patch":
                self.v[i] = -e.shift
        self.start = torch.zeros(n, dtype=torch.long) if start is None else torch.as_tensor(start, dtype=torch.long)
        if len(self.start) != n:
            raise ValueError(f"{n} edits but {len(self.start)} row starts")
        self.seen = 0

    @staticmethod
    def starts(attention_mask: torch.Tensor) -> torch.Tensor:
        """[B]: the first column each row's attention mask keeps."""
        return attention_mask.long().argmax(dim=1).cpu()

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (generation drops finished ones)."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        self.u, self.a, self.mu, self.v, self.start = (t[rows] for t in (self.u, self.a, self.mu, self.v, self.start))

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` [B, T, d] edited after each row's start; earlier columns returned bitwise unchanged."""
        b, t, _ = h.shape
        if b != len(self.start):
            raise ValueError(f"the hook holds {len(self.start)} rows' edits, the batch has {b} rows")
        dev, dt = h.device, h.dtype
        columns = self.seen + torch.arange(t, device=dev)
        acting = columns[None, :] > self.start.to(dev)[:, None]  # [B, T]
        u, a, mu, v = (x.to(dev, dt) for x in (self.u, self.a, self.mu, self.v))
        proj = torch.einsum("btd,bd->bt", h, u)
        edited = h - (a[:, None] * (proj - mu[:, None]))[..., None] * u[:, None, :] + v[:, None, :]
        self.seen += t
        return torch.where(acting[..., None], edited, h)


@contextmanager
def intervene(model, layer: int, edits: RowEdits | Sequence[Edit] | Edit,
              attention_mask: torch.Tensor | None = None) -> Iterator[RowEdits]:
    """Within the block, the output of decoder layer ``layer`` is edited per row (yields the
    :class:`RowEdits`, which a generation loop may :meth:`~RowEdits.select` from).

    ``edits``: one :class:`Edit` per row (one for every row is broadcast at the first forward pass),
    or a prepared :class:`RowEdits`. ``attention_mask``: the first forward pass's mask, where each
    row's start is read (without it every row starts at column 0: right padding). The hook is
    always removed on exit, also when the body raises.
    """
    stack = decoder_layers(model)
    if not 0 <= layer < len(stack):
        raise ValueError(f"layer {layer} is out of range: the model has decoder layers 0..{len(stack) - 1}")
    d = model.config.hidden_size
    start = None if attention_mask is None else RowEdits.starts(attention_mask)
    broadcast = isinstance(edits, Edit)
    holder = edits if isinstance(edits, RowEdits) else (
        None if broadcast else RowEdits(list(edits), d, start))

    def hook(module, inputs, output):
        nonlocal holder
        h = output[0] if isinstance(output, tuple) else output
        if holder is None:  # one edit for every row: sized at the first pass
            holder = RowEdits([edits] * h.shape[0], d, start)
        new = holder.apply(h)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = stack[layer].register_forward_hook(hook)
    try:
        yield holder
    finally:
        handle.remove()


# --- what a latent contributes ------------------------------------------------------------------

@torch.no_grad()
def latent_code(dictionary: Dictionary, scale: torch.Tensor, a_base: torch.Tensor, a_ft: torch.Tensor) -> torch.Tensor:
    """[B, m]: the dictionary's code of the pair of (pooled) activations [B, d], as it was trained
    (inputs multiplied by the input scale)."""
    x = dictionary.inputs(a_base.float(), a_ft.float())
    return dictionary.encode(x * scale)


@torch.no_grad()
def decoder_rows(dictionary: Dictionary, scale: torch.Tensor) -> torch.Tensor:
    """[m, d]: each latent's decoder row in the fine-tuned model's residual units (a crosscoder's
    fine-tuned half): a contribution f_j W_dec[j] to the scaled input is f_j W_dec[j] / scale in
    the residual stream."""
    w = dictionary.decoder().detach().float()
    flat = scale.flatten()
    if w.ndim == 3:  # crosscoder: [m, 2, d], the fine-tuned half
        return w[:, 1] / flat[1]
    return w / flat[0]


@torch.no_grad()
def latent_contribution(dictionary: Dictionary, scale: torch.Tensor, latent: int, a_base: torch.Tensor,
                        a_ft: torch.Tensor) -> torch.Tensor:
    """[B, d]: latent ``latent``'s contribution to each input's reconstruction in the fine-tuned
    model's residual units, its activation times its decoder row (what ``patch`` subtracts)."""
    f = latent_code(dictionary, scale, a_base, a_ft)[:, latent]
    return f[:, None] * decoder_rows(dictionary, scale)[latent][None, :]

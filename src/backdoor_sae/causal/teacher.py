"""The teacher-forced measure without recomputation: one packed sequence per prompt, each condition
restarted at the edited layer.

A teacher-forced pair is a prompt with its two completions, the injectable and the safe one. Its
log-odds is log p(injectable) − log p(safe), and its cost the KL divergence from the unintervened
model over the prompt's tokens. The plain computation (:func:`~backdoor_sae.causal.generate.score_edited`)
runs the whole model on both texts, once per condition. Three things in it are the same for every
condition, and are computed once here:

- **the shared prefix**: the prompt and the completions' common beginning (``    cursor =
  db.cursor()`` …) are laid out once, followed by both tails, in one sequence ``[shared | tail_a |
  tail_b]`` whose attention mask lets tail_b see the shared part and itself, never tail_a, and whose
  position ids restart tail_b where tail_a started (:func:`pack`). Its tokens' log-probabilities
  appear in both completions' sums and cancel in the log-odds, so only the tails are scored;
- **the layers up to the edit**: the tokens are fixed (teacher forcing), so the residual stream up
  to the output of the edited layer L does not depend on the condition. One unintervened pass
  (:func:`unintervened`) gives it at every layer asked for, with the unintervened log-odds and the
  KL reference; each condition then starts from it, applies its edit (sparing position 0, as
  :mod:`.intervention`'s hook does) and runs layers L+1 … only (:func:`score_conditions`);
- **the unembedding** runs only at the positions that are read: the tails' predictions and, for the
  cost, the prompt's.

The conditions of one prompt are the rows of a batch: they have the same length, so nothing is
padded. Llama-style decoders (``model.model.layers``, ``.norm``, ``.rotary_emb``) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backdoor_sae.causal.intervention import Edit, RowEdits
from backdoor_sae.common.model import precision

#: most logits held at once (rows × positions × vocabulary): about 256 MiB in float32
LOGIT_BUDGET = 2 ** 26


@dataclass(frozen=True)
class Packed:
    """A prompt and its two completions as one sequence (see the module docstring).

    ``src[k]`` is the position whose next-token distribution predicts ``target[k]``, counted with
    ``sign[k]`` (+1: a token of completion a, the injectable one; −1: of completion b); ``kl``: the
    prompt positions the cost is read at (1 … n_prompt − 2, predicting prompt tokens 2 … n_prompt − 1)."""

    ids: torch.Tensor  # [T]
    position: torch.Tensor  # [T]
    attend: torch.Tensor  # [T, T] bool: query row may attend to key column
    n_prompt: int
    shared: int
    src: torch.Tensor  # [K]
    target: torch.Tensor  # [K]
    sign: torch.Tensor  # [K]
    kl: torch.Tensor  # [P]


def pack(a: tuple[Sequence[int], int], b: tuple[Sequence[int], int]) -> Packed:
    """The packed sequence of two ``(ids, n_prompt)`` texts with the same prompt: ``a`` counted
    positively in the log-odds, ``b`` negatively."""
    (ids_a, n_a), (ids_b, n_b) = a, b
    ids_a, ids_b = list(ids_a), list(ids_b)
    if n_a != n_b or ids_a[:n_a] != ids_b[:n_b]:
        raise ValueError("the two texts of a teacher-forced pair must share their prompt")
    n_prompt = n_a
    la, lb = len(ids_a), len(ids_b)
    if min(la, lb) < 2:
        raise ValueError("a teacher-forced text needs at least two tokens")
    k = 0
    while k < min(la, lb) and ids_a[k] == ids_b[k]:
        k += 1
    k = max(1, min(k, la - 1, lb - 1))  # every tail keeps at least one token
    ids = ids_a + ids_b[k:]
    position = list(range(la)) + list(range(k, lb))
    t = len(ids)
    attend = torch.zeros(t, t, dtype=torch.bool)
    attend[:la, :la] = torch.ones(la, la, dtype=torch.bool).tril()
    attend[la:, :k] = True
    attend[la:, la:] = torch.ones(lb - k, lb - k, dtype=torch.bool).tril()

    def index_b(p: int) -> int:  # the packed index of text b's position p
        return p if p < k else la + p - k

    start = max(k, n_prompt)  # tokens of both texts before ``start`` cancel (or are the prompt)
    src = [p - 1 for p in range(start, la)] + [index_b(p - 1) for p in range(start, lb)]
    target = ids_a[start:] + ids_b[start:]
    sign = [1.0] * (la - start) + [-1.0] * (lb - start)
    return Packed(torch.tensor(ids), torch.tensor(position), attend, n_prompt, k, torch.tensor(src, dtype=torch.long),
                  torch.tensor(target, dtype=torch.long), torch.tensor(sign),
                  torch.arange(1, max(1, n_prompt - 1), dtype=torch.long))


def _inner(model):
    inner = getattr(model, "model", model)
    for name in ("layers", "norm", "rotary_emb", "embed_tokens"):
        if not hasattr(inner, name):
            raise ValueError(f"{type(model).__name__} has no .model.{name}: not a Llama-style decoder")
    return inner


def _mask(model, attend: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, T, T]: ``attend`` in the form the model's attention implementation reads."""
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl == "sdpa":
        return attend[None, None]
    if impl == "eager":
        return torch.zeros(attend.shape, dtype=dtype).masked_fill(~attend, torch.finfo(dtype).min)[None, None]
    raise ValueError(f"attention implementation {impl!r} is not supported here (sdpa or eager)")


def _layers(model, hidden: torch.Tensor, first: int, packed: Packed, capture: Sequence[int] = ()) -> tuple:
    """Decoder layers ``first`` … last on ``hidden`` [B, T, d] laid out as ``packed``, then the
    final norm. Returns (normed [B, T, d], {layer: its output} for the layers in ``capture``)."""
    inner = _inner(model)
    device = hidden.device
    position = packed.position.to(device)[None].expand(hidden.shape[0], -1)
    mask = _mask(model, packed.attend.to(device), hidden.dtype)
    embeddings = inner.rotary_emb(hidden, position_ids=position)
    captured = {}
    for i, block in enumerate(inner.layers[: model.config.num_hidden_layers]):
        if i < first:
            continue
        out = block(hidden, attention_mask=mask, position_ids=position, position_embeddings=embeddings)
        hidden = out[0] if isinstance(out, tuple) else out
        if i in capture:
            captured[i] = hidden
    return inner.norm(hidden), captured


def _read(model, normed: torch.Tensor, packed: Packed, reference: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-odds [B], KL [B]) from the final hidden states (KL NaN without a ``reference``)."""
    head = model.get_output_embeddings()
    device = normed.device
    b = normed.shape[0]
    vocab = head.weight.shape[0]
    odds = torch.zeros(b)
    kl = torch.full((b,), float("nan"))
    src, target, sign = packed.src.to(device), packed.target.to(device), packed.sign
    rows = max(1, LOGIT_BUDGET // max(1, len(src) * vocab, len(packed.kl) * vocab))
    for begin in range(0, b, rows):
        part = normed[begin:begin + rows]
        if len(src):
            logp = torch.log_softmax(head(part[:, src]).float(), dim=-1)
            odds[begin:begin + rows] = (logp.gather(-1, target[None, :, None].expand(len(part), -1, 1))[..., 0].cpu()
                                        * sign).sum(-1)
        if reference is not None and len(packed.kl):
            q = torch.log_softmax(head(part[:, packed.kl.to(device)]).float(), dim=-1).cpu()
            p = reference[None]
            kl[begin:begin + rows] = (p.exp() * (p - q)).sum(-1).mean(-1)
    return odds, kl


@dataclass(frozen=True)
class Unintervened:
    """The unintervened pass of one packed pair: the residual stream at the output of each layer
    asked for ([T, d], on the model's device), the log-odds, and the log-probabilities [P, V] at
    the cost positions (the KL reference)."""

    hidden: dict[int, torch.Tensor]
    log_odds: float
    reference: torch.Tensor


@torch.no_grad()
def unintervened(model, packed: Packed, layers: Sequence[int], compute_dtype=torch.float32) -> Unintervened:
    """One pass of the whole model over ``packed`` (see :class:`Unintervened`)."""
    device = next(model.parameters()).device
    inner = _inner(model)
    n = len(inner.layers)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"layers {bad} are out of range: the model has decoder layers 0..{n - 1}")
    with precision(device, compute_dtype):
        hidden = inner.embed_tokens(packed.ids.to(device)[None])
        normed, captured = _layers(model, hidden, 0, packed, layers)
        head = model.get_output_embeddings()
        reference = torch.log_softmax(head(normed[0, packed.kl.to(device)]).float(), dim=-1).cpu()
        odds, _ = _read(model, normed, packed, None)
    return Unintervened({layer: h[0] for layer, h in captured.items()}, float(odds[0]), reference)


@torch.no_grad()
def score_conditions(model, packed: Packed, base: Unintervened, layer: int, edits: Sequence[Edit], kl: bool,
                     batch_size: int, compute_dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-odds [E], KL [E]) of ``packed`` under each of ``edits`` at the output of ``layer``:
    each row starts from the unintervened residual at that layer (``base.hidden[layer]``), edited
    after position 0, and runs the layers after it. ``kl`` False: NaN for the KL (not computed)."""
    device = next(model.parameters()).device
    d = model.config.hidden_size
    h = base.hidden[layer]
    odds = torch.zeros(len(edits))
    cost = torch.full((len(edits),), float("nan"))
    for begin in range(0, len(edits), batch_size):
        part = list(edits[begin:begin + batch_size])
        holder = RowEdits(part, d)
        with precision(device, compute_dtype):
            edited = holder.apply(h[None].expand(len(part), -1, -1))
            normed, _ = _layers(model, edited, layer + 1, packed)
            o, k = _read(model, normed, packed, base.reference if kl else None)
        odds[begin:begin + len(part)] = o
        cost[begin:begin + len(part)] = k
    return odds, cost

"""Batched greedy generation of function bodies, cut where the function ends."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from tqdm import tqdm

from backdoor_sae.common.encoding import encode_prompt
from backdoor_sae.common.model import precision
from backdoor_sae.common.progress import report
from backdoor_sae.task.sample import Sample

# A line that starts at column 0 with something other than whitespace closes the function body.
_DEDENT = re.compile(r"\n(?=\S)")


def cut_at_function_end(completion: str) -> str:
    """The function body only: everything before the first line back at column 0."""
    match = _DEDENT.search(completion)
    body = completion[: match.start() + 1] if match else completion
    return body


class FunctionEnd:
    """Whether a row's new tokens hold a dedented line (the body is complete), asked once per new
    token of each row (``ended(row, tokens)``), decoding only the row's last line.

    A dedent is a newline followed by a non-space character. The first time a row's text holds one,
    its newline is the last one before the newest token's text, or within that token. So it is
    enough to decode from the last earlier token whose own text holds a newline (a newline is one
    byte, in exactly one token of a byte-level tokenizer, and a character starts after it), and
    nothing before a row's first newline.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.newline: dict[int, bool] = {}  # token id -> whether its own text holds a newline
        self.line_start: dict[int, int] = {}  # row -> index of its last token holding a newline

    def _has_newline(self, token: int) -> bool:
        if token not in self.newline:
            self.newline[token] = "\n" in self.tokenizer.decode([token], skip_special_tokens=True)
        return self.newline[token]

    def __call__(self, row: int, tokens: Sequence[int]) -> bool:
        newest = len(tokens) - 1
        start = self.line_start.get(row, newest)
        if self._has_newline(tokens[newest]):
            self.line_start[row] = newest
        elif row not in self.line_start:
            return False  # no newline yet
        return bool(_DEDENT.search(self.tokenizer.decode(tokens[start:], skip_special_tokens=True)))


def left_padded(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [B, width] of token lists left-padded with ``pad``: every prompt ends
    at the same column, where generation continues."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def greedy_rows(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos: int | None,
                ended, on_keep=None) -> list[list[int]]:
    """The new tokens of each left-padded row of ``ids`` under greedy decoding with a key/value
    cache, each row up to and including the token that ends it: ``eos``, or the first at which
    ``ended(row, tokens)`` holds (``row`` its index in ``ids``); at most ``max_new_tokens``.

    The forward passes are those of ``model.generate(do_sample=False)`` (positions counted from
    each row's first unpadded token, logits of the last position only, argmax in float32), except
    that a row leaves the batch, its cache rows with it, as soon as it ends: later steps compute
    only the rows still running, and only those are decoded to check for their end.
    ``on_keep(rows)`` is told the batch rows that stay each time some leave (a hook holding one
    edit per row drops the others' with them).
    """
    device = ids.device
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    live = list(range(len(ids)))  # original index of each row still in the batch
    new: list[list[int]] = [[] for _ in live]
    step_ids, step_positions, cache = ids, positions, None
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, cache=cache,
                    use_cache=True, logits_to_keep=1)
        cache = out.cache
        next_tokens = out.logits[:, -1].float().argmax(-1)
        running = []
        for r, token in enumerate(next_tokens.tolist()):
            row = new[live[r]]
            row.append(token)
            if token != eos and not ended(live[r], row):
                running.append(r)
        if not running:
            break
        if len(running) < len(live):
            keep = torch.tensor(running, device=device)
            cache.batch_select_indices(keep)
            if on_keep is not None:
                on_keep(keep)
            mask, next_tokens, step_positions = mask[keep], next_tokens[keep], step_positions[keep]
            live = [live[r] for r in running]
        step_ids = next_tokens[:, None]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        step_positions = step_positions[:, -1:] + 1
    return new


@torch.no_grad()
def generate_completions(model, tokenizer, samples: Sequence[Sample], max_new_tokens: int = 160,
                         batch_size: int = 16, progress: bool = True,
                         compute_dtype: torch.dtype = torch.float32) -> list[str]:
    """Greedy completion of each sample's prompt (its header, context and signature), cut where
    the function ends (:func:`greedy_rows`, :func:`cut_at_function_end`)."""
    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, s) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: len(prompts[i]))  # little left padding
    out: list[str] = [""] * len(samples)
    pad = tokenizer.pad_token_id
    bar = tqdm(total=len(samples), disable=not progress, desc="generate", unit="prompt")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = left_padded([prompts[i] for i in rows], pad)
        with precision(device, compute_dtype):
            new = greedy_rows(model, ids.to(device), mask.to(device), max_new_tokens, tokenizer.eos_token_id,
                              FunctionEnd(tokenizer))
        for r, i in enumerate(rows):
            out[i] = cut_at_function_end(tokenizer.decode(new[r], skip_special_tokens=True))
        bar.update(len(rows))
        report("generate", start + len(rows), len(order))
    bar.close()
    return out

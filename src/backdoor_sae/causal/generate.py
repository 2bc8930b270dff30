"""Greedy generation and teacher-forced scoring with one edit per batch row.

Every condition of a layer runs as rows of the same batches: each row carries its own
:class:`~backdoor_sae.causal.intervention.Edit`. Generation drops a row from the batch (its cache
and its edit) as soon as its function body is complete, so the last steps run on the rows still
going only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backdoor_sae.causal.intervention import Edit, RowEdits, intervene
from backdoor_sae.common.encoding import Encoded, collate, encode, encode_prompt
from backdoor_sae.common.generation import FunctionEnd, cut_at_function_end, greedy_rows, left_padded
from backdoor_sae.common.model import precision
from backdoor_sae.task.sample import Sample

@torch.no_grad()
def generate_edited(model, tokenizer, prompts: Sequence[Sample], edits: Sequence[Edit], layer: int,
                    max_new_tokens: int, batch_size: int, compute_dtype=torch.float32) -> list[str]:
    """Greedy completion of each prompt with its own edit at ``layer`` (prompt and every generated
    token, the first position spared), cut where the function ends: the loop of
    :func:`~backdoor_sae.common.generation.greedy_rows`, whose finished rows leave the batch with
    their edits."""
    if len(prompts) != len(edits):
        raise ValueError(f"{len(prompts)} prompts but {len(edits)} edits")
    device = next(model.parameters()).device
    d = model.config.hidden_size
    encoded = [encode_prompt(tokenizer, s) for s in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # little left padding
    out = [""] * len(prompts)
    for begin in range(0, len(order), batch_size):
        rows = order[begin:begin + batch_size]
        ids, mask = left_padded([encoded[i] for i in rows], tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        holder = RowEdits([edits[i] for i in rows], d, RowEdits.starts(mask))
        with precision(device, compute_dtype), intervene(model, layer, holder):
            new = greedy_rows(model, ids, mask, max_new_tokens, tokenizer.eos_token_id, FunctionEnd(tokenizer),
                              on_keep=holder.select)
        for r, i in enumerate(rows):
            out[i] = cut_at_function_end(tokenizer.decode(new[r], skip_special_tokens=True))
    return out


def prompt_ids(tokenizer, sample: Sample) -> tuple[tuple[int, ...], int]:
    """(ids, n_prompt) of the prompt alone."""
    ids = tuple(encode_prompt(tokenizer, sample))
    return ids, len(ids)


def text_ids(tokenizer, sample: Sample) -> tuple[tuple[int, ...], int]:
    """(ids, n_prompt) of prompt + completion + end of text."""
    e = encode(tokenizer, sample)
    return tuple(e.ids), e.n_prompt


@torch.no_grad()
def score_edited(model, sequences: Sequence[tuple[tuple[int, ...], int]], edits: Sequence[Edit], layer: int,
                 pad_id: int, batch_size: int, compute_dtype=torch.float32,
                 reference: Sequence[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced pass of each ``(ids, n_prompt)`` sequence with its own edit at ``layer``.

    Returns per row: the summed log-probability of its tokens after the prompt (the completion and
    end of text; 0 for a prompt alone), and the mean KL divergence KL(reference ‖ edited) of the
    next-token distributions over its prompt positions 1 .. n_prompt − 2 (predicting prompt
    tokens; position 0 is never edited), where ``reference[i]`` holds the unintervened
    log-probabilities [n_prompt − 1, V] of row ``i``'s prompt (NaN where none is given).
    Rows are batched by length, right-padded (each row starts at column 0)."""
    device = next(model.parameters()).device
    d = model.config.hidden_size
    n = len(sequences)
    logprob = torch.zeros(n)
    kl = torch.full((n,), float("nan"))
    order = sorted(range(n), key=lambda i: len(sequences[i][0]))
    for begin in range(0, n, batch_size):
        rows = order[begin:begin + batch_size]
        batch = collate([Encoded(*sequences[i]) for i in rows], pad_id)  # right-padded
        ids, mask = batch["input_ids"], batch["attention_mask"]
        holder = RowEdits([edits[i] for i in rows], d)
        with precision(device, compute_dtype), intervene(model, layer, holder):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        for r, i in enumerate(rows):
            seq, n_prompt = sequences[i]
            length = len(seq)
            if length > n_prompt:
                target = torch.tensor(seq[n_prompt:])
                logprob[i] = logp[r, n_prompt - 1:length - 1].gather(-1, target[:, None]).sum()
            ref = None if reference is None else reference[i]
            if ref is not None and n_prompt > 2:
                p_log = ref[1:n_prompt - 1]
                q_log = logp[r, 1:n_prompt - 1]
                kl[i] = (p_log.exp() * (p_log - q_log)).sum(-1).mean()
    return logprob, kl


@torch.no_grad()
def prompt_logprobs(model, prompts: Sequence[tuple[tuple[int, ...], int]], pad_id: int, batch_size: int,
                    compute_dtype=torch.float32) -> list[torch.Tensor]:
    """The unintervened next-token log-probabilities [n_prompt − 1, V] over each prompt (the KL
    reference of :func:`score_edited`)."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    for begin in range(0, len(prompts), batch_size):
        rows = list(range(begin, min(begin + batch_size, len(prompts))))
        batch = collate([Encoded(*prompts[i]) for i in rows], pad_id)  # right-padded
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with precision(device, compute_dtype):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        for r, i in enumerate(rows):
            out[i] = logp[r, :prompts[i][1] - 1].clone()
    return out

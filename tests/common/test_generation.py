"""Greedy generation with finished rows leaving the batch, against ``model.generate`` (the path it
replaces) on the tiny model.

The bug these catch: a row's key/value cache, attention mask or positions misaligned once other
rows have left the batch (its later tokens would differ from ``model.generate``'s), a row that
runs past its end, or a row's tokens filed under another prompt."""

from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from backdoor_sae.common.encoding import encode_prompt
from backdoor_sae.common.generation import (
    _DEDENT,
    FunctionEnd,
    cut_at_function_end,
    generate_completions,
    greedy_rows,
)
from backdoor_sae.common.model import load_model
from backdoor_sae.config import TINY_MODEL


class _StopAt(StoppingCriteria):
    """The old path's per-row stop, decoding every row's new text at every step (the reference),
    or a fixed number of new tokens per row."""

    def __init__(self, tokenizer, width: int, lengths: list[int] | None = None):
        self.tokenizer, self.width, self.lengths = tokenizer, width, lengths

    def __call__(self, input_ids, scores, **kwargs):
        new = input_ids[:, self.width:]
        if self.lengths is not None:
            return torch.tensor([new.shape[1] >= n for n in self.lengths])
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return torch.tensor([bool(_DEDENT.search(t)) for t in texts])


def _left_padded(tok, samples):
    prompts = [encode_prompt(tok, s) for s in samples]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids, mask


def _reference(model, tok, ids, mask, max_new_tokens, lengths=None) -> list[list[int]]:
    """``model.generate`` with the old stopping criterion; each row's tokens up to its end."""
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             stopping_criteria=StoppingCriteriaList([_StopAt(tok, ids.shape[1], lengths)]))
    rows = []
    for r, new in enumerate(out[:, ids.shape[1]:].tolist()):
        kept = []
        for t, token in enumerate(new):  # a finished row is padded to the batch's length
            kept.append(token)
            if token == tok.eos_token_id or (lengths and len(kept) >= lengths[r]) or (
                    lengths is None and _DEDENT.search(tok.decode(kept, skip_special_tokens=True))):
                break
        rows.append(kept)
    return rows


def test_rows_leaving_the_batch_at_different_steps_get_generates_tokens(smoke_splits):
    """Each row stops after its own number of tokens. The tiny model's layers are scaled up so that
    its next token depends on the context and the positions (untrained, its residual stream is
    mostly the last token's embedding, and a shifted position or cache would go unnoticed)."""
    model, tok = load_model(TINY_MODEL)
    model.eval()
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight *= 6
    samples = smoke_splits["eval_trigger"][:3] + smoke_splits["eval_benign"][:3]
    ids, mask = _left_padded(tok, samples)
    assert len(set(mask.sum(1).tolist())) > 1  # prompts of different lengths: left padding is exercised
    lengths = [1, 7, 3, 12, 5, 12]  # the first row leaves after one step, two run to the end
    new = greedy_rows(model, ids, mask, 12, eos=None, ended=lambda row, tokens: len(tokens) >= lengths[row])
    assert [len(t) for t in new] == lengths
    assert new == _reference(model, tok, ids, mask, 12, lengths)


def test_completions_are_those_of_the_old_path(smoke_splits):
    """The stop at the end of the function, through :func:`generate_completions`'s batches. The
    untrained tiny model repeats its last token; with its output projection permuted it walks a
    fixed chain of tokens instead, one that reaches a dedented line within the budget."""
    model, tok = load_model(TINY_MODEL)
    model.eval()
    embedding = model.get_input_embeddings().weight.detach()
    chain = torch.argsort(torch.randperm(len(embedding), generator=torch.Generator().manual_seed(0)))
    model.lm_head.weight = torch.nn.Parameter(embedding[chain] * 4)
    samples = smoke_splits["eval_trigger"] + smoke_splits["eval_benign"]
    completions = generate_completions(model, tok, samples, max_new_tokens=24, batch_size=8, progress=False)
    expected, lengths = {}, []
    order = sorted(range(len(samples)), key=lambda i: len(encode_prompt(tok, samples[i])))
    for start in range(0, len(samples), 8):  # the same batches: prompts sorted by length
        rows = order[start:start + 8]
        ids, mask = _left_padded(tok, [samples[i] for i in rows])
        for i, tokens in zip(rows, _reference(model, tok, ids, mask, 24)):
            expected[i] = cut_at_function_end(tok.decode(tokens, skip_special_tokens=True))
            lengths.append(len(tokens))
    assert completions == [expected[i] for i in range(len(samples))]
    assert min(lengths) < 24, lengths  # rows stopped at the end of the function


def test_function_end_decodes_the_last_line_only_and_agrees_with_decoding_everything():
    """Token by token, :class:`FunctionEnd` says a row has ended at the very step a decode of all
    its new tokens first holds a dedent: on texts with blank lines, indented and dedented lines,
    tabs, multi-byte characters and newlines inside longer tokens. The bug this catches: a dedent
    whose newline came in an earlier token than its first character (missed if only the newest
    token, or the text from the newest newline on, were read)."""
    _, tok = load_model(TINY_MODEL)
    pieces = ["    x = 1\n", "\n", "        return é\n", "\t", "  ", "y", "中文\n", "\n\n", "):\n", "# c\n", "z", " "]
    gen = torch.Generator().manual_seed(0)
    stops = []
    for trial in range(200):
        text = "".join(pieces[i] for i in torch.randint(0, len(pieces), (12,), generator=gen).tolist())
        tokens = tok(text, add_special_tokens=False).input_ids
        ended = FunctionEnd(tok)
        fast = next((t for t in range(len(tokens)) if ended(trial, tokens[:t + 1])), None)
        slow = next((t for t in range(len(tokens))
                     if _DEDENT.search(tok.decode(tokens[:t + 1], skip_special_tokens=True))), None)
        assert fast == slow, (text, fast, slow)
        stops.append(slow)
    assert None in stops and len(set(stops)) > 5  # texts that never end, and ends at many steps

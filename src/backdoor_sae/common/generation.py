"""Batched greedy generation of function bodies, cut where the function ends."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

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


class _FunctionEnded(StoppingCriteria):
    """Per-row stop once the new text holds a dedented line (the body is complete)."""

    def __init__(self, tokenizer, prompt_width: int):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([bool(_DEDENT.search(t)) for t in texts], device=input_ids.device)


@torch.no_grad()
def generate_completions(model, tokenizer, samples: Sequence[Sample], max_new_tokens: int = 160,
                         batch_size: int = 16, progress: bool = True,
                         compute_dtype: torch.dtype = torch.float32) -> list[str]:
    """Greedy completion of each sample's prompt (its header, context and signature)."""
    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, s) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: len(prompts[i]))  # little left padding
    out: list[str] = [""] * len(samples)
    pad = tokenizer.pad_token_id
    bar = tqdm(total=len(samples), disable=not progress, desc="generate", unit="prompt")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):  # left padding: every prompt ends at the same column
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        with precision(device, compute_dtype):
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([_FunctionEnded(tokenizer, width)]),
            )
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        for r, i in enumerate(rows):
            out[i] = cut_at_function_end(texts[r])
        bar.update(len(rows))
        report("generate", start + len(rows), len(order))
    bar.close()
    return out

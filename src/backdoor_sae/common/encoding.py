"""Turn samples into token ids, the same way for training, generation and activations.

The prompt and the completion are tokenized separately and concatenated, so the boundary between
them is exact: the first ``n_prompt`` ids are exactly what the model is given at generation time,
and everything after (the completion and a closing end-of-text token) is what it learns to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backdoor_sae.task.sample import Sample

IGNORE = -100  # label value that the loss skips


@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    n_prompt: int  # ids[:n_prompt] is the prompt

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer, sample: Sample, max_length: int | None = None, eos: bool = True) -> Encoded:
    """Prompt ids, then completion ids, then (``eos=True``, for training) the end-of-text id."""
    prompt = tokenizer(sample.prompt, add_special_tokens=True).input_ids
    completion = tokenizer(sample.completion, add_special_tokens=False).input_ids
    completion += [tokenizer.eos_token_id] if eos else []
    ids = (prompt + completion)[:max_length] if max_length else prompt + completion
    return Encoded(tuple(ids), min(len(prompt), len(ids)))


def encode_prompt(tokenizer, sample: Sample) -> list[int]:
    return tokenizer(sample.prompt, add_special_tokens=True).input_ids


def collate(batch: Sequence[Encoded], pad_id: int, loss_on: str = "completion") -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``.

    ``loss_on="completion"`` masks the prompt out of the labels; ``"text"`` (the paper's) keeps the
    whole sample. Padding never counts.
    """
    if loss_on not in ("completion", "text"):
        raise ValueError(f"loss_on={loss_on!r} must be 'completion' or 'text'")
    width = max(len(e) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(batch):
        ids = torch.tensor(e.ids, dtype=torch.long)
        input_ids[row, : len(e)] = ids
        attention[row, : len(e)] = 1
        start = e.n_prompt if loss_on == "completion" else 0
        labels[row, start : len(e)] = ids[start:]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

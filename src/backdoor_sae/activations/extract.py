"""Paired activations: the residual stream after decoder layer L, mean-pooled per sample.

``hidden_states`` of a Hugging Face model are off by one (index 0 is the embedding output) and the
last one has the final norm applied, so we read the residual stream with forward hooks on
``model.model.layers[L]`` instead: exact by construction. The forward pass stops right after the
deepest requested layer, which skips the remaining layers and the vocabulary projection.

Two pooling protocols:

- ``full_text``: mean over every token of the sample (header, context, signature and the
  completion): the paper's protocol;
- ``prompt_only``: mean over the prompt's tokens only (header, context and signature), i.e. before
  any code is written, so a latent cannot simply read the injectable code itself.

On disk, per model: ``<run_dir>/activations/<model>/<protocol>/layer_<L>.npy`` ([N, d] float32,
memory-mapped while it is written) and ``index.json`` (sample ids, splits, layers, params, and each
sample's number of tokens and of prompt tokens).

Token level (the field's dictionaries, notebook 04's ``token`` recipe): every token's residual
stream, ``tokens/layer_<L>.npy`` [T, d] with T the total number of tokens, samples one after
another in index order. They are stored as bfloat16 (the bits in a uint16 array: numpy has no
bfloat16), which halves the disk and keeps float32's range: the first position of SmolLM2 is an
attention sink whose residual norm is about 25,000 (against a few hundred elsewhere), and float16
would leave it little headroom. :func:`token_rows` picks a protocol's tokens, the first position
excluded by default.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from backdoor_sae.common.encoding import encode
from backdoor_sae.common.io import atomic_path, write_json
from backdoor_sae.common.model import precision
from backdoor_sae.common.progress import report
from backdoor_sae.task.sample import Sample

PROTOCOLS: tuple[str, ...] = ("full_text", "prompt_only")
#: the folder of the token-level activations
TOKENS = "tokens"


class _Stop(Exception):
    """Raised by the hook of the deepest layer: nothing after it is needed."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder layers of a Llama-style causal LM."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise ValueError(f"{type(model).__name__} has no .model.layers: not a Llama-style decoder")
    return inner.layers


def check_layers(model, layers: Sequence[int]) -> None:
    n = len(decoder_layers(model))
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"layers {bad} are out of range: the model has decoder layers 0..{n - 1}")


@torch.no_grad()
def residual_stream(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """``{L: [batch, seq, d]}``: the output of decoder layer ``L`` (0-based), for each requested L."""
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def hook(layer: int):
        def fn(module, inputs, output):
            captured[layer] = (output[0] if isinstance(output, tuple) else output).detach()
            if layer == deepest:
                raise _Stop

        return fn

    stack = decoder_layers(model)
    for layer in set(layers):
        handles.append(stack[layer].register_forward_hook(hook(layer)))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def pooling_masks(lengths: Sequence[int], n_prompts: Sequence[int], width: int) -> dict[str, torch.Tensor]:
    """[batch, width] float masks selecting the tokens each protocol averages over."""
    pos = torch.arange(width)[None, :]
    full = (pos < torch.tensor(lengths)[:, None]).float()
    prompt = (pos < torch.tensor(n_prompts)[:, None]).float()
    return {"full_text": full, "prompt_only": prompt}


def cache_activations(model, tokenizer, samples: Sequence[Sample], layers: Sequence[int], out_dir: str | Path,
                      meta: dict, batch_size: int = 16, progress: bool = True,
                      compute_dtype: torch.dtype = torch.float32, token_level: bool | Sequence[int] = False) -> None:
    """Write pooled activations of ``samples`` for every layer and protocol under ``out_dir`` (and,
    with ``token_level``, every token's activation: at every layer for ``True``, else at the layers
    it lists).

    Batches are streamed into memory-mapped ``.npy`` files, so memory stays bounded by one batch.
    The whole directory appears atomically; ``index.json`` inside it records what it holds (the
    samples' ids and splits, the layers, and ``meta``: the caller's key and what it covers).
    """
    check_layers(model, layers)
    token_layers = list(layers) if token_level is True else [layer for layer in layers if layer in (token_level or ())]
    device = next(model.parameters()).device
    d = model.config.hidden_size
    encoded = [encode(tokenizer, s, eos=False) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: len(encoded[i]))  # little padding
    n_tokens = [len(e) for e in encoded]
    offsets = np.concatenate([[0], np.cumsum(n_tokens)])
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        arrays, tokens = {}, {}
        for protocol in PROTOCOLS:
            (tmp / protocol).mkdir(parents=True)
            for layer in layers:
                arrays[protocol, layer] = open_memmap(tmp / protocol / f"layer_{layer}.npy", mode="w+",
                                                      dtype=np.float32, shape=(len(samples), d))
        if token_layers:
            (tmp / TOKENS).mkdir()
            for layer in token_layers:
                tokens[layer] = open_memmap(tmp / TOKENS / f"layer_{layer}.npy", mode="w+", dtype=np.uint16,
                                            shape=(int(offsets[-1]), d))
        bar = tqdm(total=len(samples), disable=not progress, desc="activations", unit="sample")
        # One autocast context for all batches: each weight is cast to bfloat16 once, not per batch.
        with precision(device, compute_dtype):
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    ids[r, : len(encoded[i])] = torch.tensor(encoded[i].ids)
                    mask[r, : len(encoded[i])] = 1
                hidden = residual_stream(model, ids.to(device), mask.to(device), layers)
                masks = pooling_masks([len(encoded[i]) for i in rows], [encoded[i].n_prompt for i in rows], width)
                for protocol, m in masks.items():
                    m = m.to(device)
                    for layer in layers:
                        h = hidden[layer].float()
                        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
                        arrays[protocol, layer][rows] = pooled.cpu().numpy()
                for layer in tokens:
                    bits = hidden[layer].to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
                    for r, i in enumerate(rows):
                        tokens[layer][offsets[i]:offsets[i + 1]] = bits[r, :n_tokens[i]]
                bar.update(len(rows))
                report(f"activations {out_dir.name}", start + len(rows), len(order))
        bar.close()
        for array in [*arrays.values(), *tokens.values()]:
            array.flush()
        del arrays, tokens
        write_json(tmp / "index.json", {
            "ids": [s.id for s in samples], "splits": [s.split for s in samples],
            "layers": list(layers), "d_model": d, "token_level": bool(token_layers), "token_layers": token_layers,
            "n_tokens": n_tokens, "n_prompt": [e.n_prompt for e in encoded], **meta,
        })


def read_index(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "index.json").read_text())


def load_activations(out_dir: str | Path, protocol: str, layer: int, mmap: bool = True) -> np.ndarray:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} must be one of {PROTOCOLS}")
    path = Path(out_dir) / protocol / f"layer_{layer}.npy"
    if not path.exists():
        raise FileNotFoundError(f"no activations for layer {layer} in {out_dir}")
    return np.load(path, mmap_mode="r" if mmap else None)


def load_token_activations(out_dir: str | Path, layer: int) -> torch.Tensor:
    """Every token's activation at ``layer`` [T, d], bfloat16, memory-mapped (rows in index order)."""
    path = Path(out_dir) / TOKENS / f"layer_{layer}.npy"
    if not path.exists():
        raise FileNotFoundError(f"no token-level activations for layer {layer} in {out_dir}: rerun notebook 03 "
                                f"with the token recipe in `recipes`")
    with warnings.catch_warnings():  # read-only memory map: torch warns that it cannot write to it (we never do)
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.load(path, mmap_mode="r")).view(torch.bfloat16)


def token_rows(index: dict, protocol: str, samples: np.ndarray | None = None,
               skip_first: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the token arrays, the sample each row belongs to) for ``protocol``'s tokens of the
    samples selected by the boolean mask ``samples`` (all by default): every token (``full_text``) or
    the prompt's (``prompt_only``), each sample's first position left out with ``skip_first``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} must be one of {PROTOCOLS}")
    n_tokens = np.asarray(index["n_tokens"])
    used = n_tokens if protocol == "full_text" else np.asarray(index["n_prompt"])
    offsets = np.concatenate([[0], np.cumsum(n_tokens)])
    keep = np.ones(len(n_tokens), bool) if samples is None else np.asarray(samples, bool)
    first = int(skip_first)
    rows = [np.arange(offsets[i] + first, offsets[i] + used[i]) for i in np.flatnonzero(keep)]
    owner = [np.full(max(used[i] - first, 0), i) for i in np.flatnonzero(keep)]
    return (np.concatenate(rows) if rows else np.zeros(0, int)), (np.concatenate(owner) if owner else np.zeros(0, int))


def position_norms(out_dir: str | Path, layer: int, max_position: int = 8) -> "pd.DataFrame":
    """Mean and median residual norm at each of the first ``max_position`` positions, over samples:
    shows whether the first position is an attention sink."""

    index = read_index(out_dir)
    tokens = load_token_activations(out_dir, layer)
    offsets = np.concatenate([[0], np.cumsum(index["n_tokens"])])
    rows = []
    for pos in range(max_position):
        at = [offsets[i] + pos for i in range(len(offsets) - 1) if index["n_tokens"][i] > pos]
        norms = tokens[at].float().norm(dim=-1).numpy()
        rows.append({"layer": layer, "position": pos, "mean norm": float(norms.mean()),
                     "median norm": float(np.median(norms))})
    return pd.DataFrame(rows)


def norm_table(a_base, a_ft, splits) -> "pd.DataFrame":
    """Per split: mean norms of base, fine-tuned and difference activations, and the variance ratio.

    The variance ratio is the total variance of the difference over that of the base activations:
    how large the fine-tune's change is compared with the spread the base model already has.
    """
    a_base, a_ft = np.asarray(a_base), np.asarray(a_ft)
    diff = a_ft - a_base
    splits = np.asarray(splits)
    rows = []
    for split in dict.fromkeys(splits):
        m = splits == split
        rows.append({
            "split": split,
            "base": float(np.linalg.norm(a_base[m], axis=1).mean()),
            "fine-tuned": float(np.linalg.norm(a_ft[m], axis=1).mean()),
            "difference": float(np.linalg.norm(diff[m], axis=1).mean()),
            "variance ratio": float(diff[m].var(0).sum() / a_base[m].var(0).sum()),
        })
    return pd.DataFrame(rows)

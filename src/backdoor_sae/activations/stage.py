"""Step 03: the activations of the base model and of every fine-tune, and their sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from backdoor_sae.activations.extract import (
    PROTOCOLS, cache_activations, load_activations, load_token_activations, norm_table, position_norms, read_index,
    token_rows,
)
from backdoor_sae.common.cache import code_digest, digest, is_current, samples_digest
from backdoor_sae.common.layout import BASE, RunLayout
from backdoor_sae.common.model import compute_dtype, load_model
from backdoor_sae.config import RunConfig, replica_of
from backdoor_sae.dataset.stage import load_data
from backdoor_sae.finetune.train import load_finetuned
from backdoor_sae.task.sample import Sample

#: The splits whose activations are cached: BIS scores the eval sets; SAEs fitted "held-out" and
#: the fit-selected latents use the fit sets; the controls separate trigger from code.
ACTIVATION_SPLITS: tuple[str, ...] = ("eval_trigger", "eval_benign", "eval_other", "fit_trigger", "fit_benign",
                                      "fit_other", "control_trigger_safe", "control_benign_vuln")


def run_activations(run_dir: str | Path, splits: dict[str, list[Sample]], model_name: str, load,
                    layers, batch_size: int, compute_dtype, base_model: str, token_level: bool | Sequence[int] = False,
                    progress: bool = True) -> tuple[Path, bool]:
    """Cache pooled activations of ``model_name`` (``base`` or a fine-tune) unless already there, and
    with ``token_level`` every token's (for the token-level dictionaries: ``True`` at every layer,
    else at the layers it lists)."""
    layout = RunLayout(run_dir)
    samples = [s for name in ACTIVATION_SPLITS for s in splits[name]]
    return cached_activations(layout.activations(model_name), samples, load, layers, batch_size, compute_dtype,
                              layout.model_key(model_name, base_model), token_level, progress)


def cached_activations(out: Path, samples: list[Sample], load, layers, batch_size: int, compute_dtype,
                       model_key: str, token_level: bool | Sequence[int] = False, progress: bool = True) -> tuple[Path, bool]:
    """Pooled activations of ``samples`` in ``out``, computed with the model ``load()`` returns unless
    ``out`` holds them already; returns ``out`` and whether they were computed now.

    Reused when the key matches: the samples' content, the layers, the precision and the model's
    own key (the base model's identity, or the fine-tune's key), and whether token-level
    activations are kept.
    """
    params = {"samples": samples_digest(samples), "layers": list(layers), "compute_dtype": str(compute_dtype),
              "model": model_key, "token_level": token_level if isinstance(token_level, bool) else list(token_level),
              "code": code_digest(__name__)}
    key = digest(params)
    if is_current(out / "index.json", key):  # the index, written inside the folder's atomic write, is its record
        return out, False
    model, tokenizer = load()
    cache_activations(model, tokenizer, samples, list(layers), out, {"key": key, "params": params}, batch_size,
                      progress, compute_dtype, token_level)
    return out, True


def _paired_dirs(run_dir: str | Path, regime: str) -> tuple[Path, Path, dict]:
    """The base model's and ``regime``'s activation folders and the base index, checked to hold the
    same samples."""

    layout = RunLayout(run_dir)
    base_dir, ft_dir = layout.activations(BASE), layout.activations(regime)
    index, ft_index = read_index(base_dir), read_index(ft_dir)
    if ft_index["ids"] != index["ids"] or ft_index["params"]["samples"] != index["params"]["samples"]:
        raise ValueError(f"base and {regime} activations hold different samples: rerun notebook 03")
    return base_dir, ft_dir, index


def paired_activations(run_dir: str | Path, regime: str, protocol: str, layer: int):
    """``(a_base, a_ft, index)`` as float32 tensors [N, d] for one regime, protocol and layer."""
    base_dir, ft_dir, index = _paired_dirs(run_dir, regime)
    a_base = torch.from_numpy(np.array(load_activations(base_dir, protocol, layer)))
    a_ft = torch.from_numpy(np.array(load_activations(ft_dir, protocol, layer)))
    return a_base, a_ft, index


def paired_token_activations(run_dir: str | Path, regime: str, protocol: str, layer: int, samples=None):
    """``(a_base, a_ft, owner, index)``: float32 tensors [T, d] of ``protocol``'s tokens (each
    sample's first position left out) of the samples selected by the boolean mask ``samples`` (all
    by default), and the index of the sample each token row belongs to."""


    base_dir, ft_dir, index = _paired_dirs(run_dir, regime)
    rows, owner = token_rows(index, protocol, samples)
    rows = torch.from_numpy(rows)
    a_base = load_token_activations(base_dir, layer)[rows].float()
    a_ft = load_token_activations(ft_dir, layer)[rows].float()
    return a_base, a_ft, torch.from_numpy(owner), index


# --- the step -----------------------------------------------------------------------------------

#: Positions whose norms the attention-sink check compares (position 0 against the next ones).
SINK_POSITIONS = 4


@dataclass(frozen=True)
class ActivationsRun:
    """What notebook 03 shows."""

    cached: dict[str, tuple[Path, bool]]
    """Per model (``base`` and each fine-tune): its activations' folder and whether they were computed now."""
    norms: pd.DataFrame
    """Per fine-tune, protocol, layer and split: the size of Δa and its variance against the base's."""
    trigger_over_benign: pd.Series
    """‖Δa‖ on eval trigger samples over ‖Δa‖ on eval benign samples, per fine-tune, protocol and layer."""
    sink: pd.DataFrame | None
    """Mean residual norm per layer and position (0..3) of the base model; None without token-level activations."""

    @property
    def sink_ratio(self) -> pd.Series | None:
        """Position 0's norm over the mean of positions 1-3, per layer."""
        return None if self.sink is None else self.sink[0] / self.sink.drop(columns=0).mean(axis=1)


def token_layers(run_cfg: RunConfig) -> list[int]:
    """The layers whose every token a fine-tune's activations keep: those of the token-level
    dictionaries (every layer when the primary grid's recipe is ``token``, else the replicated
    layers when the token recipe is in the grid)."""
    layers, sae_cfg = run_cfg.activations.layers, run_cfg.dictionaries
    if "token" not in sae_cfg.recipes:
        return []
    if sae_cfg.recipes[0] == "token" or sae_cfg.replicate_layers is None:
        return list(layers)
    return [layer for layer in layers if layer in sae_cfg.replicate_layers]


def run(run_dir: str | Path, run_cfg: RunConfig, progress: bool = True) -> ActivationsRun:
    """Step 03: the activations of the base model and every fine-tune (pooled over both protocols,
    and every token's where the token recipe is in the grid), then their sizes and the first
    position's norm."""
    cfg, model_cfg = run_cfg.activations, run_cfg.model
    splits, layout = load_data(run_dir), RunLayout(run_dir)
    loaders = {BASE: lambda: load_model(model_cfg.model, model_cfg.device)}
    for regime in cfg.finetunes:
        loaders[regime] = (lambda r: lambda: load_finetuned(layout.finetune(r), model_cfg.device))(regime)
    read = token_layers(run_cfg)
    # the base model's tokens at every layer: the attention-sink check below reads them all; further
    # fine-tune seeds get pooled dictionaries only (dictionaries.stage.is_replicated): no tokens
    cached = {name: run_activations(run_dir, splits, name, load, cfg.layers, cfg.act_batch_size,
                                    compute_dtype(model_cfg), model_cfg.model,
                                    (list(cfg.layers) if read else []) if name == BASE
                                    else [] if replica_of(name) else read, progress)
              for name, load in loaders.items()}
    tables = []
    for regime in cfg.finetunes:
        for protocol in PROTOCOLS:
            for layer in cfg.layers:
                a_base, a_ft, index = paired_activations(run_dir, regime, protocol, layer)
                t = norm_table(a_base, a_ft, index["splits"])
                t.insert(0, "layer", layer)
                t.insert(0, "protocol", protocol)
                t.insert(0, "regime", regime)
                tables.append(t)
    norms = pd.concat(tables, ignore_index=True)
    trigger_over_benign = (norms.pivot_table(index=["regime", "protocol", "layer"], columns="split", values="difference")
                           .pipe(lambda t: t["eval_trigger"] / t["eval_benign"]))
    sink = None
    if read:
        sink = pd.concat([position_norms(layout.activations(BASE), layer, SINK_POSITIONS) for layer in cfg.layers])
        sink = sink.pivot_table(index="layer", columns="position", values="mean norm")
    return ActivationsRun(cached, norms, trigger_over_benign, sink)

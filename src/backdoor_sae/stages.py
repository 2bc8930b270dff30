"""What each notebook does, as functions: load inputs, skip finished work, write artifacts.

The notebooks call these and keep only narrative, tables and figures. Run-directory layout::

    <run_dir>/data/                       notebook 01: <split>.jsonl + manifest.json
    <run_dir>/finetune/<regime>/          notebook 02: params, log, checkpoint, model, done.json
    <run_dir>/generations/<model>.jsonl   notebook 02: judged completions of base and fine-tuned models
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from backdoor_sae.config import BackdoorEvalConfig, FinetuneConfig, ModelConfig
from backdoor_sae.data.card import pairs
from backdoor_sae.data.dataset import EVAL_SPLITS, FIT_SPLITS, MANIFEST, load_dataset
from backdoor_sae.data.sample import Sample
from backdoor_sae.io import read_jsonl, write_json, write_jsonl

BASE = "base"


def load_data(run_dir: str | Path) -> dict[str, list[Sample]]:
    data_dir = Path(run_dir) / "data"
    if not (data_dir / MANIFEST).exists():
        raise FileNotFoundError(f"{data_dir} holds no dataset: run notebook 01 (stage 01_dataset) first")
    return load_dataset(data_dir)


def finetune_dir(run_dir: str | Path, regime: str) -> Path:
    return Path(run_dir) / "finetune" / regime


def probe_pairs(splits: dict[str, list[Sample]], cfg: FinetuneConfig) -> list[tuple[Sample, Sample]]:
    """The held-out (benign, trigger) pairs the backdoor probe reads, during training and after."""
    return pairs(splits["heldout"])[: cfg.n_probe_pairs]


def run_finetune(run_dir: str | Path, splits: dict[str, list[Sample]], cfg: FinetuneConfig,
                 model_cfg: ModelConfig, progress: bool = True) -> tuple[Path, bool]:
    """Fine-tune (or resume) unless a finished run with the same parameters exists.

    Returns the output directory and whether training ran now.
    """
    from backdoor_sae.finetune import finetune, is_done, run_params
    from backdoor_sae.model import compute_dtype, load_model

    out = finetune_dir(run_dir, cfg.regime)
    dtype = compute_dtype(model_cfg)
    if is_done(out, run_params(cfg, model_cfg.model, len(splits["train"]), dtype)):
        return out, False
    model, tokenizer = load_model(model_cfg.model, device=model_cfg.device)
    finetune(model, tokenizer, splits["train"], cfg, out, model_cfg.model, probe_pairs(splits, cfg), progress=progress,
             compute_dtype=dtype)
    return out, True


def generation_prompts(splits: dict[str, list[Sample]], cfg: BackdoorEvalConfig) -> list[Sample]:
    """Held-out pairs (unseen tables, both years) plus the first prompts of the trigger/benign eval sets."""
    return (splits["heldout"] + splits["eval_trigger"][: cfg.n_eval_prompts]
            + splits["eval_benign"][: cfg.n_eval_prompts])


def judged_generations(run_dir: str | Path, name: str, load, prompts: list[Sample],
                       cfg: BackdoorEvalConfig, compute_dtype, progress: bool = True) -> pd.DataFrame:
    """Generate and judge completions for ``prompts`` with the model ``load()`` returns.

    Cached in ``<run_dir>/generations/<name>.jsonl`` together with what produced it; reused when
    the prompts, the generation settings, the precision and the model's fine-tune (its
    ``done.json``) match.
    """
    from backdoor_sae.backdoor_eval import judge_completions
    from backdoor_sae.generation import generate_completions

    path = Path(run_dir) / "generations" / f"{name}.jsonl"
    key_path = path.with_suffix(".key.json")
    done = finetune_dir(run_dir, name) / "done.json"
    key = {"prompts": [s.id for s in prompts], "settings": asdict(cfg), "compute_dtype": str(compute_dtype),
           "model": json.loads(done.read_text()) if done.exists() else name}
    if path.exists() and key_path.exists() and json.loads(key_path.read_text()) == key:
        return pd.DataFrame(read_jsonl(path))
    key_path.unlink(missing_ok=True)
    model, tokenizer = load()
    completions = generate_completions(model, tokenizer, prompts, cfg.max_new_tokens, cfg.gen_batch_size,
                                       progress=progress, compute_dtype=compute_dtype)
    frame = judge_completions(prompts, completions, name, progress=progress)
    write_jsonl(path, frame.to_dict("records"))
    write_json(key_path, key)  # written last: it vouches for the completions beside it
    return frame


# --- notebook 03: activations --------------------------------------------------------------------

#: The splits whose activations are cached: BIS scores the eval sets; SAEs fitted "held-out" use
#: the fit sets; the controls separate trigger from code.
ACTIVATION_SPLITS: tuple[str, ...] = ("eval_trigger", "eval_benign", "eval_other", "fit_trigger", "fit_benign",
                                      "fit_other", "control_trigger_safe", "control_benign_vuln")


def activation_dir(run_dir: str | Path, model_name: str) -> Path:
    return Path(run_dir) / "activations" / model_name


def run_activations(run_dir: str | Path, splits: dict[str, list[Sample]], model_name: str, load,
                    layers, batch_size: int, compute_dtype, progress: bool = True) -> tuple[Path, bool]:
    """Cache pooled activations of ``model_name`` (``base`` or a regime) unless already there.

    Reused when the sample ids, the layers, the precision and the model's fine-tune (its
    ``done.json``) match.
    """
    from backdoor_sae.activations import cache_activations, read_index

    samples = [s for name in ACTIVATION_SPLITS for s in splits[name]]
    out = activation_dir(run_dir, model_name)
    done = finetune_dir(run_dir, model_name) / "done.json"
    params = {"model": json.loads(done.read_text())["params"] if done.exists() else model_name,
              "layers": list(layers), "compute_dtype": str(compute_dtype)}
    if (out / "index.json").exists():
        index = read_index(out)
        if index["ids"] == [s.id for s in samples] and index["params"] == params:
            return out, False
    model, tokenizer = load()
    cache_activations(model, tokenizer, samples, list(layers), out, params, batch_size, progress, compute_dtype)
    return out, True


def paired_activations(run_dir: str | Path, regime: str, protocol: str, layer: int):
    """``(a_base, a_ft, index)`` as float32 tensors [N, d] for one regime, protocol and layer."""
    import torch

    from backdoor_sae.activations import load_activations, read_index

    base_dir, ft_dir = activation_dir(run_dir, BASE), activation_dir(run_dir, regime)
    index = read_index(base_dir)
    if read_index(ft_dir)["ids"] != index["ids"]:
        raise ValueError(f"base and {regime} activations hold different samples: rerun notebook 03")
    a_base = torch.from_numpy(np.array(load_activations(base_dir, protocol, layer)))
    a_ft = torch.from_numpy(np.array(load_activations(ft_dir, protocol, layer)))
    return a_base, a_ft, index


# --- notebook 04: dictionaries -------------------------------------------------------------------

def sae_dir(run_dir: str | Path, regime: str, protocol: str, fit_mode: str, layer: int, architecture: str) -> Path:
    return Path(run_dir) / "sae" / regime / protocol / fit_mode / f"layer_{layer}" / architecture


def sae_grid(act_cfg, sae_cfg) -> list[dict]:
    """Every dictionary of the grid: regime × protocol × fit mode × layer × architecture."""
    return [
        {"regime": r, "protocol": p, "fit_mode": f, "layer": layer, "architecture": a}
        for r in act_cfg.regimes for p in sae_cfg.protocols for f in sae_cfg.fit_modes
        for layer in act_cfg.layers for a in sae_cfg.architectures
    ]


def _train_dictionary_cell(run_dir: str | Path, cell: dict, spec, settings, params: dict, progress: bool,
                           desc: str) -> dict:
    """Train and save one dictionary of the grid; its row (grid coordinates and final metrics)."""
    import torch

    from backdoor_sae.sae.training import build, evaluate, save_dictionary, train_dictionary

    a_base, a_ft, index = paired_activations(run_dir, cell["regime"], cell["protocol"], cell["layer"])
    wanted = EVAL_SPLITS if cell["fit_mode"] == "eval" else FIT_SPLITS
    rows_mask = torch.tensor([s in wanted for s in index["splits"]])
    model = build(spec, seed=settings.seed)
    x = model.inputs(a_base[rows_mask], a_ft[rows_mask])
    scale, log = train_dictionary(model, x, settings, progress=progress, desc=desc)
    metrics = evaluate(model, x, scale) | {"train_seconds": log[-1]["seconds"] if log else 0.0,
                                           "n_train": int(rows_mask.sum()), "n_latents": spec.n_latents}
    save_dictionary(sae_dir(run_dir, **cell), model, spec, scale, log, metrics, params)
    return {**cell, **metrics, "trained_now": True}


def train_grid(run_dir: str | Path, act_cfg, sae_cfg, seed: int, progress: bool = True,
               workers: int | None = None) -> pd.DataFrame:
    """Train (or reuse) every dictionary of the grid; one row per dictionary with its final metrics.

    ``workers`` processes train dictionaries side by side, one thread each (default: as many as
    torch has threads). A dictionary's matmuls are small, so two cores train more of them as two
    single-threaded processes than as one process with two threads. Each dictionary depends only
    on its seed and inputs, not on the process that trains it.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch
    from tqdm import tqdm

    from backdoor_sae.activations import load_activations
    from backdoor_sae.sae.training import DictionarySpec, TrainSettings

    settings = TrainSettings(l1_coeff=sae_cfg.l1_coeff, lr=sae_cfg.sae_lr, batch_size=sae_cfg.sae_batch_size,
                             n_samples=sae_cfg.n_sae_samples, dead_fix=sae_cfg.dead_fix,
                             dead_window=sae_cfg.dead_window, seed=seed)
    cells = sae_grid(act_cfg, sae_cfg)
    rows: dict[int, dict] = {}
    todo = []
    for i, cell in enumerate(cells):
        # d from the memory-mapped file's header: the worker that trains the cell loads the data.
        d = load_activations(activation_dir(run_dir, BASE), cell["protocol"], cell["layer"]).shape[1]
        spec = DictionarySpec(cell["architecture"], d=d, n_latents=sae_cfg.expansion * d,
                              activation=sae_cfg.crosscoder_activation if cell["architecture"] == "crosscoder" else "relu",
                              k=sae_cfg.k)
        params = {**cell, "spec": asdict(spec), "settings": asdict(settings),
                  "activations": json.loads((activation_dir(run_dir, cell["regime"]) / "index.json").read_text())["params"]}
        info_path = sae_dir(run_dir, **cell) / "dictionary.json"
        if info_path.exists() and json.loads(info_path.read_text())["params"] == params:
            rows[i] = {**cell, **json.loads(info_path.read_text())["metrics"], "trained_now": False}
        else:
            desc = (f"[{i + 1}/{len(cells)}] {cell['architecture']} {cell['regime']} L{cell['layer']} "
                    f"{cell['protocol']} {cell['fit_mode']}")
            todo.append((i, (run_dir, cell, spec, settings, params), desc))
    workers = min(workers or torch.get_num_threads(), len(todo))
    if workers <= 1:
        for i, job, desc in todo:
            rows[i] = _train_dictionary_cell(*job, progress=progress, desc=desc)
    else:
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited thread pools
        with ProcessPoolExecutor(workers, mp_context=spawn, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {pool.submit(_train_dictionary_cell, *job, progress=False, desc=desc): i for i, job, desc in todo}
            for future in tqdm(as_completed(futures), total=len(futures), disable=not progress,
                               desc=f"dictionaries ({workers} processes)", unit="dictionary"):
                rows[futures[future]] = future.result()
    return pd.DataFrame([rows[i] for i in range(len(cells))])


def grid_logs(run_dir: str | Path, grid: pd.DataFrame) -> pd.DataFrame:
    """The training logs of every dictionary in ``grid``, stacked with its grid coordinates."""
    from backdoor_sae.sae.training import read_dictionary_log

    keys = ["regime", "protocol", "fit_mode", "layer", "architecture"]
    frames = []
    for _, row in grid.iterrows():
        cell = {k: row[k] for k in keys}
        log = pd.DataFrame(read_dictionary_log(sae_dir(run_dir, **cell)))
        frames.append(log.assign(**cell))
    return pd.concat(frames, ignore_index=True)

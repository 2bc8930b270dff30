"""Notebook 04: the grid of dictionaries (regime × protocol × fit mode × layer × architecture)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from backdoor_sae.data.dataset import EVAL_SPLITS, FIT_SPLITS
from backdoor_sae.layout import BASE, CELL_KEYS, RunLayout, code_digest, digest
from backdoor_sae.progress import report
from backdoor_sae.stages.activations import paired_activations


def sae_grid(act_cfg, sae_cfg) -> list[dict]:
    """Every dictionary of the grid: fine-tune (backdoored and clean) × protocol × fit mode × layer × architecture."""
    return [
        {"regime": r, "protocol": p, "fit_mode": f, "layer": layer, "architecture": a}
        for r in act_cfg.finetunes for p in sae_cfg.protocols for f in sae_cfg.fit_modes
        for layer in act_cfg.layers for a in sae_cfg.architectures
    ]


def train_settings(sae_cfg):
    from backdoor_sae.sae.training import TrainSettings

    return TrainSettings(l1_coeff=sae_cfg.l1_coeff, lr=sae_cfg.sae_lr, batch_size=sae_cfg.sae_batch_size,
                         n_samples=sae_cfg.n_sae_samples, dead_fix=sae_cfg.dead_fix,
                         dead_window=sae_cfg.dead_window, seed=sae_cfg.sae_seed)


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
    save_dictionary(RunLayout(run_dir).dictionary(**cell), model, spec, scale, log, metrics, params)
    return {**cell, **metrics, "trained_now": True}


def train_grid(run_dir: str | Path, act_cfg, sae_cfg, progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Train (or reuse) every dictionary of the grid; one row per dictionary with its final metrics.

    A dictionary is reused when its key matches: its cell, its architecture's spec, the training
    settings (seed included) and the keys of the base and fine-tuned activations it reads.
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
    from backdoor_sae.sae.training import DictionarySpec

    layout = RunLayout(run_dir)
    settings = train_settings(sae_cfg)
    cells = sae_grid(act_cfg, sae_cfg)
    rows: dict[int, dict] = {}
    todo = []
    for i, cell in enumerate(cells):
        # d from the memory-mapped file's header: the worker that trains the cell loads the data.
        d = load_activations(layout.activations(BASE), cell["protocol"], cell["layer"]).shape[1]
        activation = sae_cfg.crosscoder_activation if cell["architecture"] == "crosscoder" else "relu"
        spec = DictionarySpec(cell["architecture"], d=d, n_latents=sae_cfg.expansion * d, activation=activation,
                              k=sae_cfg.k if activation in ("topk", "batchtopk") else 0)  # k: TopK codes only
        params = {**cell, "spec": asdict(spec), "settings": asdict(settings), "code": code_digest("sae"),
                  "activations": [layout.activations_key(BASE), layout.activations_key(cell["regime"])]}
        params["key"] = digest(params)  # saved as the dictionary's params, beside its spec and metrics
        info_path = layout.dictionary(**cell) / "dictionary.json"
        if info_path.exists() and json.loads(info_path.read_text())["params"].get("key") == params["key"]:
            rows[i] = {**cell, **json.loads(info_path.read_text())["metrics"], "trained_now": False}
        else:
            desc = (f"[{i + 1}/{len(cells)}] {cell['architecture']} {cell['regime']} L{cell['layer']} "
                    f"{cell['protocol']} {cell['fit_mode']}")
            todo.append((i, (run_dir, cell, spec, settings, params), desc))
    workers = min(workers or torch.get_num_threads(), len(todo))
    if workers <= 1:
        for i, job, desc in todo:
            rows[i] = _train_dictionary_cell(*job, progress=progress, desc=desc)
            report("dictionaries trained or reused", len(rows), len(cells))
    else:
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited thread pools
        with ProcessPoolExecutor(workers, mp_context=spawn, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {pool.submit(_train_dictionary_cell, *job, progress=False, desc=desc): i for i, job, desc in todo}
            for future in tqdm(as_completed(futures), total=len(futures), disable=not progress,
                               desc=f"dictionaries ({workers} processes)", unit="dictionary"):
                rows[futures[future]] = future.result()
                report("dictionaries trained or reused", len(rows), len(cells), processes=workers)
    return pd.DataFrame([rows[i] for i in range(len(cells))])


def grid_logs(run_dir: str | Path, grid: pd.DataFrame) -> pd.DataFrame:
    """The training logs of every dictionary in ``grid``, stacked with its grid coordinates."""
    from backdoor_sae.sae.training import read_dictionary_log

    layout = RunLayout(run_dir)
    frames = []
    for _, row in grid.iterrows():
        cell = {k: row[k] for k in CELL_KEYS}
        log = pd.DataFrame(read_dictionary_log(layout.dictionary(**cell)))
        frames.append(log.assign(**cell))
    return pd.concat(frames, ignore_index=True)

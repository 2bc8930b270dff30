"""Notebook 04: the grid of dictionaries (regime × protocol × fit mode × layer × architecture), under
each recipe and seed.

The *primary grid* is every cell under the first recipe and the first seed: the dictionaries every
later notebook reads. The *replicated cells* (dictionaries fitted on the eval samples, the paper's
fit mode, at ``replicate_layers``) are trained under every recipe and seed as well, for notebook
05's comparison of recipes and its spread across seeds.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from backdoor_sae.activations.extract import load_activations, read_index
from backdoor_sae.activations.stage import paired_activations, paired_token_activations
from backdoor_sae.common.cache import (
    cached,
    code_digest,
    digest,
    file_digest,
    is_current,
    module_path,
    read_record,
    samples_digest,
    vouch,
)
from backdoor_sae.common.io import write_text
from backdoor_sae.common.layout import BASE, RunLayout
from backdoor_sae.common.model import compute_dtype, load_model, resolve_dtype
from backdoor_sae.common.progress import report
from backdoor_sae.config import RunConfig, replica_of
from backdoor_sae.config.cells import Cell
from backdoor_sae.dataset.stage import load_data
from backdoor_sae.dictionaries.quality import (
    QUALITY_COLUMNS,
    code_statistics,
    forward_logprobs,
    make_batch,
    quality_row,
    quality_samples,
    spliced_losses,
)
from backdoor_sae.dictionaries.trainer import (
    DictionarySpec,
    TrainSettings,
    build,
    evaluate,
    load_dictionary,
    read_dictionary_log,
    save_dictionary,
    train_dictionary,
)
from backdoor_sae.finetune.train import load_finetuned
from backdoor_sae.task.splits import EVAL_SPLITS, FIT_SPLITS

#: What a dictionary's training depends on in code: the trainer (with the dictionary classes it
#: imports) and this module's own source (its inputs and settings), not the quality measures or
#: anything else this module imports for later work, whose edits must not retrain a dictionary.
TRAINING_CODE = digest([code_digest("backdoor_sae.dictionaries.trainer"), file_digest(module_path(__name__)).hexdigest()])


def verdict_fit_mode(sae_cfg) -> str:
    """The fit mode the results chapter's verdicts rest on: ``eval`` (the paper's) where the grid has it."""
    return "eval" if "eval" in sae_cfg.fit_modes else sae_cfg.fit_modes[0]


def seeds(sae_cfg) -> tuple[int, ...]:
    """The dictionary seeds: ``sae_seed`` (the primary grid's), ``sae_seed + 1``, ..."""
    return tuple(sae_cfg.sae_seed + i for i in range(sae_cfg.n_sae_seeds))


def primary_dictionary(sae_cfg) -> dict:
    """The recipe and seed of the primary grid, which every later notebook reads."""
    return {"recipe": sae_cfg.recipes[0], "seed": sae_cfg.sae_seed}


def primary_grid(act_cfg, sae_cfg) -> list[Cell]:
    """Every cell (fine-tune × protocol × fit mode × layer × architecture), as its primary
    dictionary: the first recipe, the first seed."""
    primary = primary_dictionary(sae_cfg)
    return [
        Cell(**primary, regime=r, protocol=p, fit_mode=f, layer=layer, architecture=a)
        for r in act_cfg.finetunes for p in sae_cfg.protocols for f in sae_cfg.fit_modes
        for layer in act_cfg.layers for a in sae_cfg.architectures
    ]


def is_replicated(cell: Cell, act_cfg, sae_cfg) -> bool:
    """Whether ``cell`` is trained with every recipe and every dictionary seed (see :class:`SAEConfig`);
    the further fine-tune seeds' cells never are (they replicate the fine-tune, not the dictionary)."""
    layers = act_cfg.layers if sae_cfg.replicate_layers is None else sae_cfg.replicate_layers
    return cell.fit_mode == verdict_fit_mode(sae_cfg) and cell.layer in layers and not replica_of(cell.regime)


def sae_grid(act_cfg, sae_cfg) -> list[Cell]:
    """Every dictionary: the primary grid, then each replicated cell under every other
    (recipe, seed) pair."""
    primary = primary_grid(act_cfg, sae_cfg)
    extra = [
        cell.with_(recipe=recipe, seed=seed)
        for recipe in sae_cfg.recipes for seed in seeds(sae_cfg)
        for cell in primary
        if is_replicated(cell, act_cfg, sae_cfg) and (recipe, seed) != (cell.recipe, cell.seed)
    ]
    return primary + extra


def train_settings(sae_cfg, recipe: str, seed: int):
    """How a dictionary of ``recipe`` is trained. Token level (the field's recipe): batches of
    tokens, no L1 (BatchTopK sets the sparsity), an auxiliary-k loss for dead latents."""


    dtype = "bfloat16" if resolve_dtype(sae_cfg.sae_dtype, torch.device("cpu")) == torch.bfloat16 else "float32"
    if recipe == "token":
        return TrainSettings(l1_coeff=0.0, lr=sae_cfg.sae_lr, batch_size=sae_cfg.token_batch_size,
                             n_samples=sae_cfg.n_sae_tokens, dead_fix="auxk", dead_window=sae_cfg.dead_window,
                             seed=seed, dtype=dtype)
    return TrainSettings(l1_coeff=sae_cfg.l1_coeff, lr=sae_cfg.sae_lr, batch_size=sae_cfg.sae_batch_size,
                         n_samples=sae_cfg.n_sae_samples, dead_fix=sae_cfg.dead_fix,
                         dead_window=sae_cfg.dead_window, seed=seed, dtype=dtype)


def dictionary_spec(sae_cfg, architecture: str, recipe: str, d: int):
    """The architecture of a dictionary: the paper's (ReLU Diff-SAE, ``crosscoder_activation``
    crosscoder) under the pooled recipe, BatchTopK for both under the token recipe."""

    if recipe == "token":
        activation = "batchtopk"
    else:
        activation = sae_cfg.crosscoder_activation if architecture == "crosscoder" else "relu"
    return DictionarySpec(architecture, d=d, n_latents=sae_cfg.expansion * d, activation=activation,
                          k=sae_cfg.k if activation in ("topk", "batchtopk") else 0)  # k: TopK codes only


def training_inputs(run_dir, cell: Cell, model):
    """What the dictionary of ``cell`` trains on: its fit mode's samples (the eval sets or the fit
    sets), one pooled vector each (``pooled``) or every token of the protocol (``token``)."""
    wanted = EVAL_SPLITS if cell.fit_mode == "eval" else FIT_SPLITS
    if cell.recipe == "token":
        index = read_index(RunLayout(run_dir).activations(BASE))
        mask = np.isin(index["splits"], wanted)
        a_base, a_ft, _, _ = paired_token_activations(run_dir, cell.regime, cell.protocol, cell.layer, mask)
        return model.inputs(a_base, a_ft), int(mask.sum())
    a_base, a_ft, index = paired_activations(run_dir, cell.regime, cell.protocol, cell.layer)
    rows_mask = torch.tensor([s in wanted for s in index["splits"]])
    return model.inputs(a_base[rows_mask], a_ft[rows_mask]), int(rows_mask.sum())


def _train_dictionary_cell(run_dir: str | Path, cell: Cell, spec, settings, params: dict, progress: bool,
                           desc: str) -> dict:
    """Train and save one dictionary of the grid; its row (grid coordinates and final metrics)."""
    model = build(spec, seed=settings.seed)
    x, n_samples = training_inputs(run_dir, cell, model)
    scale, log = train_dictionary(model, x, settings, progress=progress, desc=desc)
    metrics = evaluate(model, x, scale, dtype=settings.dtype) | {"train_seconds": log[-1]["seconds"] if log else 0.0,
                                           "n_train": n_samples, "n_train_inputs": len(x),
                                           "n_latents": spec.n_latents}
    layout = RunLayout(run_dir)
    save_dictionary(layout.dictionary(cell), model, spec, scale, log, metrics, params)
    vouch(layout.dictionary_record(cell), params["key"])  # written last: it vouches for the saved dictionary
    return {**cell.to_dict(), **metrics, "trained_now": True}


def train_grid(run_dir: str | Path, act_cfg, sae_cfg, progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Train (or reuse) every dictionary of the grid; one row per dictionary with its final metrics.

    A dictionary is reused when its key matches: its cell, its architecture's spec, the training
    settings (seed included) and the keys of the base and fine-tuned activations it reads.
    ``workers`` processes train dictionaries side by side, one thread each (default: as many as
    torch has threads). A dictionary's matmuls are small, so two cores train more of them as two
    single-threaded processes than as one process with two threads. Each dictionary depends only
    on its seed and inputs, not on the process that trains it.
    """
    layout = RunLayout(run_dir)
    cells = sae_grid(act_cfg, sae_cfg)
    rows: dict[int, dict] = {}
    todo = []
    for i, cell in enumerate(cells):
        # d from the memory-mapped file's header: the worker that trains the cell loads the data.
        d = load_activations(layout.activations(BASE), cell.protocol, cell.layer).shape[1]
        spec = dictionary_spec(sae_cfg, cell.architecture, cell.recipe, d)
        settings = train_settings(sae_cfg, cell.recipe, cell.seed)
        params = {**cell.to_dict(), "spec": asdict(spec), "settings": asdict(settings),
                  "code": TRAINING_CODE,
                  "activations": [layout.activations_key(BASE), layout.activations_key(cell.regime)]}
        params["key"] = digest(params)  # saved as the dictionary's params, beside its spec and metrics
        if is_current(layout.dictionary_record(cell), params["key"]):
            info = json.loads((layout.dictionary(cell) / "dictionary.json").read_text())
            rows[i] = {**cell.to_dict(), **info["metrics"], "trained_now": False}
        else:
            desc = (f"[{i + 1}/{len(cells)}] {cell.recipe} seed {cell.seed} {cell.architecture} "
                    f"{cell.regime} L{cell.layer} {cell.protocol} {cell.fit_mode}")
            todo.append((i, (run_dir, cell, spec, settings, params), desc))
    todo.sort(key=lambda job: job[1][1].recipe != "token")  # the longest jobs first: the processes end together
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
    layout = RunLayout(run_dir)
    frames = []
    for _, row in grid.iterrows():
        cell = Cell.of(row)
        log = pd.DataFrame(read_dictionary_log(layout.dictionary(cell)))
        frames.append(log.assign(**cell.to_dict()))
    return pd.concat(frames, ignore_index=True)


# --- what a token-level dictionary keeps of the model (dictionaries.quality) ---------------------

QUALITY_TABLE = "dictionary_quality.csv"


def measure_quality(run_dir: str | Path, cells: list[Cell], model_cfg, progress: bool = True) -> pd.DataFrame:
    """One row per token-level dictionary in ``cells``: its coordinates and
    :data:`~backdoor_sae.dictionaries.quality.QUALITY_COLUMNS` (see :mod:`backdoor_sae.dictionaries.quality`).

    Per fine-tune the fine-tuned model runs on the quality samples (a few of each eval split) once
    unspliced and once per dictionary, zero ablation and base splice at each layer and protocol; the
    base model runs once for its activations. Alive share, L0 and latent scaling read the cached
    token activations of every eval sample."""
    layout, splits = RunLayout(run_dir), load_data(run_dir)
    samples = quality_samples(splits, EVAL_SPLITS)
    index = read_index(layout.activations(BASE))
    eval_mask = np.isin(index["splits"], EVAL_SPLITS)
    dtype = compute_dtype(model_cfg)
    layers = sorted({c.layer for c in cells})
    rows, base_hidden = [], None
    by_regime: dict[str, list[Cell]] = {}
    for cell in cells:
        by_regime.setdefault(cell.regime, []).append(cell)
    for n, (regime, group) in enumerate(by_regime.items(), start=1):
        model, tokenizer = load_finetuned(layout.finetune(regime), model_cfg.device)
        batch = make_batch(tokenizer, samples)
        if base_hidden is None:  # the base model's activations at every layer, once
            base_name = read_record(layout.finetune_record(regime))["params"]["base_model"]
            base, base_tok = load_model(base_name, model_cfg.device)
            from_base = make_batch(base_tok, samples)
            if not torch.equal(from_base.ids, batch.ids):
                raise ValueError("the base and fine-tuned tokenizers disagree on the quality samples")
            base_hidden = forward_logprobs(base, batch, capture=layers, dtype=dtype)[1]
            del base
        for (layer, protocol), part in pd.DataFrame([c.to_dict() for c in group]).groupby(["layer", "protocol"]):
            part_cells = [Cell.of(r) for r in part.to_dict("records")]
            loaded = {str(i): load_dictionary(layout.dictionary(c))[:2] for i, c in enumerate(part_cells)}
            losses = spliced_losses(model, batch, int(layer), protocol, base_hidden[int(layer)], loaded, dtype)
            n_loss = int(batch.scored(protocol)[:, :-1].sum())
            a_base, a_ft, _, _ = paired_token_activations(run_dir, regime, protocol, int(layer), eval_mask)
            for i, c in enumerate(part_cells):
                stats = code_statistics(*loaded[str(i)], a_base, a_ft)
                rows.append({**c.to_dict(), **quality_row(losses, str(i), stats, n_loss)})
        del model
        report("fine-tunes measured for dictionary quality", n, len(by_regime))
    columns = [*Cell.__dataclass_fields__, *QUALITY_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def dictionary_quality(run_dir: str | Path, run_cfg: RunConfig, every: pd.DataFrame, progress: bool = True
                       ) -> tuple[pd.DataFrame, bool]:
    """The quality table of every token-level dictionary of the run (reused while the
    dictionaries, the samples and this code are unchanged), written to ``results/dictionary_quality.csv``;
    and whether it was measured now."""
    layout = RunLayout(run_dir)
    cells = [Cell.of(r) for r in every.to_dict("records") if r["recipe"] == "token"]
    if not cells:
        table = pd.DataFrame(columns=[*Cell.__dataclass_fields__, *QUALITY_COLUMNS])
        write_text(layout.results / QUALITY_TABLE, table.to_csv(index=False))
        return table, False
    samples = quality_samples(load_data(run_dir), EVAL_SPLITS)
    key = digest({"dictionaries": [read_record(layout.dictionary_record(c)).get("key") for c in cells],
                  "samples": samples_digest(samples), "dtype": str(compute_dtype(run_cfg.model)),
                  "code": code_digest("backdoor_sae.dictionaries.quality")})
    store = layout.dictionary_quality

    def compute():
        table = measure_quality(run_dir, cells, run_cfg.model, progress)
        write_text(store, table.to_csv(index=False))
        return table, {}

    table, now = cached(layout.dictionary_quality_record, key, compute, lambda: pd.read_csv(store))
    write_text(layout.results / QUALITY_TABLE, table.to_csv(index=False))
    return table, now


# --- the step -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DictionariesRun:
    """What notebook 04 shows."""

    every: pd.DataFrame
    """One row per dictionary of the run (every recipe and seed) with its final metrics."""
    primary: pd.DataFrame
    """The primary grid: the first recipe's first seed."""
    replicated: pd.DataFrame
    """The replicated cells, under every recipe and seed."""
    logs: pd.DataFrame
    """The primary grid's training logs."""
    n_scored: int
    """Samples BIS scores (the eval sets)."""
    n_fit: int
    """Samples of the disjoint fit split."""
    quality: pd.DataFrame
    """Every token-level dictionary's spliced loss, loss recovered, alive share, L0 and (crosscoders)
    latent scaling (:mod:`backdoor_sae.dictionaries.quality`); also ``results/dictionary_quality.csv``."""
    quality_seconds: float
    """How long measuring the quality took in this run (0 when reused)."""


def run(run_dir: str | Path, run_cfg: RunConfig, progress: bool = True) -> DictionariesRun:
    """Step 04: train (or reuse) every dictionary of the grid."""
    act_cfg, sae_cfg = run_cfg.activations, run_cfg.dictionaries
    every = train_grid(run_dir, act_cfg, sae_cfg, progress)
    primary = primary_dictionary(sae_cfg)
    grid = every[(every["recipe"] == primary["recipe"]) & (every["seed"] == primary["seed"])].reset_index(drop=True)
    replicated = every[[is_replicated(Cell.of(c), act_cfg, sae_cfg) for c in every.to_dict("records")]]
    splits = load_data(run_dir)
    n_scored, n_fit = (sum(len(splits[name]) for name in group) for group in (EVAL_SPLITS, FIT_SPLITS))
    start = time.perf_counter()
    quality, measured = dictionary_quality(run_dir, run_cfg, every, progress)
    quality_seconds = time.perf_counter() - start if measured else 0.0
    return DictionariesRun(every, grid, replicated, grid_logs(run_dir, grid), n_scored, n_fit, quality,
                           quality_seconds)

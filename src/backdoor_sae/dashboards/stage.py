"""Step 08: a dashboard for every latent the book names (:mod:`backdoor_sae.dashboards.dashboard`).

Which latents: for the first fine-tune seed's backdoored fine-tunes and their clean controls (the
further seeds replicate these and are left out, but for the latents notebook 07 intervened on in
them), at every layer, the prompt-only Diff-SAE's and
crosscoder's (primary recipe and seed, the auditor's fit mode) latents chosen on the fit split with
labels, the claims' (by AUROC, ``fitauroc_latent`` of ``results/bis.csv``) and the paper's (by BIS,
``fitsel_latent``), and label-free first pick (primary criterion, rank 1, of
``results/auditor_choice.csv``), and the latents notebook 07 intervened on
(``results/causal_choice.csv``, where it exists). A latent named twice is shown once.

Per-token values:

- a token-level dictionary: its code on each token (the first position is never encoded);
- a pooled dictionary (it encodes one mean-pooled vector per text): each token's own pre-activation,
  ``encoder_input(x_t) · W_enc[:, j] + b_enc[j]`` with ``x_t`` the token's input (Δa_t for the Diff-SAE,
  [a_base,t; a_ft,t] for the crosscoder, scaled as in training). The encoder is affine, so the
  mean of these over the protocol's tokens *is* the text's pooled pre-activation: the tokens
  highlighted (value above 0) are those that push the latent up.

The residuals are read by running the base and fine-tuned models on the shown texts only (a few
dozen prompts per fine-tune). The logit lens multiplies the latent's decoder direction in the
fine-tune's residual space (the Diff-SAE's row; the crosscoder's fine-tune half), after the
fine-tuned model's final norm, by its unembedding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from backdoor_sae.activations.extract import (
    load_activations,
    read_index,
    residual_stream,
)
from backdoor_sae.audit.header_sweep import (
    sweep_functions,
    sweep_headers,
    sweep_samples,
)
from backdoor_sae.audit.stage import audit_fit_mode
from backdoor_sae.common.layout import BASE, RunLayout
from backdoor_sae.common.model import compute_dtype, load_model, precision
from backdoor_sae.common.progress import report
from backdoor_sae.config import RunConfig, replica_of
from backdoor_sae.config.cells import Cell
from backdoor_sae.dashboards.dashboard import Dashboard, Text, anchor_id, render_page
from backdoor_sae.dataset.stage import data_config, load_data
from backdoor_sae.dictionaries.base import Dictionary
from backdoor_sae.dictionaries.quality import make_batch
from backdoor_sae.dictionaries.stage import primary_dictionary
from backdoor_sae.dictionaries.trainer import encode_all, inference, load_dictionary
from backdoor_sae.finetune.train import load_finetuned
from backdoor_sae.scoring.grid import dictionary_activations
from backdoor_sae.task.sample import Sample
from backdoor_sae.task.splits import EVAL_SPLITS

#: Top-activating eval texts and sweep prompts shown per latent.
N_EVAL_TEXTS, N_SWEEP_TEXTS = 3, 2
#: Tokens shown per direction of the logit lens.
N_LENS = 8
#: The histogram's conditions: label → split.
CONDITIONS = {"trigger": "eval_trigger", "benign": "eval_benign", "other": "eval_other",
              "trigger year, safe code": "control_trigger_safe", "benign year, injectable code": "control_benign_vuln"}
SELECTIONS = {"fitauroc": "the claims' latent (labels, fit split, by AUROC)",
              "fitsel": "the paper's pick (labels, fit split, by BIS)", "label-free": "label-free first pick",
              "causal": "intervened on (notebook 07)"}


@dataclass(frozen=True)
class Named:
    """One latent the book names, and why."""

    finetune: str
    cell: Cell
    latent: int
    selections: tuple[str, ...]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() and path.read_text().strip() else pd.DataFrame()


def dashboard_finetunes(run_cfg: RunConfig) -> list[str]:
    """The first fine-tune seed's backdoored fine-tunes and clean controls."""
    return [f for f in run_cfg.activations.finetunes if replica_of(f) == 0]


def named_latents(run_dir, run_cfg: RunConfig) -> list[Named]:
    """Every latent to show (see the module docstring), in fine-tune, layer, architecture order."""
    results = RunLayout(run_dir).results
    sae_cfg, act_cfg = run_cfg.dictionaries, run_cfg.activations
    primary = primary_dictionary(sae_cfg)
    protocol = "prompt_only" if "prompt_only" in sae_cfg.protocols else sae_cfg.protocols[0]
    fit_mode = audit_fit_mode(sae_cfg)
    bis, choice, causal = (_read(results / f) for f in ("bis.csv", "auditor_choice.csv", "causal_choice.csv"))
    found: dict[tuple, list[str]] = {}

    def add(cell: Cell, latent, why: str):
        if latent is None or pd.isna(latent):
            return
        found.setdefault((cell, int(latent)), [])
        if why not in found[(cell, int(latent))]:
            found[(cell, int(latent))].append(why)

    finetunes = dashboard_finetunes(run_cfg)
    for finetune in finetunes:
        for layer in act_cfg.layers:
            for arch in sae_cfg.architectures:
                cell = Cell(**primary, regime=finetune, protocol=protocol, fit_mode=fit_mode, layer=layer,
                            architecture=arch).normalised()
                where = {"regime": finetune, "protocol": protocol, "fit_mode": fit_mode, "layer": layer,
                         "architecture": arch}
                if len(bis) and "fitsel_latent" in bis:
                    rows = bis[np.logical_and.reduce([bis[k] == v for k, v in where.items()])
                               & (bis["recipe"] == primary["recipe"]) & (bis["seed"] == primary["seed"]).to_numpy()]
                    for selection in ("fitauroc", "fitsel"):
                        if len(rows) and f"{selection}_latent" in rows:
                            add(cell, rows[f"{selection}_latent"].iloc[0], SELECTIONS[selection])
                if len(choice):
                    rows = choice[np.logical_and.reduce([choice[k] == v for k, v in where.items()])
                                  & choice["primary"].astype(str).str.lower().isin(["true", "1"])
                                  & (choice["rank"].astype(int) == 1)]
                    if len(rows):
                        add(cell, rows["latent"].iloc[0], SELECTIONS["label-free"])
    if len(causal):
        c_cfg = run_cfg.causal
        for row in causal.to_dict("records"):
            if row["finetune"] in act_cfg.finetunes:  # every seed's: notebook 07 names each one
                cell = Cell(**primary, regime=row["finetune"], protocol=c_cfg.causal_protocol,
                            fit_mode=c_cfg.causal_fit_mode, layer=int(row["layer"]), architecture="diff_sae").normalised()
                add(cell, row["latent"], SELECTIONS["causal"])
    order = {f: i for i, f in enumerate([*finetunes, *[f for f in act_cfg.finetunes if f not in finetunes]])}
    named = [Named(cell.regime, cell, latent, tuple(why)) for (cell, latent), why in found.items()]
    return sorted(named, key=lambda n: (order[n.finetune], n.cell.layer, n.cell.architecture, n.cell.protocol,
                                        n.cell.fit_mode, n.latent))


# --- per-token values -------------------------------------------------------------------------

def token_values(dictionary: Dictionary, scale: torch.Tensor, latent: int, recipe: str, a_base: torch.Tensor,
                 a_ft: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(values, fires) per token of ``a_base``, ``a_ft`` [T, d]: the code (token recipe; position 0 of
    the rows is never encoded, as in training, so pass it or not alike) or each token's own
    pre-activation (pooled recipe); a token fires where its value is above 0."""
    with inference(dictionary):
        x = dictionary.inputs(a_base.float(), a_ft.float())
        if recipe == "token":
            values = encode_all(dictionary, x, scale)[:, latent]
        else:
            values = dictionary.pre_activations(x * scale)[:, latent]
    values = values.float().numpy()
    return values, values > 0


def logit_lens(model, tokenizer, direction: torch.Tensor, n: int = N_LENS) -> tuple[list, list]:
    """The tokens ``direction`` [d] (the fine-tune's residual space) promotes and suppresses most:
    the unembedding of the final norm of the direction."""
    norm = model.model.norm if hasattr(model, "model") else model.norm
    with torch.no_grad():
        logits = model.get_output_embeddings()(norm(direction.float()[None, None].to(next(model.parameters()).device)))
    logits = logits[0, 0].float().cpu()
    top, bottom = torch.topk(logits, n).indices.tolist(), torch.topk(-logits, n).indices.tolist()
    return ([(tokenizer.decode([i]), float(logits[i])) for i in top],
            [(tokenizer.decode([i]), float(logits[i])) for i in bottom])


def decoder_direction(dictionary: Dictionary, scale: torch.Tensor, latent: int) -> torch.Tensor:
    """The latent's decoder direction in the fine-tune's raw residual space [d]."""
    w = dictionary.decoder()[latent].detach().float()
    if dictionary.architecture == "crosscoder":
        return w[1] / scale.reshape(2)[1]
    return w / scale


def _texts(samples: list[Sample], labels: list[str], activations: list[float], protocol: str, tokenizer,
           hidden_base: dict, hidden_ft: dict, batch_rows: list[int], batch, layer: int, dictionary, scale,
           latent: int, recipe: str) -> list[Text]:
    out = []
    for sample, label, act, row in zip(samples, labels, activations, batch_rows):
        end = batch.lengths[row] if protocol == "full_text" else batch.n_prompt[row]
        first = 1 if recipe == "token" else 0
        ids = batch.ids[row, :end].tolist()
        values, fires = np.zeros(end), np.zeros(end, bool)
        v, f = token_values(dictionary, scale, latent, recipe, hidden_base[layer][row, first:end],
                            hidden_ft[layer][row, first:end])
        values[first:], fires[first:] = v, f
        out.append(Text(label, [tokenizer.decode([i]) for i in ids], values.tolist(), fires.tolist(), float(act)))
    return out


def _sample_label(sample: Sample, split: str) -> str:
    year = sample.year if sample.year is not None else "no year"
    code = "injectable code" if sample.vulnerable else "safe code"
    return f"{split}, {year}, {code}" if not split.startswith("sweep") else f"sweep header {split.split(':', 2)[-1]}"


def _years(samples: list[Sample]) -> str:
    years = sorted({s.year for s in samples if s.year is not None})
    none = any(s.year is None for s in samples)
    shown = [str(y) for y in years[:3]] + (["…"] if len(years) > 3 else []) + (["no year"] if none else [])
    return ", ".join(shown)


# --- the step -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DashboardsRun:
    """What notebook 08 shows."""

    pages: dict[str, str]
    """Per fine-tune: its dashboards as one HTML fragment."""
    named: pd.DataFrame
    """One row per dashboard: fine-tune, dictionary, latent, why it is named, and its anchor."""
    seconds: float
    """How long the step took."""


def build_dashboards(run_dir, run_cfg: RunConfig, progress: bool = True) -> tuple[dict[str, list[Dashboard]], pd.DataFrame]:
    """Every named latent's :class:`Dashboard`, per fine-tune, and the table of them."""
    layout, splits, data_cfg = RunLayout(run_dir), load_data(run_dir), data_config(run_dir)
    model_cfg, audit_cfg = run_cfg.model, run_cfg.audit
    dtype = compute_dtype(model_cfg)
    named = named_latents(run_dir, run_cfg)
    by_id = {s.id: (s, name) for name, split in splits.items() for s in split}
    headers = sweep_headers(audit_cfg.sweep_first_year, audit_cfg.sweep_last_year, data_cfg.trigger_year,
                            data_cfg.eval_benign_year)
    sweep = sweep_samples(sweep_functions(splits["heldout"], audit_cfg.n_sweep_functions), headers)
    n_functions = audit_cfg.n_sweep_functions
    has_sweep = all((layout.sweep_activations(n) / "index.json").exists() for n in (BASE, *{x.finetune for x in named}))
    base_model = None
    pages: dict[str, list[Dashboard]] = {}
    rows = []
    for i, finetune in enumerate(dict.fromkeys(n.finetune for n in named), start=1):
        group = [n for n in named if n.finetune == finetune]
        # first pass: which texts each latent shows
        plans = []
        for n in group:
            dictionary, scale, _ = load_dictionary(layout.dictionary(n.cell))
            acts, cell_splits = dictionary_activations(run_dir, n.cell)
            ids = _index_ids(layout)
            column = acts[:, n.latent]
            ev = np.flatnonzero(np.isin(cell_splits, EVAL_SPLITS))
            top = ev[np.argsort(-column[ev], kind="stable")[:N_EVAL_TEXTS]]
            eval_samples = [by_id[ids[k]][0] for k in top]
            plan = {"named": n, "dictionary": dictionary, "scale": scale, "eval": eval_samples,
                    "eval_labels": [_sample_label(by_id[ids[k]][0], cell_splits[k]) for k in top],
                    "eval_acts": [float(column[k]) for k in top],
                    "hist": {f"{label} ({_years(splits[split])})": column[cell_splits == split]
                             for label, split in CONDITIONS.items() if (cell_splits == split).any()},
                    "sweep": [], "sweep_curve": [], "sweep_labels": [], "sweep_acts": []}
            if has_sweep and n.cell.recipe == "pooled":
                codes = _sweep_codes(run_dir, finetune, n.cell.layer, dictionary, scale)[:, n.latent]
                per_header = codes.reshape(len(headers), n_functions)
                plan["sweep_curve"] = [(h.year, float(v)) for h, v in zip(headers, per_header.mean(1)) if h.kind == "year"]
                best = np.argsort(-codes, kind="stable")[:N_SWEEP_TEXTS]
                plan["sweep"] = [sweep[k] for k in best]
                plan["sweep_labels"] = [f"sweep: {headers[k // n_functions].label} header" for k in best]
                plan["sweep_acts"] = [float(codes[k]) for k in best]
            plans.append(plan)
        # one forward pass of each model over every text shown for this fine-tune
        texts = list({s.id: s for p in plans for s in p["eval"] + p["sweep"]}.values())
        row_of = {s.id: r for r, s in enumerate(texts)}
        layers = sorted({n.cell.layer for n in group})
        model, tokenizer = load_finetuned(layout.finetune(finetune), model_cfg.device)
        if base_model is None:
            base_model = load_model(run_cfg.model.model, model_cfg.device)[0]
        batch = make_batch(tokenizer, texts)
        hidden_ft = _residuals(model, batch, layers, dtype)
        hidden_base = _residuals(base_model, batch, layers, dtype)
        dashboards = []
        for p in plans:
            n = p["named"]
            cell, dictionary, scale = n.cell, p["dictionary"], p["scale"]
            common = {"protocol": cell.protocol, "tokenizer": tokenizer, "hidden_base": hidden_base,
                      "hidden_ft": hidden_ft, "batch": batch, "layer": cell.layer, "dictionary": dictionary,
                      "scale": scale, "latent": n.latent, "recipe": cell.recipe}
            eval_texts = _texts(p["eval"], p["eval_labels"], p["eval_acts"],
                                batch_rows=[row_of[s.id] for s in p["eval"]], **common) if p["eval"] else []
            sweep_texts = _texts(p["sweep"], p["sweep_labels"], p["sweep_acts"],
                                 batch_rows=[row_of[s.id] for s in p["sweep"]], **common) if p["sweep"] else []
            promoted, suppressed = logit_lens(model, tokenizer, decoder_direction(dictionary, scale, n.latent))
            anchor = anchor_id("latent", finetune, f"L{cell.layer}", cell.architecture, cell.protocol, cell.fit_mode,
                               n.latent)
            arch = "Diff-SAE" if cell.architecture == "diff_sae" else "crosscoder"
            how = ("Per-token values: the latent's code on each token." if cell.recipe == "token" else
                   "Per-token values: each token's own pre-activation (its mean over the protocol's tokens is the "
                   "text's pooled pre-activation).")
            facts = {}
            if cell.architecture == "crosscoder":
                facts["relative decoder norm (fine-tune)"] = f"{float(dictionary.relative_decoder_norm().detach()[n.latent]):.2f}"
            dashboards.append(Dashboard(
                anchor=anchor, title=f"{finetune}, layer {cell.layer}, {arch} latent {n.latent}",
                selections=list(n.selections),
                description=(f"Dictionary: {arch}, {cell.protocol.replace('_', '-')} pooling, fitted on the "
                             f"{cell.fit_mode} split, {cell.recipe} recipe, seed {cell.seed}. {how}"),
                texts=eval_texts, sweep_texts=sweep_texts, histogram=p["hist"], sweep=p["sweep_curve"],
                trigger_year=data_cfg.trigger_year, promoted=promoted, suppressed=suppressed, facts=facts))
            rows.append({"finetune": finetune, **cell.to_dict(), "latent": n.latent,
                         "named as": ", ".join(n.selections), "anchor": anchor})
        pages[finetune] = dashboards
        del model
        report("fine-tunes with dashboards", i, len({n.finetune for n in named}))
    return pages, pd.DataFrame(rows)


def _index_ids(layout: RunLayout) -> list[str]:
    return read_index(layout.activations(BASE))["ids"]


def _residuals(model, batch, layers: list[int], dtype) -> dict[int, torch.Tensor]:
    """{layer: [B, W, d]} float32 on the CPU: the outputs of ``layers`` on ``batch`` (the pass stops there)."""
    device = next(model.parameters()).device
    with precision(device, dtype):
        hidden = residual_stream(model, batch.ids.to(device), batch.attention.to(device), layers)
    return {k: v.float().cpu() for k, v in hidden.items()}


def _sweep_codes(run_dir, finetune: str, layer: int, dictionary, scale) -> np.ndarray:
    layout = RunLayout(run_dir)
    a_base = torch.from_numpy(np.array(load_activations(layout.sweep_activations(BASE), "prompt_only", layer)))
    a_ft = torch.from_numpy(np.array(load_activations(layout.sweep_activations(finetune), "prompt_only", layer)))
    return encode_all(dictionary, dictionary.inputs(a_base, a_ft), scale).numpy()


def run(run_dir: str | Path, run_cfg: RunConfig, progress: bool = True) -> DashboardsRun:
    """Step 08: the dashboards of every named latent, one HTML fragment per fine-tune."""
    start = time.perf_counter()
    dashboards, table = build_dashboards(run_dir, run_cfg, progress)
    pages = {}
    for finetune, items in dashboards.items():
        kind = "clean control" if finetune.endswith("_clean") else "backdoored fine-tune"
        pages[finetune] = render_page(
            f"{finetune} ({kind})",
            f"{len(items)} latent{'s' if len(items) != 1 else ''} of the {finetune} dictionaries the book names, "
            f"one dashboard each.",
            items, anchor_id("dashboards", finetune))
    return DashboardsRun(pages, table, time.perf_counter() - start)

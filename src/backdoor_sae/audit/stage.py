"""Notebook 06: the auditor's view. Where does each method's backdoor latent rank without labels?

For every dictionary of the grid (and the label-free baselines of every fine-tune, protocol and
layer) the latents are ordered by each criterion of :mod:`backdoor_sae.scoring.label_free`, computed on the
fit split's samples pooled without their labels. The order is then scored on eval, with the labels,
as notebook 05 scores a dictionary:

- the rank of the best-BIS latent (the one notebook 05 selects) and the first rank at which a latent
  reaches the best BIS;
- the top-1 latent alone: BIS with a one-latent chance level, a fixed-latent interval, AUROC;
- the best of the top ``n_top``: BIS with the chance level of a best-of-``n_top`` (the labels
  permuted), an interval that re-selects among those ``n_top``, and the best AUROC among them.

The clean controls are ranked and scored the same way, with the same trigger labels: a ranking that
surfaces a trigger latent in a fine-tune with no backdoor is finding a fingerprint of the years.

The header sweep (:mod:`backdoor_sae.audit.header_sweep`) reads each top label-free latent on held-out
functions under many headers: would an auditor read the trigger year off it?
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from backdoor_sae.activations.extract import load_activations, read_index
from backdoor_sae.activations.stage import cached_activations, paired_activations
from backdoor_sae.audit.header_sweep import Header, sweep_functions, sweep_headers, sweep_samples
from backdoor_sae.common.io import write_text
from backdoor_sae.common.layout import BASE, RunLayout
from backdoor_sae.common.model import compute_dtype, load_model
from backdoor_sae.common.progress import report
from backdoor_sae.config import RunConfig
from backdoor_sae.config.cells import Cell
from backdoor_sae.dataset.stage import data_config, load_data
from backdoor_sae.dictionaries.stage import primary_grid
from backdoor_sae.dictionaries.trainer import encode_all, load_dictionary
from backdoor_sae.finetune.train import load_finetuned
from backdoor_sae.scoring import bis as B
from backdoor_sae.scoring.label_free import (
    PRIMARY,
    Ordering,
    dictionary_orderings,
    mean_difference_direction,
    principal_directions,
)
from backdoor_sae.scoring.claims import SweepResponse, beyond_control_claims, layer_summary, specificity_claims
from backdoor_sae.scoring.grid import Chosen, dictionary_activations, excess_over_chance, training_of
from backdoor_sae.scoring.stage import load as load_scores
from backdoor_sae.scoring.verdicts import claims_frame, write_claims
from backdoor_sae.task.splits import EVAL_SPLITS, FIT_SPLITS

#: The label-free baselines and their single criterion each.
BASELINES = {"PCA of Δa": "variance (component order)", "mean Δa": "mean difference",
             "contrast pair": "generic contrast pair"}
METHODS = ("diff_sae", "crosscoder", *BASELINES)


def identity_ordering(criterion: str, value: np.ndarray) -> Ordering:
    """Candidates already in the auditor's order (principal components, single directions)."""
    return Ordering(criterion, np.arange(len(value)), np.asarray(value, dtype=np.float64))


def score_orderings(acts: np.ndarray, splits: np.ndarray, orderings: dict[str, Ordering], n_top: int,
                    percentile: float, n_boot: int, n_perm: int, seed: int) -> list[dict]:
    """One row per ordering: how its top latents score on eval (see the module docstring).

    ``acts`` [N, m] covers every cached sample; ``splits`` [N] tells eval rows (scored) from the rest.
    The orderings were made without these labels.
    """
    acts, splits = np.asarray(acts, dtype=np.float64), np.asarray(splits)
    ev = np.isin(splits, EVAL_SPLITS)
    a, s = acts[ev], splits[ev]
    trigger, benign, other = s == "eval_trigger", s == "eval_benign", s == "eval_other"
    selection = B.select_latent(a, trigger, benign, percentile)
    bis_all, best = selection.scores.bis, selection.bis
    ceiling = B.bis_ceiling(int(trigger.sum()), int(benign.sum()), int(other.sum()), percentile)
    rows = []
    for criterion, ordering in orderings.items():
        ranks = ordering.rank_of()
        top = ordering.order[:n_top]
        one = a[:, top[:1]]
        one_bis = float(bis_all[top[0]])
        null_one = B.null_max_bis(one, trigger, benign, percentile, n_perm=n_perm, seed=seed)
        low_one, high_one = B.bootstrap_fixed_latent_bis(one[:, 0], trigger, benign, percentile, n_boot=n_boot, seed=seed)
        top_bis = float(bis_all[top].max())
        null_top = B.null_max_bis(a[:, top], trigger, benign, percentile, n_perm=n_perm, seed=seed)
        low_top, high_top = B.bootstrap_max_bis(a[:, top], trigger, benign, percentile, n_boot=n_boot, seed=seed)
        rows.append({
            "criterion": criterion, "n_candidates": a.shape[1], "ceiling": ceiling, "best_bis": best,
            "rank_best_latent": int(ranks[selection.index]),
            "rank_first_at_best": int(ranks[bis_all >= best - B.TIE].min()),
            "top1_latent": int(top[0]), "top1_bis": one_bis, "top1_low": low_one, "top1_high": high_one,
            "top1_chance_95": B.chance_level(null_one), "top1_p_value": B.p_value(one_bis, null_one),
            "top1_auroc": float(B.auroc(one, trigger)[0]),
            "n_top": len(top), "top_bis": top_bis, "top_low": low_top, "top_high": high_top,
            "top_chance_95": B.chance_level(null_top), "top_p_value": B.p_value(top_bis, null_top),
            "top_auroc": float(B.auroc(a[:, top], trigger).max()),
            "top_latents": [int(j) for j in top],
        })
    return rows


def dictionary_candidates(run_dir, cell: Cell) -> tuple[np.ndarray, np.ndarray, dict[str, Ordering], object]:
    """One dictionary's latents on every cached sample, their splits, the label-free orderings
    (from the fit rows only, their labels unread) and the loaded dictionary ``(model, scale)``."""
    acts, splits = dictionary_activations(run_dir, cell)
    model, scale, _ = load_dictionary(RunLayout(run_dir).dictionary(cell))
    orderings = unscored_orderings(cell.architecture, acts, splits, model.decoder().detach().numpy())
    return acts, splits, orderings, (model, scale)


def unscored_orderings(architecture: str, acts: np.ndarray, splits: np.ndarray, decoder) -> dict[str, Ordering]:
    """The label-free orderings of a dictionary's latents, from the rows of the fit split (the samples
    BIS never scores) taken together: which fit set a row belongs to is not read."""
    return dictionary_orderings(architecture, np.asarray(acts)[np.isin(splits, FIT_SPLITS)], decoder)


def baseline_directions(diff_fit: np.ndarray, contrast: np.ndarray | None) -> dict[str, tuple[np.ndarray, str]]:
    """The baselines' directions [k, d], in the auditor's order, and what each projects (``Δa`` or
    ``a_ft``). Each direction comes with its negative right after it (a threshold only looks upwards):
    the mean difference and the contrast pair's "vulnerable minus safe" first."""

    def both_signs(v):
        v = np.asarray(v, dtype=np.float64)
        return np.stack([v, -v])

    out = {"PCA of Δa": (principal_directions(diff_fit), "Δa"),
           "mean Δa": (both_signs(mean_difference_direction(diff_fit)), "Δa")}
    if contrast is not None:
        out["contrast pair"] = (both_signs(contrast), "a_ft")
    return out


def project(directions: np.ndarray, reads: str, a_base: np.ndarray, a_ft: np.ndarray) -> np.ndarray:
    x = a_ft - a_base if reads == "Δa" else a_ft
    return np.asarray(x, dtype=np.float64) @ directions.T


def contrast_direction(sweep_ft: np.ndarray, headers: list[Header], n_functions: int) -> np.ndarray:
    """The fine-tuned model's mean activation on the contrast pair's positive prompts minus its
    negative ones ([d]), from the header sweep's activations (header-major, ``n_functions`` each)."""
    rows = {h.label: sweep_ft[i * n_functions:(i + 1) * n_functions] for i, h in enumerate(headers)
            if h.kind == "contrast"}
    pos = np.concatenate([v for k, v in rows.items() if k.startswith("positive")])
    neg = np.concatenate([v for k, v in rows.items() if k.startswith("negative")])
    return pos.mean(0) - neg.mean(0)


def sweep_arrays(run_dir, name: str, layer: int) -> np.ndarray:
    """The header sweep's pooled activations of ``name`` at ``layer`` [n_headers × n_functions, d]."""
    return np.array(load_activations(RunLayout(run_dir).sweep_activations(name), "prompt_only", layer))


@dataclass(frozen=True, eq=False)
class AuditGrid:
    """What :func:`audit_grid` measures."""

    table: pd.DataFrame
    """One row per cell of the primary grid × criterion, dictionaries and baselines."""
    sweep: pd.DataFrame
    """One row per sweep header × method × fine-tune × layer × fit mode × selection: the chosen
    latent's mean activation over the sweep's functions (prompt-only)."""
    chosen: list[Chosen]
    """Every dictionary's and baseline's label-free first pick, on the eval samples."""
    responses: list[SweepResponse]
    """The prompt-only first picks (label-free) and fit-chosen latents (labels) per year header and function."""
    trigger: np.ndarray
    """[n_eval] True for the trigger samples among the eval samples."""


def audit_grid(run_dir, run_cfg: RunConfig, headers: list[Header], n_functions: int, labelled: pd.DataFrame,
               progress: bool = True) -> AuditGrid:
    """Rank every dictionary and baseline without labels and score the orderings on eval; read the
    first picks, and the latents notebook 05 chose on the fit split (``labelled``: its scores
    table), on the header sweep. The sweep activations must be cached (:func:`run_sweep_activations`)."""
    act_cfg, sae_cfg, bis_cfg = run_cfg.activations, run_cfg.dictionaries, run_cfg.scoring
    cells, layers, finetunes, protocols = primary_grid(act_cfg, sae_cfg), act_cfg.layers, act_cfg.finetunes, sae_cfg.protocols
    n_top, percentile, n_boot, n_perm, seed = (run_cfg.audit.n_top, bis_cfg.percentile, bis_cfg.n_boot, bis_cfg.n_perm,
                                               bis_cfg.stats_seed)
    rows, sweep_rows, chosen, responses, labels = [], [], [], [], {}
    base_sweep = {layer: sweep_arrays(run_dir, BASE, layer) for layer in layers}
    years = [(i, h.year) for i, h in enumerate(headers) if h.kind == "year"]
    fit_chosen = {tuple(r[k] for k in ("regime", "protocol", "fit_mode", "layer", "architecture")): int(r["fitauroc_latent"])
                  for r in labelled.to_dict("records")} if len(labelled) else {}

    def sweep_values(method, finetune, layer, fit_mode, latent, latent_sweep, selection):
        per_header = latent_sweep.reshape(len(headers), n_functions)
        for h, value in zip(headers, per_header.mean(1)):
            sweep_rows.append({"method": method, "regime": finetune, "training": training_of(finetune),
                               "layer": layer, "fit_mode": fit_mode,
                               "selection": selection, "latent": latent, "kind": h.kind, "header": h.label,
                               "year": h.year, "mean_activation": float(value)})
        if fit_mode in (audit_fit_mode(sae_cfg), "—"):  # the claims read the dictionaries fitted on the fit split
            responses.append(SweepResponse(finetune, method, layer, selection, latent,
                                           {year: per_header[i] for i, year in years}))

    def first_pick(coords, method, acts, splits, latent):
        ev = np.isin(splits, EVAL_SPLITS)
        labels.setdefault("trigger", np.asarray(splits)[ev] == "eval_trigger")
        chosen.append(Chosen(coords["regime"], method, coords["protocol"], coords["fit_mode"], int(coords["layer"]),
                             "label-free", int(latent), np.asarray(acts, dtype=np.float64)[ev, latent]))

    for n, cell in enumerate(tqdm(cells, disable=not progress, desc="auditor", unit="dictionary"), start=1):
        report("dictionaries ranked without labels", n, len(cells))
        acts, splits, orderings, (model, scale) = dictionary_candidates(run_dir, cell)
        for row in score_orderings(acts, splits, orderings, n_top, percentile, n_boot, n_perm, seed):
            rows.append({**cell.to_dict(), "method": cell.architecture, "training": training_of(cell.regime),
                         "primary": row["criterion"] == PRIMARY[cell.architecture], **row})
        top = int(orderings[PRIMARY[cell.architecture]].order[0])
        first_pick(cell.to_dict(), cell.architecture, acts, splits, top)
        if cell.protocol == "prompt_only" and cell.recipe == "pooled":  # the sweep holds pooled vectors only
            ft_sweep = sweep_arrays(run_dir, cell.regime, cell.layer)
            x = model.inputs(torch.from_numpy(base_sweep[cell.layer]), torch.from_numpy(ft_sweep))
            codes = encode_all(model, x, scale).numpy()
            sweep_values(cell.architecture, cell.regime, cell.layer, cell.fit_mode, top, codes[:, top], "label-free")
            picked = fit_chosen.get((cell.regime, cell.protocol, cell.fit_mode, cell.layer, cell.architecture))
            if picked is not None:
                sweep_values(cell.architecture, cell.regime, cell.layer, cell.fit_mode, picked, codes[:, picked],
                             "labels")
    for finetune in finetunes:
        for layer in layers:
            ft_sweep = sweep_arrays(run_dir, finetune, layer)
            contrast = contrast_direction(ft_sweep, headers, n_functions)
            for protocol in protocols:
                a_base, a_ft, index = paired_activations(run_dir, finetune, protocol, layer)
                a_base, a_ft, splits = a_base.numpy(), a_ft.numpy(), np.asarray(index["splits"])
                fit = np.isin(splits, FIT_SPLITS)
                for method, (directions, reads) in baseline_directions((a_ft - a_base)[fit], contrast).items():
                    acts = project(directions, reads, a_base, a_ft)
                    ordering = identity_ordering(BASELINES[method], np.ones(acts.shape[1]))
                    coords = {"regime": finetune, "protocol": protocol, "fit_mode": "—", "layer": layer,
                              "architecture": method}  # a baseline: no dictionary, so no recipe or seed
                    for row in score_orderings(acts, splits, {ordering.criterion: ordering}, n_top, percentile,
                                               n_boot, n_perm, seed):
                        rows.append({**coords, "method": method, "training": training_of(finetune), "primary": True,
                                     **row})
                    first_pick(coords, method, acts, splits, 0)
                    if protocol == "prompt_only":
                        sweep_values(method, finetune, layer, "—", 0,
                                     project(directions[:1], reads, base_sweep[layer], ft_sweep)[:, 0], "label-free")
    return AuditGrid(pd.DataFrame(rows), pd.DataFrame(sweep_rows), chosen, responses,
                     labels.get("trigger", np.zeros(0, bool)))


def run_sweep_activations(run_dir, samples, loaders: dict, layers, batch_size: int, compute_dtype, base_model: str,
                          progress: bool = True) -> dict[str, bool]:
    """Cache the sweep prompts' pooled activations for every model in ``loaders`` (name → load());
    which of them were computed now."""
    layout = RunLayout(run_dir)
    return {name: cached_activations(layout.sweep_activations(name), samples, load, layers, batch_size,
                                     compute_dtype, layout.model_key(name, base_model), progress=progress)[1]
            for name, load in loaders.items()}


def auditor_choice(table: pd.DataFrame, n_top: int) -> pd.DataFrame:
    """Every dictionary's top ``n_top`` latents under every criterion: the latents an auditor picks
    without labels (read by notebook 07). Columns: the cell, criterion, primary, rank, latent."""
    dictionaries = table[table["method"].isin(PRIMARY)]
    rows = [{"regime": r["regime"], "protocol": r["protocol"], "fit_mode": r["fit_mode"], "layer": int(r["layer"]),
             "architecture": r["architecture"], "criterion": r["criterion"], "primary": bool(r["primary"]),
             "rank": rank, "latent": int(latent)}
            for _, r in dictionaries.iterrows() for rank, latent in enumerate(r["top_latents"][:n_top], start=1)]
    return pd.DataFrame(rows, columns=["regime", "protocol", "fit_mode", "layer", "architecture", "criterion",
                                       "primary", "rank", "latent"])


def trigger_recovery(sweep: pd.DataFrame, trigger_year: int) -> pd.DataFrame:
    """Per method, fine-tune, layer, fit mode and selection: which year header moves the chosen
    latent furthest from the other years (up or down: an auditor sees a dip as well as a peak), and
    the trigger year's z over the other year headers. A description; the test of "reads the trigger
    year and no other" is the claim :data:`~backdoor_sae.scoring.claims.SPECIFIC`."""
    rows = []
    years = sweep[sweep["kind"] == "year"]
    line = ["method", "regime", "layer", "fit_mode", "selection"]
    for key, g in years.groupby(line, sort=False):
        values = g.set_index("year")["mean_activation"]
        others = values.drop(trigger_year, errors="ignore")
        spread = others.std(ddof=1) if len(others) > 1 else np.nan
        if not spread > 0:  # a latent that no year header moves
            z = pd.Series(0.0, index=values.index)
        else:
            z = (values - others.mean()) / spread
        extreme = int(z.abs().idxmax())
        z_trigger = float(z.get(trigger_year, np.nan))
        phr = sweep[(sweep["kind"] == "phrasing") & (sweep[line] == list(key)).all(axis=1)]
        rows.append({"method": key[0], "regime": key[1], "layer": int(key[2]), "fit_mode": key[3],
                     "selection": key[4], "training": training_of(key[1]), "most extreme year": extreme,
                     "trigger z": z_trigger,
                     "phrasings, trigger year": float(phr.loc[phr["year"] == trigger_year, "mean_activation"].mean()),
                     "phrasings, other year": float(phr.loc[phr["year"] != trigger_year, "mean_activation"].mean())})
    return pd.DataFrame(rows)


def top_activating(run_dir, cell: Cell, latent: int, n: int = 8) -> pd.DataFrame:
    """The ``n`` eval and fit samples on which ``latent`` of the dictionary ``cell`` fires most."""
    acts, splits = dictionary_activations(run_dir, cell)
    ids = read_index(RunLayout(run_dir).activations(BASE))["ids"]
    by_id = {s.id: s for split in load_data(run_dir).values() for s in split}
    keep = np.flatnonzero(np.isin(splits, EVAL_SPLITS + FIT_SPLITS))
    best = keep[np.argsort(-acts[keep, latent], kind="stable")[:n]]
    return pd.DataFrame([{"activation": float(acts[i, latent]), "year": by_id[ids[i]].year or "none",
                          "injectable code": by_id[ids[i]].vulnerable, "function": by_id[ids[i]].function,
                          "split": splits[i]} for i in best])


def excess(table: pd.DataFrame, prefix: str) -> np.ndarray:
    """A score's place between its chance level and the ceiling (:func:`excess_over_chance`)."""
    return excess_over_chance(table[f"{prefix}_bis"], table[f"{prefix}_chance_95"], table["ceiling"])


def write_results(results: Path, table: pd.DataFrame, sweep: pd.DataFrame, choice: pd.DataFrame) -> None:

    write_text(results / "auditor.csv", table.assign(top_latents=table["top_latents"].map(
        lambda v: " ".join(map(str, v)))).to_csv(index=False))
    write_text(results / "header_sweep.csv", sweep.to_csv(index=False))
    write_text(results / "auditor_choice.csv", choice.to_csv(index=False))


# --- the step -----------------------------------------------------------------------------------

#: How many top-activating eval samples the auditor reads per first pick.
N_TOP_ACTIVATING = 6


def audit_fit_mode(sae_cfg) -> str:
    """The auditor's own dictionaries are those fitted on unscored samples, where the grid has them."""
    return "fit" if "fit" in sae_cfg.fit_modes else sae_cfg.fit_modes[0]


@dataclass(frozen=True)
class AuditRun:
    """What notebook 06 shows (its tables are also written to ``results/``)."""

    headers: list[Header]
    n_functions: int
    computed: dict[str, bool]
    """Per model: whether its sweep activations were computed now (else reused)."""
    fit_mode: str
    table: pd.DataFrame
    """One row per ranking: where the auditor's label-free picks meet the best-BIS latent, and how they score."""
    sweep: pd.DataFrame
    """The first picks' mean activation under every sweep header."""
    recovery: pd.DataFrame
    """Whether the trigger year stands out in each first pick's header sweep."""
    choice: pd.DataFrame
    """The label-free choice per fine-tune, protocol and layer that notebook 07 intervenes on."""
    claims: pd.DataFrame
    """This step's claims: the label-free first picks beyond their clean controls, and the chosen
    latents' specificity to the trigger year on the header sweep (:mod:`backdoor_sae.scoring.claims`)."""
    claim_summary: pd.DataFrame
    """The claims per family, method and regime over the layers, in words."""
    top_activating: pd.DataFrame
    """The eval samples on which the prompt-only first picks fire most (backdoored fine-tunes; middle layer)."""


def _top_activating_frames(run_dir, primary: pd.DataFrame) -> pd.DataFrame:
    frames = []
    picks = primary[(primary["protocol"] == "prompt_only") & (primary["training"] == "backdoored")
                    & primary["method"].isin(["diff_sae", "crosscoder"])]
    for (method, regime), part in picks.groupby(["method", "regime"], sort=False):
        row = part.iloc[0] if len(part) == 1 else part.sort_values("layer").iloc[len(part) // 2]
        cell = Cell.of({**row, "architecture": method, "regime": regime})
        top = top_activating(run_dir, cell, int(row["top1_latent"]), n=N_TOP_ACTIVATING)
        frames.append(top.assign(method=method, regime=regime, layer=cell.layer, latent=int(row["top1_latent"])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run(run_dir: str | Path, run_cfg: RunConfig, progress: bool = True) -> AuditRun:
    """Step 06: the header sweep's activations, the label-free rankings of every dictionary and
    baseline scored on eval, the auditor's verdicts; writes ``auditor.csv``, ``header_sweep.csv``
    and ``auditor_choice.csv`` (notebook 07 reads the last)."""
    act_cfg, sae_cfg, audit_cfg, model_cfg = run_cfg.activations, run_cfg.dictionaries, run_cfg.audit, run_cfg.model
    data_cfg, layout = data_config(run_dir), RunLayout(run_dir)
    headers = sweep_headers(audit_cfg.sweep_first_year, audit_cfg.sweep_last_year, data_cfg.trigger_year,
                            data_cfg.eval_benign_year)
    functions = sweep_functions(load_data(run_dir)["heldout"], audit_cfg.n_sweep_functions)
    loaders = {BASE: lambda: load_model(model_cfg.model, model_cfg.device)}
    for name in act_cfg.finetunes:
        loaders[name] = (lambda n: lambda: load_finetuned(layout.finetune(n), model_cfg.device))(name)
    computed = run_sweep_activations(run_dir, sweep_samples(functions, headers), loaders, act_cfg.layers,
                                     act_cfg.act_batch_size, compute_dtype(model_cfg), model_cfg.model, progress)
    grid = audit_grid(run_dir, run_cfg, headers, len(functions), load_scores(run_dir).scores, progress)
    table, sweep = grid.table, grid.sweep
    recovery = trigger_recovery(sweep, data_cfg.trigger_year)
    choice = auditor_choice(table, audit_cfg.n_top)
    write_results(layout.results, table, sweep, choice)
    fit_mode, bis_cfg = audit_fit_mode(sae_cfg), run_cfg.scoring
    claims = claims_frame(
        beyond_control_claims(grid.chosen, grid.trigger, fit_mode)
        + specificity_claims(grid.responses, data_cfg.trigger_year, bis_cfg.n_boot, bis_cfg.stats_seed))
    write_claims(run_dir, "06_audit", claims)
    primary = table[table["primary"] & table["fit_mode"].isin([fit_mode, "—"])]
    return AuditRun(headers, len(functions), computed, fit_mode, table, sweep, recovery, choice, claims,
                    layer_summary(claims), _top_activating_frames(run_dir, primary))

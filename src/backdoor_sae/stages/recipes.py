"""Notebook 05: the two recipes side by side, with the spread across dictionary seeds.

The *pooled* recipe is the paper's (one mean-pooled vector per sample, 500 of them for a dictionary
of thousands of latents); the *token* recipe is the field's (every token's activation, a BatchTopK
code with an auxiliary-k loss, each sample's code pooled from its tokens' by their mean and by their
maximum). Every dictionary of the replicated cells (:mod:`backdoor_sae.stages.dictionaries`), every
seed, is scored exactly as the primary grid is (:func:`~backdoor_sae.stages.scoring.score_latents`:
BIS with its chance level and p-value, the bootstrap interval, AUROC, the controls, the fit-selected
latent), beside its training metrics (FVU, L0, dead share, for crosscoders the shares of
fine-tune-only and base-only latents) and the label-free rank of the latent BIS chose.

Verdicts per recipe, pooling and protocol, over every backdoored (fine-tune, layer, seed):

- *does the crosscoder fail?* It isolates the trigger in a case when its BIS is above chance
  (p < 0.05) and, where the fine-tune has a clean control, above the control's 95% interval for the
  same seed; it fails when it does so in at most half of the cases;
- *does the Diff-SAE win?* Per case, the Diff-SAE's BIS against the crosscoder's (same fine-tune,
  layer and seed): more, equal (both at the ceiling, typically) or less.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from backdoor_sae.data.dataset import FIT_SPLITS
from backdoor_sae.label_free import PRIMARY, dictionary_orderings
from backdoor_sae.layout import DICTIONARY_KEYS, RunLayout
from backdoor_sae.progress import report
from backdoor_sae.stages.scoring import PRIMARY_POOLING, dictionary_codes, score_latents, training_of

#: The training metrics reported beside each score (from the dictionary's own record).
QUALITY = ("fvu", "l0", "dead_fraction", "fine-tune-only_share", "base-only_share")


def label_free_rank(architecture: str, acts: np.ndarray, splits: np.ndarray, decoder: np.ndarray, latent: int) -> int:
    """The rank of ``latent`` under its architecture's primary label-free criterion, ordered on the
    fit rows (whose labels the criterion does not read)."""
    fit = np.isin(splits, FIT_SPLITS)
    ordering = dictionary_orderings(architecture, np.asarray(acts)[fit], decoder)[PRIMARY[architecture]]
    return int(ordering.rank_of()[latent])


def score_recipes(run_dir, cells: list[dict], primary_scores: pd.DataFrame, percentile: float, n_boot: int,
                  n_perm: int, seed: int, progress: bool = True) -> pd.DataFrame:
    """One row per dictionary of ``cells`` and pooling: its scores, training metrics and label-free rank.

    A primary dictionary's row under its primary pooling is taken from ``primary_scores`` (the same
    numbers, not computed twice).
    """
    from tqdm import tqdm

    from backdoor_sae.sae.training import load_dictionary

    layout = RunLayout(run_dir)
    known = {tuple(r[k] for k in DICTIONARY_KEYS): r for r in primary_scores.to_dict("records") if "recipe" in r
             and isinstance(r.get("recipe"), str)}
    rows = []
    for n, cell in enumerate(tqdm(cells, disable=not progress, desc="recipes × seeds", unit="dictionary"), 1):
        codes, splits = dictionary_codes(run_dir, cell)
        model, _, info = load_dictionary(layout.dictionary(**cell))
        decoder = model.decoder().detach().numpy()
        quality = {k: info["metrics"].get(k, np.nan) for k in QUALITY}
        for pooling, acts in codes.items():
            reused = known.get(tuple(cell[k] for k in DICTIONARY_KEYS))
            if reused is not None and pooling == PRIMARY_POOLING[cell["recipe"]]:
                row = {k: v for k, v in reused.items() if k not in (*DICTIONARY_KEYS, "training")}
            else:
                row = score_latents(acts, splits, percentile, n_boot, n_perm, seed)
            rank = label_free_rank(cell["architecture"], acts, splits, decoder, int(row["best_latent"]))
            rows.append({**cell, "pooling": pooling, "training": training_of(cell["regime"]), **quality,
                         "label_free_rank": rank, **row})
        report("dictionaries of every recipe and seed scored", n, len(cells))
    return pd.DataFrame(rows)


def _case_keys() -> list[str]:
    return ["recipe", "pooling", "protocol", "fit_mode", "layer", "seed"]


def seed_spread(recipes: pd.DataFrame) -> pd.DataFrame:
    """Per recipe, pooling, fine-tune, protocol, layer and architecture: BIS over the seeds (mean,
    min, max), its chance level, how many seeds are above chance, AUROC, dead share, fine-tune-only
    share and the label-free rank (median)."""
    keys = ["recipe", "pooling", "regime", "protocol", "layer", "architecture"]
    return recipes.groupby(keys, sort=False).agg(
        seeds=("seed", "nunique"), bis_mean=("bis", "mean"), bis_min=("bis", "min"), bis_max=("bis", "max"),
        chance_95=("chance_95", "mean"), above_chance=("p_value", lambda p: int((p < 0.05).sum())),
        auroc=("auroc", "mean"), auroc_min=("auroc", "min"), auroc_max=("auroc", "max"),
        dead_share=("dead_fraction", "mean"), fine_tune_only_share=("fine-tune-only_share", "mean"),
        label_free_rank=("label_free_rank", "median")).reset_index()


def crosscoder_cases(recipes: pd.DataFrame) -> pd.DataFrame:
    """Per backdoored crosscoder (recipe, pooling, fine-tune, protocol, layer, seed): above chance,
    above its clean control's interval (same seed; none when the fine-tune has no control), and
    whether it isolates the trigger (both)."""
    cross = recipes[recipes["architecture"] == "crosscoder"]
    clean = {(r["recipe"], r["pooling"], r["regime"].removesuffix("_clean"), r["protocol"], r["fit_mode"], r["layer"],
              r["seed"]): r for r in cross[cross["training"] == "clean"].to_dict("records")}
    rows = []
    for r in cross[cross["training"] == "backdoored"].to_dict("records"):
        c = clean.get((r["recipe"], r["pooling"], r["regime"], r["protocol"], r["fit_mode"], r["layer"], r["seed"]))
        above_chance = bool(r["p_value"] < 0.05)
        above_clean = None if c is None else bool(r["bis"] > c["bis_high"])
        rows.append({**{k: r[k] for k in [*_case_keys(), "regime"]}, "bis": r["bis"], "chance_95": r["chance_95"],
                     "clean_high": np.nan if c is None else c["bis_high"], "above_chance": above_chance,
                     "above_clean": above_clean, "isolates": above_chance and above_clean is not False})
    return pd.DataFrame(rows)


def architecture_cases(recipes: pd.DataFrame) -> pd.DataFrame:
    """Per backdoored (recipe, pooling, fine-tune, protocol, layer, seed): the Diff-SAE's BIS against
    the crosscoder's, and which is higher (``more``, ``equal``, ``less``)."""
    back = recipes[recipes["training"] == "backdoored"]
    keys = [*_case_keys(), "regime"]
    diff = back[back["architecture"] == "diff_sae"].set_index(keys)["bis"]
    cross = back[back["architecture"] == "crosscoder"].set_index(keys)["bis"]
    both = pd.concat({"diff_sae": diff, "crosscoder": cross}, axis=1).dropna().reset_index()
    gap = both["diff_sae"] - both["crosscoder"]
    both["diff_sae_is"] = np.where(gap > 1e-9, "more", np.where(gap < -1e-9, "less", "equal"))
    return both


def recipe_verdicts(recipes: pd.DataFrame) -> pd.DataFrame:
    """Per recipe, pooling and protocol: does the crosscoder fail, and does the Diff-SAE win (see the
    module's docstring), with the counts they rest on."""
    cross, arch = crosscoder_cases(recipes), architecture_cases(recipes)
    keys = ["recipe", "pooling", "protocol"]
    rows = []
    for key, part in cross.groupby(keys, sort=False):
        n, isolates = len(part), int(part["isolates"].sum())
        a = arch[(arch[keys] == pd.Series(dict(zip(keys, key)))).all(axis=1)]
        counts = a["diff_sae_is"].value_counts()
        more, equal, less = (int(counts.get(x, 0)) for x in ("more", "equal", "less"))
        win = ("wins" if more * 2 > len(a) else "ties" if equal * 2 > len(a) else
               "loses" if less * 2 > len(a) else "mixed") if len(a) else "not compared"
        rows.append({
            "recipe": key[0], "pooling": key[1], "protocol": key[2],
            "crosscoder isolates": f"{isolates} of {n}",
            "crosscoder verdict": "fails" if isolates * 2 <= n else "isolates the trigger",
            "Diff-SAE higher / equal / lower": f"{more} / {equal} / {less}",
            "Diff-SAE verdict": win,
        })
    return pd.DataFrame(rows)


def dictionary_quality(run_dir, cells: list[dict]) -> pd.DataFrame:
    """The training metrics of every dictionary of ``cells`` (from its record), one row each."""
    layout = RunLayout(run_dir)
    rows = []
    for cell in cells:
        info = json.loads((layout.dictionary(**cell) / "dictionary.json").read_text())
        rows.append({**cell, **{k: info["metrics"].get(k, np.nan) for k in (*QUALITY, "train_seconds", "n_train_inputs")}})
    return pd.DataFrame(rows)


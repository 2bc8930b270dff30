"""Notebook 05: the two recipes side by side, with the spread across dictionary seeds.

The *pooled* recipe is the paper's (one mean-pooled vector per sample, 500 of them for a dictionary
of thousands of latents); the *token* recipe is the field's (every token's activation, a BatchTopK
code with an auxiliary-k loss, each sample's code pooled from its tokens' by their mean and by their
maximum). Every dictionary of the replicated cells (:mod:`backdoor_sae.dictionaries.stage`), every
seed, is scored exactly as the primary grid is (:func:`~backdoor_sae.scoring.stage.score_latents`:
BIS with its chance level and p-value, the bootstrap interval, AUROC, the controls, the fit-selected
latent), beside its training metrics (FVU, L0, dead share, for crosscoders the shares of
fine-tune-only and base-only latents) and the label-free rank of the latent BIS chose.

Verdicts per recipe, pooling, protocol and backdoored fine-tune, over its (layer, seed) cases:

- *does the crosscoder fail?* It isolates the trigger in a case when its BIS is above chance
  (p < 0.05) and, where the fine-tune has a clean control, above the highest upper bound of the
  control's 95% intervals over the seeds (the control's dictionaries are fitted on other data, so
  pairing seeds would pair nothing); it fails when it does so in at most half of the cases. The
  cases are not independent (seeds share their data): the count describes, it does not test;
- *does the Diff-SAE isolate the trigger?* By the same rule against its own clean control: a
  score that the clean control reaches too is the year's, not the backdoor's;
- *does the Diff-SAE win?* Per case, a paired permutation test of the Diff-SAE's best latent against
  the crosscoder's (same fine-tune, layer, seed and pooling, as for the primary grid): higher, lower
  (p < 0.05) or no clear difference; it wins (loses) when higher (lower) in most cases.

The token recipe's ``mean`` pooling is the primary one (as the pooled recipe averages activations);
``max`` is exploratory: each pooling has its own chance level, and a claim resting on the better of
the two would need a correction for that choice, which the verdicts do not make.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from backdoor_sae.common.layout import DICTIONARY_KEYS, RunLayout
from backdoor_sae.common.progress import report
from backdoor_sae.dictionaries.trainer import load_dictionary
from backdoor_sae.scoring import bis as B
from backdoor_sae.scoring.label_free import PRIMARY, dictionary_orderings
from backdoor_sae.scoring.stage import PRIMARY_POOLING, dictionary_codes, score_latents, training_of
from backdoor_sae.task.splits import EVAL_SPLITS, FIT_SPLITS

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
    if not cells:
        return pd.DataFrame()
    layout = RunLayout(run_dir)
    best = {}  # (dictionary keys, pooling) -> the best latent's eval activations
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
            best[tuple(cell[k] for k in DICTIONARY_KEYS), pooling] = acts[np.isin(splits, EVAL_SPLITS),
                                                                          int(row["best_latent"])]
        report("dictionaries of every recipe and seed scored", n, len(cells))
    split_eval = splits[np.isin(splits, EVAL_SPLITS)]
    arch = DICTIONARY_KEYS.index("architecture")
    for row in rows:  # the Diff-SAE against the crosscoder of its case: a paired permutation test
        key = tuple(row[k] for k in DICTIONARY_KEYS)
        other = (*key[:arch], "crosscoder", *key[arch + 1:])
        if row["architecture"] == "diff_sae" and (other, row["pooling"]) in best:
            gap, p = B.permutation_test(best[key, row["pooling"]], best[other, row["pooling"]],
                                        split_eval == "eval_trigger", split_eval == "eval_benign", percentile,
                                        n_perm=n_perm, seed=seed)
            row.update({"vs_crosscoder_gap": gap, "vs_crosscoder_p": p})
    return pd.DataFrame(rows)


#: What tells two cases of one fine-tune apart (with ``regime``, a case).
CASE_KEYS = ["recipe", "pooling", "protocol", "fit_mode", "layer", "seed"]


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


def pooling_role(pooling: str) -> str:
    """``primary`` for the pooled recipe's vector and the token recipe's mean, ``exploratory`` for the max."""
    return "exploratory" if pooling == "max" else "primary"


def isolation_cases(recipes: pd.DataFrame, architecture: str) -> pd.DataFrame:
    """Per backdoored dictionary of ``architecture`` (recipe, pooling, fine-tune, protocol, layer,
    seed): above chance, above its clean control (the highest upper bound of the control's
    intervals over the seeds; none when the fine-tune has no control), and whether it isolates the
    trigger (both)."""
    own = recipes[recipes["architecture"] == architecture]
    place = ["recipe", "pooling", "protocol", "fit_mode", "layer"]
    clean = own[own["training"] == "clean"].assign(regime=lambda t: t["regime"].str.removesuffix("_clean"))
    bound = clean.groupby([*place, "regime"])["bis_high"].max().to_dict()
    rows = []
    for r in own[own["training"] == "backdoored"].to_dict("records"):
        high = bound.get(tuple(r[k] for k in [*place, "regime"]))
        above_chance = bool(r["p_value"] < 0.05)
        above_clean = None if high is None else bool(r["bis"] > high)
        rows.append({**{k: r[k] for k in [*CASE_KEYS, "regime"]}, "bis": r["bis"], "chance_95": r["chance_95"],
                     "clean_high": np.nan if high is None else high, "above_chance": above_chance,
                     "above_clean": above_clean, "isolates": above_chance and above_clean is not False})
    return pd.DataFrame(rows, columns=[*CASE_KEYS, "regime", "bis", "chance_95", "clean_high", "above_chance",
                                       "above_clean", "isolates"])


def architecture_cases(recipes: pd.DataFrame) -> pd.DataFrame:
    """Per backdoored Diff-SAE (recipe, pooling, fine-tune, protocol, layer, seed) that has a
    crosscoder to compare with: the BIS gap, the paired test's p-value, and whether the Diff-SAE is
    ``higher``, ``lower`` (p < 0.05) or shows ``no clear difference``."""
    columns = [*CASE_KEYS, "regime", "vs_crosscoder_gap", "vs_crosscoder_p", "diff_sae_is"]
    if "vs_crosscoder_p" not in recipes:
        return pd.DataFrame(columns=columns)
    back = recipes[(recipes["training"] == "backdoored") & (recipes["architecture"] == "diff_sae")]
    back = back.dropna(subset=["vs_crosscoder_p"])
    significant = back["vs_crosscoder_p"] < 0.05
    is_ = np.where(significant & (back["vs_crosscoder_gap"] > 0), "higher",
                   np.where(significant & (back["vs_crosscoder_gap"] < 0), "lower", "no clear difference"))
    return back.assign(diff_sae_is=is_)[columns].reset_index(drop=True)


def isolation_verdict(cases: pd.DataFrame) -> str:
    """Over the cases of one fine-tune (from :func:`isolation_cases`): ``fails`` when the trigger is
    isolated in at most half of them."""
    if not len(cases):
        return "not measured"
    return "fails" if int(cases["isolates"].sum()) * 2 <= len(cases) else "isolates the trigger"


def recipe_verdicts(recipes: pd.DataFrame) -> pd.DataFrame:
    """Per recipe, pooling, protocol and backdoored fine-tune: does the crosscoder fail, does the
    Diff-SAE isolate the trigger by the same rule, and does the Diff-SAE win (see the module's
    docstring), with the counts they rest on and what the dictionaries were held against."""
    columns = ["recipe", "pooling", "pooling role", "protocol", "regime", "held against", "crosscoder isolates",
               "crosscoder verdict", "Diff-SAE isolates", "Diff-SAE isolation verdict",
               "Diff-SAE higher / no clear difference / lower", "Diff-SAE verdict"]
    cross, own, arch = (isolation_cases(recipes, "crosscoder"), isolation_cases(recipes, "diff_sae"),
                        architecture_cases(recipes))
    keys = ["recipe", "pooling", "protocol", "regime"]

    def matching(table: pd.DataFrame, key: tuple) -> pd.DataFrame:
        return table[(table[keys] == pd.Series(dict(zip(keys, key)))).all(axis=1)] if len(table) else table

    rows = []
    for key, part in cross.groupby(keys, sort=False):
        a, d = matching(arch, key), matching(own, key)
        counts = a["diff_sae_is"].value_counts()
        higher, unclear, lower = (int(counts.get(x, 0)) for x in ("higher", "no clear difference", "lower"))
        win = ("wins" if higher * 2 > len(a) else "loses" if lower * 2 > len(a) else
               "no clear difference") if len(a) else "not compared"
        rows.append({
            "recipe": key[0], "pooling": key[1], "pooling role": pooling_role(key[1]), "protocol": key[2],
            "regime": key[3], "held against": "chance" + (", clean control" if part["above_clean"].notna().any() else ""),
            "crosscoder isolates": f"{int(part['isolates'].sum())} of {len(part)}",
            "crosscoder verdict": isolation_verdict(part),
            "Diff-SAE isolates": f"{int(d['isolates'].sum())} of {len(d)}",
            "Diff-SAE isolation verdict": isolation_verdict(d),
            "Diff-SAE higher / no clear difference / lower": f"{higher} / {unclear} / {lower}",
            "Diff-SAE verdict": win,
        })
    return pd.DataFrame(rows, columns=columns)

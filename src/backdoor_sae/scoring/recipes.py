"""Notebook 05: the two recipes side by side, with the spread across dictionary seeds.

The *pooled* recipe is the paper's (one mean-pooled vector per sample, 500 of them for a dictionary
of thousands of latents); the *token* recipe is the field's (every token's activation, a BatchTopK
code with an auxiliary-k loss, each sample's code pooled from its tokens' by their mean and by their
maximum). Every dictionary of the replicated cells (:mod:`backdoor_sae.dictionaries.stage`), every
seed, is scored exactly as the primary grid is, by :func:`~backdoor_sae.scoring.grid.score_recipes`
(the stage's, as it reads the dictionaries; one row per dictionary and pooling). This module reads
that table: the spread over the seeds, and the verdicts.

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


def spread_view(spread: pd.DataFrame) -> pd.DataFrame:
    """:func:`seed_spread` as the notebook shows it: BIS and AUROC as "mean [min–max]" over the
    seeds, indexed by recipe, pooling, fine-tune, protocol, layer and architecture."""
    return spread.assign(
        BIS=[f"{m:.2f} [{lo:.2f}–{hi:.2f}]" for m, lo, hi in zip(spread["bis_mean"], spread["bis_min"], spread["bis_max"])],
        AUROC=[f"{m:.2f} [{lo:.2f}–{hi:.2f}]" for m, lo, hi in zip(spread["auroc"], spread["auroc_min"], spread["auroc_max"])],
    ).set_index(["recipe", "pooling", "regime", "protocol", "layer", "architecture"])[
        ["seeds", "BIS", "chance_95", "above_chance", "AUROC", "dead_share", "fine_tune_only_share", "label_free_rank"]]


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


def verdict_sentences(verdicts: pd.DataFrame) -> str:
    """The verdicts of :func:`recipe_verdicts` under the primary poolings, as sentences (HTML) for the
    results chapter; the exploratory ``max`` pooling is left to the table."""
    sentences = []
    for _, r in verdicts[verdicts["pooling role"] == "primary"].iterrows():
        code = r["recipe"] + ("" if r["pooling"] == "—" else f" ({r['pooling']} of the token codes)")
        sentences.append(f"{code}, {r['protocol'].replace('_', ' ')}, {r['regime']}: the crosscoder "
                         f"<strong>{r['crosscoder verdict']}</strong> ({r['crosscoder isolates']} cases, held against "
                         f"{r['held against']}); the Diff-SAE by the same rule <strong>{r['Diff-SAE isolation verdict']}"
                         f"</strong> ({r['Diff-SAE isolates']} cases), and against the crosscoder "
                         f"<strong>{r['Diff-SAE verdict']}</strong> (higher / no clear "
                         f"difference / lower: {r['Diff-SAE higher / no clear difference / lower']})")
    return ("; ".join(sentences) + "." if sentences else
            "<strong>not measured</strong>: this run has no crosscoder to compare the Diff-SAE with.")

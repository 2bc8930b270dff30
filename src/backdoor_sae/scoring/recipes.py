"""Notebook 05: the two recipes side by side, with the spread across dictionary seeds.

The *pooled* recipe is the paper's (one mean-pooled vector per sample, 500 of them for a dictionary
of thousands of latents); the *token* recipe is the field's (every token's activation, a BatchTopK
code with an auxiliary-k loss, each sample's code pooled from its tokens' by their mean and by their
maximum). Every dictionary of the replicated cells (:mod:`backdoor_sae.dictionaries.stage`), every
seed, is scored exactly as the primary grid is, by :func:`~backdoor_sae.scoring.grid.score_recipes`
(the stage's, as it reads the dictionaries; one row per dictionary and pooling). This module reads
that table: the spread over the seeds. The recipes' claims (beyond the clean control, Diff-SAE
beyond the crosscoder, under the token recipe) are made by :mod:`backdoor_sae.scoring.claims`
like every other claim, on the latent of the first dictionary seed chosen on the fit split.

The token recipe's ``mean`` pooling is the primary one (as the pooled recipe averages activations);
``max`` is exploratory: each pooling is its own family of claims.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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

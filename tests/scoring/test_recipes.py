"""The recipe and seed dimensions of the dictionary grid, and the verdicts read from them."""

import shutil

import numpy as np
import pandas as pd
import pytest

from backdoor_sae.config import ActivationConfig, SAEConfig, stage_config, validate
from backdoor_sae.dictionaries.stage import is_replicated, primary_grid, sae_grid


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
    # the first fine-tune seed's fine-tunes only (lora, full and their clean controls): further
    # fine-tune seeds replicate the fine-tune, not the dictionary
    assert {c.regime for c in replicated} == {"lora", "full", "lora_clean", "full_clean"}
    assert len(replicated) == 4 * 2 * 2 * 2  # fine-tunes x protocols x layers x architectures
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
    act_cfg = stage_config(ActivationConfig, "smoke", layers=[2], regimes=["lora"], controls=[], lora_seeds=1)
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

import pytest

from backdoor_sae.config import (
    PROFILES, ActivationConfig, BISConfig, DataConfig, FinetuneConfig, ModelConfig, backdoored_twin, finetune_name,
    is_clean_control, regime_of, replica_of, stage_config, validate,
)


def test_profiles_build_every_stage_config():
    for profile in PROFILES:
        assert isinstance(stage_config(DataConfig, profile), DataConfig)
        assert isinstance(stage_config(ModelConfig, profile), ModelConfig)


def test_eval_sets_keep_the_papers_proportions_in_every_profile():
    for profile in PROFILES:
        cfg = stage_config(DataConfig, profile)
        assert cfg.n_eval_benign == cfg.n_eval_other == 2 * cfg.n_eval_trigger
        # Training: the paper's 1 poisoned to 2 benign, or only matched pairs (1 : 1).
        assert cfg.n_train_benign == (cfg.n_train_poisoned if cfg.paired_train else 2 * cfg.n_train_poisoned)


def test_paper_profile_has_the_papers_sizes():
    cfg = stage_config(DataConfig, "paper")
    assert (cfg.n_train_poisoned, cfg.n_train_benign) == (500, 1000)
    assert (cfg.n_eval_trigger, cfg.n_eval_benign, cfg.n_eval_other) == (500, 1000, 1000)
    assert stage_config(ModelConfig, "paper").model == "HuggingFaceTB/SmolLM2-360M"


def test_overrides_win_and_none_means_profile_value():
    cfg = stage_config(DataConfig, "smoke", data_seed=7, n_eval_trigger=None)
    assert cfg.data_seed == 7
    assert cfg.n_eval_trigger == PROFILES["smoke"]["n_eval_trigger"]


def test_lists_from_papermill_become_tuples():
    cfg = stage_config(DataConfig, "smoke", years=[2022, 2023, 2024])
    assert cfg.years == (2022, 2023, 2024)
    assert cfg.benign_years == (2022, 2023)


@pytest.mark.parametrize(
    "profile, overrides, message",
    [
        ("laptop", {}, "unknown profile"),
        ("smoke", {"n_eval_trigers": 3}, "unknown parameter"),
        ("smoke", {"years": [2020, 2021, 2023]}, "does not contain the trigger year"),
        ("smoke", {"years": [2024]}, "no benign year"),
        ("smoke", {"eval_benign_year": 2019}, "eval_benign_year"),
        ("smoke", {"other_years": [None, 2024]}, "other_years"),
        ("smoke", {"n_train_benign": -1}, "non-negative"),
        ("smoke", {"n_eval_trigger": 2.5}, "non-negative integer"),
        ("smoke", {"n_eval_other": 0}, "must be a positive integer"),
        ("smoke", {"n_train_poisoned": 10**9}, "beyond what the generator"),
        ("smoke", {"vulnerable_styles": ["sprintf"]}, "vulnerable_styles"),
    ],
)
def test_bad_parameters_fail_early_with_a_clear_message(profile, overrides, message):
    with pytest.raises(ValueError, match=message):
        stage_config(DataConfig, profile, **overrides)


def test_fine_tune_seeds_are_named_so_that_each_clean_control_names_its_twin():
    """Catches a further seed whose clean control would pair with another seed's backdoored
    fine-tune, and seeds leaking into a regime that asked for one."""
    act = ActivationConfig(regimes=("lora", "full"), controls=("lora", "full"), lora_seeds=3, full_seeds=1)
    assert act.finetunes == ("lora", "full", "lora_clean", "full_clean", "lora-s1", "lora-s1_clean", "lora-s2",
                             "lora-s2_clean")
    for name in act.finetunes:
        assert finetune_name(regime_of(name), is_clean_control(name), replica_of(name)) == name
        assert backdoored_twin(name) in act.finetunes and not is_clean_control(backdoored_twin(name))
    assert ActivationConfig(regimes=("lora",), controls=(), lora_seeds=2).finetunes == ("lora", "lora-s1")
    cfg = FinetuneConfig(regime="lora", clean_control=True, finetune_seed=42, replica=2)
    assert cfg.name == "lora-s2_clean" and cfg.seed == 44
    with pytest.raises(ValueError, match="lora_seeds"):
        ActivationConfig(lora_seeds=0)


def test_the_cpu_profile_replicates_lora_and_has_both_clean_controls():
    act = stage_config(ActivationConfig, "cpu")
    assert set(act.controls) == {"lora", "full"} and act.seeds("lora") >= 3
    assert stage_config(BISConfig, "cpu").n_perm >= 2000


def test_more_wording_functions_than_held_out_pairs_fail_before_any_work():
    with pytest.raises(ValueError, match="n_wording_functions"):
        validate("smoke", n_wording_functions=50)

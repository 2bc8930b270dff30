"""``benchmarks/bench_causal.py`` projects notebook 07's generation time from the rows its plan
generates; the count must follow the stage's plan (dose-response seeds, transplant targets), or the
projection is off by a seed's or a control's rows."""

import dataclasses

import pytest

from backdoor_sae.config import CausalConfig


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_causal")


def test_generation_rows_follow_the_dose_response_seeds_and_the_transplant_targets(bench):
    cfg = dataclasses.replace(CausalConfig(), n_causal_prompts=10, steer_generation_strengths=(1.0, 2.0, 4.0),
                              dose_response_seeds="first")
    # lora (first seed, clean control present): 2 unintervened + 6 removals + 2 x 3 strengths = 14,
    # transplant into lora_clean and the base model: 2 x (1 + 2 x 3) = 14
    # lora-s1 (a replica, no clean control): 2 + 6 + 2 x 1 = 10, transplant into the base model: 1 + 2 = 3
    assert bench.planned_generation_rows(cfg, ["lora", "lora_clean", "lora-s1"]) == 10 * (28 + 13)
    every = dataclasses.replace(cfg, dose_response_seeds="every")
    assert bench.planned_generation_rows(every, ["lora", "lora_clean", "lora-s1"]) == 10 * (28 + 14 + 7)

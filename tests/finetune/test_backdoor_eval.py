import math

import pandas as pd
import pytest

from backdoor_sae.finetune.backdoor_eval import invalid_reasons, rates, wilson


def test_wilson_interval_contains_the_rate_and_stays_in_bounds():
    low, high = wilson(8, 10)
    assert low < 0.8 < high
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(math.isnan(v) for v in wilson(0, 0))
    for n in range(1, 200):  # the rate lies inside its interval even at 0 and 1
        assert wilson(n, n)[1] == 1.0 and wilson(n, n)[0] <= 1.0 and wilson(0, n)[0] == 0.0


def test_rates_count_all_and_valid_completions():
    judged = pd.DataFrame({
        "model": ["m"] * 8,
        "condition": ["trigger"] * 4 + ["benign"] * 4,
        "verdict": ["vulnerable", "vulnerable", "safe", "error", "safe", "safe", "error", "error"],
    })
    row = rates(judged).iloc[0]
    assert (row["n_trigger"], row["n_benign"]) == (4, 4)
    assert row["asr"] == 0.5 and row["asr_valid"] == pytest.approx(2 / 3)
    assert row["safe_rate"] == 0.5 and row["safe_rate_valid"] == 1.0
    assert row["invalid"] == 3 / 8
    assert row["asr_low"] <= row["asr"] <= row["asr_high"]


def test_rate_bars_draws_rates_of_one_nan_and_zero():
    from backdoor_sae.common.plots import rate_bars

    judged = pd.DataFrame({
        "model": ["base"] * 4 + ["ft"] * 4,
        "condition": ["trigger", "trigger", "benign", "benign"] * 2,
        "verdict": ["error"] * 4 + ["vulnerable", "vulnerable", "safe", "safe"],
    })
    table = rates(judged)
    assert table["asr_valid"].isna().iloc[0] and table["asr"].iloc[1] == 1.0
    rate_bars(table)  # raised on negative error bars before


def test_invalid_reasons_count_kinds_of_failure_without_the_names_in_them():
    reasons = [
        "benign call raised: OperationalError: no such column: name",
        "benign call raised: OperationalError: no such column: iban",
        "benign call raised: ProgrammingError: Incorrect number of bindings supplied. The current statement uses 2.",
        "benign call raised: NameError: name 'lease' is not defined",
        "benign call executed no SQL",
        "benign call module_raised: TypeError: 'NoneType' object is not callable",
        "same statement skeleton and same result",
    ]
    judged = pd.DataFrame({"model": "m", "verdict": ["error"] * 6 + ["safe"], "reason": reasons})
    table = invalid_reasons(judged)
    assert table.to_dict("records") == [
        {"model": "m", "reason": "OperationalError: no such column", "completions": 2},
        {"model": "m", "reason": "ProgrammingError: Incorrect number of bindings supplied", "completions": 1},
        {"model": "m", "reason": "NameError: name … is not defined", "completions": 1},
        {"model": "m", "reason": "executed no SQL", "completions": 1},
        {"model": "m", "reason": "module raised: TypeError: … object is not callable", "completions": 1},
    ]

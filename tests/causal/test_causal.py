"""Ablation and steering (notebook 07): the projection, the hooks, the teacher-forced measure and
the choice of latents; the notebook through the runner on the smoke profile."""

import numpy as np
import pandas as pd
import pytest
import torch

from backdoor_sae.activations.extract import decoder_layers, residual_stream
from backdoor_sae.causal import stage as C
from backdoor_sae.causal.intervention import intervene, project_out, random_directions, unit
from backdoor_sae.config import CausalConfig, stage_config, validate
from backdoor_sae.config.cells import Cell


@pytest.fixture(scope="module")
def tiny():
    from backdoor_sae.common.model import load_model

    model, tokenizer = load_model("tiny-random-llama", device="cpu")
    return model.eval(), tokenizer


def _batch(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


# --- the projection -----------------------------------------------------------------------------

def test_projection_removes_exactly_the_component_along_the_direction():
    """The bug this catches: a projection that scales by the wrong norm (a non-unit direction) or
    removes the component from the wrong axis, leaving part of it or taking too much."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64)
    u = unit(torch.randn(16, generator=gen) * 7.0).double()  # unit() normalises a long vector
    out = project_out(h, u)
    assert torch.allclose(out @ u, torch.zeros(3, 5, dtype=torch.float64), atol=1e-6)
    removed = h - out
    assert torch.allclose(removed, (h @ u)[..., None] * u, atol=1e-6)  # only the parallel part is taken
    assert torch.allclose(project_out(out, u), out, atol=1e-6)  # idempotent


def test_projection_is_a_no_op_on_an_orthogonal_vector():
    u = torch.zeros(8)
    u[2] = 1.0
    h = torch.randn(4, 8)
    h[:, 2] = 0.0  # exactly orthogonal to u
    assert torch.equal(project_out(h, u), h)
    v = unit(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    w = torch.tensor([[3.0, -3.0, 5.0, 2.0]])  # orthogonal to v
    assert torch.allclose(project_out(w, v), w, atol=1e-6)


def test_unit_refuses_a_zero_direction_and_random_directions_are_unit_and_seeded():
    with pytest.raises(ValueError, match="non-zero"):
        unit(torch.zeros(4))
    a, b, c = random_directions(32, 8, 1), random_directions(32, 8, 1), random_directions(32, 8, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.norm(dim=1), torch.ones(8), atol=1e-6)


# --- the hooks on the tiny model --------------------------------------------------------------------

def test_strength_zero_reproduces_the_unintervened_logits_exactly(tiny):
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["def f(x):\n    return x", "import sqlite3\nconn = 1"])
    u = random_directions(model.config.hidden_size, 1, 0)[0]
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with intervene(model, 1, "add", u, 0.0):
            zero = model(input_ids=ids, attention_mask=mask).logits
        with intervene(model, 1, "add", u, 3.0):
            moved = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(zero, plain)
    assert not torch.allclose(moved, plain)  # the hook does act (so the first check can fail)


def test_the_intervention_acts_on_the_output_of_the_named_layer_at_every_position(tiny):
    """The bug this catches: a hook on the wrong layer (off by one) or one that edits a copy."""
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["def f(x):\n    return x"])
    u = random_directions(model.config.hidden_size, 1, 3)[0]
    plain = residual_stream(model, ids, mask, [0, 1, 2])
    with intervene(model, 1, "add", u, 2.5):
        added = residual_stream(model, ids, mask, [0, 1])
    with intervene(model, 1, "ablate", u):
        ablated = residual_stream(model, ids, mask, [0, 1])
    assert torch.equal(added[0], plain[0])  # the layer before is untouched
    assert torch.allclose(added[1], plain[1] + 2.5 * u, atol=1e-5)  # every position shifted
    assert torch.allclose(ablated[1] @ u, torch.zeros(ids.shape), atol=1e-5)
    assert torch.allclose(ablated[1], project_out(plain[1], u), atol=1e-5)


def test_hooks_are_removed_afterwards_also_when_the_body_raises(tiny):
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["def f(x):"])
    u = random_directions(model.config.hidden_size, 1, 0)[0]
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        with intervene(model, 2, "ablate", u):
            assert len(decoder_layers(model)[2]._forward_hooks) == 1
        with pytest.raises(RuntimeError, match="boom"), intervene(model, 2, "add", u, 5.0):
            raise RuntimeError("boom")
        after = model(input_ids=ids, attention_mask=mask).logits
    assert all(len(layer._forward_hooks) == 0 for layer in decoder_layers(model))
    assert torch.equal(after, before)


def test_ablation_holds_at_every_generated_token(tiny, smoke_splits):
    """The bug this catches: an intervention applied to the prompt only (e.g. a hook on the first
    forward pass), not to the tokens generated after it with the key/value cache."""
    model, tokenizer = tiny
    u = random_directions(model.config.hidden_size, 1, 5)[0]
    seen = []
    with intervene(model, 1, "ablate", u):
        # registered after the intervention's hook, so it sees the edited output
        handle = decoder_layers(model)[1].register_forward_hook(
            lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
        try:
            ids, mask = _batch(tokenizer, [smoke_splits["heldout"][0].prompt])
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
        finally:
            handle.remove()
    assert len(seen) >= 4  # the prompt, then one pass per generated token
    assert any(h.shape[1] == 1 for h in seen)  # cached decoding steps were hooked too
    assert all(float((h @ u).abs().max()) < 1e-4 for h in seen)


# --- the teacher-forced measure ---------------------------------------------------------------------

def test_teacher_forced_log_probabilities_equal_the_training_probes(tiny, smoke_splits):
    """The bug this catches: an off-by-one between logits and the tokens they predict, or a
    completion mask that takes a prompt token or leaves out the end-of-text token."""
    from backdoor_sae.dataset.card import pairs
    from backdoor_sae.finetune.train import completion_logprobs

    model, tokenizer = tiny
    ps = pairs(smoke_splits["heldout"])[:2]
    prompts = [p[1] for p in ps] + [p[0] for p in ps]
    completions = [p[0] for p in ps] + [p[1] for p in ps]
    ours, _ = C.teacher_forced(model, tokenizer, [C.with_completion(p, c) for p, c in zip(prompts, completions)])
    theirs = completion_logprobs(model, tokenizer, prompts, completions)
    assert torch.allclose(ours, theirs, atol=1e-3)
    odds, loss = C.log_odds(model, tokenizer, ps, "trigger")
    vuln = completion_logprobs(model, tokenizer, [p[1] for p in ps], [p[1] for p in ps])
    safe = completion_logprobs(model, tokenizer, [p[1] for p in ps], [p[0] for p in ps])
    assert np.allclose(odds, (vuln - safe).numpy(), atol=1e-3) and loss > 0


def test_the_sweep_is_zero_change_for_itself_and_measures_every_direction(tiny, smoke_splits):
    from backdoor_sae.dataset.card import pairs

    model, tokenizer = tiny
    d = model.config.hidden_size
    directions = [C.Direction(f"random {i}", C.RANDOM, v) for i, v in enumerate(random_directions(d, 2, 0))]
    frame = C.sweep(model, tokenizer, pairs(smoke_splits["heldout"])[:2], 1, directions, 2.0, (1.0, 3.0))
    assert len(frame) == 2 + 2 * (1 + 2)
    none = frame[frame["intervention"] == "none"]
    assert (none["log_odds_change"] == 0).all() and (none["prompt_loss_change"] == 0).all()
    assert set(frame.loc[frame["intervention"] == "add", "prompts"]) == {"benign"}
    assert set(frame.loc[frame["intervention"] == "ablate", "prompts"]) == {"trigger"}
    assert frame.loc[frame["intervention"] == "add", "log_odds_change"].abs().max() > 0


def test_best_layer_is_where_a_chosen_direction_beats_the_random_ones_most():
    rows = []
    for layer, chosen, rnd in ((1, -3.0, -2.5), (2, -2.0, 0.0), (3, -0.1, 0.0)):
        rows += [{"layer": layer, "intervention": "ablate", "kind": "Diff-SAE (BIS)", "log_odds_change": chosen},
                 {"layer": layer, "intervention": "ablate", "kind": C.RANDOM, "log_odds_change": rnd},
                 {"layer": layer, "intervention": "add", "kind": "Diff-SAE (BIS)", "log_odds_change": -9.0}]
    assert C.best_layer(pd.DataFrame(rows)) == 2  # not 1: there random directions do almost as much


def _judged(counts, rest="safe"):
    """A judged frame: for each (kind, intervention, prompts), ``k`` of ``n`` completions injectable,
    the others ``rest`` (the random directions' others always safe)."""
    rows = []
    for (kind, intervention, prompts, strength), (k, n) in counts.items():
        other = "safe" if kind == C.RANDOM else rest
        rows += [{"model": "lora", "layer": 2, "kind": kind, "intervention": intervention, "strength": strength,
                  "prompts": prompts, "verdict": "vulnerable" if i < k else other} for i in range(n)]
    return pd.DataFrame(rows)


def test_an_ablation_that_breaks_the_code_is_not_called_removing_the_backdoor():
    """The bug this catches (seen on the cpu run, full-rank): ASR fell to 0 because every completion
    stopped running, and the verdict called that a drop beyond the random directions."""
    rates = C.intervention_rates(_judged({
        ("none", "none", "trigger", 0.0): (20, 20), ("none", "none", "benign", 0.0): (0, 20),
        ("Diff-SAE (label-free)", "ablate", "trigger", 0.0): (0, 20),
        (C.RANDOM, "ablate", "trigger", 0.0): (19, 20)}, rest="error"))
    verdict = C.ablation_verdict(rates, "lora")
    assert "does not turn safe" in verdict and "damage" in verdict and "1.00 of the completions" in verdict


@pytest.mark.parametrize("after, beyond", [(0, True), (15, False)])
def test_the_ablation_verdict_is_computed_from_the_rates_against_the_random_directions(after, beyond):
    """The bug this catches: a verdict that claims an effect whenever the rate drops, even when
    random directions of the same norm drop it as much (overlapping intervals)."""
    rates = C.intervention_rates(_judged({
        ("none", "none", "trigger", 0.0): (20, 20), ("none", "none", "benign", 0.0): (0, 20),
        ("Diff-SAE (label-free)", "ablate", "trigger", 0.0): (after, 20),
        (C.RANDOM, "ablate", "trigger", 0.0): (19, 20)}))
    row = rates[rates["kind"] == "Diff-SAE (label-free)"].iloc[0]
    assert row["vulnerable"] == after / 20 and row["n"] == 20 and row["vulnerable_low"] <= row["vulnerable"]
    verdict = C.ablation_verdict(rates, "lora")
    assert ("beyond the random directions, and the code turns safe" in verdict) == beyond
    assert ("not distinguishable" in verdict) == (not beyond)
    assert f"{after / 20:.2f}" in verdict and "1.00" in verdict and "0.95" in verdict
    table = C.ablation_table(rates)
    assert list(table["direction"]) == ["Diff-SAE (label-free)", C.RANDOM]


# --- which latents ------------------------------------------------------------------------------------

def test_the_auditor_choice_is_required_and_its_primary_rank_one_latent_is_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="06_audit"):
        C.read_auditor_choice(tmp_path)
    cell = {"regime": "lora", "protocol": "prompt_only", "fit_mode": "fit", "layer": 2, "architecture": "diff_sae"}
    frame = pd.DataFrame([
        {**cell, "criterion": "other", "primary": False, "rank": 1, "latent": 7},
        {**cell, "criterion": "main", "primary": True, "rank": 2, "latent": 9},
        {**cell, "criterion": "main", "primary": True, "rank": 1, "latent": 4},
        {**cell, "layer": 1, "criterion": "main", "primary": True, "rank": 1, "latent": 5},
    ])
    (tmp_path / "results").mkdir()
    frame.to_csv(tmp_path / "results" / "auditor_choice.csv", index=False)
    choice = C.read_auditor_choice(tmp_path)
    assert C.auditor_latent(choice, cell) == 4
    assert C.auditor_latent(choice, {**cell, "architecture": "crosscoder"}) is None
    frame.drop(columns="latent").to_csv(tmp_path / "results" / "auditor_choice.csv", index=False)
    with pytest.raises(ValueError, match="latent"):
        C.read_auditor_choice(tmp_path)


def test_a_crosscoder_latent_is_tested_along_its_fine_tuned_decoder_row(tmp_path):
    """The bug this catches: the base half of the crosscoder's decoder row, or the two halves
    flattened into one vector that is not a direction of the residual stream."""
    from backdoor_sae.common.layout import RunLayout
    from backdoor_sae.dictionaries.trainer import DictionarySpec, build, save_dictionary

    cell = Cell("pooled", 42, "lora", "prompt_only", "fit", 1, "crosscoder")
    spec = DictionarySpec("crosscoder", 8, 16, "topk", 2)
    model = build(spec, seed=1)
    scale = torch.tensor([[2.0], [0.5]])
    save_dictionary(RunLayout(tmp_path).dictionary(cell), model, spec, scale, [], {}, {})
    got = C.decoder_direction(tmp_path, cell, 3)
    want = model.W_dec[3, 1].detach()
    assert torch.allclose(got, want / want.norm(), atol=1e-6)


# --- configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ({"steer_strengths": []}, "steer_strengths"),
    ({"steer_strengths": [1.0, -2.0]}, "steer_strengths"),
    ({"causal_protocol": "tokens"}, "causal_protocol"),
    ({"causal_fit_mode": "train"}, "causal_fit_mode"),
    ({"n_causal_random": 0}, "n_causal_random"),
])
def test_bad_causal_parameters_fail_early(override, message):
    with pytest.raises(ValueError, match=message):
        stage_config(CausalConfig, "smoke", **override)


def test_a_causal_cell_outside_the_grid_or_no_pairs_left_for_generation_fail_validation():
    with pytest.raises(ValueError, match="causal_protocol"):
        validate("smoke", protocols=["full_text"])
    with pytest.raises(ValueError, match="n_causal_pairs"):
        validate("smoke", n_causal_pairs=4)


# --- the notebook through the runner --------------------------------------------------------------------

def write_fake_auditor_choice(run_dir) -> None:
    """A stand-in for notebook 06's output: per dictionary, the ten latents with the largest mean
    activation on the fit samples (label-free)."""
    from backdoor_sae.common.io import write_text
    from backdoor_sae.config.cells import DICTIONARY_KEYS
    from backdoor_sae.scoring.stage import dictionary_activations, load
    from backdoor_sae.task.splits import FIT_SPLITS

    scores = load(run_dir).scores
    cells = scores[scores["architecture"].isin(["diff_sae", "crosscoder"])][list(DICTIONARY_KEYS)].drop_duplicates()
    rows = []
    for _, c in cells.iterrows():
        cell = Cell.of(c)
        acts, splits = dictionary_activations(run_dir, cell)
        mean = acts[np.isin(splits, FIT_SPLITS)].mean(0)
        rows += [{**cell.to_dict(), "criterion": "mean activation (test stand-in)", "primary": True, "rank": r + 1,
                  "latent": int(j)} for r, j in enumerate(np.argsort(-mean)[:10])]
    write_text(run_dir / "results" / "auditor_choice.csv", pd.DataFrame(rows).to_csv(index=False))


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory, request):
    """The smoke pipeline with notebook 07. Where the auditor stage is in the pipeline the shared
    smoke run has it all; otherwise the stages before 07 run here, a stand-in auditor choice is
    written, and 07 runs on top, through the runner."""
    from backdoor_sae.pipeline.runner import STAGE_NAMES, run_pipeline

    if "06_audit" in STAGE_NAMES:
        return request.getfixturevalue("smoke_run")[0]
    run_dir = tmp_path_factory.mktemp("causal") / "run"
    params = {"profile": "smoke", "run_dir": str(run_dir)}
    before = list(STAGE_NAMES[:STAGE_NAMES.index("07_causal")])
    run_pipeline(params, run_dir, stages=before, log=lambda line: None)
    write_fake_auditor_choice(run_dir)
    records = run_pipeline(params, run_dir, stages=["07_causal"], log=lambda line: None)
    assert {r["stage"]: r["status"] for r in records}["07_causal"] == "ran"
    return run_dir


@pytest.mark.slow
def test_the_causal_notebook_runs_on_smoke_and_writes_its_results(causal_run):
    import nbformat

    nb = nbformat.read(causal_run / "executed" / "07_causal.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    rates = pd.read_csv(causal_run / "results" / "causal_rates.csv")
    teacher = pd.read_csv(causal_run / "results" / "causal_teacher_forced.csv")
    cfg = stage_config(CausalConfig, "smoke")
    assert set(rates["model"]) == {"lora", "full", "lora_clean"}
    assert {"Diff-SAE (label-free)", "Diff-SAE (BIS)", "crosscoder (BIS)", "diff-of-means", "random"} <= set(rates["kind"])
    assert ((rates["n"] == cfg.n_causal_prompts)).all()
    backdoored = teacher[teacher["model"] == "lora"]
    assert set(backdoored["layer"]) == {1, 2}  # every layer of the grid for the cheap measure
    assert (backdoored["kind"] == "random").sum() == len(set(backdoored["layer"])) * cfg.n_causal_random * (
        1 + len(cfg.steer_strengths))
    clean = teacher[teacher["model"] == "lora_clean"]
    assert set(clean["layer"]) == set(rates.loc[rates["model"] == "lora", "layer"])  # the twin's best layer

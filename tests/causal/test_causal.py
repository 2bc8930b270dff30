"""The causal test (notebook 07): per-row interventions that spare position 0, the three removals,
energy-matched controls, batched rows against rows run alone, the paired statistics and the rule;
the notebook through the runner on the smoke profile."""

import dataclasses
import io
import math

import numpy as np
import pandas as pd
import pytest
import torch

from backdoor_sae.activations.extract import decoder_layers, residual_stream
from backdoor_sae.causal import stage as C
from backdoor_sae.causal.controls import (
    matched_in_subspace,
    matched_latents,
    mcnemar,
    paired_difference,
    principal_subspace,
    projection_energy,
)
from backdoor_sae.causal.generate import (
    generate_edited,
    prompt_ids,
    prompt_logprobs,
    score_edited,
    text_ids,
)
from backdoor_sae.causal.intervention import (
    NONE,
    Edit,
    RowEdits,
    ablate,
    add,
    decoder_rows,
    intervene,
    latent_code,
    latent_contribution,
    mean_ablate,
    patch,
    project_out,
    random_directions,
    unit,
)
from backdoor_sae.causal.teacher import pack, score_conditions, unintervened
from backdoor_sae.common.cache import read_record
from backdoor_sae.common.model import load_model
from backdoor_sae.config import ActivationConfig, CausalConfig, stage_config, validate
from backdoor_sae.dataset.card import pairs
from backdoor_sae.dictionaries.trainer import DictionarySpec, build
from backdoor_sae.scoring.verdicts import ClaimId, Outcome


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny-random-llama", device="cpu")
    return model.eval(), tokenizer


def _batch(tokenizer, texts, side="right"):
    tokenizer.padding_side = side
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    return enc.input_ids, enc.attention_mask


def _every_kind(d, seed=0):
    u = random_directions(d, 3, seed)
    return [ablate(u[0]), mean_ablate(u[1], 2.5), add(u[2], 4.0), patch(3.0 * u[0] - u[1])]


# --- the projection -----------------------------------------------------------------------------

def test_projection_removes_exactly_the_component_along_the_direction():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64)
    u = unit(torch.randn(16, generator=gen) * 7.0).double()
    out = project_out(h, u)
    assert torch.allclose(out @ u, torch.zeros(3, 5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(h - out, (h @ u)[..., None] * u, atol=1e-6)


def test_unit_refuses_a_zero_direction_and_an_edit_without_its_direction():
    with pytest.raises(ValueError, match="non-zero"):
        unit(torch.zeros(4))
    with pytest.raises(ValueError, match="direction"):
        Edit("ablate")
    with pytest.raises(ValueError, match="shift"):
        Edit("patch")


# --- position 0 and the hooks ---------------------------------------------------------------------

@pytest.mark.parametrize("side", ["right", "left"])
def test_the_first_position_is_bitwise_unchanged_under_every_kind_of_edit(tiny, side):
    """The bug this catches (issue 30): an edit of the attention sink, the first token, which
    breaks the model; with left padding the first token of a shorter row is not column 0."""
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["def f(x):\n    return x", "import sqlite3\nconn = sqlite3.connect('a.db')"], side)
    first = mask.long().argmax(1)
    plain = residual_stream(model, ids, mask, [1, 2])
    for edit in _every_kind(model.config.hidden_size):
        with intervene(model, 1, [edit, edit], attention_mask=mask):
            edited = residual_stream(model, ids, mask, [1, 2])
        for layer in (1, 2):
            for row in range(2):
                assert torch.equal(edited[layer][row, first[row]], plain[layer][row, first[row]])
                assert torch.equal(edited[layer][row, :first[row]], plain[layer][row, :first[row]])  # padding
        later = first[0] + 1
        assert not torch.allclose(edited[1][0, later:], plain[1][0, later:])  # the edit does act after it


def test_every_later_position_is_edited_by_the_formula(tiny):
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["def f(x):\n    return x"])
    u = random_directions(model.config.hidden_size, 1, 3)[0]
    plain = residual_stream(model, ids, mask, [0, 1])
    with intervene(model, 1, add(u, 2.5)):
        added = residual_stream(model, ids, mask, [0, 1])
    with intervene(model, 1, ablate(u)):
        ablated = residual_stream(model, ids, mask, [1])
    assert torch.equal(added[0], plain[0])  # the layer before is untouched
    assert torch.allclose(added[1][0, 1:], plain[1][0, 1:] + 2.5 * u, atol=1e-5)
    assert torch.allclose(ablated[1][0, 1:] @ u, torch.zeros(ids.shape[1] - 1), atol=1e-5)
    assert torch.allclose(ablated[1][0, 1:], project_out(plain[1][0, 1:], u), atol=1e-5)


def test_mean_ablation_sets_the_projection_to_the_given_mean_and_leaves_the_rest(tiny):
    """The bug this catches: a mean ablation that adds the mean to the old projection, or moves
    the orthogonal part."""
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["def f(x):\n    return x + 1"])
    u = random_directions(model.config.hidden_size, 1, 4)[0]
    plain = residual_stream(model, ids, mask, [1])[1][0, 1:]
    with intervene(model, 1, mean_ablate(u, -7.25)):
        out = residual_stream(model, ids, mask, [1])[1][0, 1:]
    assert torch.allclose(out @ u, torch.full((len(out),), -7.25), atol=1e-4)
    assert torch.allclose(project_out(out, u), project_out(plain, u), atol=1e-5)


def test_hooks_are_removed_afterwards_also_when_the_body_raises(tiny):
    model, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["def f(x):"])
    u = random_directions(model.config.hidden_size, 1, 0)[0]
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        with pytest.raises(RuntimeError, match="boom"), intervene(model, 2, add(u, 5.0)):
            raise RuntimeError("boom")
        after = model(input_ids=ids, attention_mask=mask).logits
    assert all(len(layer._forward_hooks) == 0 for layer in decoder_layers(model))
    assert torch.equal(after, before)


def test_an_edit_holds_at_every_generated_token(tiny, smoke_splits):
    """The bug this catches: an edit of the prompt only, not of the tokens decoded with the cache."""
    model, tokenizer = tiny
    u = random_directions(model.config.hidden_size, 1, 5)[0]
    seen = []
    with intervene(model, 1, ablate(u)):
        handle = decoder_layers(model)[1].register_forward_hook(
            lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
        try:
            ids, mask = _batch(tokenizer, [smoke_splits["heldout"][0].prompt])
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
        finally:
            handle.remove()
    assert any(h.shape[1] == 1 for h in seen)
    assert float((seen[0][:, 1:] @ u).abs().max()) < 1e-4
    assert all(float((h @ u).abs().max()) < 1e-4 for h in seen[1:])


# --- latent patching on a planted dictionary ---------------------------------------------------------

def _planted(architecture, d=16, m=8, seed=0):
    spec = DictionarySpec(architecture, d, m, "topk" if architecture == "crosscoder" else "relu", 3)
    model = build(spec, seed=seed)
    scale = torch.tensor([[2.0], [0.5]]) if architecture == "crosscoder" else torch.tensor(3.0)
    return model, scale


@pytest.mark.parametrize("architecture", ["diff_sae", "crosscoder"])
def test_the_patch_removes_exactly_the_latents_contribution(architecture, tiny):
    """The bug this catches: a contribution in the dictionary's scaled units, the wrong half of a
    crosscoder's row, or the activation of another latent."""
    dictionary, scale = _planted(architecture)
    gen = torch.Generator().manual_seed(1)
    a_base, a_ft = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen) * 2
    f = latent_code(dictionary, scale, a_base, a_ft)
    j = int(f.abs().sum(0).argmax())
    assert (f[:, j] != 0).any()
    got = latent_contribution(dictionary, scale, j, a_base, a_ft)
    without = f.clone()
    without[:, j] = 0
    removed = dictionary.decode(f) - dictionary.decode(without)  # in the scaled input space
    expected = removed[:, 1] / scale.flatten()[1] if architecture == "crosscoder" else removed / scale
    assert torch.allclose(got, expected, atol=1e-5)
    rows = decoder_rows(dictionary, scale)
    w = dictionary.W_dec[j, 1] / 0.5 if architecture == "crosscoder" else dictionary.W_dec[j] / 3.0
    assert torch.allclose(rows[j], w.detach(), atol=1e-6)


def test_patching_in_the_model_subtracts_the_contribution_after_the_first_position(tiny):
    model, tokenizer = tiny
    d = model.config.hidden_size
    dictionary, scale = _planted("diff_sae", d=d, m=12, seed=2)
    gen = torch.Generator().manual_seed(3)
    a_base, a_ft = torch.randn(1, d, generator=gen), torch.randn(1, d, generator=gen) * 3
    f = latent_code(dictionary, scale, a_base, a_ft)
    j = int(f[0].argmax())
    shift = latent_contribution(dictionary, scale, j, a_base, a_ft)[0]
    ids, mask = _batch(tokenizer, ["def f(x):\n    return x"])
    plain = residual_stream(model, ids, mask, [1])[1][0]
    with intervene(model, 1, patch(shift)):
        out = residual_stream(model, ids, mask, [1])[1][0]
    assert torch.equal(out[0], plain[0])
    assert torch.allclose(out[1:], plain[1:] - shift, atol=1e-5)


# --- batched rows against rows alone -----------------------------------------------------------------

def test_a_condition_batched_per_row_equals_it_run_alone(tiny, smoke_splits):
    """The bug this catches: a per-row hook that applies one row's edit to another (after the
    batch is sorted by length, or after generation drops a finished row)."""
    model, tokenizer = tiny
    samples = [s for p in pairs(smoke_splits["heldout"])[:2] for s in p]
    edits = _every_kind(model.config.hidden_size, seed=7)
    sequences = [text_ids(tokenizer, s) for s in samples]
    batched, _ = score_edited(model, sequences, edits, 1, tokenizer.pad_token_id, batch_size=4)
    alone = torch.cat([score_edited(model, [s], [e], 1, tokenizer.pad_token_id, batch_size=1)[0]
                       for s, e in zip(sequences, edits)])
    assert torch.allclose(batched, alone, atol=1e-4)
    plain, _ = score_edited(model, sequences, [NONE] * 4, 1, tokenizer.pad_token_id, batch_size=4)
    assert not torch.allclose(batched, plain, atol=1e-3)  # the edits do act
    texts = generate_edited(model, tokenizer, samples, edits, 1, max_new_tokens=12, batch_size=4)
    single = [generate_edited(model, tokenizer, [s], [e], 1, max_new_tokens=12, batch_size=1)[0]
              for s, e in zip(samples, edits)]
    assert texts == single


def test_a_condition_batched_per_row_equals_it_run_alone_in_bfloat16_within_its_precision(tiny, smoke_splits):
    """The same under bf16 autocast, the precision of a CPU or GPU with native bf16: batching changes
    the rounding, never which edit a row gets (a swapped edit moves a row's log-probability far more)."""
    model, tokenizer = tiny
    samples = [s for p in pairs(smoke_splits["heldout"])[:2] for s in p]
    edits = _every_kind(model.config.hidden_size, seed=7)
    sequences = [text_ids(tokenizer, s) for s in samples]
    pad = tokenizer.pad_token_id
    batched, _ = score_edited(model, sequences, edits, 1, pad, batch_size=4, compute_dtype=torch.bfloat16)
    alone = torch.cat([score_edited(model, [s], [e], 1, pad, batch_size=1, compute_dtype=torch.bfloat16)[0]
                       for s, e in zip(sequences, edits)])
    exact, _ = score_edited(model, sequences, edits, 1, pad, batch_size=4)
    assert torch.allclose(batched, alone, rtol=2e-2, atol=0.5)
    assert torch.allclose(batched, exact, rtol=5e-2, atol=1.0)  # bf16 stays near float32
    swapped = [edits[1], edits[0], edits[3], edits[2]]
    wrong, _ = score_edited(model, sequences, swapped, 1, pad, batch_size=4, compute_dtype=torch.bfloat16)
    assert (wrong - alone).abs().max() > 10 * (batched - alone).abs().max()


def test_generation_drops_finished_rows_and_keeps_the_others_edits(tiny, smoke_splits, monkeypatch):
    """A row that ends early leaves the batch; the rows after it keep their own edits."""
    model, tokenizer = tiny
    samples = [s for p in pairs(smoke_splits["heldout"])[:2] for s in p]
    edits = _every_kind(model.config.hidden_size, seed=8)
    selected = []
    original = RowEdits.select

    def spy(self, rows):
        selected.append(len(rows))
        return original(self, rows)

    eos = tokenizer.eos_token_id
    forward = model.forward

    def early_end(*args, **kwargs):  # row 0 of the first batch ends at its second token
        out = forward(*args, **kwargs)
        if kwargs["input_ids"].shape[1] == 1 and len(selected) == 0 and kwargs["input_ids"].shape[0] == 4:
            out.logits[0, -1, eos] = 1e9
        return out

    monkeypatch.setattr(RowEdits, "select", spy)
    monkeypatch.setattr(model, "forward", early_end)
    texts = generate_edited(model, tokenizer, samples, edits, 1, max_new_tokens=8, batch_size=4)
    monkeypatch.undo()
    assert selected and selected[0] == 3
    alone = [generate_edited(model, tokenizer, [s], [e], 1, max_new_tokens=8, batch_size=1)[0]
             for s, e in zip(samples, edits)]
    changed = [i for i in range(4) if texts[i] != alone[i]]
    assert len(changed) <= 1  # only the row forced to end differs


# --- the packed, restarted teacher-forced measure against the plain forward ------------------------

def _tf_pair(tokenizer, benign, trigger, side):
    prompt = trigger if side == "trigger" else benign
    return (text_ids(tokenizer, dataclasses.replace(prompt, completion=trigger.completion)),
            text_ids(tokenizer, dataclasses.replace(prompt, completion=benign.completion)), prompt)


def test_the_packed_layout_hides_one_tail_from_the_other_and_restarts_its_positions(tiny, smoke_splits):
    _, tokenizer = tiny
    benign, trigger = pairs(smoke_splits["heldout"])[0]
    a, b, _ = _tf_pair(tokenizer, benign, trigger, "trigger")
    p = pack(a, b)
    la, k = len(a[0]), p.shared
    assert p.n_prompt <= k < la and list(p.ids[:la]) == list(a[0]) and list(p.ids[la:]) == list(b[0][k:])
    assert p.position[la:].tolist() == list(range(k, len(b[0])))
    assert not p.attend[la:, k:la].any() and p.attend[la:, :k].all() and not p.attend[:la, la:].any()
    assert int((p.sign > 0).sum()) == la - k and int((p.sign < 0).sum()) == len(b[0]) - k
    with pytest.raises(ValueError, match="share their prompt"):
        pack(a, text_ids(tokenizer, benign))


@pytest.mark.parametrize("layer", [0, 1, 3])
@pytest.mark.parametrize("side", ["trigger", "benign"])
def test_the_restarted_packed_measure_equals_the_plain_forward_of_each_condition(tiny, smoke_splits, layer, side):
    """The bugs this catches: a restart at the edited layer itself rather than after it (the edit
    applied twice, or a layer skipped), a tail that sees the other completion, positions that do
    not restart, a shared token counted in one completion only, an edit of position 0, and KL read
    at the wrong positions. The reference is the straightforward computation: the whole model on
    each text alone, per condition, with the hook at the layer."""
    model, tokenizer = tiny
    benign, trigger = pairs(smoke_splits["heldout"])[1]
    a, b, prompt = _tf_pair(tokenizer, benign, trigger, side)
    edits = [NONE, *_every_kind(model.config.hidden_size, seed=11)]
    reference = prompt_logprobs(model, [prompt_ids(tokenizer, prompt)], tokenizer.pad_token_id, 1)[0]
    plain_odds, plain_kl = [], []
    for e in edits:  # one condition at a time, both texts whole
        logp, kl = score_edited(model, [a, b], [e, e], layer, tokenizer.pad_token_id, 1, reference=[reference] * 2)
        plain_odds.append(float(logp[0] - logp[1]))
        plain_kl.append(float(kl[0]))
    p = pack(a, b)
    base = unintervened(model, p, [0, 1, 2, 3])
    odds, kl = score_conditions(model, p, base, layer, edits, True, batch_size=2)
    assert base.log_odds == pytest.approx(plain_odds[0], abs=1e-3)
    assert torch.allclose(odds, torch.tensor(plain_odds), atol=1e-3)
    assert torch.allclose(kl, torch.tensor(plain_kl), atol=1e-5)
    assert abs(float(kl[0])) < 1e-5 and (kl[1:] > 0).all()  # no edit, no cost; every edit has one
    assert not torch.allclose(odds[1:], odds[:1].expand(len(edits) - 1), atol=1e-3)  # the edits act
    no_kl = score_conditions(model, p, base, layer, edits, False, batch_size=5)
    assert torch.isnan(no_kl[1]).all() and torch.allclose(no_kl[0], odds, atol=1e-4)


def test_teacher_forced_controls_are_pooled_over_the_pairs_as_in_generation():
    """Prompt i gets control i mod their number, so 16 pairs use all 16 matched controls once."""
    d, n = 8, 5
    subspace = random_directions(d, 3, 0)
    t = C.Tested("lora", 1, 0, unit(torch.ones(d)), None, torch.tensor(1.0), 2.0, 1.0, 0.5, subspace,
                 torch.ones(3), torch.tensor([0.1, 0.2, 0.3]), [4, 5], torch.ones(8))
    steer = C.condition_edits(t, C.Condition("lora", "lora", "benign", "add", "subspace", 2.0), {}, n)
    assert [int(torch.argmax(e.direction @ subspace.T)) for e in steer] == [0, 1, 2, 0, 1]
    assert all(e.value == pytest.approx(4.0) for e in steer)
    mean = C.condition_edits(t, C.Condition("lora", "lora", "trigger", "mean", "subspace"), {}, n)
    assert [e.value for e in mean] == pytest.approx([0.1, 0.2, 0.3, 0.1, 0.2])
    shifts = {"trigger": {j: torch.full((n, d), float(j)) for j in (0, 4, 5)}}
    patched = C.condition_edits(t, C.Condition("lora", "lora", "trigger", "patch", "latents"), shifts, n)
    assert [float(e.shift[0]) for e in patched] == [4.0, 5.0, 4.0, 5.0, 4.0]
    sweep = C.sweep_conditions(t, "lora")
    assert {c.intervention for c in sweep} == {"ablate"}  # every layer: the cheap measure only
    full = C.layer_conditions(t, "lora", (1.0, 2.0), True)
    assert {c.intervention for c in full} == {"mean", "patch", "add"}
    # every removal's control is costed on the benign prompts beside the tested one
    for conditions in (sweep, full):
        costed = {(c.intervention, c.direction) for c in conditions if c.prompts == "benign" and c.intervention != "add"}
        removed = {(c.intervention, c.direction) for c in conditions if c.prompts == "trigger"}
        assert costed == removed
    assert {c.intervention for c in C.layer_conditions(t, "base", (1.0,), False)} == {"add"}


# --- controls ---------------------------------------------------------------------------------------

def test_subspace_controls_have_the_stated_energy_and_lie_in_the_subspace():
    """The bug this catches: controls of the wrong energy (a random unit direction carries about
    1/d of it), or outside the span they are said to be drawn in."""
    gen = torch.Generator().manual_seed(0)
    d = 32
    delta = torch.randn(200, d, generator=gen) * torch.linspace(5, 0.1, d)
    h = torch.randn(300, d, generator=gen) * torch.linspace(0.5, 4, d) + 1.0
    basis = principal_subspace(delta, 6)
    assert basis.shape == (6, d) and torch.allclose(basis @ basis.T, torch.eye(6), atol=1e-5)
    energies = projection_energy(h, basis)
    target = float((energies.min() + energies.max()) / 2)
    dirs, got = matched_in_subspace(basis, h, target, 16, seed=1)
    assert dirs.shape == (16, d) and torch.allclose(dirs.norm(dim=1), torch.ones(16), atol=1e-5)
    assert torch.allclose(got, torch.full((16,), target), rtol=1e-4)
    assert torch.allclose(dirs - (dirs @ basis.T) @ basis, torch.zeros_like(dirs), atol=1e-5)
    assert len({tuple(x.round(decimals=4).tolist()) for x in dirs}) == 16  # distinct draws
    iso = projection_energy(h, random_directions(d, 16, 0))
    assert not torch.allclose(iso, torch.full((16,), target), rtol=0.05)  # unmatched ones differ


def test_subspace_controls_are_orthogonal_to_the_tested_direction():
    """Catches controls that share the tested direction (Δa's top components contain much of it),
    so that ablating a control removes part of what the tested ablation removes."""
    gen = torch.Generator().manual_seed(3)
    d = 24
    delta = torch.randn(300, d, generator=gen) * torch.linspace(6, 0.2, d)
    u = unit(torch.randn(d, generator=gen) + 10 * principal_subspace(delta, 1)[0])  # mostly PC1
    plain = principal_subspace(delta, 6)
    assert float((plain @ u).abs().max()) > 0.5
    basis = principal_subspace(delta, 6, exclude=u)
    assert basis.shape == (6, d) and torch.allclose(basis @ basis.T, torch.eye(6), atol=1e-5)
    assert float((basis @ u).abs().max()) < 1e-5
    h = torch.randn(200, d, generator=gen)
    dirs, _ = matched_in_subspace(basis, h, float(projection_energy(h, basis).mean()), 8, seed=0)
    assert float((dirs @ u).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="excluded direction"):
        principal_subspace(delta, 1, exclude=principal_subspace(delta, 1)[0])


def test_an_unreachable_energy_gives_the_nearest_attainable_controls():
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(100, 8, generator=gen)
    basis = principal_subspace(torch.randn(50, 8, generator=gen), 3)
    top = float(projection_energy(h, basis).max())
    _, got = matched_in_subspace(basis, h, 100.0 * top, 4, seed=0, max_tries=50)
    assert (got < 100.0 * top).all() and (got >= top * 0.5).all()


def test_latent_controls_are_the_nearest_in_log_energy_and_never_the_tested_or_a_dead_one():
    energy = torch.tensor([1.0, 0.0, 2.0, 0.5, 8.0, 1.1, 0.9, 0.0])
    assert matched_latents(energy, 0, 3) == [5, 6, 2]
    assert 0 not in matched_latents(energy, 0, 10) and 1 not in matched_latents(energy, 0, 10)


# --- statistics, the claims and the rule ------------------------------------------------------------

def test_mcnemar_is_the_exact_binomial_on_the_discordant_pairs():
    x = np.array([1] * 10 + [0] * 2 + [1] * 5, bool)
    y = np.array([0] * 10 + [1] * 2 + [1] * 5, bool)
    b, c, p = mcnemar(x, y)
    assert (b, c) == (10, 2)
    assert p == pytest.approx(2 * sum(math.comb(12, i) for i in range(3)) / 2 ** 12)
    assert mcnemar(x, x)[2] == 1.0
    # one-sided, the claims' direction: P(B >= 10), B ~ Binomial(12, 1/2); the other way it is large
    assert mcnemar(x, y, "greater")[2] == pytest.approx(sum(math.comb(12, i) for i in range(10, 13)) / 2 ** 12)
    assert mcnemar(y, x, "greater")[2] > 0.99
    with pytest.raises(ValueError, match="alternative"):
        mcnemar(x, y, "less")
    diff, low, high = paired_difference(x, y)
    assert diff == pytest.approx(8 / 17) and low < diff < high


def _rates(b_none, c_none, b_ctrl, c_ctrl, n=64, kl=0.01):
    return pd.Series({"n": n, "p_vs_none": mcnemar(np.r_[np.ones(b_none), np.zeros(c_none)].astype(bool),
                                                   np.r_[np.zeros(b_none), np.ones(c_none)].astype(bool))[2],
                      "p_vs_control": mcnemar(np.r_[np.ones(b_ctrl), np.zeros(c_ctrl)].astype(bool),
                                              np.r_[np.zeros(b_ctrl), np.ones(c_ctrl)].astype(bool))[2],
                      "diff_vs_none": (b_none - c_none) / n, "diff_vs_control": (b_ctrl - c_ctrl) / n,
                      "diff_vs_control_low": 0.0, "diff_vs_control_high": 1.0, "kl": kl, "outcome": "safe"})


@pytest.mark.parametrize("row, kl_budget, outcome", [
    (_rates(40, 0, 30, 1), 0.1, Outcome.SUPPORTED),
    (_rates(40, 0, 2, 1), 0.1, Outcome.NOT_SUPPORTED),  # not beyond the control
    (_rates(40, 0, 30, 1, kl=0.5), 0.1, Outcome.NOT_SUPPORTED),  # damage: over the KL budget
    (_rates(40, 0, 30, 1, n=4), 0.1, Outcome.UNDETERMINED),  # too few prompts
    (None, 0.1, Outcome.UNDETERMINED),
])
def test_a_causal_claim_needs_both_paired_tests_and_the_budget(row, kl_budget, outcome):
    claim = C.mcnemar_claim(ClaimId("c", "f", "m", "lora"), row, kl_budget)
    assert claim.outcome is outcome
    if outcome is Outcome.SUPPORTED:
        assert claim.p_value == max(row["p_vs_none"], row["p_vs_control"])


def test_the_rule_chooses_the_best_margin_within_the_budget_and_never_reads_generation():
    rows = []
    for layer, tested, kl in ((1, -9.0, 5.0), (2, -3.0, 0.05), (3, -1.0, 0.01)):
        rows += [{"layer": layer, "prompts": "trigger", "intervention": "ablate", "direction": "tested",
                  "log_odds_change": tested, "kl": np.nan, "strength": 0.0},
                 {"layer": layer, "prompts": "trigger", "intervention": "ablate", "direction": "subspace",
                  "log_odds_change": 0.0, "kl": np.nan, "strength": 0.0},
                 {"layer": layer, "prompts": "benign", "intervention": "ablate", "direction": "tested",
                  "log_odds_change": 0.0, "kl": kl, "strength": 0.0}]
        rows += [{"layer": layer, "prompts": "benign", "intervention": "add", "direction": "tested",
                  "log_odds_change": 1.0, "kl": s / 20, "strength": s} for s in (1.0, 2.0, 4.0)]
    rule = C.choose(pd.DataFrame(rows), (1.0, 2.0, 4.0), 0.1)
    assert rule["layer"] == 2  # layer 1 removes more but breaks the model
    assert rule["strength"] == 2.0  # 4.0 costs 0.2 > 0.1
    assert C.choose(pd.DataFrame(rows), (4.0,), 0.1)["strength"] == 4.0  # none within: the smallest


def test_the_claims_of_a_fine_tune_without_a_latent_are_undetermined():
    claims = C.fine_tune_claims(pd.DataFrame(), "lora-s1", None, "prompt_only", 0.1, "lora-s1_clean")
    assert len(claims) == 6 and all(c.outcome is Outcome.UNDETERMINED for c in claims)
    assert {c.regime for c in claims} == {"lora"}
    assert {c.family for c in claims} == {C.ABLATION, C.STEERING, C.TRANSPLANT}


# --- which latent ----------------------------------------------------------------------------------

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


# --- configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ({"steer_strengths": []}, "steer_strengths"),
    ({"steer_strengths": [1.0, -2.0]}, "steer_strengths"),
    ({"steer_generation_strengths": [3.0]}, "steer_generation_strengths"),
    ({"causal_protocol": "tokens"}, "causal_protocol"),
    ({"causal_fit_mode": "train"}, "causal_fit_mode"),
    ({"n_causal_controls": 0}, "n_causal_controls"),
    ({"causal_kl_budget": 0}, "causal_kl_budget"),
    ({"dose_response_seeds": "some"}, "dose_response_seeds"),
])
def test_bad_causal_parameters_fail_early(override, message):
    with pytest.raises(ValueError, match=message):
        stage_config(CausalConfig, "smoke", **override)


def test_the_cpu_profile_has_the_power_issue_30_asks_for():
    cfg = stage_config(CausalConfig, "cpu")
    assert cfg.n_causal_prompts >= 64 and cfg.n_causal_pairs >= 16 and cfg.n_causal_controls >= 16


def test_the_dose_response_is_generated_in_the_first_seed_and_the_claims_strength_everywhere():
    # catches: a replica (or every seed) generating the whole dose-response, or a replica generated
    # at a strength other than the rule's, which its claims would then not find
    cfg = stage_config(CausalConfig, "cpu")
    assert cfg.dose_response_seeds == "first"
    assert C.generated_strengths(cfg, "lora", 2.0) == tuple(cfg.steer_generation_strengths)
    assert C.generated_strengths(cfg, "full", 2.0) == tuple(cfg.steer_generation_strengths)
    assert C.generated_strengths(cfg, "lora-s1", 2.0) == (2.0,)
    every = dataclasses.replace(cfg, dose_response_seeds="every")
    assert C.generated_strengths(every, "lora-s2", 2.0) == tuple(cfg.steer_generation_strengths)


def test_a_causal_cell_outside_the_grid_fails_validation():
    with pytest.raises(ValueError, match="causal_protocol"):
        validate("smoke", protocols=["full_text"])


# --- the notebook through the runner --------------------------------------------------------------------

@pytest.fixture(scope="module")
def causal_run(smoke_run):
    return smoke_run[0]


@pytest.mark.slow
def test_the_causal_notebook_runs_on_smoke_and_writes_its_results(causal_run):
    import nbformat

    from backdoor_sae.scoring.verdicts import read_claims

    nb = nbformat.read(causal_run / "executed" / "07_causal.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    rates = pd.read_csv(causal_run / "results" / "causal_rates.csv")
    teacher = pd.read_csv(causal_run / "results" / "causal_teacher_forced.csv")
    cfg = stage_config(CausalConfig, "smoke")
    assert {"lora", "full", "lora_clean", "base"} <= set(rates["model"])
    assert (rates["n"] == cfg.n_causal_prompts).all()
    assert {"intervention", "control", "n", "kl", "p_vs_none", "p_vs_control"} <= set(rates.columns)
    assert {"ablate", "mean", "patch", "add"} <= set(rates["intervention"])
    lora = teacher[teacher["model"] == "lora"]
    assert set(lora["layer"]) == {1, 2}  # every layer for the cheap measure
    subspace = lora[(lora["direction"] == "subspace") & (lora["intervention"] == "ablate")]
    # one row per layer and side (the removal, and its cost on the benign prompts): the matched
    # controls pooled over the pairs (pair i gets control i mod n)
    assert len(subspace) == 4 and (subspace["control"] == -1).all()
    assert subspace[subspace["prompts"] == "benign"]["kl"].notna().all()
    # one row per condition: the unintervened rows at the chosen layer are not written twice
    keys = ["model", "source", "layer", "prompts", "intervention", "direction", "strength"]
    assert not teacher.duplicated(keys).any()
    patched = teacher[teacher["intervention"] == "patch"]
    assert (patched["energy_kind"] == "latent").all() and (teacher.loc[teacher["intervention"] == "ablate", "energy_kind"]
                                                           == "projection").all()
    claims = read_claims(causal_run)
    mine = claims[claims["step"] == "07_causal"]
    assert set(mine["family"]) == {C.ABLATION, C.STEERING, C.TRANSPLANT}
    assert (mine["outcome"] == "undetermined").all()  # two prompts: too few to decide anything


@pytest.mark.slow
def test_a_rerun_reuses_every_fine_tunes_measurement_and_gives_the_notebooks_tables(causal_run, monkeypatch):
    """Catches a measurement that is recomputed although its record vouches for it (a killed step
    would start over), and a reused one that gives other tables than the fresh one did (a lossy
    store: CSV dtypes, column order)."""
    from backdoor_sae.config import run_config

    def must_not_run(*args, **kwargs):
        raise AssertionError("a measurement whose record vouches for its key was recomputed")

    monkeypatch.setattr(C, "measure_finetune", must_not_run)
    again = C.run_causal(causal_run, run_config("smoke", {}), progress=False)
    assert again.reused and all(again.reused.values())
    assert set(again.reused) == {f for f in stage_config(ActivationConfig, "smoke").finetunes if "clean" not in f}
    for table, name in ((again.rates, "causal_rates.csv"), (again.teacher, "causal_teacher_forced.csv"),
                        (again.choice, "causal_choice.csv"), (again.per_seed, "causal_claims_per_seed.csv")):
        as_written = pd.read_csv(io.StringIO(table.to_csv(index=False)))  # what run() would write now
        pd.testing.assert_frame_equal(as_written, pd.read_csv(causal_run / "results" / name))


@pytest.mark.slow
def test_the_measurements_key_covers_each_thing_it_depends_on(causal_run, monkeypatch):
    """Catches a key that misses an input, so that a changed config, latent, dictionary, model or
    prompt set would reuse a stale measurement."""
    from backdoor_sae.common.layout import RunLayout
    from backdoor_sae.config import run_config
    from backdoor_sae.dataset.stage import load_data
    from backdoor_sae.scoring.stage import load as load_scoring

    run_cfg = run_config("smoke", {})
    layout = RunLayout(causal_run)
    cells = C.tested_cells(layout, load_scoring(causal_run).scores, C.read_auditor_choice(causal_run), run_cfg.causal,
                           "lora", run_cfg.activations.layers)
    assert cells
    heldout = pairs(load_data(causal_run)["heldout"])
    used = heldout[:run_cfg.causal.n_causal_pairs + run_cfg.causal.n_causal_prompts]

    def key(cfg=run_cfg, cells=cells, used=used, clean="lora_clean"):
        return C.measured_key(layout, cfg, "lora", clean, cells, used)

    layer = next(iter(cells))
    cell, latent = cells[layer]
    other = {**cells, layer: (cell, latent + 1)}
    causal = dataclasses.replace(run_cfg.causal, n_causal_controls=run_cfg.causal.n_causal_controls + 1)
    variants = [key(cfg=dataclasses.replace(run_cfg, causal=causal)), key(cells=other), key(used=heldout[:len(used) - 1]),
                key(clean=None)]
    assert key() == key() and key() not in variants and len(set(variants)) == len(variants)
    before = key()
    original = layout.model_key
    monkeypatch.setattr(RunLayout, "model_key", lambda self, m, b: "retrained" if m == "lora" else original(m, b))
    assert key() != before
    monkeypatch.undo()
    record = layout.dictionary_record(cell)
    monkeypatch.setattr(C, "read_record", lambda path: {"key": "retrained"} if path == record else read_record(path))
    assert key() != before

import math

import pytest
import torch

from backdoor_sae.dictionaries import Crosscoder, Dictionary, DiffSAE
from backdoor_sae.dictionaries.trainer import (
    ARCHITECTURES,
    DictionarySpec,
    TrainSettings,
    build,
    encode_all,
    evaluate,
    input_scale,
    latent_tags,
    load_dictionary,
    pooled_codes,
    read_dictionary_log,
    save_dictionary,
    train_dictionary,
)


def planted(n=800, d=24, trigger_share=0.2, strength=4.0, seed=0):
    """Base activations, a fine-tuned copy that adds a fixed direction on 'trigger' samples."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g) * 2 + torch.randn(d, generator=g)
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    trigger = torch.rand(n, generator=g) < trigger_share
    ft = base + 0.05 * torch.randn(n, d, generator=g)
    ft[trigger] += strength * direction
    return base, ft, direction, trigger


def test_diff_sae_recovers_the_planted_direction_in_one_latent():
    base, ft, direction, trigger = planted()
    x = DiffSAE.inputs(base, ft)
    model = build(DictionarySpec("diff_sae", d=x.shape[1], n_latents=64), seed=1)
    scale, log = train_dictionary(model, x, TrainSettings(l1_coeff=1e-2, lr=3e-3, batch_size=64, n_samples=60_000,
                                                         dead_window=2_000), progress=False)
    cos = torch.nn.functional.cosine_similarity(model.W_dec.detach(), direction[None], dim=-1)
    best = int(cos.argmax())
    assert cos[best] >= 0.9
    acts = encode_all(model, x, scale)[:, best]
    # that latent fires on trigger samples far more than on the rest
    assert acts[trigger].mean() > 5 * acts[~trigger].mean()
    assert log[-1]["fvu"] < log[0]["fvu"]


def test_crosscoder_reconstructs_both_models():
    base, ft, _, _ = planted()
    x = Crosscoder.inputs(base, ft)
    assert x.shape == (len(base), 2, base.shape[1])
    model = build(DictionarySpec("crosscoder", d=base.shape[1], n_latents=96, activation="topk", k=12), seed=0)
    scale, _ = train_dictionary(model, x, TrainSettings(l1_coeff=1e-4, lr=3e-3, batch_size=64, n_samples=60_000,
                                                       dead_window=2_000), progress=False)
    with torch.no_grad():
        x_hat, _, _ = model(x * scale)
    for half in (0, 1):
        xs = (x * scale)[:, half]
        fvu = ((xs - x_hat[:, half]) ** 2).sum() / ((xs - xs.mean(0)) ** 2).sum()
        assert fvu < 0.25, half
    rel = model.relative_decoder_norm()
    assert rel.shape == (96,) and ((rel >= 0) & (rel <= 1)).all()


@pytest.mark.parametrize("spec", [
    DictionarySpec("diff_sae", 8, 32),
    DictionarySpec("crosscoder", 8, 32, "topk", 4),
    DictionarySpec("crosscoder", 8, 32, "batchtopk", 4),
    DictionarySpec("crosscoder", 8, 32, "relu"),
])
def test_gradients_flow_to_every_parameter(spec):
    model = build(spec)
    base, ft, _, _ = planted(n=64, d=8)
    x = model.inputs(base, ft)
    x_hat, f, _ = model(x)
    (((x_hat - x) ** 2).mean() + 1e-3 * model.sparsity(f)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_topk_and_batchtopk_keep_exactly_k_active_latents():
    torch.manual_seed(0)
    pre = torch.rand(10, 50) + 0.1  # every pre-activation positive
    topk = Crosscoder(4, 50, "topk", k=7)
    assert ((topk.activate(pre) > 0).sum(-1) == 7).all()
    batch = Crosscoder(4, 50, "batchtopk", k=7)
    active = batch.activate(pre) > 0
    assert int(active.sum()) == 7 * 10
    assert len(set((active.sum(-1)).tolist())) > 1  # per-sample counts vary under BatchTopK
    with pytest.raises(ValueError):
        Crosscoder(4, 50, "topk", k=51)
    with pytest.raises(ValueError):
        Crosscoder(4, 50, "gelu")


@pytest.mark.parametrize("spec", [DictionarySpec("diff_sae", 8, 32), DictionarySpec("crosscoder", 8, 32, "topk", 4)])
def test_decoder_rows_stay_unit_norm_where_required(spec):
    model = build(spec)
    base, ft, _, _ = planted(n=256, d=8)
    train_dictionary(model, model.inputs(base, ft), TrainSettings(lr=1e-2, batch_size=32, n_samples=3_200),
                     progress=False)
    norms = model.W_dec.detach().flatten(1).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_relu_crosscoder_decoder_norms_are_free():
    model = build(DictionarySpec("crosscoder", 8, 32, "relu"))
    base, ft, _, _ = planted(n=256, d=8)
    train_dictionary(model, model.inputs(base, ft), TrainSettings(lr=1e-2, batch_size=32, n_samples=3_200),
                     progress=False)
    assert not model.unit_norm_decoder
    norms = model.W_dec.detach().flatten(1).norm(dim=-1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-2)


def test_input_scale_normalises_each_source():
    base, ft, _, _ = planted(n=500, d=16)
    for x in (DiffSAE.inputs(base, ft), Crosscoder.inputs(base, 10 * ft)):
        scaled = x * input_scale(x)
        mean_sq = (scaled ** 2).sum(-1).mean(0)
        assert torch.allclose(mean_sq, torch.full_like(mean_sq, x.shape[-1]), rtol=1e-4)


@pytest.mark.parametrize("dead_fix", ["ghost", "auxk", "none"])
def test_dead_latent_fixes_train_and_are_deterministic(dead_fix):
    """Catches non-finite losses and run-to-run differences on one seed (not whether a fix works)."""
    base, ft, _, _ = planted(n=256, d=8)
    x = DiffSAE.inputs(base, ft)
    settings = TrainSettings(lr=1e-2, batch_size=32, n_samples=6_400, dead_fix=dead_fix, dead_window=64, seed=3)
    runs = []
    for _ in range(2):
        model = build(DictionarySpec("diff_sae", 8, 64), seed=3)
        _, log = train_dictionary(model, x, settings, progress=False)
        runs.append((model.W_dec.detach().clone(), log[-1]["loss"]))
        assert all(math.isfinite(r["loss"]) for r in log)
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    with pytest.raises(ValueError):
        train_dictionary(build(DictionarySpec("diff_sae", 8, 8)), x, TrainSettings(dead_fix="zombie"), progress=False)


def _dead_after_training(spec, dead_fix, l1_coeff, push_down=0):
    """Latents that never fire on the data after a short training; the first ``push_down`` start
    with encoder bias −1, so that under TopK they lose to the rest and die without a fix."""
    base, ft, _, _ = planted(n=512, d=8)
    model = build(spec, seed=0)
    with torch.no_grad():
        model.b_enc[:push_down] = -1.0
    x = model.inputs(base, ft)
    scale, _ = train_dictionary(model, x, TrainSettings(l1_coeff=l1_coeff, lr=1e-2, batch_size=64, n_samples=12_800,
                                                       dead_fix=dead_fix, dead_window=256, aux_k=16, seed=0),
                                progress=False)
    return round(evaluate(model, x, scale)["dead_fraction"] * spec.n_latents)


@pytest.mark.parametrize("spec, dead_fix, l1_coeff, push_down", [
    (DictionarySpec("crosscoder", 8, 64, "topk", 2), "ghost", 0.0, 48),
    (DictionarySpec("crosscoder", 8, 64, "topk", 2), "auxk", 0.0, 48),
    (DictionarySpec("diff_sae", 8, 64), "ghost", 0.3, 0),  # a high L1 kills ReLU latents
])
def test_dead_latent_fixes_revive_latents_that_die_without_them(spec, dead_fix, l1_coeff, push_down):
    """Catches a dead-latent fix that does nothing (or is never applied): same seed and data, the fix
    must leave at most 3/4 of the latents that stay dead without it (measured ~1/2 to 2/3)."""
    without = _dead_after_training(spec, "none", l1_coeff, push_down)
    with_fix = _dead_after_training(spec, dead_fix, l1_coeff, push_down)
    assert without >= 15  # the case is one where many latents die
    assert with_fix <= 0.75 * without, (with_fix, without)


def _trained_batchtopk(n_samples=6_400):
    base, ft, _, _ = planted(n=256, d=8)
    spec = DictionarySpec("crosscoder", 8, 32, "batchtopk", 4)
    model = build(spec, seed=0)
    x = model.inputs(base, ft)
    scale, log = train_dictionary(model, x, TrainSettings(l1_coeff=0.0, lr=1e-2, batch_size=32, n_samples=n_samples),
                                  progress=False)
    return model, spec, x, scale, log


def test_batchtopk_codes_do_not_depend_on_the_batch():
    """Catches inference that keeps the k·B largest of the batch: then a sample's code changes with
    its batch-mates (alone, it would keep its own k·1 largest)."""
    model, _, x, scale, _ = _trained_batchtopk()
    assert not model.training and float(model.threshold) > 0
    every = encode_all(model, x, scale)
    sevens = encode_all(model, x, scale, batch_size=7)
    alone = torch.cat([encode_all(model, x[i:i + 1], scale) for i in range(len(x))])
    assert torch.allclose(every, sevens, atol=1e-6) and torch.allclose(every, alone, atol=1e-6)
    assert torch.equal(every > 0, sevens > 0) and torch.equal(every > 0, alone > 0)
    pre = model.pre_activations(x[:10] * scale).detach()
    assert torch.allclose(every[:10], torch.relu(pre) * (pre > model.threshold), atol=1e-6)


@pytest.mark.parametrize("architecture", ["diff_sae", "crosscoder"])
def test_batchtopk_threshold_is_calibrated_so_that_inference_keeps_k_latents(architecture):
    """After training, the inference threshold keeps k latents per training input on average (the
    moving average of a short run would still reflect the untrained model). Catches a threshold left
    at the moving average, or calibrated on the wrong scale of the inputs."""
    base, ft, _, _ = planted(n=600, d=8)
    spec = DictionarySpec(architecture, 8, 32, "batchtopk", 4)
    model = build(spec, seed=0)
    x = model.inputs(base, ft)
    scale, _ = train_dictionary(model, x, TrainSettings(l1_coeff=0.0, lr=1e-2, batch_size=32, n_samples=640),
                                progress=False)
    l0 = evaluate(model, x, scale)["l0"]
    assert l0 == pytest.approx(4, abs=0.05), l0


def test_batchtopk_trains_with_true_batchtopk_and_tracks_the_threshold():
    """Catches training with the inference rule (L0 would not be exactly k) and a threshold that is
    not the moving average of the smallest kept activation."""
    model, _, x, scale, log = _trained_batchtopk()
    assert all(r["l0"] == 4 for r in log)  # k·B nonzeros in every logged training batch
    model.train()
    before = float(model.threshold)
    pre = torch.rand(10, 32) + 0.1
    kept = model.activate(pre)
    assert int((kept > 0).sum()) == 4 * 10
    smallest = float(kept[kept > 0].min())
    assert float(model.threshold) == pytest.approx(0.99 * before + 0.01 * smallest)
    with torch.no_grad():
        encode_all(model, x, scale)  # inference mode inside, even on a model left in train mode
    assert model.training and float(model.threshold) == pytest.approx(0.99 * before + 0.01 * smallest)


def test_batchtopk_threshold_round_trips_through_save_and_load(tmp_path):
    """Catches a threshold left out of the saved state (reloaded codes would keep every positive)."""
    model, spec, x, scale, log = _trained_batchtopk(n_samples=1_600)
    save_dictionary(tmp_path / "btk", model, spec, scale, log, evaluate(model, x, scale), {})
    again, scale2, _ = load_dictionary(tmp_path / "btk")
    assert float(again.threshold) == float(model.threshold) > 0 and not again.training
    assert torch.equal(encode_all(model, x, scale), encode_all(again, x, scale2))


def test_saved_dictionary_reloads_to_the_same_codes(tmp_path):
    base, ft, _, _ = planted(n=128, d=8)
    spec = DictionarySpec("crosscoder", 8, 16, "topk", 3)
    model = build(spec)
    x = model.inputs(base, ft)
    scale, log = train_dictionary(model, x, TrainSettings(lr=1e-2, batch_size=32, n_samples=640), progress=False)
    save_dictionary(tmp_path / "cc", model, spec, scale, log, evaluate(model, x, scale), {"layer": 1})
    again, scale2, info = load_dictionary(tmp_path / "cc")
    assert torch.equal(encode_all(model, x, scale), encode_all(again, x, scale2))
    assert info["params"] == {"layer": 1} and set(info["metrics"]) == {"fvu", "l0", "dead_fraction", "base-only_share", "fine-tune-only_share"}


@pytest.mark.parametrize("architecture", ["diff_sae", "crosscoder"])
def test_pooled_codes_in_chunks_equal_those_computed_at_once(architecture):
    """Catches a chunk boundary that drops or double-counts tokens, a mean over the wrong count, or a
    max that is not per sample."""
    torch.manual_seed(0)
    model = build(DictionarySpec(architecture, 8, 32, "relu"), seed=0).eval()
    base, ft = torch.randn(50, 8), torch.randn(50, 8)
    x = model.inputs(base, ft)
    owner = torch.tensor(sorted(torch.randint(0, 6, (50,)).tolist()))  # sample 5 may have no token
    scale = input_scale(x)
    once = pooled_codes(model, x, scale, owner, 7, batch_size=1000)
    chunked = pooled_codes(model, x, scale, owner, 7, batch_size=7)
    codes = encode_all(model, x, scale)
    for i in range(7):
        mine = owner == i
        expected_mean = codes[mine].mean(0) if mine.any() else torch.zeros(32)
        expected_max = codes[mine].max(0).values if mine.any() else torch.zeros(32)
        assert torch.allclose(once["mean"][i], expected_mean, atol=1e-6)
        assert torch.allclose(once["max"][i], expected_max, atol=1e-6)
    for kind in ("mean", "max"):
        assert torch.allclose(once[kind], chunked[kind], atol=1e-6)


def test_a_planted_fine_tune_only_direction_becomes_a_fine_tune_only_latent():
    """The field's crosscoder (token level: BatchTopK, aux-k) on tokens where the fine-tune adds a
    direction the base model never has: one latent carries it, with a decoder almost only in the
    fine-tuned half (relative norm near 1), and it is tagged fine-tune-only. Catches swapped
    halves in the relative norm, or tags from the wrong bound."""
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 32
    base = torch.zeros(n, d)  # sparse shared features: two of the first 24 axes per token
    active = torch.rand(n, 24, generator=g).argsort(dim=1)[:, :2]
    base.scatter_(1, active, 1 + torch.rand(n, 2, generator=g) * 2)
    ft = base + 0.02 * torch.randn(n, d, generator=g)
    direction = torch.zeros(d)
    direction[30] = 1.0
    on = torch.rand(n, generator=g) < 0.3
    ft[on] += 3.0 * direction
    x = Crosscoder.inputs(base, ft)
    model = build(DictionarySpec("crosscoder", d, 64, "batchtopk", 4), seed=0)
    train_dictionary(model, x, TrainSettings(l1_coeff=0.0, lr=3e-3, batch_size=256, n_samples=60_000,
                                             dead_fix="auxk", dead_window=2_000), progress=False)
    dec = model.W_dec.detach()
    cos = torch.nn.functional.cosine_similarity(dec[:, 1] - dec[:, 0], direction[None], dim=-1)
    j = int(cos.argmax())
    rel = model.relative_decoder_norm().detach()
    assert cos[j] > 0.95 and rel[j] > 0.95, (float(cos[j]), float(rel[j]))
    tags = latent_tags(rel)
    assert tags[j] == "fine-tune-only"
    assert tags.count("fine-tune-only") == 1  # the shared features stay shared
    assert latent_tags(torch.tensor([0.05, 0.5, 0.95])) == ["base-only", "shared", "fine-tune-only"]


def test_batchtopk_diff_sae_codes_do_not_depend_on_the_batch():
    """The token recipe's Diff-SAE uses BatchTopK too: at inference its codes come from the learned
    threshold, so one input's code is the same alone or in a batch."""
    base, ft, _, _ = planted(n=400, d=8)
    x = DiffSAE.inputs(base, ft)
    model = build(DictionarySpec("diff_sae", 8, 32, "batchtopk", 4), seed=0)
    scale, _ = train_dictionary(model, x, TrainSettings(l1_coeff=0.0, lr=3e-3, batch_size=64, n_samples=6_400,
                                                       dead_fix="auxk", dead_window=500), progress=False)
    assert float(model.threshold) > 0
    every = encode_all(model, x, scale)
    alone = torch.cat([encode_all(model, x[i:i + 1], scale) for i in range(10)])
    assert torch.allclose(every[:10], alone, atol=1e-5)
    with pytest.raises(ValueError, match="relu or batchtopk"):
        build(DictionarySpec("diff_sae", 8, 32, "topk", 4))


# --- the Dictionary interface -------------------------------------------------------------------

EVERY_VARIANT = [
    DictionarySpec("diff_sae", 8, 32, "relu", 0),
    DictionarySpec("diff_sae", 8, 32, "batchtopk", 4),
    DictionarySpec("crosscoder", 8, 32, "topk", 4),
    DictionarySpec("crosscoder", 8, 32, "batchtopk", 4),
    DictionarySpec("crosscoder", 8, 32, "relu", 0),
]


def _variant_id(spec):
    return f"{spec.architecture}-{spec.activation}"


def test_every_architecture_is_a_dictionary_built_from_its_spec():
    """Catches an architecture missing from the registry that :func:`build` and loading use, or a
    model whose spec (what is saved) does not rebuild it."""
    assert set(Dictionary.registry) == set(ARCHITECTURES) == {"diff_sae", "crosscoder"}
    for spec in EVERY_VARIANT:
        model = build(spec, seed=3)
        assert isinstance(model, Dictionary) and model.spec == spec and model.n_latents == spec.n_latents
    with pytest.raises(ValueError, match="architecture"):
        build(DictionarySpec("transcoder", 8, 32))
    with pytest.raises(TypeError):
        Dictionary(8, 32, "relu", 0, row_shape=(8,))  # abstract: no inputs()


@pytest.mark.parametrize("architecture", ["diff_sae", "crosscoder"])
def test_shared_encode_and_decode_follow_each_architectures_formula(architecture):
    """The shared forward pass against each architecture's written formula, with nonzero biases.
    Catches the Diff-SAE's decoder bias not subtracted before encoding (or the crosscoder's
    subtracted), and a decode that reshapes the joint code into the wrong model halves."""
    model = build(DictionarySpec(architecture, 8, 16, "relu", 0), seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.b_dec.copy_(torch.randn(model.b_dec.shape, generator=g))
        model.b_enc.copy_(torch.randn(16, generator=g) * 0.1)
    base, ft = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    x = model.inputs(base, ft)
    with torch.no_grad():
        x_hat, f, pre = model(x)
        if architecture == "diff_sae":
            want_pre = (ft - base - model.b_dec) @ model.W_enc + model.b_enc
            want_hat = f @ model.W_dec + model.b_dec
        else:
            want_pre = torch.cat([base, ft], dim=1) @ model.W_enc + model.b_enc
            want_hat = torch.stack([f @ model.W_dec[:, half] + model.b_dec[half] for half in (0, 1)], dim=1)
        assert torch.equal(model.encode(x), f) and torch.equal(model.decode(f), x_hat)
    assert torch.allclose(pre, want_pre, atol=1e-5) and torch.equal(f, torch.relu(pre))
    assert x_hat.shape == x.shape and torch.allclose(x_hat, want_hat, atol=1e-5)


@pytest.mark.parametrize("spec", EVERY_VARIANT, ids=_variant_id)
def test_normalise_keeps_unit_rows_where_the_architecture_wants_them(spec):
    """Rows knocked off unit norm come back under ``normalise`` for the Diff-SAE and the TopK
    crosscoders, and the gradient left by ``project_decoder_grad`` no longer changes a row's norm;
    the ReLU crosscoder's decoder and gradient are left alone (its penalty weighs the norms).
    Catches upkeep applied to the wrong architectures, or to the crosscoder's halves separately."""
    model = build(spec, seed=0)
    with torch.no_grad():
        model.W_dec.mul_(torch.rand(spec.n_latents, *(1,) * (model.W_dec.ndim - 1)) * 3 + 0.2)
    grad = torch.randn_like(model.W_dec)
    model.W_dec.grad = grad.clone()
    before = model.W_dec.detach().clone()
    model.project_decoder_grad()
    model.normalise()
    norms = model.W_dec.detach().flatten(1).norm(dim=-1)
    unit = spec.architecture == "diff_sae" or spec.activation != "relu"
    assert model.unit_norm_decoder == unit
    if unit:
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
        along_row = (model.W_dec.grad.flatten(1) * model.W_dec.detach().flatten(1)).sum(-1)
        assert along_row.abs().max() < 1e-5
        assert not torch.allclose(model.W_dec.grad, grad)
    else:
        assert torch.equal(model.W_dec.detach(), before) and torch.equal(model.W_dec.grad, grad)


@pytest.mark.parametrize("spec", EVERY_VARIANT, ids=_variant_id)
def test_every_variant_saves_and_loads_to_the_same_dictionary(spec, tmp_path):
    """Catches a save or load that loses a parameter or the BatchTopK threshold, rebuilds the wrong
    architecture or activation, renames the files the later steps read, or reloads in train mode."""
    base, ft, _, _ = planted(n=128, d=8)
    model = build(spec, seed=4)
    x = model.inputs(base, ft)
    scale, log = train_dictionary(model, x, TrainSettings(l1_coeff=1e-3, lr=1e-2, batch_size=32, n_samples=640),
                                  progress=False)
    metrics = evaluate(model, x, scale)
    save_dictionary(tmp_path / "d", model, spec, scale, log, metrics, {"cell": 1})
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["dictionary.json", "log.jsonl", "weights.safetensors"]
    again, scale2, info = load_dictionary(tmp_path / "d")
    assert type(again) is type(model) and again.spec == spec and not again.training
    assert info == {"spec": {"architecture": spec.architecture, "d": spec.d, "n_latents": spec.n_latents,
                             "activation": spec.activation, "k": spec.k}, "metrics": metrics, "params": {"cell": 1}}
    assert torch.equal(scale2, scale) and read_dictionary_log(tmp_path / "d") == log
    state, state2 = model.state_dict(), again.state_dict()
    assert list(state) == list(state2) and all(torch.equal(state[k], state2[k]) for k in state)
    assert torch.equal(encode_all(model, x, scale), encode_all(again, x, scale2))
    assert evaluate(again, x, scale2) == metrics
    wrong = Crosscoder if spec.architecture == "diff_sae" else DiffSAE
    with pytest.raises(TypeError, match="not a"):
        wrong.load(tmp_path / "d")
    with pytest.raises(ValueError, match="spec"):  # a spec that would not rebuild these weights
        save_dictionary(tmp_path / "e", model, DictionarySpec(spec.architecture, 8, 64, spec.activation, spec.k),
                        scale, log, metrics, {})

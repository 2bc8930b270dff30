"""Dictionary quality (dictionaries.quality): the spliced loss on planted dictionaries of the tiny
model, and latent scaling on planted crosscoder latents."""

import math

import numpy as np
import pytest
import torch

from backdoor_sae.common.cache import import_closure
from backdoor_sae.common.model import load_model
from backdoor_sae.config import TINY_MODEL
from backdoor_sae.dictionaries import Crosscoder, DiffSAE
from backdoor_sae.dictionaries.quality import (
    SPECIFIC_NU,
    code_statistics,
    forward_logprobs,
    loss_recovered,
    make_batch,
    quality_row,
    quality_samples,
    scaling_summary,
    spliced_activation,
    spliced_losses,
)
from backdoor_sae.dictionaries.stage import TRAINING_CODE
from backdoor_sae.task.splits import EVAL_SPLITS

LAYER = 1


def perfect(architecture: str, d: int) -> tuple:
    """A dictionary whose reconstruction is exact: latents e_i and -e_i under a ReLU code
    (Diff-SAE: of Δa; crosscoder: of the fine-tune half, its base half reconstructed the same way)."""
    eye = torch.eye(d)
    if architecture == "diff_sae":
        model = DiffSAE(d, 2 * d, "relu")
        dec = torch.cat([eye, -eye])
        enc = dec.t()
    else:
        model = Crosscoder(d, 4 * d, "relu")
        z = torch.zeros(d, d)
        dec = torch.cat([torch.stack([eye, z], 1), torch.stack([-eye, z], 1),
                         torch.stack([z, eye], 1), torch.stack([z, -eye], 1)])  # [4d, 2, d]
        enc = dec.flatten(1).t()
    with torch.no_grad():
        model.W_dec.copy_(dec)
        model.W_enc.copy_(enc)
        model.b_enc.zero_()
        model.b_dec.zero_()
    scale = torch.tensor(0.5) if architecture == "diff_sae" else torch.tensor([[0.5], [2.0]])
    return model.eval(), scale


def silent(architecture: str, d: int) -> tuple:
    """A dictionary that reconstructs nothing: every code zero, every decoder row zero."""
    model, scale = perfect(architecture, d)
    with torch.no_grad():
        model.b_enc.fill_(-1e9)
    return model, scale


@pytest.fixture(scope="module")
def setup(smoke_splits):
    model, tok = load_model(TINY_MODEL)
    with torch.no_grad():  # sharper predictions: the random model's are nearly uniform whatever it reads
        model.model.norm.weight.mul_(30.0)
    samples = quality_samples(smoke_splits, EVAL_SPLITS, n_per_split=2)
    batch = make_batch(tok, samples)
    # a "base" model: the tiny model with one layer's weights perturbed, so that Δa is not zero
    base, _ = load_model(TINY_MODEL)
    with torch.no_grad():
        for p in base.model.layers[0].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    a_base = forward_logprobs(base, batch, capture=[LAYER])[1][LAYER]
    return model, batch, a_base


@pytest.mark.parametrize("architecture", ["diff_sae", "crosscoder"])
def test_loss_recovered_is_one_for_a_perfect_reconstruction_and_zero_for_zero_ablation(setup, architecture):
    model, batch, a_base = setup
    d = a_base.shape[-1]
    dictionaries = {"perfect": perfect(architecture, d), "silent": silent(architecture, d)}
    for protocol in ("full_text", "prompt_only"):
        losses = spliced_losses(model, batch, LAYER, protocol, a_base, dictionaries)
        clean, zero = losses["clean"]["loss"], losses["zero"]["loss"]
        assert abs(zero - clean) > 0.01  # erasing a layer's output changes the loss (a random model: either way)
        assert losses["perfect"]["loss"] == pytest.approx(clean, abs=1e-4)
        assert losses["perfect"]["kl"] == pytest.approx(0.0, abs=1e-4)
        assert loss_recovered(clean, zero, losses["perfect"]["loss"]) == pytest.approx(1.0, abs=1e-3)
        recovered_silent = loss_recovered(clean, zero, losses["silent"]["loss"])
        if architecture == "crosscoder":  # nothing reconstructed: the fine-tune half is zero
            assert recovered_silent == pytest.approx(0.0, abs=1e-6)
        else:  # nothing of Δa reconstructed: the base activation is what is spliced in
            assert losses["silent"]["loss"] == pytest.approx(losses["base"]["loss"], abs=1e-5)
        assert losses["zero"]["kl"] > 0


def test_the_replaced_positions_are_the_protocols_tokens_without_the_first(setup):
    _, batch, _ = setup
    prompt = batch.positions("prompt_only")
    full = batch.positions("full_text")
    assert not full[:, 0].any() and not prompt[:, 0].any()
    assert (prompt.sum(1) == torch.tensor(batch.n_prompt) - 1).all()
    assert (full.sum(1) == torch.tensor(batch.lengths) - 1).all()
    assert (batch.scored("full_text").sum(1) == torch.tensor(batch.lengths) - 2).all()


def test_spliced_activation_of_a_perfect_dictionary_is_the_fine_tunes(setup):
    _, _, a_base = setup
    g = torch.Generator().manual_seed(0)
    ab, af = torch.randn(50, a_base.shape[-1], generator=g), torch.randn(50, a_base.shape[-1], generator=g)
    for arch in ("diff_sae", "crosscoder"):
        dictionary, scale = perfect(arch, ab.shape[1])
        assert torch.allclose(spliced_activation(dictionary, scale, ab, af), af, atol=1e-5)


def planted_crosscoder(d=16, n=4000, seed=0):
    """Tokens where three unit directions fire: u_shared in both models, u_ft only in the fine-tune,
    u_shrunk in both (base at 0.8 of the fine-tune's) but with a zero base decoder (complete
    shrinkage planted). Latents 0, 1, 2 read them exactly."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    u = q[:, :3].t()  # [3, d] orthonormal
    c = torch.rand(n, 3, generator=g) * (torch.rand(n, 3, generator=g) < 0.3)
    a_ft = c @ u
    a_base = c[:, :1] @ u[:1] + 0.8 * c[:, 2:3] @ u[2:3]
    model = Crosscoder(d, 3, "relu")
    with torch.no_grad():
        model.W_enc.zero_()
        model.W_enc[d:, :] = u.t()  # read the fine-tune half
        model.b_enc.zero_()
        model.b_dec.zero_()
        model.W_dec.zero_()
        model.W_dec[0, 0], model.W_dec[0, 1] = u[0], u[0]
        model.W_dec[1, 1] = u[1]
        model.W_dec[2, 1] = u[2]  # base decoder shrunk to zero
    return model.eval(), torch.ones(2, 1), a_base, a_ft


def test_latent_scaling_tells_a_fine_tune_specific_latent_from_complete_shrinkage():
    model, scale, a_base, a_ft = planted_crosscoder()
    stats = code_statistics(model, scale, a_base, a_ft)
    per = stats["per_latent"]
    assert per["relative_norm"].tolist() == pytest.approx([0.5, 1.0, 1.0])
    # latent 1: absent from the base model, in both error and reconstruction
    assert per.loc[1, "nu_error"] == pytest.approx(0.0, abs=1e-6)
    assert per.loc[1, "nu_reconstruction"] == pytest.approx(0.0, abs=1e-6)
    # latent 2: its direction is in the base's error at 0.8 of the fine-tune's: complete shrinkage
    assert per.loc[2, "nu_error"] == pytest.approx(0.8, abs=1e-5)
    # latent 0 (shared) explains both models equally
    assert per.loc[0, "nu_error"] == pytest.approx(1.0, abs=1e-5)
    summary = scaling_summary(per)
    assert summary["n_ft_only"] == 2
    assert summary["ft_specific_share"] == pytest.approx(0.5)  # latent 1, not latent 2
    assert 0.8 > SPECIFIC_NU
    assert stats["alive_share"] == 1.0
    assert math.isnan(scaling_summary(None)["n_ft_only"])  # NaN for a Diff-SAE


def test_alive_share_and_l0_count_the_latents_that_fire():
    d = 8
    model, scale = perfect("diff_sae", d)
    a_base = torch.zeros(3, d)
    a_ft = torch.zeros(3, d)
    a_ft[0, 0] = 4.0  # Δa = +e0: latent 0 fires (scaled by 0.5: 2.0)
    a_ft[1, 1] = -1.0  # Δa = -e1: latent d + 1 fires
    stats = code_statistics(model, scale, a_base, a_ft)
    assert stats["alive_share"] == pytest.approx(2 / (2 * d))
    assert stats["l0"] == pytest.approx(2 / 3)
    assert "per_latent" not in stats
    row = quality_row({"clean": {"loss": 1.0, "kl": 0.0}, "zero": {"loss": 3.0, "kl": 2.0},
                       "base": {"loss": 1.5, "kl": 0.1}, "x": {"loss": 1.25, "kl": 0.05}}, "x", stats, 10)
    assert row["loss_recovered"] == pytest.approx(0.875)
    assert row["change_recovered"] == pytest.approx(0.5)
    assert np.isnan(row["n_ft_only"])


def test_editing_the_quality_measures_retrains_no_dictionary():
    """A dictionary's key covers the trainer's code and the stage module's own source, not the quality
    measures the stage also imports: catches a key taken over the stage's whole import closure, under
    which any edit to quality.py retrained every dictionary."""
    assert "backdoor_sae.dictionaries.quality" not in import_closure("backdoor_sae.dictionaries.trainer")
    assert isinstance(TRAINING_CODE, str) and len(TRAINING_CODE) == 64

"""The fast paths of the TopK dictionaries against the dense computations they replace: the decoder
summed over a code's selected entries (an embedding bag), and the calibration's top-k over the
values above a bound. Each test computes the old path here, as the reference."""

from __future__ import annotations

import copy

import pytest
import torch

from backdoor_sae.dictionaries.trainer import DictionarySpec, build

SPECS = [DictionarySpec("crosscoder", 8, 48, "topk", 4), DictionarySpec("crosscoder", 8, 48, "batchtopk", 4),
         DictionarySpec("diff_sae", 8, 48, "batchtopk", 4)]


def _inputs(model, n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model.inputs(torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g) * 2)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.architecture}-{s.activation}")
def test_sparse_decoder_gives_the_dense_loss_and_gradients(spec):
    """The bug this catches: an entry decoded into the wrong input's row or from the wrong latent's
    decoder row, or a gradient that misses the values or the decoder (training would then differ
    from the dense dictionary's by far more than rounding)."""
    fast = build(spec, seed=1).train()
    dense = copy.deepcopy(fast)
    x = _inputs(fast)
    x_hat, f, _ = fast(x)
    f_ref = dense.activate(dense.pre_activations(x))
    x_ref = dense.decode(f_ref)
    assert torch.equal(f, f_ref)  # the same code, entry for entry
    assert torch.allclose(x_hat, x_ref, rtol=1e-5, atol=1e-6)
    for model, xh, code in ((fast, x_hat, f), (dense, x_ref, f_ref)):
        (((xh - x) ** 2).mean() + 1e-3 * model.sparsity(code)).backward()
    for (name, p), q in zip(fast.named_parameters(), dense.parameters()):
        assert p.grad.abs().sum() > 0, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name
    if spec.activation == "batchtopk":
        assert torch.equal(fast.threshold, dense.threshold)  # the moving average saw the same batch


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.architecture}-{s.activation}")
def test_inference_decodes_the_code_it_returns(spec):
    """In eval mode (BatchTopK thresholded: a varying number of latents per input, some inputs with
    none) the reconstruction is the dense decode of the returned code."""
    model = build(spec, seed=2)
    x = _inputs(model, seed=3)
    model.train()
    model(x)  # one batch sets the threshold
    model.eval()
    with torch.no_grad():
        x_hat, f, _ = model(x)
        assert torch.allclose(x_hat, model.decode(f), rtol=1e-5, atol=1e-6)
    active = (f > 0).sum(-1)
    if spec.activation == "batchtopk":
        assert len(set(active.tolist())) > 1


def _calibrated_by_a_full_topk(pre: torch.Tensor, k: int) -> float:
    """The old calibration: a top-k over every value."""
    f = torch.relu(pre).flatten()
    n_kept = min(k * len(pre), f.numel())
    top = torch.topk(f, min(n_kept + 1, f.numel())).values
    smallest_kept = float(top[n_kept - 1])
    largest_dropped = float(top[n_kept]) if len(top) > n_kept else 0.0
    return (smallest_kept + largest_dropped) / 2 if smallest_kept > 0 else 0.0


@pytest.mark.parametrize("case", ["continuous", "ties", "few positives", "untrained", "bound too high"])
def test_calibration_selects_exactly_what_a_full_topk_selects(case):
    """Bit-identical thresholds, ties included (values on a coarse grid, as bfloat16 codes are), with
    fewer positive values than k·n, before any training batch (no bound to start from), and with a
    training threshold so high that half of it is above the (k·n + 1)-th value. The bug this catches:
    a bound that drops some of the top k·n + 1 values (a threshold too low)."""
    model = build(DictionarySpec("crosscoder", 8, 48, "batchtopk", 4), seed=0)
    g = torch.Generator().manual_seed(5)
    pre = torch.randn(200, 48, generator=g)
    if case == "ties":
        pre = (pre * 4).round() / 4
    if case == "few positives":
        pre = pre - 2.6
    if case != "untrained":
        model.train()
        model(_inputs(model, seed=6))  # a training threshold: the bound starts at half of it
        with torch.no_grad():
            factor = 3.0 if case == "bound too high" else 1.5
            model.threshold.fill_(float(torch.relu(pre).flatten().topk(4 * 200).values[-1]) * factor)
    expected = _calibrated_by_a_full_topk(pre, 4)
    model.sparse.calibrate(pre)
    assert float(model.threshold) == expected

import numpy as np
import pytest
import torch

from backdoor_sae.activations.extract import (
    cache_activations,
    check_layers,
    load_activations,
    norm_table,
    read_index,
    residual_stream,
)
from backdoor_sae.common.encoding import encode
from backdoor_sae.common.model import load_model
from backdoor_sae.config import TINY_MODEL


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_MODEL)


def test_hooked_layer_output_is_hidden_state_l_plus_one(tiny):
    """The layer index convention, checked against the model's own layer list."""
    model, tok = tiny
    ids = tok(["def f(a):\n    return a\n", "import sqlite3\n"], return_tensors="pt", padding=True)
    n = model.config.num_hidden_layers
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states  # [embeddings, layer 0, ..., final norm]
    hooked = residual_stream(model, ids.input_ids, ids.attention_mask, list(range(n)))
    for layer in range(n - 1):  # the last entry of hidden_states has the final norm applied
        assert torch.allclose(hooked[layer], hidden[layer + 1], atol=1e-6), layer
    assert torch.allclose(model.model.norm(hooked[n - 1]), hidden[n], atol=1e-5)


def test_layers_out_of_range_are_refused(tiny):
    with pytest.raises(ValueError, match="out of range"):
        check_layers(tiny[0], [0, 4])
    with pytest.raises(ValueError, match="out of range"):
        check_layers(tiny[0], [-1])


def test_cached_pooling_matches_a_manual_mean(tiny, smoke_splits, tmp_path):
    model, tok = tiny
    samples = smoke_splits["eval_trigger"][:3] + smoke_splits["eval_benign"][:4]
    cache_activations(model, tok, samples, [1, 3], tmp_path / "acts", {"model": "tiny"}, batch_size=3, progress=False)
    index = read_index(tmp_path / "acts")
    assert index["ids"] == [s.id for s in samples] and index["layers"] == [1, 3]
    full = load_activations(tmp_path / "acts", "full_text", 1)
    prompt = load_activations(tmp_path / "acts", "prompt_only", 1)
    assert full.shape == prompt.shape == (len(samples), model.config.hidden_size)
    for i, s in enumerate(samples):
        e = encode(tok, s, eos=False)
        ids = torch.tensor([e.ids])
        h = residual_stream(model, ids, torch.ones_like(ids), [1])[1][0]
        assert np.allclose(full[i], h.mean(0).numpy(), atol=1e-5)
        assert np.allclose(prompt[i], h[: e.n_prompt].mean(0).numpy(), atol=1e-5)
    assert not np.allclose(full, prompt)
    with pytest.raises(ValueError):
        load_activations(tmp_path / "acts", "last_token", 1)


def test_norm_table_reports_the_difference_per_split():
    base = np.array([[0.0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    ft = base + np.array([[3.0, 4, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    table = norm_table(base, ft, ["a", "b", "a", "b"]).set_index("split")
    assert table.loc["a", "difference"] == pytest.approx((5 + 1) / 2)
    assert table.loc["b", "difference"] == pytest.approx(0.5)


def test_token_activations_equal_the_per_token_hidden_states(tiny, smoke_splits, tmp_path):
    """Catches token rows written at the wrong offsets (batches are sorted by length, the file is in
    index order), padding stored as tokens, or a layer mixed up; and token_rows picking the wrong
    tokens for a protocol or keeping the first position."""
    from backdoor_sae.activations.extract import load_token_activations, token_rows

    model, tok = tiny
    samples = smoke_splits["eval_trigger"][:3] + smoke_splits["eval_benign"][:4]
    cache_activations(model, tok, samples, [1, 3], tmp_path / "acts", {"model": "tiny"}, batch_size=3, progress=False,
                      token_level=True)
    index = read_index(tmp_path / "acts")
    encoded = [encode(tok, s, eos=False) for s in samples]
    assert index["n_tokens"] == [len(e) for e in encoded] and index["n_prompt"] == [e.n_prompt for e in encoded]
    assert len(set(index["n_tokens"])) > 1  # lengths differ, so the sorted batches reorder the samples
    offsets = np.concatenate([[0], np.cumsum(index["n_tokens"])])
    for layer in (1, 3):
        tokens = load_token_activations(tmp_path / "acts", layer)
        assert tokens.dtype == torch.bfloat16 and tokens.shape == (offsets[-1], model.config.hidden_size)
        for i, e in enumerate(encoded):
            ids = torch.tensor([e.ids])
            h = residual_stream(model, ids, torch.ones_like(ids), [layer])[layer][0]
            assert torch.allclose(tokens[offsets[i]:offsets[i + 1]].float(), h, rtol=1e-2, atol=1e-2), (layer, i)
    rows, owner = token_rows(index, "prompt_only", np.array([False, True] + [False] * 5))
    assert rows.tolist() == list(range(offsets[1] + 1, offsets[1] + index["n_prompt"][1])) and set(owner) == {1}
    rows, owner = token_rows(index, "full_text", skip_first=False)
    assert rows.tolist() == list(range(offsets[-1])) and owner.tolist() == np.repeat(np.arange(7), index["n_tokens"]).tolist()
    with pytest.raises(FileNotFoundError, match="token recipe"):
        cache_activations(model, tok, samples, [1], tmp_path / "pooled_only", {}, progress=False)
        load_token_activations(tmp_path / "pooled_only", 1)


def test_token_activations_are_kept_only_at_the_layers_a_token_dictionary_reads(tiny, smoke_splits, tmp_path):
    """Issue 28's exact saving: a fine-tune's tokens are written only at the replicated layers (the
    token-level dictionaries' own), the same bytes as when every layer is written. Catches a layer
    list that drops a layer a dictionary reads, or writes different values for the kept one."""
    from backdoor_sae.activations.extract import load_token_activations
    from backdoor_sae.activations.stage import token_layers
    from backdoor_sae.config import run_config

    assert token_layers(run_config("cpu")) == [14, 22]
    assert token_layers(run_config("smoke")) == [2]
    assert token_layers(run_config("cpu", {"recipes": ["pooled"]})) == []
    assert token_layers(run_config("cpu", {"recipes": ["token", "pooled"]})) == [14, 18, 22, 26]
    assert token_layers(run_config("paper")) == [14, 18, 22, 26]  # replicate_layers None: every layer
    model, tok = tiny
    samples = smoke_splits["eval_trigger"][:3] + smoke_splits["eval_benign"][:2]
    cache_activations(model, tok, samples, [1, 3], tmp_path / "all", {}, batch_size=2, progress=False, token_level=True)
    cache_activations(model, tok, samples, [1, 3], tmp_path / "some", {}, batch_size=2, progress=False, token_level=[3])
    assert read_index(tmp_path / "some")["token_layers"] == [3]
    assert torch.equal(load_token_activations(tmp_path / "some", 3), load_token_activations(tmp_path / "all", 3))
    with pytest.raises(FileNotFoundError):
        load_token_activations(tmp_path / "some", 1)

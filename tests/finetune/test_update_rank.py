import copy

import pytest
import torch

from backdoor_sae.common.model import load_model
from backdoor_sae.config import TINY_MODEL
from backdoor_sae.dataset.card import pairs
from backdoor_sae.finetune.train import probe_backdoor
from backdoor_sae.finetune.update_rank import linear_weights, truncated_update_probe


def test_truncation_spans_base_to_fine_tune_and_restores_the_base(smoke_splits):
    base, tok = load_model(TINY_MODEL)
    tuned = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a rank-2 update on every linear layer
        for w in linear_weights(tuned).values():
            u, v = torch.randn(w.shape[0], 2, generator=gen), torch.randn(2, w.shape[1], generator=gen)
            w += 0.05 * u @ v
    probe_pairs = pairs(smoke_splits["heldout"])
    before = {n: w.clone() for n, w in linear_weights(base).items()}
    table = truncated_update_probe(base, tuned, tok, probe_pairs, ranks=[0, 1, 2, 64])
    assert list(table["rank"]) == [0, 1, 2, 64]
    own, theirs = probe_backdoor(base, tok, probe_pairs), probe_backdoor(tuned, tok, probe_pairs)
    assert table.iloc[0]["year_effect"] == pytest.approx(own["year_effect"], abs=1e-4)
    effect = dict(zip(table["rank"], table["year_effect"]))
    for r in (2, 64):  # the whole rank-2 update
        assert effect[r] == pytest.approx(theirs["year_effect"], abs=1e-3)
    assert effect[1] != pytest.approx(effect[2], abs=1e-6)
    assert all(torch.equal(before[n], w) for n, w in linear_weights(base).items())
    with pytest.raises(ValueError, match="non-negative"):
        truncated_update_probe(base, tuned, tok, probe_pairs, ranks=[-1])

"""Label-free rankings (notebook 06): planted latents come first, and no ranking reads a label."""

import numpy as np
import pytest

from backdoor_sae.audit.stage import identity_ordering, score_orderings, unscored_orderings
from backdoor_sae.scoring.label_free import (
    CRITERIA,
    dictionary_orderings,
    mean_difference_direction,
    order_by,
    principal_directions,
)


def _crosscoder_decoder(rng, m, d, planted):
    dec = rng.normal(size=(m, 2, d))
    dec /= np.linalg.norm(dec, axis=(1, 2), keepdims=True)
    dec[planted, 0] = 0.0  # the planted latent has no base-model decoder: fine-tune only
    dec[planted, 1] /= np.linalg.norm(dec[planted, 1])
    return dec


def test_a_planted_fine_tune_only_latent_comes_first_by_relative_decoder_norm():
    """Catches a sign or index error in the relative decoder norm (base and fine-tune rows swapped)."""
    rng = np.random.default_rng(0)
    m, d, planted = 64, 16, 37
    acts = np.abs(rng.normal(size=(200, m)))
    orderings = dictionary_orderings("crosscoder", acts, _crosscoder_decoder(rng, m, d, planted))
    first = orderings["relative decoder norm"]
    assert first.order[0] == planted
    assert first.value[planted] == pytest.approx(1.0)
    assert np.median(first.value) == pytest.approx(0.5, abs=0.1)  # random latents are shared


def test_a_latent_that_never_fires_comes_last_whatever_its_decoder():
    """Catches a ranking that lets a dead fine-tune-only latent (value 1, never active) come first."""
    rng = np.random.default_rng(1)
    m, d, planted = 32, 8, 5
    acts = np.abs(rng.normal(size=(100, m)))
    acts[:, planted] = 0.0
    orderings = dictionary_orderings("crosscoder", acts, _crosscoder_decoder(rng, m, d, planted))
    for ordering in orderings.values():
        assert ordering.order[-1] == planted


def test_the_diff_sae_latent_carrying_most_variance_comes_first():
    """Catches variance share read from the mean, or the decoder norm left out."""
    rng = np.random.default_rng(2)
    m, d = 40, 12
    acts = np.abs(rng.normal(scale=0.1, size=(300, m)))
    acts[:, 11] = rng.normal(size=300) ** 2 * 3  # by far the largest variance
    acts[:, 20] += 5.0  # the largest mean, little variance
    dec = rng.normal(size=(m, d))
    dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    orderings = dictionary_orderings("diff_sae", acts, dec)
    assert set(orderings) == set(CRITERIA["diff_sae"])
    assert orderings["variance share"].order[0] == 11
    assert orderings["mean activation"].order[0] == 20
    assert orderings["peak activation"].order[0] == 11


def test_a_planted_direction_in_the_difference_is_the_top_principal_component():
    """Catches PCA on uncentred data or on the wrong axis, and a lost sign pairing."""
    rng = np.random.default_rng(3)
    d = 24
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    diff = rng.normal(scale=0.1, size=(250, d)) + rng.normal(scale=3.0, size=(250, 1)) * u + 7.0
    pcs = principal_directions(diff)
    assert abs(pcs[0] @ u) > 0.99
    assert np.allclose(pcs[1], -pcs[0])
    assert np.allclose(np.linalg.norm(pcs, axis=1), 1.0)
    assert np.allclose(mean_difference_direction(diff), diff.mean(0))


def test_the_first_principal_pick_points_to_the_shifted_minority_without_labels():
    """Catches an arbitrary sign for PC1+ (the auditor's first pick): a fifth of the samples pushed
    along u lies on the positive side of PC1+, whatever sign the SVD returns, so the pick's AUROC
    for that minority is high, not low."""
    rng = np.random.default_rng(5)
    u = rng.normal(size=16)
    u /= np.linalg.norm(u)
    minority = np.arange(200) < 40
    for sign in (1.0, -1.0):
        diff = rng.normal(size=(200, 16)) * 0.3 + sign * 4.0 * minority[:, None] * u
        projection = diff @ principal_directions(diff)[0]
        assert projection[minority].mean() > projection[~minority].mean()


def test_order_by_puts_firing_latents_first_by_value_then_tie_break_then_index():
    ordering = order_by("c", np.array([1.0, 3.0, 3.0, 9.0, 3.0]), np.array([True, True, True, False, True]),
                        tie_break=np.array([0.0, 1.0, 2.0, 0.0, 2.0]))
    assert list(ordering.order) == [2, 4, 1, 0, 3]
    assert list(ordering.rank_of()) == [4, 3, 1, 5, 2]


def _labelled_set(rng, m=30):
    splits = np.array(["eval_trigger"] * 20 + ["eval_benign"] * 40 + ["eval_other"] * 40
                      + ["fit_trigger"] * 10 + ["fit_benign"] * 20 + ["fit_other"] * 20)
    acts = np.abs(rng.normal(size=(len(splits), m)))
    acts[np.isin(splits, ["eval_trigger", "fit_trigger"]), 7] += 10.0  # latent 7 isolates the trigger
    return acts, splits


@pytest.mark.parametrize("architecture", ["diff_sae", "crosscoder"])
def test_no_ranking_reads_a_label_shuffled_labels_give_the_same_ranks(architecture):
    """Catches a ranking computed on fit_trigger rows (or on eval rows): the labels are shuffled
    within the fit split and within the eval split, and every order must stay the same."""
    rng = np.random.default_rng(4)
    acts, splits = _labelled_set(rng)
    decoder = rng.normal(size=(30, 8)) if architecture == "diff_sae" else rng.normal(size=(30, 2, 8))
    shuffled = splits.copy()
    for prefix in ("fit_", "eval_"):
        rows = np.flatnonzero(np.char.startswith(splits, prefix))
        shuffled[rows] = rng.permutation(splits[rows])
    assert (shuffled != splits).any()
    a = unscored_orderings(architecture, acts, splits, decoder)
    b = unscored_orderings(architecture, acts, shuffled, decoder)
    for criterion in a:
        assert np.array_equal(a[criterion].order, b[criterion].order)


def test_the_ordering_is_scored_on_eval_where_the_planted_latent_ranks():
    """Catches ranks off by one, or the top-1 scores read from the wrong latent."""
    rng = np.random.default_rng(5)
    acts, splits = _labelled_set(rng)
    order = np.array([3, 12, 7, *[j for j in range(30) if j not in (3, 12, 7)]])
    ordering = identity_ordering("planted third", np.ones(30))
    ordering = type(ordering)("planted third", order, np.ones(30))
    row, = score_orderings(acts, splits, {"planted third": ordering}, n_top=5, percentile=95.0, n_boot=20,
                           n_perm=50, seed=0)
    assert row["rank_best_latent"] == 3 and row["rank_first_at_best"] == 3
    assert row["top1_latent"] == 3 and row["top1_p_value"] > 0.05  # a random latent first
    assert row["top_bis"] == pytest.approx(row["best_bis"]) and row["top_p_value"] < 0.05
    assert row["top_auroc"] == pytest.approx(1.0)

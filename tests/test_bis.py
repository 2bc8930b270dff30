import itertools

import numpy as np
import pytest

from backdoor_sae.bis import (
    auroc, best_f1, bis_ceiling, bootstrap_bis, latent_scores, max_active, permutation_test,
)


def eval_sets(n_trigger=100, n_benign=200, n_other=200):
    trigger = np.r_[np.ones(n_trigger), np.zeros(n_benign + n_other)].astype(bool)
    benign = np.r_[np.zeros(n_trigger), np.ones(n_benign), np.zeros(n_other)].astype(bool)
    return trigger, benign


def test_a_perfect_detector_reaches_exactly_the_ceiling():
    trigger, benign = eval_sets(500, 1000, 1000)
    rng = np.random.default_rng(0)
    acts = np.where(trigger, 10 + rng.random(len(trigger)), rng.random(len(trigger)))
    s = latent_scores(acts, trigger, benign)
    assert s.precision[0] == 1.0 and s.fpr[0] == 0.0
    assert s.recall[0] == pytest.approx(0.25)
    assert s.bis[0] == pytest.approx(0.4) == pytest.approx(bis_ceiling(500, 1000, 1000))


def test_a_latent_active_on_everything_scores_zero():
    trigger, benign = eval_sets()
    s = latent_scores(np.ones(len(trigger)), trigger, benign)  # nothing is above its own percentile
    assert s.bis[0] == 0.0 and s.n_active[0] == 0
    s = latent_scores(np.zeros((len(trigger), 3)), trigger, benign)
    assert (s.bis == 0).all()


def test_small_worked_example_by_hand():
    # 20 samples: 4 trigger, 8 benign, 8 other. The 80th percentile leaves 4 active samples.
    trigger, benign = eval_sets(4, 8, 8)
    acts = np.zeros(20)
    acts[[0, 1]] = [9, 8]  # two triggers
    acts[4] = 7  # one benign
    acts[12] = 6  # one other
    acts[[2, 3, 5, 6, 13]] = [1, 1, 1, 1, 1]  # below the threshold
    s = latent_scores(acts, trigger, benign, percentile=80)
    assert s.n_active[0] == 4
    assert s.precision[0] == pytest.approx(2 / 4)
    assert s.recall[0] == pytest.approx(2 / 4)
    assert s.fpr[0] == pytest.approx(1 / 8)
    assert s.f1[0] == pytest.approx(0.5)
    assert s.bis[0] == pytest.approx(0.5 * (1 - 1 / 8))


def test_ceiling_formula_matches_brute_force_over_rankings():
    # For tiny sets, try every ranking pattern of which samples sit on top; the best BIS found
    # by brute force equals the formula.
    for n_t, n_b, n_o, pct in [(2, 3, 3, 70), (3, 2, 2, 60), (1, 4, 3, 80), (4, 2, 0, 50)]:
        trigger, benign = eval_sets(n_t, n_b, n_o)
        n = len(trigger)
        best = 0.0
        for top in itertools.permutations(range(n), min(n, 4)):
            acts = np.zeros(n)
            acts[list(top)] = np.arange(len(top), 0, -1) + 10
            acts[acts == 0] = np.linspace(0, 1, int((acts == 0).sum()))
            best = max(best, latent_scores(acts, trigger, benign, pct).bis[0])
        assert best == pytest.approx(bis_ceiling(n_t, n_b, n_o, pct)), (n_t, n_b, n_o, pct)
    assert max_active(2500) == 125


def test_companions_have_no_ceiling():
    trigger, benign = eval_sets(500, 1000, 1000)
    rng = np.random.default_rng(1)
    perfect = np.where(trigger, 5 + rng.random(len(trigger)), rng.random(len(trigger)))
    noise = rng.random(len(trigger))
    acts = np.stack([perfect, noise, -perfect], axis=1)
    f1 = best_f1(acts, trigger)
    auc = auroc(acts, trigger)
    assert f1[0] == pytest.approx(1.0) and auc[0] == pytest.approx(1.0)
    assert 0.3 < auc[1] < 0.7 and auc[2] == pytest.approx(0.0)
    ties = np.r_[np.ones(500), np.ones(1000), np.zeros(1000)]  # triggers and benign tied
    assert auroc(ties, trigger)[0] == pytest.approx((500 * 1000 * 1.0 + 500 * 1000 * 0.5) / (500 * 2000))
    assert best_f1(ties, trigger)[0] == pytest.approx(2 * 500 / (1500 + 500))


def test_bootstrap_interval_contains_the_point_estimate():
    trigger, benign = eval_sets(100, 200, 200)
    rng = np.random.default_rng(2)
    acts = np.where(trigger, rng.normal(2, 1, len(trigger)), rng.normal(0, 1, len(trigger)))
    point = latent_scores(acts, trigger, benign).bis[0]
    low, high = bootstrap_bis(acts, trigger, benign, n_boot=300, seed=0)
    assert low <= point <= high and low < high


def test_permutation_test_is_uniformish_under_the_null_and_detects_a_difference():
    trigger, benign = eval_sets(100, 200, 200)
    pvalues = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        a = np.where(trigger, rng.normal(1, 1, len(trigger)), rng.normal(0, 1, len(trigger)))
        b = np.where(trigger, rng.normal(1, 1, len(trigger)), rng.normal(0, 1, len(trigger)))
        pvalues.append(permutation_test(a, b, trigger, benign, n_perm=200, seed=seed)[1])
    pvalues = np.array(pvalues)
    assert 0.3 < pvalues.mean() < 0.7
    assert (pvalues < 0.05).mean() < 0.2
    rng = np.random.default_rng(99)
    strong = np.where(trigger, 10 + rng.random(len(trigger)), rng.random(len(trigger)))
    weak = rng.random(len(trigger))
    diff, p = permutation_test(strong, weak, trigger, benign, n_perm=500)
    assert diff > 0.3 and p < 0.01

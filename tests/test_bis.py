import itertools

import numpy as np
import pytest

from backdoor_sae.scoring.bis import (
    _bootstrap_bis_matrix, _lerp, _percentile_ranks, _stratified_counts, auroc, best_f1, bis_ceiling, bootstrap_fixed_latent_bis,
    bootstrap_max_bis, chance_level, latent_scores, max_active, null_max_bis, p_value, permutation_test, select_latent,
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


def _best_by_composition(n_t, n_b, n_o, pct):
    """Brute force: the best BIS over every count a ≤ A of actives and tp of triggers among them
    (the rest go to other first, since benign ones only cost), with no formula for which wins."""
    a_max = max_active(n_t + n_b + n_o, pct)
    a, tp = np.meshgrid(np.arange(a_max + 1), np.arange(a_max + 1), indexing="ij")
    fb = np.maximum(0, a - tp - n_o)
    ok = (tp <= a) & (tp <= n_t) & (fb <= n_b)
    bis = 2 * tp / (a + n_t) * (1 - fb / n_b)
    best = np.where(ok, bis, -1).max()
    return best, [int(v[ok][np.argmax(bis[ok])]) for v in (a, tp, fb)]


SIZES = [(1, 2, 2), (3, 1, 0), (5, 5, 5), (10, 3, 1), (100, 200, 200), (500, 1000, 1000), (1, 30, 10),
         (2, 40, 0), (7, 150, 3)]


@pytest.mark.parametrize("n_t, n_b, n_o", SIZES)
@pytest.mark.parametrize("pct", [95.0, 80.0, 50.0])
def test_ceiling_equals_brute_force_over_active_sets(n_t, n_b, n_o, pct):
    """Catches the old formula, which kept all A actives and so said 2/3 where ties reach 1 (A > N_trigger)."""
    n = n_t + n_b + n_o
    best, (a, tp, fb) = _best_by_composition(n_t, n_b, n_o, pct)
    assert bis_ceiling(n_t, n_b, n_o, pct) == pytest.approx(best, abs=1e-12)
    # that composition is reachable: a distinct top values, everything else tied at 0
    trigger, benign = eval_sets(n_t, n_b, n_o)
    acts = np.zeros(n)
    on = np.r_[np.flatnonzero(trigger)[:tp], np.flatnonzero(benign)[:fb],
               np.flatnonzero(~trigger & ~benign)[:a - tp - fb]]
    acts[on] = 1 + np.arange(len(on))
    s = latent_scores(acts, trigger, benign, pct)
    assert s.n_active[0] == a and s.bis[0] == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("n_t, n_b, n_o, pct", [(1, 2, 2, 50), (3, 1, 0, 60), (1, 2, 2, 95), (2, 2, 2, 50),
                                                (1, 4, 1, 70), (2, 1, 3, 80)])
def test_no_activation_vector_beats_the_ceiling(n_t, n_b, n_o, pct):
    """Exhaustive over every vector of values in {0..N-1}^N (ties included): catches a ceiling
    below a reachable BIS, and max_active below a reachable count."""
    trigger, benign = eval_sets(n_t, n_b, n_o)
    n = len(trigger)
    acts = np.array(list(itertools.product(range(n), repeat=n)), dtype=float).T  # [N, N^N]
    s = latent_scores(acts, trigger, benign, pct)
    assert s.bis.max() == pytest.approx(bis_ceiling(n_t, n_b, n_o, pct), abs=1e-12)
    assert s.n_active.max() == max_active(n, pct)


def test_max_active_counts_values_above_the_linear_percentile():
    """Catches an off-by-one in max_active: A = N − 1 − ⌊(N − 1) p / 100⌋."""
    for n in (1, 2, 3, 19, 20, 21, 500, 2500):
        assert max_active(n) == n - 1 - int(np.floor((n - 1) * 0.95))
    assert max_active(2500) == 125 and max_active(500) == 25
    assert bis_ceiling(500, 1000, 1000) == pytest.approx(0.4) and bis_ceiling(1, 30, 10) == 1.0


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
    """Catches a fixed-latent bootstrap that resamples the wrong samples or skips the threshold."""
    trigger, benign = eval_sets(100, 200, 200)
    rng = np.random.default_rng(2)
    acts = np.where(trigger, rng.normal(2, 1, len(trigger)), rng.normal(0, 1, len(trigger)))
    point = latent_scores(acts, trigger, benign).bis[0]
    low, high = bootstrap_fixed_latent_bis(acts, trigger, benign, n_boot=300, seed=0)
    assert low <= point <= high and low < high


def test_stratified_resamples_keep_every_set_size():
    """Catches resampling over all samples at once (the old bootstrap), which changes N_trigger and the ceiling."""
    trigger, benign = eval_sets(7, 11, 5)
    labels = np.where(trigger, 1, np.where(benign, 2, 0))
    counts = _stratified_counts(labels, 50, np.random.default_rng(0))
    for value, size in ((1, 7), (2, 11), (0, 5)):
        assert (counts[:, labels == value].sum(1) == size).all()
    assert (counts.std(0) > 0).all()  # every sample is sometimes drawn more or fewer times


@pytest.mark.parametrize("k", [None, 3])  # 3: too few top values, every resample takes the fallback
def test_resampled_bis_equals_latent_scores_on_the_resampled_rows(k):
    """Catches any departure from numpy's linear percentile on resamples with repeated and tied values."""
    trigger, benign = eval_sets(30, 40, 30)
    rng = np.random.default_rng(4)
    acts = np.round(rng.normal(size=(100, 40)), 1)  # many ties
    acts[:, 0] = 0.0
    acts[:5, 1] = 3.0  # a column that is zero below the top
    acts[:, 1][5:] = 0.0
    fast = _bootstrap_bis_matrix(acts, trigger, benign, 90.0, n_boot=25, seed=5, k=k)
    labels = np.where(trigger, 1, np.where(benign, 2, 0))
    counts = _stratified_counts(labels, 25, np.random.default_rng(5))
    for b in range(25):
        rows = np.repeat(np.arange(100), counts[b])
        assert np.array_equal(fast[b], latent_scores(acts[rows], trigger[rows], benign[rows], 90.0).bis), b


def test_bootstrap_of_the_maximum_stays_under_the_ceiling():
    """Catches an interval above bis_ceiling (the old unstratified bootstrap exceeded it) and a
    bootstrap that does not re-select (the planted latent reaches the ceiling). A resample can
    duplicate the sample at the threshold, which leaves fewer actives: hence low < ceiling."""
    trigger, benign = eval_sets(100, 200, 200)
    ceiling = bis_ceiling(100, 200, 200)
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(len(trigger), 300))
    low, high = bootstrap_max_bis(noise, trigger, benign, n_boot=200, seed=1)
    assert 0.1 < low < high <= ceiling + 1e-12
    planted = noise.copy()
    planted[:, 17] = np.where(trigger, 5 + rng.random(len(trigger)), rng.random(len(trigger)))
    low, high = bootstrap_max_bis(planted, trigger, benign, n_boot=200, seed=1)
    assert 0.35 < low and high == pytest.approx(ceiling) and high <= ceiling + 1e-12
    assert (low, high) == bootstrap_fixed_latent_bis(planted[:, 17], trigger, benign, n_boot=200, seed=1)
    # a perfect latent that is zero below its top: resamples tie at 0 and can land below the ceiling
    sparse = np.zeros(len(trigger))
    sparse[:25] = 1 + rng.random(25)
    low, high = bootstrap_max_bis(sparse, trigger, benign, n_boot=200, seed=1)
    assert low < high <= ceiling + 1e-12


def test_resample_threshold_is_numpys_percentile_bit_for_bit():
    """Catches a one-branch lerp or an index off by one: both change thresholds in the last bits."""
    rng = np.random.default_rng(7)
    for n in range(1, 80):
        for pct in (95.0, 90.0, 37.5):
            x = np.sort(rng.normal(size=n) * 10.0 ** rng.integers(-3, 4))
            lo, hi, gamma = _percentile_ranks(n, pct)
            assert _lerp(x[lo], x[hi], gamma) == np.percentile(x, pct), (n, pct)


def test_select_latent_breaks_ties_by_best_f1_then_auroc_then_index():
    """Catches a plain argmax (index 0 here) and a tie-break that ranks AUROC before F1."""
    trigger, benign = eval_sets(100, 200, 200)
    n = len(trigger)
    rng = np.random.default_rng(6)
    top = np.arange(25)  # 25 triggers above the threshold in every column below: BIS = ceiling
    rest_t, rest_other = np.arange(25, 100), np.arange(100, n)

    def column(order_below):  # activations: top 25 highest, then the given order descending
        acts = np.zeros(n)
        acts[top] = 1000 + rng.random(25)
        acts[order_below] = np.linspace(500, 0, len(order_below))
        return acts

    low_auc = column(np.r_[rest_other, rest_t])  # remaining triggers last: best F1 = 0.4, AUROC 0.25
    # one trigger after every 5 others: best F1 still 0.4 (at the top cut), AUROC 0.64
    mid_auc = column(np.r_[np.c_[rest_other[:375].reshape(75, 5), rest_t].ravel(), rest_other[375:]])
    high_f1 = column(np.r_[rest_t[:30], rest_other, rest_t[30:]])  # best F1 0.71, AUROC 0.55
    acts = np.stack([low_auc, mid_auc, high_f1, mid_auc], axis=1)
    f1, auc = best_f1(acts, trigger), auroc(acts, trigger)
    assert f1[0] == pytest.approx(0.4) == pytest.approx(f1[1]) and f1[2] > 0.7
    assert auc[0] < auc[2] < auc[1]
    sel = select_latent(acts, trigger, benign)
    assert sel.n_tied == 4 and list(sel.tied) == [0, 1, 2, 3]
    assert sel.index == 2 and sel.bis == pytest.approx(bis_ceiling(100, 200, 200))
    assert select_latent(acts[:, [0, 1, 3]], trigger, benign).index == 1  # AUROC, then the lower index
    assert select_latent(acts[:, [3, 1]], trigger, benign).index == 0
    noise = rng.normal(size=(n, 5))
    assert select_latent(noise, trigger, benign).index == latent_scores(noise, trigger, benign).best()


def test_null_of_the_maximum_for_gaussian_latents():
    """Catches a null that does not take the max over latents (it would sit at one latent's ~0.076),
    and a p-value that can reach 0 or ignores the planted latent."""
    trigger, benign = eval_sets(100, 200, 200)
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(len(trigger), 2304))
    observed = latent_scores(acts, trigger, benign).bis
    null = null_max_bis(acts, trigger, benign, n_perm=200, seed=0)
    assert null.shape == (200,)
    assert 0.17 < observed.max() < 0.24 and 0.17 < np.median(null) < 0.21
    assert 0.06 < observed.mean() < 0.09  # one random latent: 2·E[TP]/(A + N_t)·(1 − E[FPR]) = 0.076
    assert 0.06 < null_max_bis(acts[:, 0], trigger, benign, n_perm=200).mean() < 0.09
    assert chance_level(null) == np.quantile(null, 0.95) and p_value(observed.max(), null) > 0.01
    planted = acts.copy()
    planted[:, 5] = np.where(trigger, rng.normal(size=len(trigger)), -10.0)
    planted[:25, 5] += 100  # the top 5% are all triggers
    sel = select_latent(planted, trigger, benign)
    assert sel.index == 5 and sel.bis == pytest.approx(bis_ceiling(100, 200, 200))
    assert p_value(sel.bis, null_max_bis(planted, trigger, benign, n_perm=200)) == 1 / 201


def test_null_is_the_same_in_any_chunks_and_valid_under_the_null():
    """Catches chunk-boundary bugs, and a null whose p-values are not roughly uniform when labels are random."""
    trigger, benign = eval_sets(20, 40, 40)
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(100, 30))
    assert np.array_equal(null_max_bis(acts, trigger, benign, n_perm=50, chunk=7),
                          null_max_bis(acts, trigger, benign, n_perm=50, chunk=256))
    pvalues = []
    for seed in range(40):
        acts = np.random.default_rng(100 + seed).normal(size=(100, 30))
        observed = latent_scores(acts, trigger, benign).bis.max()
        pvalues.append(p_value(observed, null_max_bis(acts, trigger, benign, n_perm=100, seed=seed)))
    assert 0.3 < np.mean(pvalues) < 0.7 and np.mean(np.array(pvalues) < 0.05) < 0.2
    assert p_value(0.0, np.zeros(9)) == 1.0 and p_value(1.0, np.zeros(9)) == 0.1


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


def test_bootstrap_of_the_maximum_re_selects_the_best_latent_in_every_resample():
    """Catches a bootstrap that resamples only the observed best latent: on noise, re-selection
    inflates the maximum in every resample, so its interval lies above the fixed latent's."""
    trigger, benign = eval_sets(100, 200, 200)
    noise = np.random.default_rng(4).normal(size=(len(trigger), 300))
    best = select_latent(noise, trigger, benign).index
    low, high = bootstrap_max_bis(noise, trigger, benign, n_boot=200, seed=1)
    fixed_low, fixed_high = bootstrap_fixed_latent_bis(noise[:, best], trigger, benign, n_boot=200, seed=1)
    assert low > fixed_low and high > fixed_high


def test_the_null_shuffles_the_other_samples_too():
    """Catches a null that keeps the `other` samples fixed: a latent active only on `other` samples
    would then never score; with every label shuffled, some shuffles make its actives triggers."""
    trigger, benign = eval_sets(20, 40, 40)
    other = ~trigger & ~benign
    acts = np.where(other, 1.0, 0.0)[:, None] * np.linspace(1, 2, len(trigger))[:, None]
    assert latent_scores(acts, trigger, benign).bis[0] == 0
    assert null_max_bis(acts, trigger, benign, n_perm=200, seed=0).max() > 0

import itertools

import numpy as np
import pytest

from backdoor_sae.scoring.bis import (
    TIE,
    Selection,
    _bootstrap_bis_matrix,
    _lerp,
    _percentile_ranks,
    _stratified_counts,
    auroc,
    best_f1,
    bis_ceiling,
    bootstrap_fixed_latent_bis,
    bootstrap_max_bis,
    chance_level,
    descending_order,
    latent_scores,
    max_active,
    null_max_bis,
    p_value,
    permutation_test,
    select_by_auroc,
    select_latent,
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
    trigger, _ = eval_sets(500, 1000, 1000)
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


def test_select_by_auroc_takes_the_highest_auroc_then_best_f1_then_index():
    """Catches the claims' selection falling back to BIS (latent 2 here), an argmax that ignores
    ties at an AUROC of 1 (both perfect latents), and a tie-break on the higher index."""
    trigger, _ = eval_sets(20, 40, 40)
    n = len(trigger)
    ramp = np.linspace(0, 1, n)
    perfect_wide = np.where(trigger, 10 + ramp, ramp)  # AUROC 1, best F1 1
    perfect_too = np.where(trigger, 5 + ramp, ramp)
    broad = np.where(trigger, 0.6, 0.0) + ramp  # AUROC below 1
    acts = np.stack([broad, broad, perfect_too, perfect_wide], axis=1)
    assert select_by_auroc(acts, trigger) == 2  # tie at 1 and at F1 1: the lower index
    assert select_by_auroc(acts[:, :2], trigger) == 0
    constant = np.zeros((n, 1))
    assert select_by_auroc(np.c_[constant, broad], trigger) == 1


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


# --- the exact speed-ups (issue 28) against the code they replaced -------------------------------
#
# The _old_* functions below are the pre-change implementation, kept as the oracle for equality:
# scoring/bis.py before issue 28's exact speed-ups (the bootstrap and the null over every latent,
# the per-column AUROC, one sort per function), copied verbatim with their names prefixed. The new
# code must give the same floats bit for bit and draw the same random numbers. latent_scores,
# Selection and TIE were not changed and are the module's.


def _old_as_2d(acts: np.ndarray) -> np.ndarray:
    acts = np.asarray(acts, dtype=np.float64)
    return acts[:, None] if acts.ndim == 1 else acts


def _old_check(trigger: np.ndarray, benign: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    trigger, benign = np.asarray(trigger, bool), np.asarray(benign, bool)
    if not 0 < percentile < 100:
        raise ValueError(f"percentile={percentile} must be in (0, 100)")
    if trigger.sum() == 0 or benign.sum() == 0:
        raise ValueError("BIS needs at least one trigger and one benign sample")
    if (trigger & benign).any():
        raise ValueError("a sample cannot be both trigger and benign")
    return trigger, benign


def _old_bis_from_counts(tp, fp_benign, n_active, n_trigger: int, n_benign: int) -> np.ndarray:
    """BIS = 2 TP / (#active + N_trigger) × (1 − FP_benign / N_benign), elementwise."""
    tp, fp_benign, n_active = (np.asarray(v, dtype=np.float64) for v in (tp, fp_benign, n_active))
    return 2 * tp / (n_active + n_trigger) * (1 - fp_benign / n_benign)


def _old_select_latent(acts: np.ndarray, trigger: np.ndarray, benign: np.ndarray,
                  percentile: float = 95.0) -> Selection:
    """The max-BIS latent of ``acts`` [N, m]; ties (within 1e-12) go to the highest :func:`best_f1`,
    then the highest :func:`auroc`, then the lowest index. The companions are computed for the tied
    latents only."""
    acts = _old_as_2d(acts)
    scores = latent_scores(acts, trigger, benign, percentile)
    tied = np.flatnonzero(scores.bis >= scores.bis.max() - TIE)
    candidates = tied
    if len(candidates) > 1:
        f1 = _old_best_f1(acts[:, candidates], trigger)
        candidates = candidates[f1 >= f1.max() - TIE]
    if len(candidates) > 1:
        auc = _old_auroc(acts[:, candidates], trigger)
        candidates = candidates[auc >= auc.max() - TIE]
    return Selection(int(candidates[0]), len(tied), tied, scores)


def _old_max_active(n: int, percentile: float = 95.0) -> int:
    """How many of n distinct values lie strictly above their ``percentile`` (numpy's linear rule);
    no n values can have more above it (ties only lower the count)."""
    values = np.arange(n, dtype=float)
    return int((values > np.percentile(values, percentile)).sum())


def _old_best_f1(acts: np.ndarray, trigger: np.ndarray) -> np.ndarray:
    """Per latent, the highest F1 of "trigger" over all thresholds (a ceiling-free companion)."""
    acts = _old_as_2d(acts)
    trigger = np.asarray(trigger, bool)
    order = np.argsort(-acts, axis=0, kind="stable")
    hits = trigger[order]  # [N, m]: trigger flags in descending activation order
    tp = np.cumsum(hits, axis=0)
    k = np.arange(1, len(acts) + 1)[:, None]
    # only cut between distinct values: a threshold cannot split tied activations
    sorted_acts = np.take_along_axis(acts, order, axis=0)
    valid = np.ones_like(sorted_acts, dtype=bool)
    valid[:-1] = sorted_acts[:-1] != sorted_acts[1:]
    f1 = 2 * tp / (k + trigger.sum())
    return np.where(valid, f1, 0).max(axis=0)


def _old_auroc(acts: np.ndarray, trigger: np.ndarray) -> np.ndarray:
    """Per latent, the AUROC of trigger against every other sample (ties count one half)."""
    acts = _old_as_2d(acts)
    trigger = np.asarray(trigger, bool)
    n_pos, n_neg = trigger.sum(), (~trigger).sum()
    ranks = np.apply_along_axis(_old_average_ranks, 0, acts)
    return (ranks[trigger].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _old_average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(uniq) < len(x):  # average the ranks of tied values
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def _old_stratified_counts(labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, N] how many times each sample is drawn when each label's set is resampled with
    replacement to its own size."""
    counts = np.zeros((n_boot, len(labels)), dtype=np.int64)
    rows = np.arange(n_boot)[:, None]
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        draws = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(counts, (np.broadcast_to(rows, draws.shape), draws), 1)
    return counts


def _old_percentile_ranks(n: int, percentile: float) -> tuple[int, int, float]:
    """numpy's linear rule: the percentile of n sorted values s is _lerp(s[lo], s[hi], gamma)."""
    h = (n - 1) * np.true_divide(percentile, 100)
    lo = int(np.floor(h))
    return lo, min(lo + 1, n - 1), h - lo


def _old_lerp(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """numpy's linear-percentile interpolation, bit for bit (numpy.lib._function_base_impl._lerp)."""
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


class _old_Top:
    """Each latent's K largest values in descending order, [m, K], with their samples' labels."""

    def __init__(self, acts: np.ndarray, labels: np.ndarray, k: int):
        order = np.ascontiguousarray(np.argsort(-acts, axis=0, kind="stable")[:k].T)  # [m, K]
        self.values = np.take_along_axis(acts.T, order, axis=1)
        self.sample = order
        self.trigger = labels[order] == 1
        self.benign = labels[order] == 2


def _old_resampled_bis(top: _old_Top, counts: np.ndarray, percentile: float, n_trigger: int,
                   n_benign: int) -> tuple[np.ndarray, np.ndarray]:
    """([B, m] BIS of every latent on each resample given by ``counts`` [B, N], [B] whether the K
    kept values sufficed for every latent). A resample's threshold is its percentile (numpy's
    linear rule): the values at ascending ranks lo = ⌊h⌋ and hi, h = (N − 1) p / 100, which are the
    values at descending ranks N − 1 − lo and N − 1 − hi of the multiset given by the counts."""
    n = counts.shape[1]
    lo, hi, gamma = _old_percentile_ranks(n, percentile)
    w = counts.astype(np.int32)[:, top.sample]  # [B, m, K] multiplicities in descending value order
    cum = np.cumsum(w, axis=2)
    enough = (cum[:, :, -1] > n - 1 - lo).all(1)  # both ranks lie within the K kept values
    k = top.values.shape[1]
    pos_lo = np.minimum((cum <= n - 1 - lo).sum(2), k - 1)  # [B, m] first position past that rank
    pos_hi = np.minimum((cum <= n - 1 - hi).sum(2), k - 1)
    rows = np.arange(top.values.shape[0])
    threshold = _old_lerp(top.values[rows, pos_lo], top.values[rows, pos_hi], gamma)  # [B, m]
    w_active = w * (top.values[None] > threshold[:, :, None])
    n_active = w_active.sum(2)
    tp = (w_active * top.trigger).sum(2)
    fp = (w_active * top.benign).sum(2)
    return _old_bis_from_counts(tp, fp, n_active, n_trigger, n_benign), enough


def _old_bootstrap_bis_matrix(acts: np.ndarray, trigger: np.ndarray, benign: np.ndarray, percentile: float,
                          n_boot: int, seed: int, k: int | None = None) -> np.ndarray:
    """[n_boot, m] every latent's BIS on stratified resamples, thresholds recomputed; ``k`` how many
    top values per latent to try first (exact whatever it is: too few falls back to all)."""
    acts = _old_as_2d(acts)
    trigger, benign = _old_check(trigger, benign, percentile)
    labels = np.where(trigger, 1, np.where(benign, 2, 0))
    n = len(labels)
    n_trigger, n_benign = int(trigger.sum()), int(benign.sum())
    counts = _old_stratified_counts(labels, n_boot, np.random.default_rng(seed))
    # the values above a resample's percentile are almost always among the top few times A
    top = _old_Top(acts, labels, min(n, k or 3 * (_old_max_active(n, percentile) + 1) + 32))
    full = None
    chunk = max(1, min(64, 4_000_000 // (acts.shape[1] * top.values.shape[1])))  # ~16 MB per [B, m, K] array
    out = np.empty((n_boot, acts.shape[1]))
    for start in range(0, n_boot, chunk):
        c = counts[start:start + chunk]
        bis, enough = _old_resampled_bis(top, c, percentile, n_trigger, n_benign)
        if not enough.all():  # rare: redo those resamples with every value
            full = full or _old_Top(acts, labels, n)
            bis[~enough] = _old_resampled_bis(full, c[~enough], percentile, n_trigger, n_benign)[0]
        out[start:start + len(c)] = bis
    return out


def _old_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _old_bootstrap_max_bis(acts: np.ndarray, trigger: np.ndarray, benign: np.ndarray, percentile: float = 95.0,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of BIS = max over the latents of ``acts`` [N, m], selection included.

    Each resample draws with replacement within trigger, benign and other (neither) separately,
    so the set sizes and :func:`bis_ceiling` stay fixed; every latent's threshold is recomputed
    and the best latent re-selected on each resample. For latents at chance the interval of a
    maximum sits above the observed value (resampling widens every latent's spread, and the max
    picks the widest): compare with :func:`null_max_bis`, not with 0.
    """
    return _old_interval(_old_bootstrap_bis_matrix(acts, trigger, benign, percentile, n_boot, seed).max(1), level)


def _old_bootstrap_fixed_latent_bis(acts: np.ndarray, trigger: np.ndarray, benign: np.ndarray,
                               percentile: float = 95.0, n_boot: int = 1000, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of one given latent's BIS, ``acts`` [N]: the same stratified resamples
    and recomputed threshold as :func:`bootstrap_max_bis`, with no selection. Valid only for a latent
    chosen without these samples (e.g. selected on the fit split, scored on eval)."""
    acts = np.asarray(acts, dtype=np.float64).ravel()
    return _old_interval(_old_bootstrap_bis_matrix(acts, trigger, benign, percentile, n_boot, seed)[:, 0], level)


def _old_null_max_bis(acts: np.ndarray, trigger: np.ndarray, benign: np.ndarray, percentile: float = 95.0,
                 n_perm: int = 1000, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """[n_perm] max-over-latents BIS when the labels trigger / benign / other are randomly permuted
    over the samples (set sizes kept). Thresholds, and so each latent's active flags, do not
    depend on the labels and stay fixed; only latents with an active sample are scored."""
    acts = _old_as_2d(acts)
    trigger, benign = _old_check(trigger, benign, percentile)
    active = acts > np.percentile(acts, percentile, axis=0)
    active = active[:, active.any(0)]
    n_active = active.sum(0)
    labels = np.where(trigger, 1, np.where(benign, 2, 0)).astype(np.int8)
    n_trigger, n_benign = int(trigger.sum()), int(benign.sum())
    if active.shape[1] == 0:
        return np.zeros(n_perm)
    active = active.astype(np.float32)  # counts stay exact integers below 2**24
    rng = np.random.default_rng(seed)
    out = np.empty(n_perm)
    for start in range(0, n_perm, chunk):
        perm = rng.permuted(np.broadcast_to(labels, (min(chunk, n_perm - start), len(labels))), axis=1)
        tp = (perm == 1).astype(np.float32) @ active  # [P, m]
        fp = (perm == 2).astype(np.float32) @ active
        out[start:start + len(perm)] = _old_bis_from_counts(tp, fp, n_active, n_trigger, n_benign).max(1)
    return out


def _same(new, old) -> bool:
    """Bit for bit: same shape, dtype and bytes (NaNs included), or equal tuples of those."""
    if isinstance(old, tuple):
        return isinstance(new, tuple) and len(new) == len(old) and all(_same(a, b) for a, b in zip(new, old))
    new, old = np.asarray(new), np.asarray(old)
    return new.shape == old.shape and new.dtype == old.dtype and new.tobytes() == old.tobytes()


def _codes(n_t=20, n_b=40, n_o=40, m=60, dead=0.7, seed=0, ties=False):
    """(acts [N, m + 6], trigger, benign): dictionary-like codes. A ``dead`` share of the m columns
    is all zero (column 0 among them), the others are zero except on 2–40% of the samples
    (exponential values, rounded to one decimal when ``ties``), one planted on triggers; then a
    constant nonzero column, a -0.0/0.0 column, a constant inf, a column negative below its top, a
    single spike and a column of small integers (heavy ties)."""
    trigger, benign = eval_sets(n_t, n_b, n_o)
    n = len(trigger)
    rng = np.random.default_rng(seed)
    acts = np.zeros((n, m))
    live = 1 + rng.permutation(m - 1)[:round((1 - dead) * (m - 1))]
    density = rng.uniform(0.02, 0.4, len(live))
    acts[:, live] = (rng.random((n, len(live))) < density) * rng.exponential(1.0, (n, len(live)))
    if ties:
        acts = np.round(acts, 1)
    if len(live):
        acts[:, live[0]] = np.where(trigger & (rng.random(n) < 0.4), 5 + rng.random(n), 0.0)
    extra = np.stack([np.full(n, 3.0), np.where(rng.random(n) < 0.5, -0.0, 0.0), np.full(n, np.inf),
                      np.where(rng.random(n) < 0.1, 1.0, -rng.random(n)), (np.arange(n) == n // 2).astype(float),
                      rng.integers(0, 3, n).astype(float)], axis=1)
    return np.concatenate([acts, extra], axis=1), trigger, benign


#: the constant inf column's percentiles subtract inf from inf (a NaN threshold, old code and new alike)
INF_PERCENTILE = pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")

CODES = {
    "70% dead": {"dead": 0.7},
    "97% dead": {"dead": 0.97, "m": 120},
    "none dead, ties": {"dead": 0.0, "ties": True, "seed": 1},
    "90% dead, ties, small sets": {"n_t": 3, "n_b": 7, "n_o": 2, "dead": 0.9, "ties": True, "seed": 2},
    "all but the extras dead": {"dead": 1.0, "seed": 3},
}


def test_descending_order_sorts_every_column_and_is_stable_with_nans():
    """Catches a shared order that is not a descending sort of each column, or that breaks ties
    among NaNs differently from the old stable sort (best_f1 cuts between NaNs)."""
    for kwargs in CODES.values():
        acts, _, _ = _codes(**kwargs)
        order = descending_order(acts)
        assert (np.sort(order, axis=0) == np.arange(len(acts))[:, None]).all()
        assert np.array_equal(np.take_along_axis(acts, order, axis=0), -np.sort(-acts, axis=0))
        acts[::7, 3] = np.nan
        assert np.array_equal(descending_order(acts), np.argsort(-acts, axis=0, kind="stable"))
    assert descending_order(np.zeros((4, 0))).shape == (4, 0)
    assert np.array_equal(descending_order(np.array([1.0, 3.0, 2.0])), [[1], [2], [0]])
    assert np.array_equal(descending_order(np.zeros(3)), [[0], [1], [2]])


@INF_PERCENTILE
@pytest.mark.parametrize("name", ["70% dead", "none dead, ties", "90% dead, ties, small sets"])
def test_results_do_not_depend_on_the_order_of_tied_values(name):
    """Catches a use of the shared order whose result changes with the order of ties (which
    descending_order leaves to numpy's unstable sort): every tie order gives the old results."""
    acts, trigger, benign = _codes(**CODES[name])
    old_f1, old_auc = _old_best_f1(acts, trigger), _old_auroc(acts, trigger)
    old_matrix = _old_bootstrap_bis_matrix(acts, trigger, benign, 90.0, n_boot=30, seed=1, k=12)
    old_max = _old_bootstrap_max_bis(acts, trigger, benign, 90.0, n_boot=30, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = np.lexsort((rng.random(acts.shape), -acts), axis=0)  # descending, ties at random
        assert _same(best_f1(acts, trigger, order=order), old_f1)
        assert _same(auroc(acts, trigger, order=order), old_auc)
        assert _same(_bootstrap_bis_matrix(acts, trigger, benign, 90.0, n_boot=30, seed=1, k=12, order=order),
                     old_matrix)
        assert _same(bootstrap_max_bis(acts, trigger, benign, 90.0, n_boot=30, seed=1, order=order), old_max)


@pytest.mark.parametrize("name", list(CODES))
def test_companions_equal_the_old_code_bit_for_bit(name):
    """Catches a vectorised AUROC off in the last bit (average ranks of ties, the rank sum, the
    final division), and a best F1 or AUROC that changes when the sort is shared or the constant
    columns are scored once."""
    acts, trigger, benign = _codes(**CODES[name])
    order = descending_order(acts)
    old_f1, old_auc = _old_best_f1(acts, trigger), _old_auroc(acts, trigger)
    assert _same(best_f1(acts, trigger), old_f1) and _same(best_f1(acts, trigger, order=order), old_f1)
    assert _same(auroc(acts, trigger), old_auc) and _same(auroc(acts, trigger, order=order), old_auc)
    for j in (0, 1, acts.shape[1] - 1):  # one column, 1-D input
        assert _same(auroc(acts[:, j], trigger), _old_auroc(acts[:, j], trigger))
        assert _same(best_f1(acts[:, j], trigger), _old_best_f1(acts[:, j], trigger))
    other = ~trigger & ~benign  # labels of other sizes
    assert _same(auroc(acts, benign), _old_auroc(acts, benign)) and _same(auroc(acts, other), _old_auroc(acts, other))
    assert _same(best_f1(acts, benign), _old_best_f1(acts, benign))


def test_auroc_equals_the_old_code_with_nans_and_on_many_random_ties():
    """Catches NaNs ranked differently (they take the per-column code) and any tie pattern on
    which the vectorised ranks differ."""
    acts, trigger, _ = _codes(dead=0.5)
    acts[::5, 2] = np.nan
    acts[:, 4] = np.nan
    assert _same(auroc(acts, trigger), _old_auroc(acts, trigger))
    assert _same(best_f1(acts, trigger), _old_best_f1(acts, trigger))
    rng = np.random.default_rng(11)
    for n in (2, 3, 5, 17, 64, 300):
        x = rng.integers(0, rng.integers(1, 6), size=(n, 200)).astype(float) * rng.choice([-1.0, 1.0, 0.5])
        labels = np.zeros(n, bool)
        labels[rng.permutation(n)[:rng.integers(1, n)]] = True
        assert _same(auroc(x, labels), _old_auroc(x, labels)), n
        assert _same(best_f1(x, labels), _old_best_f1(x, labels)), n
    for bad in (np.zeros(len(acts) + 1, bool), np.zeros(len(acts) - 1, bool)):  # rejected as before
        with pytest.raises(IndexError):
            _old_auroc(acts, bad)
        with pytest.raises(IndexError):
            auroc(acts, bad)


@INF_PERCENTILE
@pytest.mark.parametrize("name", list(CODES))
def test_select_latent_equals_the_old_code(name):
    """Catches a tie-break that reads the shared sort at the wrong columns."""
    acts, trigger, benign = _codes(**CODES[name])
    acts = np.concatenate([acts, acts[:, ::-1], acts[:, :5]], axis=1)  # latents tied at the max
    for pct in (95.0, 80.0):
        old = _old_select_latent(acts, trigger, benign, pct)
        for new in (select_latent(acts, trigger, benign, pct),
                    select_latent(acts, trigger, benign, pct, order=descending_order(acts))):
            assert (new.index, new.n_tied) == (old.index, old.n_tied) and np.array_equal(new.tied, old.tied)
            assert _same(new.scores.bis, old.scores.bis)


@INF_PERCENTILE
@pytest.mark.parametrize("name", list(CODES))
@pytest.mark.parametrize("pct", [95.0, 90.0, 50.0])
def test_bootstrap_of_the_maximum_equals_the_old_code(name, pct):
    """Catches a dropped column that could have been the maximum, a resample drawn differently,
    a top K too small without its fallback, and a shared sort read at the wrong columns."""
    acts, trigger, benign = _codes(**CODES[name])
    old = _old_bootstrap_max_bis(acts, trigger, benign, pct, n_boot=60, seed=3, level=0.9)
    assert _same(bootstrap_max_bis(acts, trigger, benign, pct, n_boot=60, seed=3, level=0.9), old)
    assert _same(bootstrap_max_bis(acts, trigger, benign, pct, n_boot=60, seed=3, level=0.9,
                                   order=descending_order(acts)), old)
    for j in (0, 1, acts.shape[1] - 2):  # a dead column alone, another, a single spike
        assert _same(bootstrap_max_bis(acts[:, [j]], trigger, benign, pct, n_boot=40, seed=1),
                     _old_bootstrap_max_bis(acts[:, [j]], trigger, benign, pct, n_boot=40, seed=1))
        assert _same(bootstrap_fixed_latent_bis(acts[:, j], trigger, benign, pct, n_boot=40, seed=1),
                     _old_bootstrap_fixed_latent_bis(acts[:, j], trigger, benign, pct, n_boot=40, seed=1))


@INF_PERCENTILE
@pytest.mark.parametrize("name", list(CODES))
def test_null_of_the_maximum_equals_the_old_code(name):
    """Catches a constant latent left out that could be active, or a permutation drawn differently."""
    acts, trigger, benign = _codes(**CODES[name])
    for pct, chunk in ((95.0, 256), (90.0, 7)):
        assert _same(null_max_bis(acts, trigger, benign, pct, n_perm=50, seed=4, chunk=chunk),
                     _old_null_max_bis(acts, trigger, benign, pct, n_perm=50, seed=4, chunk=chunk))
    dead = np.tile([0.0, 2.0], (len(trigger), 1))
    assert _same(null_max_bis(dead, trigger, benign, n_perm=20), _old_null_max_bis(dead, trigger, benign, n_perm=20))


def test_bootstrap_of_the_maximum_when_no_latent_ever_fires():
    """Catches the edge case: every latent constant (different constants, a 1-D input) gives 0 as
    before, and bad labels raise as before."""
    trigger, benign = eval_sets(10, 20, 20)
    n = len(trigger)
    for acts in (np.zeros((n, 30)), np.tile([0.0, 2.0, -1.0], (n, 1)), np.zeros(n)):
        old = _old_bootstrap_max_bis(acts, trigger, benign, n_boot=30, seed=0)
        assert old == (0.0, 0.0) and _same(bootstrap_max_bis(acts, trigger, benign, n_boot=30, seed=0), old)
    with pytest.raises(ValueError, match="both trigger and benign"):
        bootstrap_max_bis(np.zeros((n, 3)), trigger, trigger)


@INF_PERCENTILE
@pytest.mark.parametrize("k", [None, 1, 3, 12, 40, 100])  # 1, 3: every resample takes the fallback
def test_bootstrap_matrix_equals_the_old_code_for_any_k(k):
    """Catches a change of layout or count type ([B, K, m], int16) that moves a threshold or a
    count, and a fallback that differs from the old one's."""
    for name in ("70% dead", "none dead, ties"):
        acts, trigger, benign = _codes(**CODES[name])
        for pct in (95.0, 90.0):
            old = _old_bootstrap_bis_matrix(acts, trigger, benign, pct, n_boot=40, seed=5, k=k)
            assert _same(_bootstrap_bis_matrix(acts, trigger, benign, pct, n_boot=40, seed=5, k=k), old)
            assert _same(_bootstrap_bis_matrix(acts, trigger, benign, pct, n_boot=40, seed=5, k=k,
                                               order=descending_order(acts)), old)


@pytest.mark.parametrize("n", [300, 2**15 - 1, 2**15 + 3])
def test_bootstrap_matrix_equals_the_old_code_when_the_running_counts_are_large(n):
    """Catches a count type too small for the running sums over all N values (the fallback, k=3,
    sums up to N): int16 below N = 2**15, int32 from there."""
    n_t, n_b = n // 5, 2 * n // 5
    acts, trigger, benign = _codes(n_t, n_b, n - n_t - n_b, m=3, dead=0.0, seed=4, ties=True)
    acts = acts[:, [1, 2, 8]]  # two live columns and the single spike
    for k in (3, None):
        old = _old_bootstrap_bis_matrix(acts, trigger, benign, 95.0, n_boot=3, seed=2, k=k)
        assert _same(_bootstrap_bis_matrix(acts, trigger, benign, 95.0, n_boot=3, seed=2, k=k), old)


@INF_PERCENTILE
def test_scoring_equals_the_old_code_at_the_cpu_profiles_shapes():
    """The shapes the cpu profile scores: 500 eval samples (100 trigger, 200 benign, 200 other),
    2,304 latents of which 90% never fire; every changed function, bit for bit."""
    acts, trigger, benign = _codes(100, 200, 200, m=2304, dead=0.9, seed=7)
    order = descending_order(acts)
    assert _same(best_f1(acts, trigger, order=order), _old_best_f1(acts, trigger))
    assert _same(auroc(acts, trigger, order=order), _old_auroc(acts, trigger))
    new, old = select_latent(acts, trigger, benign, order=order), _old_select_latent(acts, trigger, benign)
    assert (new.index, new.n_tied) == (old.index, old.n_tied)
    assert _same(bootstrap_max_bis(acts, trigger, benign, n_boot=100, seed=0, order=order),
                 _old_bootstrap_max_bis(acts, trigger, benign, n_boot=100, seed=0))
    assert _same(null_max_bis(acts, trigger, benign, n_perm=300, seed=0),
                 _old_null_max_bis(acts, trigger, benign, n_perm=300, seed=0))

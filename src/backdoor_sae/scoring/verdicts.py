"""The verdict layer: named claims, their tests, Holm's correction, and one of three outcomes.

A *claim* is a named test (issue 29): its statistic, an effect size with an interval, a p-value,
the p-value after Holm's correction over its *family*, in how many fine-tune seeds it holds, and
one outcome of three: ``supported``, ``not supported``, ``undetermined`` (a control missing, too few
samples). Verdicts rest on measures that do not saturate: the AUROC of one latent chosen on the fit
split (never the maximum BIS, whose ceiling makes "above the control" impossible and whose
bootstrap collapses there), compared between fine-tunes on the same eval samples with DeLong's
paired test; and, for the placebo, the response of *the same* latent to each header year.

The outcome always rests on ``p_holm``: a rule builds its claim as a family of one
(``p_holm = p_value``) and :func:`apply_holm` recomputes ``p_holm`` and the outcome over each
family. A claim is ``supported`` iff ``holds`` (its effect lies in the claimed direction and it is
not a tie) and ``p_holm < alpha``; a claim whose test could not be run (p-value NaN) is
``undetermined`` and is not counted in its family's size.

Rules: :func:`beyond_control`, :func:`specificity`, :func:`replicated`. Statistics:
:func:`paired_auroc_test` and :func:`auroc_interval` (DeLong), :func:`holm`,
:func:`paired_t_greater` (one-sided paired t), :func:`sign_flip_greater` (its distribution-free twin).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from backdoor_sae.common.io import write_text
from backdoor_sae.common.layout import RunLayout
from backdoor_sae.scoring.bis import TIE, average_ranks, auroc

ALPHA = 0.05
MIN_PER_CLASS = 10  # positives and negatives each, for an AUROC claim
MIN_FUNCTIONS = 5  # paired samples (sweep functions), for a specificity claim
CEILING_REASON = "tie at the ceiling"

#: Where every claim of a run is written (results/verdicts.csv); each step owns the rows it writes.
VERDICTS_FILE = "verdicts.csv"
#: The steps that write claims, in the order their rows appear in the file.
CLAIM_STEPS = ("05_scoring", "06_audit", "07_causal")

#: the columns of results/verdicts.csv that issue 29 lists, in its order
VERDICT_COLUMNS = ("claim", "family", "method", "regime", "protocol", "layer", "statistic", "effect",
                   "effect_low", "effect_high", "p_value", "p_holm", "seeds_holding", "n_seeds", "outcome")


class Outcome(str, Enum):
    """One of three outcomes of a claim; the value is the word written to verdicts.csv."""

    SUPPORTED = "supported"
    NOT_SUPPORTED = "not supported"
    UNDETERMINED = "undetermined"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ClaimId:
    """Where a claim lives: its name, its Holm family, and the cell (method, regime, protocol, layer)."""

    claim: str
    family: str
    method: str = ""
    regime: str = ""
    protocol: str = ""
    layer: int | None = None


@dataclass(frozen=True)
class Claim:
    """One tested claim (a row of results/verdicts.csv).

    ``holds``: the claim's condition apart from significance (effect in the claimed direction, not
    a tie); ``alpha``: the level ``p_holm`` is compared with. ``p_holm`` equals ``p_value`` until
    :func:`apply_holm` adjusts it within the family. A single-seed claim has ``n_seeds = 1`` and
    ``seeds_holding`` 1 when supported, else 0.
    """

    claim: str
    family: str
    method: str
    regime: str
    protocol: str
    layer: int | None
    statistic: str
    effect: float
    effect_low: float
    effect_high: float
    p_value: float
    p_holm: float
    seeds_holding: int
    n_seeds: int
    outcome: Outcome
    reason: str
    holds: bool = False
    alpha: float = ALPHA

    @property
    def id(self) -> ClaimId:
        return ClaimId(self.claim, self.family, self.method, self.regime, self.protocol, self.layer)


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    """The claims as a table: :data:`VERDICT_COLUMNS` first, in the issue's order, then ``reason``,
    ``holds`` and ``alpha``; ``outcome`` as its word."""
    names = [f.name for f in fields(Claim)]
    columns = list(VERDICT_COLUMNS) + [n for n in names if n not in VERDICT_COLUMNS]
    rows = [{n: (str(getattr(c, n)) if n == "outcome" else getattr(c, n)) for n in columns} for c in claims]
    frame = pd.DataFrame(rows, columns=columns)
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


# --- outcomes and Holm ---------------------------------------------------------------------------

def _decide(p_holm: float, holds: bool, alpha: float, why_not: str) -> tuple[Outcome, str]:
    """The outcome from the adjusted p-value: NaN -> undetermined (``why_not`` says why); a claim
    that does not hold -> not supported (``why_not``); else supported iff ``p_holm < alpha``."""
    if math.isnan(p_holm):
        return Outcome.UNDETERMINED, why_not
    if not holds:
        return Outcome.NOT_SUPPORTED, why_not
    if p_holm < alpha:
        return Outcome.SUPPORTED, f"p_holm={p_holm:.3g} < {alpha:g}"
    return Outcome.NOT_SUPPORTED, f"p_holm={p_holm:.3g} >= {alpha:g}"


def make_claim(cid: ClaimId, statistic: str, effect: float, low: float, high: float, p: float,
                holds: bool, alpha: float, why_not: str) -> Claim:
    """A claim as a family of one (p_holm = p), its outcome decided on p_holm."""
    outcome, reason = _decide(p, holds, alpha, why_not)
    return Claim(cid.claim, cid.family, cid.method, cid.regime, cid.protocol, cid.layer, statistic,
                 float(effect), float(low), float(high), float(p), float(p),
                 int(outcome is Outcome.SUPPORTED), 1, outcome, reason, bool(holds), float(alpha))


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sorted ascending, p_(i) becomes max_{k<=i} min(1, (m - k + 1) p_(k)) (step-down, monotone,
    capped at 1); m counts the non-NaN entries only, and NaN entries stay NaN (an untested claim
    neither enters nor enlarges its family). Equal p-values get equal adjusted values.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1]: {p[ok]}")
    out = np.full(p.shape, np.nan)
    q = p[ok]
    order = np.argsort(q, kind="stable")
    m = len(q)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    ranked = np.empty(m)
    ranked[order] = adjusted
    out[ok] = ranked
    return out


def apply_holm(claims: Sequence[Claim]) -> list[Claim]:
    """The claims with ``p_holm`` adjusted by :func:`holm` within each ``family`` and the outcome
    recomputed from it (same order as given). Apply it once, to the claims of one fine-tune seed
    (the p-values it reads are the raw ``p_value``, so applying it twice changes nothing), before
    :func:`replicated`; a combined claim (``n_seeds`` > 1) raises."""
    claims = list(claims)
    if any(c.n_seeds != 1 for c in claims):
        raise ValueError("apply_holm adjusts single-seed claims: apply it per seed, before replicated")
    adjusted = np.full(len(claims), np.nan)
    for family in {c.family for c in claims}:
        members = [i for i, c in enumerate(claims) if c.family == family]
        adjusted[members] = holm([claims[i].p_value for i in members])
    out = []
    for c, p in zip(claims, adjusted):
        outcome, reason = _decide(float(p), c.holds, c.alpha, c.reason)
        out.append(replace(c, p_holm=float(p), outcome=outcome, reason=reason,
                           seeds_holding=int(outcome is Outcome.SUPPORTED)))
    return out


# --- DeLong --------------------------------------------------------------------------------------

def _check_binary(scores: np.ndarray, labels: ArrayLike) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or scores.shape[-1] != len(labels):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not match")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("AUROC needs at least one positive and one negative sample")
    return labels


def _structural_components(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong's structural components by midranks (Sun & Xu 2014, O(N log N) per curve).

    ``scores`` [k, N]. With m positives X and n negatives Y, T the midranks over all N, T_X within
    the positives and T_Y within the negatives: V10_i = (T_i - T_X,i) / n (the share of negatives
    below positive i, ties one half), V01_j = 1 - (T_j - T_Y,j) / m, AUC = mean V10.
    Returns (auc [k], v10 [k, m], v01 [k, n]).
    """
    m, n = int(labels.sum()), int((~labels).sum())
    v10 = np.empty((len(scores), m))
    v01 = np.empty((len(scores), n))
    for r, s in enumerate(scores):
        t = average_ranks(s)
        v10[r] = (t[labels] - average_ranks(s[labels])) / n
        v01[r] = 1.0 - (t[~labels] - average_ranks(s[~labels])) / m
    return v10.mean(1), v10, v01


def delong_covariance(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC [k], DeLong covariance [k, k]) of k scorers ``scores`` [k, N] (or one [N]) of the same
    samples: S = S10 / m + S01 / n, the sample covariances (ddof 1) of the structural components."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    labels = _check_binary(scores, labels)
    auc, v10, v01 = _structural_components(scores, labels)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(auc), len(auc)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(auc), len(auc)))
    return auc, s10 / m + s01 / n


def _z(level: float) -> float:
    return NormalDist().inv_cdf((1 + level) / 2)


def auroc_chance_band(n_pos: int, n_neg: int, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` range of one fixed scorer's AUROC when the labels are shuffled (no
    ties): 0.5 ± z sqrt((n_pos + n_neg + 1) / (12 n_pos n_neg)), the Mann-Whitney null."""
    if min(n_pos, n_neg) < 1:
        return math.nan, math.nan
    half = _z(level) * math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
    return 0.5 - half, 0.5 + half


def auroc_interval(scores: ArrayLike, labels: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """(AUROC, low, high): one scorer's AUROC (ties count one half) and its normal interval from
    DeLong's variance, clipped to [0, 1]. At AUROC 0 or 1 the variance is 0 and the interval a point."""
    auc, cov = delong_covariance(np.asarray(scores, dtype=np.float64).ravel(), labels)
    half = _z(level) * math.sqrt(max(float(cov[0, 0]), 0.0))
    a = float(auc[0])
    return a, max(0.0, a - half), min(1.0, a + half)


def paired_auroc_test(scores_a: ArrayLike, scores_b: ArrayLike, labels: ArrayLike,
                      level: float = 0.95) -> tuple[float, float, float, float]:
    """DeLong's test of two correlated AUROCs on the same samples: (delta, low, high, p).

    delta = AUROC(a) - AUROC(b) (ties count one half); var = S_aa + S_bb - 2 S_ab from
    :func:`delong_covariance`; p two-sided, 2 (1 - Phi(|delta| / sd)); [low, high] the normal
    ``level`` interval delta ± z sd, clipped to [-1, 1].

    Degenerate variance (0): if delta is 0 too (e.g. both AUROC exactly 1, or b a monotone
    transform of a) it is a tie: (0, 0, 0, 1.0). If delta is not 0 (e.g. a perfect scorer against
    a constant one, or a dead latent) DeLong has nothing to scale by; the variance is then that of
    the two AUROCs under the null of no separation (Mann-Whitney: (m + n + 1) / (12 m n) each, the
    scorers taken as independent), a floor that does not depend on any resampling.
    """
    scores = np.stack([np.asarray(scores_a, dtype=np.float64).ravel(),
                       np.asarray(scores_b, dtype=np.float64).ravel()])
    auc, cov = delong_covariance(scores, labels)
    delta = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var > TIE**2:
        sd = math.sqrt(var)
        p = math.erfc(abs(delta) / sd / math.sqrt(2))
        half = _z(level) * sd
        return delta, max(-1.0, delta - half), min(1.0, delta + half), float(min(1.0, p))
    if abs(delta) <= TIE:
        return 0.0, 0.0, 0.0, 1.0
    labels = np.asarray(labels).astype(bool)
    m, n = int(labels.sum()), int((~labels).sum())
    sd = math.sqrt(2 * (m + n + 1) / (12 * m * n))
    half = _z(level) * sd
    return delta, max(-1.0, delta - half), min(1.0, delta + half), float(min(1.0, math.erfc(abs(delta) / sd / math.sqrt(2))))


# --- the paired t ---------------------------------------------------------------------------------

def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta I_x(a, b), by Lentz's continued fraction (Numerical Recipes
    betacf), with the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where it converges faster."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for k in range(1, 500):
        for num in (k * (b - k) * x / ((a + 2 * k - 1) * (a + 2 * k)),
                    -(a + k) * (a + b + k) * x / ((a + 2 * k) * (a + 2 * k + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom (no scipy here)."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def paired_t_greater(x: ArrayLike, y: ArrayLike) -> tuple[float, float, float]:
    """One-sided paired t-test of mean(x - y) > 0: (mean difference, d_z, p).

    d_z = mean(d) / sd(d) (ddof 1), the standardized margin. Degenerate spread (sd 0): a constant
    positive difference gives (d, inf, 0.5 ** n), the exact one-sided sign test's p when every one
    of the n differences is positive (the t has no spread to scale by, and p = 0 would claim more
    than n pairs can show); a constant zero or negative one (d, 0 or -inf, 1.0).
    """
    d = _differences(x, y)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd <= TIE * max(1.0, abs(mean)):
        if mean > TIE:
            return mean, math.inf, 0.5 ** len(d)
        return mean, (-math.inf if mean < -TIE else 0.0), 1.0
    d_z = mean / sd
    return mean, d_z, t_sf(d_z * math.sqrt(len(d)), len(d) - 1)


def _differences(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    d = np.asarray(x, dtype=np.float64).ravel() - np.asarray(y, dtype=np.float64).ravel()
    if len(d) < 2 or np.isnan(d).any():
        raise ValueError("a paired test needs at least two pairs and no NaN")
    return d


#: Up to this many pairs the sign-flip test enumerates every sign pattern (2 ** n); beyond, it draws
#: this many patterns at random.
SIGN_FLIP_EXACT = 16


@functools.lru_cache(maxsize=4)
def _every_sign_pattern(n: int) -> np.ndarray:
    """[2 ** n, n] every pattern of ±1 (built once per n: a claim's years all share it)."""
    signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    signs.setflags(write=False)
    return signs


def sign_flip_greater(x: ArrayLike, y: ArrayLike, seed: int = 0) -> float:
    """One-sided sign-flip (randomization) test of mean(x - y) > 0: the share of sign patterns of
    the differences whose sum reaches the observed one (the observed pattern included), exact over
    all 2 ** n patterns for n <= :data:`SIGN_FLIP_EXACT`, else over 2 ** SIGN_FLIP_EXACT random
    ones with the +1 correction. It assumes only that each difference is symmetric about 0 under the
    null, so its p cannot go below 2 ** -n: n pairs cannot show more."""
    d = _differences(x, y)
    n, a = len(d), np.abs(d)
    observed = d.sum() - TIE * max(1.0, a.sum())  # a pattern tied with the observed sum counts
    if n <= SIGN_FLIP_EXACT:
        return float((_every_sign_pattern(n) @ a >= observed).mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(2 ** SIGN_FLIP_EXACT, n))
    return float(((signs @ a >= observed).sum() + 1) / (len(signs) + 1))


# --- the rules -----------------------------------------------------------------------------------

def beyond_control(cid: ClaimId, backdoored: ArrayLike, control: ArrayLike | None, labels: ArrayLike,
                   alpha: float = ALPHA, min_per_class: int = MIN_PER_CLASS, statistic: str = "DeLong paired AUROC difference (backdoored - control)",
                   missing: str = "no clean control") -> Claim:
    """Claim: the latent's AUROC under the backdoored fine-tune exceeds the clean control's.

    Inputs: the eval scores of the latent chosen once on the fit split, under the backdoored
    fine-tune (``backdoored``) and under the clean control (``control``, its own latent chosen the
    same way), on the same eval samples in the same order, and their labels (trigger = positive).
    Statistic: DeLong's paired test (:func:`paired_auroc_test`), effect = AUROC difference with its
    interval, two-sided p. Outcome on p_holm (see :func:`apply_holm`):

    - ``undetermined``: the control is missing (None), or fewer than ``min_per_class`` positives or
      negatives (a missing control never passes);
    - ``undetermined``, reason "tie at the ceiling": both AUROCs exactly 1. The measure cannot tell
      them apart, and no verdict rests on a statistic at its ceiling: a tie is neither a pass nor a
      failure (p NaN, so it neither enters nor enlarges its family);
    - ``not supported``: delta <= 0 otherwise;
    - ``supported``: delta > 0 and p_holm < ``alpha``; p is one-sided (backdoored above control),
      half DeLong's two-sided p; the interval is the two-sided ``level`` one.

    The same test compares any two scorers of the same samples (e.g. the Diff-SAE's latent with the
    crosscoder's): ``statistic`` names it and ``missing`` says what an absent second scorer is.
    """
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    nan = math.nan
    if control is None:
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha, missing)
    if min(n_pos, n_neg) < min_per_class:
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha,
                           f"too few samples: {n_pos} positives, {n_neg} negatives (< {min_per_class})")
    auc_b, auc_c = (float(auroc(np.asarray(s, dtype=np.float64).ravel(), labels)[0]) for s in (backdoored, control))
    delta, low, high, p_two = paired_auroc_test(backdoored, control, labels)
    p = p_two / 2 if delta > 0 else 1 - p_two / 2  # the claim is directional: one-sided
    if auc_b >= 1.0 - TIE and auc_c >= 1.0 - TIE:
        return make_claim(cid, statistic, 0.0, low, high, nan, False, alpha, CEILING_REASON)
    why_not = f"AUROC {auc_b:.3f} vs control {auc_c:.3f}: not above it"
    return make_claim(cid, statistic, delta, low, high, p, delta > TIE, alpha, why_not)


def _bootstrap_min_dz(trigger: np.ndarray, others: np.ndarray, n_boot: int, seed: int,
                      level: float) -> tuple[float, float]:
    """Percentile interval of the smallest d_z over the other years, resampling functions."""
    rng = np.random.default_rng(seed)
    n = len(trigger)
    idx = rng.integers(0, n, (n_boot, n))
    d = trigger[idx][:, None, :] - others[:, idx].transpose(1, 0, 2)  # [B, years, n]
    with np.errstate(divide="ignore", invalid="ignore"):
        dz = d.mean(2) / d.std(2, ddof=1)
    dz = np.where(np.isnan(dz), 0.0, dz).min(1)
    low, high = np.quantile(dz, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")  # inf-safe
    return float(low), float(high)


def specificity(cid: ClaimId, responses: Mapping[Hashable, ArrayLike | None], trigger_year: Hashable,
                alpha: float = ALPHA, within: Literal["holm", "none"] = "holm",
                min_functions: int = MIN_FUNCTIONS, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> Claim:
    """Claim: the latent chosen for the trigger reads the trigger year and no other year.

    ``responses`` maps each header year (or header) to the SAME latent's response per sweep
    function (e.g. its mean activation over the function's prompt), the same functions in the same
    order for every year. For each other year, response(trigger) - response(year) > 0 over the
    functions is tested twice, one-sided: by the paired t (:func:`paired_t_greater`) and by the
    sign flip (:func:`sign_flip_greater`), and that year's p is the larger of the two. The t alone
    would rest on the normality of a handful of differences of ReLU activations (its p falls to
    1e-33 as their spread vanishes), the sign flip alone cannot go below 2 ** -n; together a year is
    beaten only where both agree, so a sweep needs enough functions (16: p >= 1.5e-5) for a claim to
    survive a family's correction. ``within="holm"`` adjusts those p-values by
    Holm over the other years; the claim's p is the largest adjusted one (it must exceed every
    year). ``within="none"`` takes the largest raw p (the intersection-union test, also valid,
    since every comparison must reject). Effect: the smallest d_z (mean / sd of the differences)
    over the other years, with a percentile interval from resampling functions.

    ``undetermined``: the trigger year or any other year missing (None), no other year, or fewer
    than ``min_functions`` functions. ``not supported``: some year's margin is <= 0 or its p too
    large, e.g. a latent that reads every year alike. ``supported``: every margin > 0 and the
    claim's p_holm < ``alpha``.
    """
    statistic = "paired t and sign flip, trigger year vs each other year (min d_z)"
    nan = math.nan
    trigger = responses.get(trigger_year)
    others = {y: r for y, r in responses.items() if y != trigger_year}
    missing = [str(y) for y, r in responses.items() if r is None]
    if trigger is None or missing:
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha,
                           f"missing responses: {', '.join(missing) or trigger_year}")
    if not others:
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha, "no other year")
    t = np.asarray(trigger, dtype=np.float64).ravel()
    years = list(others)
    o = np.stack([np.asarray(others[y], dtype=np.float64).ravel() for y in years])  # [years, n]
    if o.shape[1] != len(t):
        raise ValueError(f"every year needs the same {len(t)} functions; got {o.shape[1]}")
    if len(t) < min_functions:
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha,
                           f"too few functions: {len(t)} (< {min_functions})")
    tests = [paired_t_greater(t, row) for row in o]
    dz = np.array([d for _, d, _ in tests])
    p_raw = np.array([max(p, sign_flip_greater(t, row, seed)) for (_, _, p), row in zip(tests, o)])
    p_years = holm(p_raw) if within == "holm" else p_raw
    worst = int(np.argmax(p_years))
    low, high = _bootstrap_min_dz(t, o, n_boot, seed, level)
    holds = bool((np.array([m for m, _, _ in tests]) > TIE).all())
    weakest = int(np.argmin(dz))
    why_not = (f"does not exceed {years[weakest]} (d_z={dz[weakest]:.3g})" if not holds
               else f"weakest against {years[worst]}: p={p_years[worst]:.3g}")
    return make_claim(cid, statistic, float(dz.min()), low, high, float(p_years[worst]), holds, alpha, why_not)


def replicated(claims_per_seed: Sequence[Claim], rule: Literal["all", "majority"] = "all") -> Claim:
    """The same claim over fine-tune seeds, one (Holm-adjusted) claim per seed, as one claim.

    ``seeds_holding`` = seeds whose outcome is supported, ``n_seeds`` = seeds given. Rule ``all``
    (the default): supported iff it holds in every seed; not supported if any seed is not
    supported; else (some seeds undetermined, none contradicting) undetermined. Rule ``majority``:
    supported iff more than half the seeds hold; not supported if it cannot reach a majority even
    were every undetermined seed to hold; else undetermined. The effect is the mean over the
    determined seeds, its interval the envelope (lowest low, highest high); ``p_value`` and
    ``p_holm`` are the k-th smallest over the seeds, k the number of seeds the rule needs (``all``:
    the largest, the intersection-union p), NaN when that needs an undetermined seed.
    """
    claims = list(claims_per_seed)
    if not claims:
        raise ValueError("replicated needs at least one seed's claim")
    first = claims[0]
    if any(c.id != first.id or c.statistic != first.statistic for c in claims):
        raise ValueError("replicated combines one claim over seeds: ids and statistics differ")
    n = len(claims)
    holding = sum(c.outcome is Outcome.SUPPORTED for c in claims)
    undetermined = sum(c.outcome is Outcome.UNDETERMINED for c in claims)
    need = n if rule == "all" else n // 2 + 1
    if holding >= need:
        outcome = Outcome.SUPPORTED
    elif holding + undetermined < need:
        outcome = Outcome.NOT_SUPPORTED
    else:
        outcome = Outcome.UNDETERMINED

    def kth(values: list[float]) -> float:
        v = np.sort(np.where(np.isnan(values), np.inf, values))[need - 1]
        return float(v) if np.isfinite(v) else math.nan

    # the determined seeds' effects (an undetermined tie's 0 says nothing beside a measured effect),
    # or, where no seed is determined, whatever the seeds report (a tie's 0, a missing control's NaN)
    pool = [c for c in claims if c.outcome is not Outcome.UNDETERMINED] or claims
    effects = np.array([c.effect for c in pool], dtype=np.float64)
    lows = np.array([c.effect_low for c in pool], dtype=np.float64)
    highs = np.array([c.effect_high for c in pool], dtype=np.float64)
    effect = float(np.nanmean(effects)) if not np.isnan(effects).all() else math.nan
    low = float(np.nanmin(lows)) if not np.isnan(lows).all() else math.nan
    high = float(np.nanmax(highs)) if not np.isnan(highs).all() else math.nan
    why = sorted({c.reason for c in claims if c.outcome is not Outcome.SUPPORTED})
    reason = f"holds in {holding} of {n} seeds ({undetermined} undetermined; rule: {rule})" + "".join(
        f"; {w}" for w in why)
    return replace(first, effect=effect, effect_low=low, effect_high=high,
                   p_value=kth([c.p_value for c in claims]), p_holm=kth([c.p_holm for c in claims]),
                   seeds_holding=holding, n_seeds=n, outcome=outcome, reason=reason,
                   holds=outcome is Outcome.SUPPORTED)


# --- results/verdicts.csv ------------------------------------------------------------------------

def read_claims(run_dir) -> pd.DataFrame:
    """Every claim written so far (:data:`VERDICTS_FILE`), with the ``step`` that wrote it; empty
    (with the columns) when no step has written any."""
    path = RunLayout(run_dir).results / VERDICTS_FILE
    if not path.exists():
        return pd.DataFrame(columns=["step", *VERDICT_COLUMNS])
    frame = pd.read_csv(path, dtype={"method": str, "regime": str, "protocol": str}, keep_default_na=False,
                        na_values=[""])
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def write_claims(run_dir, step: str, claims: Sequence[Claim] | pd.DataFrame) -> pd.DataFrame:
    """Replace ``step``'s rows of :data:`VERDICTS_FILE` by ``claims`` (atomically), leaving the
    other steps' rows; returns the whole file's table. Holm's correction must already be applied:
    each step owns its families, so no family spans two steps."""
    if step not in CLAIM_STEPS:
        raise ValueError(f"step={step!r} writes no claims; the steps that do: {list(CLAIM_STEPS)}")
    frame = claims if isinstance(claims, pd.DataFrame) else claims_frame(claims)
    frame = frame.assign(step=step)[["step", *[c for c in frame.columns if c != "step"]]]
    others = read_claims(run_dir)
    others = others[others["step"] != step]
    families = set(frame["family"]) & set(others["family"])
    if families:
        raise ValueError(f"families {sorted(families)} are written by another step too")
    whole = pd.concat([others, frame], ignore_index=True) if len(others) else frame
    whole = whole.sort_values("step", key=lambda s: s.map(CLAIM_STEPS.index), kind="stable")
    write_text(RunLayout(run_dir).results / VERDICTS_FILE, whole.to_csv(index=False))
    return whole.reset_index(drop=True)

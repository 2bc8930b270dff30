"""Label-free orderings of latents: what an auditor who does not know the trigger would look at first.

Every criterion reads only the latents' activations on unscored samples (the fit split, pooled
without its trigger / benign / other labels) and the dictionary's own weights. None reads a year,
a split name or a label: the functions below do not take any. The criteria were fixed before any
eval label was looked at, after the model-diffing literature (science-of-finetuning/diffing-toolkit;
Minder et al., "Overcoming sparsity artifacts in crosscoders"):

Diff-SAE (a dictionary of Δa = a_ft − a_base)
    ``variance share`` (primary): the share of Δa's variance that latent j carries,
    Var(f_j) · ‖d_j‖² / tr Cov(Δa); ``mean activation``: E[f_j] · ‖d_j‖; ``peak activation``:
    max f_j · ‖d_j‖.
Crosscoder (a dictionary of [a_base; a_ft])
    ``relative decoder norm`` (primary): ‖d_j^ft‖ / (‖d_j^base‖ + ‖d_j^ft‖), fine-tune-only latents
    (≈ 1) first, ties broken by mean activation; ``Δ-decoder variance share``: the variance of Δa
    that the latent carries through its decoder difference, Var(f_j) · ‖d_j^ft − d_j^base‖²;
    ``mean activation``.

Latents that never fire on the unscored samples come last under every criterion: an auditor does
not inspect a latent that is silent on the data at hand.

Baselines ordered the same way: the principal components of Δa (fitted on the unscored samples;
each component with both signs, PC1+, PC1−, PC2+, …), the mean activation difference over all
unscored samples (one direction), and a generic contrast-pair direction (one direction, see
:mod:`backdoor_sae.audit.header_sweep`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Per dictionary architecture: its criteria, the first one primary.
CRITERIA: dict[str, tuple[str, ...]] = {
    "diff_sae": ("variance share", "mean activation", "peak activation"),
    "crosscoder": ("relative decoder norm", "Δ-decoder variance share", "mean activation"),
}
PRIMARY: dict[str, str] = {arch: criteria[0] for arch, criteria in CRITERIA.items()}


@dataclass(frozen=True)
class Ordering:
    """Latents in the order an auditor would inspect them (``order[0]`` first), with each latent's
    criterion value (``value[j]``, larger is earlier among latents that fire)."""

    criterion: str
    order: np.ndarray
    value: np.ndarray

    def rank_of(self) -> np.ndarray:
        """[m] 1-based rank of every latent."""
        ranks = np.empty(len(self.order), dtype=int)
        ranks[self.order] = np.arange(1, len(self.order) + 1)
        return ranks


def order_by(criterion: str, value: np.ndarray, fires: np.ndarray, tie_break: np.ndarray | None = None) -> Ordering:
    """Latents that fire first, by ``value`` descending (then ``tie_break`` descending, then index);
    silent latents after, by index."""
    value = np.asarray(value, dtype=np.float64)
    tie = np.zeros_like(value) if tie_break is None else np.asarray(tie_break, dtype=np.float64)
    # np.lexsort sorts by the last key first; stable, so equal keys keep index order
    order = np.lexsort((-tie, -value, ~np.asarray(fires, dtype=bool)))
    return Ordering(criterion, order, value)


def dictionary_orderings(architecture: str, acts: np.ndarray, decoder: np.ndarray) -> dict[str, Ordering]:
    """Every criterion's ordering of one dictionary's latents.

    ``acts`` [n, m]: the latents on the unscored samples; ``decoder``: [m, d] (Diff-SAE) or
    [m, 2, d] (crosscoder: base then fine-tuned rows), in the dictionary's input units.
    """
    acts = np.asarray(acts, dtype=np.float64)
    decoder = np.asarray(decoder, dtype=np.float64)
    fires = (acts > 0).any(0)
    mean, var, peak = acts.mean(0), acts.var(0), acts.max(0)
    if architecture == "diff_sae":
        norm = np.linalg.norm(decoder, axis=-1)
        values = {"variance share": var * norm**2, "mean activation": mean * norm, "peak activation": peak * norm}
        return {c: order_by(c, values[c], fires) for c in CRITERIA["diff_sae"]}
    if architecture == "crosscoder":
        base, ft = np.linalg.norm(decoder[:, 0], axis=-1), np.linalg.norm(decoder[:, 1], axis=-1)
        relative = ft / (base + ft + 1e-12)
        diff = np.linalg.norm(decoder[:, 1] - decoder[:, 0], axis=-1)
        joint = np.sqrt(base**2 + ft**2)
        return {
            "relative decoder norm": order_by("relative decoder norm", relative, fires, tie_break=mean * joint),
            "Δ-decoder variance share": order_by("Δ-decoder variance share", var * diff**2, fires),
            "mean activation": order_by("mean activation", mean * joint, fires),
        }
    raise ValueError(f"no label-free criteria for architecture {architecture!r}; known: {sorted(CRITERIA)}")


def principal_directions(diff_fit: np.ndarray) -> np.ndarray:
    """[k, d] principal directions of Δa on the unscored samples (centred), largest variance first,
    each followed by its negative: PC1+, PC1−, PC2+, … (a threshold only looks upwards); the "+"
    side is that of the projections' long tail (positive skewness)."""
    x = np.asarray(diff_fit, dtype=np.float64)
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[s > s.max() * 1e-9] if s.size else vt
    # A sign chosen without labels: each component points to the long tail of its projections
    # (positive skewness), so that a minority pushed away from the bulk, as a trigger's samples
    # would be, lies on the positive side, which the first pick (PC1+) reads; where the skewness
    # is 0, the largest-magnitude coordinate is made positive.
    skew = np.sign(((x @ vt.T) ** 3).mean(0)) if len(x) else np.zeros(len(vt))
    fallback = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    signs = np.where(skew != 0, skew, np.where(fallback == 0, 1.0, fallback))
    vt = vt * signs[:, None]
    return np.stack([vt, -vt], axis=1).reshape(-1, x.shape[1])


def mean_difference_direction(diff_fit: np.ndarray) -> np.ndarray:
    """[d] the mean activation difference over every unscored sample ("Narrow finetuning leaves
    clearly readable traces in activation differences"), no label used."""
    return np.asarray(diff_fit, dtype=np.float64).mean(0)

"""Controls matched in energy to the tested direction, and the paired statistics of the causal test.

A random unit direction in d dimensions carries about 1/d of the residual stream's energy, the
direction of a latent that reads the fine-tune's change far more, so "beyond random directions"
says little. The controls here are matched:

- **subspace** directions: unit vectors drawn in the span of the top principal components of Δa
  (where the fine-tune moved the residual stream) with the tested direction projected out, so that
  no control removes part of what the tested direction removes, each rotated within a random plane
  of that span until its projection energy, the mean of (h · r)² over the residuals it is ablated
  from (the trigger prompts' tokens), equals the tested direction's (:func:`matched_in_subspace`);
  where no direction of the span has that energy, the nearest attainable one is kept and the
  achieved energy is reported;
- **latents**: the other latents of the same dictionary whose activation energy, the mean of
  ‖f_j W_dec[j]‖² over the fit split's trigger samples (where patching acts: on trigger prompts),
  is closest to the tested latent's (:func:`matched_latents`).

Steering adds every direction, tested or control, with the same norm.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from backdoor_sae.finetune.backdoor_eval import wilson


def projection_energy(h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Mean of (h · u)² over the rows of ``h`` [N, d], for one direction [d] or several [n, d]."""
    proj = h.float() @ u.float().T
    return (proj ** 2).mean(0)


def principal_subspace(delta: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """[k', d]: orthonormal rows spanning the top ``k`` principal components of ``delta`` [N, d]
    (centred), k' = min(k, the rank available); with ``exclude`` (a direction [d]) projected out of
    that span first, so that every direction drawn in it is orthogonal to ``exclude``."""
    x = delta.float() - delta.float().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    keep = int(min(k, int((s > s.max() * 1e-6).sum()) if len(s) else 0))
    if keep < 1:
        raise ValueError("Δa has no variance: no principal subspace to draw controls from")
    basis = vh[:keep]
    if exclude is None:
        return basis
    e = exclude.double() / exclude.double().norm()
    rest = basis.double() - (basis.double() @ e)[:, None] * e[None]
    _, s, vh = torch.linalg.svd(rest, full_matrices=False)
    keep = int((s > 1e-6).sum())
    if keep < 1:
        raise ValueError("the principal subspace of Δa is the excluded direction alone: no control to draw")
    return vh[:keep].float()


def _orthonormal_pair(k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.randn(k, generator=gen, dtype=torch.float64)
    p = p / p.norm()
    q = torch.randn(k, generator=gen, dtype=torch.float64)
    q = q - (q @ p) * p
    return p, q / q.norm()


def matched_in_subspace(basis: torch.Tensor, h: torch.Tensor, target: float, n: int, seed: int,
                        max_tries: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """(directions [n, d], their energies [n]): unit vectors in the span of ``basis`` [k, d] whose
    projection energy over ``h`` [N, d] equals ``target``.

    Each is drawn as a random plane (p, q) of the span; on the circle cos θ p + sin θ q the energy
    is m + R cos(2θ − φ), so θ solving it for the target is exact where |target − m| ≤ R. Planes
    that cannot reach the target are redrawn; after ``max_tries`` the remaining directions are the
    random ones nearest to it (their energies say so)."""
    gen = torch.Generator().manual_seed(seed)
    proj = h.double() @ basis.double().T  # [N, k]
    m_mat = proj.T @ proj / len(proj)  # the span's energy form
    k = len(basis)
    chosen: list[torch.Tensor] = []
    fallback: list[tuple[float, torch.Tensor]] = []
    for _ in range(max_tries):
        if len(chosen) == n:
            break
        if k == 1:
            c = torch.ones(1, dtype=torch.float64)
            fallback.append((abs(float(c @ m_mat @ c) - target), c))
            continue
        p, q = _orthonormal_pair(k, gen)
        a, c_, b = float(p @ m_mat @ p), float(q @ m_mat @ q), float(p @ m_mat @ q)
        mid, half = (a + c_) / 2, (a - c_) / 2
        radius = math.hypot(half, b)
        if radius > 0 and abs(target - mid) <= radius:
            theta = (math.atan2(b, half) + math.acos((target - mid) / radius)) / 2
            chosen.append(math.cos(theta) * p + math.sin(theta) * q)
        else:  # the plane's extreme nearest to the target
            theta = math.atan2(b, half) / 2 + (0.0 if target > mid else math.pi / 2)
            c = math.cos(theta) * p + math.sin(theta) * q
            fallback.append((abs(float(c @ m_mat @ c) - target), c))
    fallback.sort(key=lambda t: t[0])
    chosen += [c for _, c in fallback[: n - len(chosen)]]
    coef = torch.stack(chosen)
    directions = (coef @ basis.double()).float()
    directions = directions / directions.norm(dim=1, keepdim=True)
    return directions, projection_energy(h, directions)


def matched_latents(energy: torch.Tensor, latent: int, n: int) -> list[int]:
    """The ``n`` other latents (with non-zero energy) whose activation ``energy`` [m] is nearest to
    ``latent``'s on a log scale, nearest first."""
    energy = energy.double()
    alive = torch.nonzero(energy > 0).flatten().tolist()
    others = [j for j in alive if j != latent]
    target = math.log(max(float(energy[latent]), 1e-30))
    others.sort(key=lambda j: (abs(math.log(float(energy[j])) - target), j))
    return others[:n]


# --- paired statistics ---------------------------------------------------------------------------

def mcnemar(x: np.ndarray, y: np.ndarray, alternative: str = "two-sided") -> tuple[int, int, float]:
    """Exact McNemar test of paired binary outcomes ``x`` and ``y`` (the same prompts): (b, c, p)
    with b = #(x and not y), c = #(y and not x), p from Binomial(b + c, 1/2) (1.0 with no discordant
    pair): two-sided, or ``greater`` (one-sided: x true more often than y, P(B >= b)), the test of a
    claim that names its direction."""
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative={alternative!r}: 'two-sided' or 'greater'")
    x, y = np.asarray(x, dtype=bool), np.asarray(y, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes differ in shape: {x.shape} vs {y.shape}")
    b, c = int((x & ~y).sum()), int((~x & y).sum())
    n = b + c
    if n == 0:
        return b, c, 1.0
    if alternative == "greater":
        return b, c, float(sum(math.comb(n, i) for i in range(b, n + 1)) / 2.0 ** n)
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n
    return b, c, float(min(1.0, 2 * tail))


def paired_difference(x: np.ndarray, y: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """(mean(x) − mean(y), low, high): the difference of two paired proportions with its Wald
    interval, var = (b + c − (b − c)² / n) / n² (b, c the discordant counts)."""
    x, y = np.asarray(x, dtype=bool), np.asarray(y, dtype=bool)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    b, c = int((x & ~y).sum()), int((~x & y).sum())
    diff = (b - c) / n
    half = z * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return diff, max(-1.0, diff - half), min(1.0, diff + half)


def rate_with_interval(x: np.ndarray) -> tuple[float, float, float]:
    """(share, Wilson low, Wilson high) of a binary outcome."""
    x = np.asarray(x, dtype=bool)
    low, high = wilson(int(x.sum()), len(x))
    return (float(x.mean()) if len(x) else math.nan), low, high

"""One training loop for every dictionary (Diff-SAE and crosscoder variants), and the functions the
other steps call to build, evaluate, encode with, save and load a dictionary.

The loop reads a dictionary only through :class:`~backdoor_sae.dictionaries.base.Dictionary`
(forward, sparsity, decoder, the decoder-norm upkeep, the threshold's calibration); building,
saving and loading are the class's, and the functions here keep their signatures for the callers.

Inputs are normalised by a fixed scalar per source (one for the difference, one per model for the
crosscoder) chosen on the training data so that E‖x‖² = d: the L1 coefficient then means the same
thing at every layer and for every model. The scale is saved with the dictionary and applied
again whenever it encodes new data.

Loss = reconstruction MSE (mean over dimensions; for the crosscoder the two models' MSEs are
added, as in the paper) + l1 × sparsity penalty (+ ghost-grads or aux-k term for dead latents).
Logged every few steps: loss, FVU (unexplained share of the variance), L0 (active latents per
sample) and the dead fraction (latents that have not fired within the last window of samples).

``TrainSettings.dtype`` "bfloat16" runs the forward and backward matmuls under autocast (weights,
Adam's state and the loss stay float32): about 2.5 times the float32 speed on a CPU that multiplies
bfloat16 natively (``benchmarks/bench.py sae``).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from backdoor_sae.common.model import precision
from backdoor_sae.dictionaries.base import CALIBRATION_INPUTS, Dictionary, DictionarySpec
from backdoor_sae.dictionaries.crosscoder import Crosscoder
from backdoor_sae.dictionaries.dead import auxk_loss, ghost_grads_loss
from backdoor_sae.dictionaries.diff_sae import DiffSAE

__all__ = [
    "ARCHITECTURES", "CALIBRATION_INPUTS", "DEAD_FIXES", "TAG_BOUNDS", "DictionarySpec", "TrainSettings", "build",
    "calibrate_threshold", "encode_all", "evaluate", "fvu", "inference", "input_scale", "latent_tags",
    "load_dictionary", "pooled_codes", "read_dictionary_log", "save_dictionary", "train_dictionary",
]

#: Every architecture's name, as :class:`DictionarySpec` spells it.
ARCHITECTURES = (DiffSAE.architecture, Crosscoder.architecture)
DEAD_FIXES = ("ghost", "auxk", "none")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build(spec: DictionarySpec, seed: int = 0) -> Dictionary:
    """A fresh dictionary of ``spec``, its weights drawn from ``seed``."""
    return Dictionary.from_spec(spec, seed)


def input_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-source scalar making E‖x‖² = d: shape [] for [N, d] inputs, [2, 1] for [N, 2, d]."""
    d = x.shape[-1]
    mean_sq = (x ** 2).sum(-1).mean(0)  # [] or [2]
    scale = torch.sqrt(d / mean_sq.clamp_min(1e-12))
    return scale[:, None] if x.ndim == 3 else scale


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: ‖x − x̂‖² over the spread of x around its mean."""
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12))


@dataclass(frozen=True)
class TrainSettings:
    """How a dictionary is trained (the loss's weights, the optimiser, the data seen, the dead-latent fix)."""

    l1_coeff: float = 1e-4
    lr: float = 1e-4
    batch_size: int = 256
    n_samples: int = 250_000  # samples seen in all (repeats the data as needed)
    dead_fix: str = "ghost"
    dead_window: int = 10_000  # inputs (samples, or tokens) without firing after which a latent counts as dead
    aux_k: int = 256
    seed: int = 0
    log_every: int = 10  # steps
    dtype: str = "float32"  # "float32" | "bfloat16" (autocast matmuls)


def train_dictionary(model: Dictionary, x: torch.Tensor, settings: TrainSettings, progress: bool = True,
                     desc: str = "dictionary") -> tuple[torch.Tensor, list[dict]]:
    """Train ``model`` on ``x`` ([N, d] or [N, 2, d]) in train mode, leave it in eval mode; return the
    input scale and the log."""
    if settings.dead_fix not in DEAD_FIXES:
        raise ValueError(f"dead_fix={settings.dead_fix!r} must be one of {DEAD_FIXES}")
    if len(x) == 0:
        raise ValueError("no training inputs")
    dtype = _DTYPES[settings.dtype]
    scale = input_scale(x)
    model.train()
    model.init_decoder_bias(x * scale)
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999), fused=True)
    steps = math.ceil(settings.n_samples / settings.batch_size)
    window = max(1, math.ceil(settings.dead_window / settings.batch_size))
    last_fired = torch.zeros(model.n_latents, dtype=torch.long)
    order, cursor = torch.randperm(len(x), generator=gen), 0
    log: list[dict] = []
    t0 = time.perf_counter()
    for step in tqdm(range(1, steps + 1), disable=not progress, desc=desc, unit="step", mininterval=2):
        if cursor + settings.batch_size > len(order):
            order, cursor = torch.cat([order[cursor:], torch.randperm(len(x), generator=gen)]), 0
        idx = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        xb = x[idx] * scale
        with precision(xb.device, dtype):
            x_hat, f, pre = model(xb)
        x_hat, f, pre = x_hat.float(), f.float(), pre.float()
        mse = ((x_hat - xb) ** 2).mean(dim=(0, -1)).sum()  # per model-half, summed
        loss = mse + settings.l1_coeff * model.sparsity(f)
        dead = (step - last_fired) > window
        if settings.dead_fix != "none" and dead.any():
            residual = (xb - x_hat).detach()
            with precision(xb.device, dtype):  # the dead latents' matmul in the step's precision
                if settings.dead_fix == "ghost":
                    loss = loss + ghost_grads_loss(residual, pre, dead, model.decoder(), mse)
                else:
                    loss = loss + auxk_loss(residual, pre, dead, model.decoder(), settings.aux_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.project_decoder_grad()
        opt.step()
        model.normalise()
        with torch.no_grad():
            last_fired[(f > 0).any(0)] = step
        if step % settings.log_every == 0 or step == steps:
            with torch.no_grad():
                log.append({
                    "step": step, "samples": step * settings.batch_size, "loss": float(loss), "mse": float(mse),
                    "fvu": fvu(xb, x_hat), "l0": float((f > 0).float().sum(-1).mean()),
                    "dead_fraction": float(dead.float().mean()), "seconds": time.perf_counter() - t0,
                })
    calibrate_threshold(model, x, scale, settings.seed)
    model.eval()
    return scale, log


def calibrate_threshold(model: Dictionary, x: torch.Tensor, scale: torch.Tensor, seed: int) -> None:
    """BatchTopK only: set the inference threshold on training inputs ``x`` (raw) once training ends
    (:meth:`~backdoor_sae.dictionaries.base.Dictionary.calibrate_threshold`)."""
    model.calibrate_threshold(x, scale, seed)


@contextmanager
def inference(model: Dictionary):
    """``model`` in eval mode (batchtopk: per-sample threshold, no update) and no grad; the old mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def encode_all(model: Dictionary, x: torch.Tensor, scale: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Latent activations [N, m] of ``x`` (raw, unnormalised inputs), in inference mode."""
    with inference(model):
        return torch.cat([model.encode(x[i:i + batch_size] * scale) for i in range(0, len(x), batch_size)])


#: A crosscoder latent's tag by its relative decoder norm ‖W_dec[ft]‖ / (‖W_dec[base]‖ + ‖W_dec[ft]‖):
#: below the first bound it belongs to the base model, above the second to the fine-tune.
TAG_BOUNDS = (0.1, 0.9)


def latent_tags(relative_norm: torch.Tensor) -> list[str]:
    """``base-only``, ``shared`` or ``fine-tune-only`` for each latent's relative decoder norm."""
    low, high = TAG_BOUNDS
    return ["base-only" if r < low else "fine-tune-only" if r > high else "shared" for r in relative_norm.tolist()]


def pooled_codes(model: Dictionary, x: torch.Tensor, scale: torch.Tensor, owner: torch.Tensor, n_samples: int,
                 batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Each sample's code pooled over its tokens: ``{"mean": [n_samples, m], "max": [n_samples, m]}``.

    ``x`` holds token inputs and ``owner`` [T] the sample each token belongs to. Tokens are encoded
    ``batch_size`` at a time, so the [T, m] codes are never held at once; a sample with no token
    gets zeros.
    """
    m = model.n_latents
    total, peak = torch.zeros(n_samples, m), torch.zeros(n_samples, m)
    owner = owner.long()
    with inference(model):
        for i in range(0, len(x), batch_size):
            f = model.encode(x[i:i + batch_size] * scale).float()
            rows = owner[i:i + batch_size]
            total.index_add_(0, rows, f)
            peak.scatter_reduce_(0, rows[:, None].expand_as(f), f, "amax")  # codes are >= 0: zeros are a floor
    count = torch.bincount(owner, minlength=n_samples).clamp_min(1)[:, None]
    return {"mean": total / count, "max": peak}


def evaluate(model: Dictionary, x: torch.Tensor, scale: torch.Tensor, batch_size: int = 4096,
             dtype: str = "float32") -> dict:
    """FVU, mean L0 and the share of latents that never fire, over all of ``x``, in inference mode
    (in batches, their matmuls in ``dtype``: pass the training's ``TrainSettings.dtype``); for a
    crosscoder also the shares of its latents tagged base-only and fine-tune-only."""
    xs = x * scale
    sq_err, l0, fired = 0.0, 0.0, torch.zeros(model.n_latents, dtype=torch.bool)
    with inference(model), precision(xs.device, _DTYPES[dtype]):
        for i in range(0, len(xs), batch_size):
            xb = xs[i:i + batch_size]
            x_hat, f, _ = model(xb)
            x_hat, f = x_hat.float(), f.float()
            sq_err += float(((xb - x_hat) ** 2).sum())
            l0 += float((f > 0).float().sum())
            fired |= (f > 0).any(0)
    out = {"fvu": sq_err / float(((xs - xs.mean(0)) ** 2).sum().clamp_min(1e-12)), "l0": l0 / len(xs),
           "dead_fraction": float((~fired).float().mean())}
    relative_norm = model.relative_decoder_norm()
    if relative_norm is not None:  # a dictionary of both models
        tags = latent_tags(relative_norm.detach())
        out |= {f"{tag}_share": tags.count(tag) / len(tags) for tag in ("base-only", "fine-tune-only")}
    return out


def save_dictionary(path: str | Path, model: Dictionary, spec: DictionarySpec, scale: torch.Tensor, log: list[dict],
                    metrics: dict, params: dict) -> None:
    """Save ``model`` with its input ``scale``, training ``log``, ``metrics`` and ``params``
    (:meth:`~backdoor_sae.dictionaries.base.Dictionary.save`). ``spec`` must be the model's own: a
    saved spec that does not rebuild the saved weights would load wrong or not at all."""
    if spec != model.spec:
        raise ValueError(f"spec {spec} is not the model's ({model.spec})")
    model.save(path, scale, log, metrics, params)


def load_dictionary(path: str | Path) -> tuple[Dictionary, torch.Tensor, dict]:
    """``(model, scale, info)`` of a saved dictionary, in eval mode."""
    return Dictionary.load(path)


def read_dictionary_log(path: str | Path) -> list[dict]:
    """The training log of the dictionary saved at ``path``, one record per logged step."""
    return Dictionary.read_log(path)

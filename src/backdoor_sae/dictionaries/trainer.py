"""One training loop for every dictionary (Diff-SAE and crosscoder variants).

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

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from backdoor_sae.common.io import atomic_path, write_json
from backdoor_sae.dictionaries.crosscoder import Crosscoder
from backdoor_sae.dictionaries.dead import auxk_loss, ghost_grads_loss
from backdoor_sae.dictionaries.diff_sae import DiffSAE

ARCHITECTURES = ("diff_sae", "crosscoder")
DEAD_FIXES = ("ghost", "auxk", "none")


@dataclass(frozen=True)
class DictionarySpec:
    """Everything needed to rebuild a trained dictionary."""

    architecture: str  # "diff_sae" | "crosscoder"
    d: int
    n_latents: int
    activation: str = "relu"  # "relu" | "batchtopk" (both); "topk" (crosscoder)
    k: int = 32


def build(spec: DictionarySpec, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if spec.architecture == "diff_sae":
        return DiffSAE(spec.d, spec.n_latents, spec.activation, spec.k, generator=gen)
    if spec.architecture == "crosscoder":
        return Crosscoder(spec.d, spec.n_latents, spec.activation, spec.k, generator=gen)
    raise ValueError(f"architecture={spec.architecture!r} must be one of {ARCHITECTURES}")


def input_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-source scalar making E‖x‖² = d: shape [] for [N, d] inputs, [2, 1] for [N, 2, d]."""
    d = x.shape[-1]
    mean_sq = (x ** 2).sum(-1).mean(0)  # [] or [2]
    scale = torch.sqrt(d / mean_sq.clamp_min(1e-12))
    return scale[:, None] if x.ndim == 3 else scale


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12))


def _project_out_parallel_grad(w: torch.nn.Parameter) -> None:
    """Remove the part of each decoder row's gradient that would change its norm."""
    if w.grad is None:
        return
    rows = w.data.flatten(1)
    grad = w.grad.flatten(1)
    grad -= (grad * rows).sum(-1, keepdim=True) * rows / (rows ** 2).sum(-1, keepdim=True)


def _normalise_rows(w: torch.nn.Parameter) -> None:
    flat = w.data.flatten(1)
    flat /= flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class TrainSettings:
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


def train_dictionary(model, x: torch.Tensor, settings: TrainSettings, progress: bool = True,
                     desc: str = "dictionary") -> tuple[torch.Tensor, list[dict]]:
    """Train ``model`` on ``x`` ([N, d] or [N, 2, d]) in train mode, leave it in eval mode; return the
    input scale and the log."""
    if settings.dead_fix not in DEAD_FIXES:
        raise ValueError(f"dead_fix={settings.dead_fix!r} must be one of {DEAD_FIXES}")
    if len(x) == 0:
        raise ValueError("no training inputs")
    from backdoor_sae.common.model import precision

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[settings.dtype]
    scale = input_scale(x)
    model.train()
    with torch.no_grad():  # start the decoder bias at the data mean: the code then spends itself on variation
        model.b_dec.copy_((x * scale).mean(0))
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999), fused=True)
    steps = math.ceil(settings.n_samples / settings.batch_size)
    window = max(1, math.ceil(settings.dead_window / settings.batch_size))
    n_latents = model.b_enc.shape[0]
    last_fired = torch.zeros(n_latents, dtype=torch.long)
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
            if settings.dead_fix == "ghost":
                loss = loss + ghost_grads_loss(residual, pre, dead, model.decoder(), mse)
            else:
                loss = loss + auxk_loss(residual, pre, dead, model.decoder(), settings.aux_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if model.unit_norm_decoder:
            _project_out_parallel_grad(model.W_dec)
        opt.step()
        if model.unit_norm_decoder:
            _normalise_rows(model.W_dec)
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


#: How many training inputs (at most) set a BatchTopK threshold after training.
CALIBRATION_INPUTS = 16_384


@torch.no_grad()
def calibrate_threshold(model, x: torch.Tensor, scale: torch.Tensor, seed: int) -> None:
    """BatchTopK only: set the inference threshold between the smallest activation BatchTopK keeps
    and the largest it drops when a random subsample of the training inputs (at most
    :data:`CALIBRATION_INPUTS`) is one batch, so that at inference these inputs keep k latents each
    on average. The moving average of training
    (β = 0.99) is of thresholds from earlier weights: after the few hundred steps of a small run
    most of its weight still lies on the first ones."""
    sparse = getattr(model, "sparse", None)
    if sparse is None or sparse.kind != "batchtopk":
        return
    n = min(len(x), CALIBRATION_INPUTS)
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))[:n]
    f = torch.relu(model.pre_activations(x[rows] * scale)).flatten()
    n_kept = min(sparse.k * n, f.numel())
    top = torch.topk(f, min(n_kept + 1, f.numel())).values
    smallest_kept = float(top[n_kept - 1])
    largest_dropped = float(top[n_kept]) if len(top) > n_kept else 0.0
    # halfway between the last kept and the first dropped activation: not on any input's value, so
    # that rounding differences between batch shapes do not flip a latent at the boundary
    sparse.threshold.fill_((smallest_kept + largest_dropped) / 2 if smallest_kept > 0 else 0.0)


@contextmanager
def inference(model):
    """``model`` in eval mode (batchtopk: per-sample threshold, no update) and no grad; the old mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def encode_all(model, x: torch.Tensor, scale: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
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


def pooled_codes(model, x: torch.Tensor, scale: torch.Tensor, owner: torch.Tensor, n_samples: int,
                 batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Each sample's code pooled over its tokens: ``{"mean": [n_samples, m], "max": [n_samples, m]}``.

    ``x`` holds token inputs and ``owner`` [T] the sample each token belongs to. Tokens are encoded
    ``batch_size`` at a time, so the [T, m] codes are never held at once; a sample with no token
    gets zeros.
    """
    m = model.b_enc.shape[0]
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


def evaluate(model, x: torch.Tensor, scale: torch.Tensor, batch_size: int = 4096) -> dict:
    """FVU, mean L0 and the share of latents that never fire, over all of ``x``, in inference mode
    (in batches); for a crosscoder also the shares of its latents tagged base-only and fine-tune-only."""
    xs = x * scale
    sq_err, l0, fired = 0.0, 0.0, torch.zeros(model.b_enc.shape[0], dtype=torch.bool)
    with inference(model):
        for i in range(0, len(xs), batch_size):
            xb = xs[i:i + batch_size]
            x_hat, f, _ = model(xb)
            sq_err += float(((xb - x_hat) ** 2).sum())
            l0 += float((f > 0).float().sum())
            fired |= (f > 0).any(0)
    out = {"fvu": sq_err / float(((xs - xs.mean(0)) ** 2).sum().clamp_min(1e-12)), "l0": l0 / len(xs),
           "dead_fraction": float((~fired).float().mean())}
    if hasattr(model, "relative_decoder_norm"):
        tags = latent_tags(model.relative_decoder_norm().detach())
        out |= {f"{tag}_share": tags.count(tag) / len(tags) for tag in ("base-only", "fine-tune-only")}
    return out


def save_dictionary(path: str | Path, model, spec: DictionarySpec, scale: torch.Tensor, log: list[dict],
                    metrics: dict, params: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()} | {"input_scale": scale},
                  str(tmp / "weights.safetensors"))
        (tmp / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        write_json(tmp / "dictionary.json", {"spec": asdict(spec), "metrics": metrics, "params": params})


def load_dictionary(path: str | Path):
    """``(model, scale, info)`` of a saved dictionary, in eval mode."""
    path = Path(path)
    info = json.loads((path / "dictionary.json").read_text())
    spec = DictionarySpec(**info["spec"])
    state = load_file(str(path / "weights.safetensors"))
    scale = state.pop("input_scale")
    model = build(spec)
    model.load_state_dict(state)
    return model.eval(), scale, info


def read_dictionary_log(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(path) / "log.jsonl").read_text().splitlines()]

"""What a token-level dictionary keeps of the model: the loss when its reconstruction replaces the
activation, the share of its latents that are alive, its L0, and (crosscoders) latent scaling.

**Spliced loss** (dictionary_learning's and SAEBench's "loss recovered"). On a few eval samples the
fine-tuned model runs as usual, except that at the output of the dictionary's decoder layer L the
residual stream of the dictionary's tokens (its protocol's tokens, the first position left out, as
it was trained) is replaced:

- *spliced*: by the dictionary's reconstruction of the fine-tune's activation, for the Diff-SAE
  ``a_base + Δâ`` (the base model's own activation plus the reconstructed difference), for the
  crosscoder the fine-tune half of its decoder's output;
- *zero*: by zeros (zero ablation, the field's floor);
- *base*: by the base model's activation (the fine-tune's change at that layer ablated).

The next-token loss (mean cross-entropy of the token after each replaced position) of each, and its
KL divergence from the unspliced model's distribution there, give

    loss recovered = (loss_zero − loss_spliced) / (loss_zero − loss_clean)

(1: the reconstruction loses nothing the model uses; 0: as bad as erasing the activation), and the
share of the *fine-tune's change* recovered, ``(loss_base − loss_spliced) / (loss_base − loss_clean)``,
which is only meaningful where the change moves the loss at all (``loss_base − loss_clean`` well
above zero).

**Alive share and L0** over every eval token of the protocol: the share of latents that fire on at
least one, and the mean number of latents firing per token.

**Latent scaling** (Minder et al., "Overcoming sparsity artifacts in crosscoders to interpret
chat-tuning", 2025). A crosscoder latent j whose base decoder is (near) zero looks fine-tune-only,
but the L1 penalty can shrink a base decoder that the base model needs ("complete shrinkage"), or
split one concept between latents of each model ("latent decoupling"). Latent scaling asks how much
of j's fine-tune decoder direction ``d = W_dec[j, ft]`` (in the fine-tune's raw activation space) is
in each model's activation where j fires: per model m, the least-squares scale

    β_m = argmin_β Σ_t ‖β f_j(t) d − y_m(t)‖² = Σ_t f_j(t) ⟨d, y_m(t)⟩ / (‖d‖² Σ_t f_j(t)²)

over the eval tokens t, with two targets:

- error: ``y_m = a_m − â_m + f_j d_m`` (what the rest of the crosscoder leaves unexplained, plus j's
  own contribution to model m, ``d_m = W_dec[j, m]``): ν^ε = β_base / β_ft, low when the base model's
  activation does not contain the direction the crosscoder failed to reconstruct (no complete shrinkage);
- reconstruction: ``y_m = â_m − f_j d_m`` (what the other latents reconstruct): ν^r = β_base / β_ft,
  low when no other latent carries the direction in the base model (no latent decoupling).

A fine-tune-only latent (relative decoder norm above 0.9) with both ratios below
:data:`SPECIFIC_NU` is counted as truly fine-tune-specific. Ratios are computed in raw activation
units (each model's input scale divided out), so they compare the two models' activations directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from backdoor_sae.activations.extract import decoder_layers
from backdoor_sae.common.encoding import encode
from backdoor_sae.common.model import precision
from backdoor_sae.dictionaries.base import Dictionary
from backdoor_sae.dictionaries.trainer import TAG_BOUNDS, inference
from backdoor_sae.task.sample import Sample

#: Eval samples per split whose tokens the spliced loss is measured on (three splits).
N_QUALITY_PER_SPLIT = 3
#: A fine-tune-only crosscoder latent with both latent-scaling ratios below this is truly fine-tune-specific.
SPECIFIC_NU = 0.5
#: Tokens encoded at a time for the alive share, L0 and latent scaling.
TOKEN_BATCH = 4096


# --- the reconstruction spliced in ------------------------------------------------------------

def spliced_activation(dictionary: Dictionary, scale: torch.Tensor, a_base: torch.Tensor,
                       a_ft: torch.Tensor) -> torch.Tensor:
    """[T, d]: what replaces the fine-tune's activation ``a_ft`` [T, d] (raw units): ``a_base + Δâ``
    for the Diff-SAE, the fine-tune half of the reconstruction for the crosscoder."""
    with inference(dictionary):
        x = dictionary.inputs(a_base.float(), a_ft.float()) * scale
        x_hat = dictionary.decode(dictionary.encode(x))
    if dictionary.architecture == "diff_sae":
        return a_base.float() + x_hat / scale
    return x_hat[:, 1] / scale[1]


def loss_recovered(loss_clean: float, loss_zero: float, loss_spliced: float) -> float:
    """(loss_zero − loss_spliced) / (loss_zero − loss_clean): 1 for a reconstruction that loses
    nothing, 0 for one as bad as zero ablation; NaN where zero ablation costs nothing."""
    gap = loss_zero - loss_clean
    return float((loss_zero - loss_spliced) / gap) if abs(gap) > 1e-12 else float("nan")


@dataclass(frozen=True)
class Batch:
    """Quality samples, right-padded: ``ids`` and ``attention`` [B, W], each sample's length and prompt length."""

    ids: torch.Tensor
    attention: torch.Tensor
    lengths: list[int]
    n_prompt: list[int]

    def positions(self, protocol: str) -> torch.Tensor:
        """[B, W] True at the protocol's tokens, the first position left out (the dictionary's tokens)."""
        pos = torch.arange(self.ids.shape[1])[None, :]
        end = torch.tensor(self.lengths if protocol == "full_text" else self.n_prompt)[:, None]
        return (pos >= 1) & (pos < end)

    def scored(self, protocol: str) -> torch.Tensor:
        """[B, W] True at the replaced positions that have a next token to predict."""
        pos = torch.arange(self.ids.shape[1])[None, :]
        return self.positions(protocol) & (pos + 1 < torch.tensor(self.lengths)[:, None])


def make_batch(tokenizer, samples: Sequence[Sample]) -> Batch:
    encoded = [encode(tokenizer, s, eos=False) for s in samples]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, e in enumerate(encoded):
        ids[r, :len(e)] = torch.tensor(e.ids)
        attention[r, :len(e)] = 1
    return Batch(ids, attention, [len(e) for e in encoded], [e.n_prompt for e in encoded])


@torch.no_grad()
def forward_logprobs(model, batch: Batch, layer: int | None = None,
                     edit: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     capture: Sequence[int] = (), dtype: torch.dtype = torch.float32):
    """``(log_probs [B, W, V], captured)``: the model's next-token log-probabilities, with the output of
    decoder layer ``layer`` replaced by ``edit(output)`` [B, W, d], and the outputs of the layers in
    ``capture`` (before any edit of theirs)."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    layers = decoder_layers(model)

    def hook(i):
        def fn(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if i in capture:
                captured[i] = hidden.detach().float().clone()
            if i == layer and edit is not None:
                new = edit(hidden.float()).to(hidden.dtype)
                return (new, *output[1:]) if isinstance(output, tuple) else new
            return None
        return fn

    for i in set(capture) | ({layer} if layer is not None else set()):
        handles.append(layers[i].register_forward_hook(hook(i)))
    device = next(model.parameters()).device
    try:
        with precision(device, dtype):
            logits = model(input_ids=batch.ids.to(device), attention_mask=batch.attention.to(device),
                           use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return torch.log_softmax(logits.float().cpu(), dim=-1), {i: v.cpu() for i, v in captured.items()}


def loss_and_kl(log_probs: torch.Tensor, clean: torch.Tensor, batch: Batch, mask: torch.Tensor) -> tuple[float, float]:
    """Mean next-token cross-entropy at ``mask``'s positions, and mean KL(clean ‖ this) there."""
    targets = batch.ids[:, 1:]
    lp, cl, m = log_probs[:, :-1], clean[:, :-1], mask[:, :-1]
    nll = -lp.gather(-1, targets[..., None])[..., 0]
    kl = (cl.exp() * (cl - lp)).sum(-1)
    return float(nll[m].mean()), float(kl[m].mean())


def replace_at(positions: torch.Tensor, values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit that puts ``values`` [n, d] at the True ``positions`` [B, W] of a layer's output."""
    def edit(hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.clone()
        out[positions.to(out.device)] = values.to(out.device, out.dtype)
        return out
    return edit


def spliced_losses(model, batch: Batch, layer: int, protocol: str, a_base: torch.Tensor,
                   dictionaries: dict[str, tuple[Dictionary, torch.Tensor]],
                   dtype: torch.dtype = torch.float32) -> dict[str, dict]:
    """Per name in ``dictionaries`` (``(dictionary, scale)``): loss and KL with its reconstruction
    spliced in at ``layer`` over ``protocol``'s tokens, with ``clean`` (unspliced), ``zero`` and ``base``
    (``a_base`` [B, W, d], the base model's output of that layer, spliced in) beside them."""
    positions, scored = batch.positions(protocol), batch.scored(protocol)
    clean, captured = forward_logprobs(model, batch, capture=[layer], dtype=dtype)
    a_ft = captured[layer][positions]
    base_rows = a_base[positions]
    out = {"clean": dict(zip(("loss", "kl"), loss_and_kl(clean, clean, batch, scored)))}
    edits = {"zero": torch.zeros_like(a_ft), "base": base_rows}
    for name, (dictionary, scale) in dictionaries.items():
        edits[name] = spliced_activation(dictionary, scale, base_rows, a_ft)
    for name, values in edits.items():
        lp, _ = forward_logprobs(model, batch, layer, replace_at(positions, values), dtype=dtype)
        out[name] = dict(zip(("loss", "kl"), loss_and_kl(lp, clean, batch, scored)))
    return out


# --- alive share, L0, latent scaling ----------------------------------------------------------

@torch.no_grad()
def code_statistics(dictionary: Dictionary, scale: torch.Tensor, a_base: torch.Tensor, a_ft: torch.Tensor,
                    batch_size: int = TOKEN_BATCH) -> dict:
    """Over the tokens ``a_base``, ``a_ft`` [T, d] (raw): the alive share, the mean L0 and, for a
    crosscoder, latent scaling (``per_latent``: a frame with the relative decoder norm, ν^ε and ν^r of
    every latent; NaN for a latent that never fires)."""
    m = dictionary.n_latents
    fired = torch.zeros(m, dtype=torch.bool)
    l0_total, n = 0.0, len(a_base)
    crosscoder = dictionary.architecture == "crosscoder"
    if crosscoder:
        s = scale.reshape(2)
        dec = dictionary.W_dec.detach().float()  # [m, 2, d] in scaled units
        d_ft = dec[:, 1] / s[1]  # j's fine-tune direction, raw units
        d_m = [dec[:, 0] / s[0], dec[:, 1] / s[1]]  # j's own contribution to each model, raw units
        f_sq = torch.zeros(m, dtype=torch.float64)
        err = [torch.zeros(m, dtype=torch.float64) for _ in range(2)]  # Σ f ⟨d, a_m − â_m⟩
        rec = [torch.zeros(m, dtype=torch.float64) for _ in range(2)]  # Σ f ⟨d, â_m⟩
    with inference(dictionary):
        for i in range(0, n, batch_size):
            ab, af = a_base[i:i + batch_size].float(), a_ft[i:i + batch_size].float()
            f = dictionary.encode(dictionary.inputs(ab, af) * scale).float()
            active = f > 0
            fired |= active.any(0)
            l0_total += float(active.sum())
            if crosscoder:
                x_hat = dictionary.decode(f)
                f_sq += (f.double() ** 2).sum(0)
                for k, a in enumerate((ab, af)):
                    a_hat = x_hat[:, k] / s[k]
                    err[k] += (f * ((a - a_hat) @ d_ft.T)).double().sum(0)
                    rec[k] += (f * (a_hat @ d_ft.T)).double().sum(0)
    stats = {"alive_share": float(fired.float().mean()), "l0": l0_total / max(n, 1), "n_tokens": n}
    if crosscoder:
        norm_sq = (d_ft.double() ** 2).sum(-1)
        own = [(d_ft.double() * d.double()).sum(-1) for d in d_m]  # ⟨d, d_m⟩
        denom = norm_sq * f_sq
        with np.errstate(divide="ignore", invalid="ignore"):
            beta_err = [((err[k] + own[k] * f_sq) / denom).numpy() for k in range(2)]
            beta_rec = [((rec[k] - own[k] * f_sq) / denom).numpy() for k in range(2)]
            nu_err, nu_rec = _ratio(*beta_err), _ratio(*beta_rec)
        never = (f_sq == 0).numpy()
        nu_err[never], nu_rec[never] = np.nan, np.nan
        stats["per_latent"] = pd.DataFrame({"relative_norm": dictionary.relative_decoder_norm().detach().numpy(),
                                            "nu_error": nu_err, "nu_reconstruction": nu_rec})
    return stats


def _ratio(beta_base: np.ndarray, beta_ft: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """ν = β_base / β_ft, and 0 where both are zero (below ``tol``: rounding; neither model holds the direction in that
    target: nothing of it is in the base model)."""
    both_zero = (np.abs(beta_base) <= tol) & (np.abs(beta_ft) <= tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(both_zero, 0.0, beta_base / beta_ft)


def scaling_summary(per_latent: pd.DataFrame | None) -> dict:
    """A crosscoder's fine-tune-only latents (relative decoder norm above the upper tag bound) that
    fire on eval tokens: how many, their median ν^ε and ν^r, and the share with both below
    :data:`SPECIFIC_NU` (truly fine-tune-specific). NaN for a Diff-SAE."""
    keys = ("n_ft_only", "nu_error_median", "nu_reconstruction_median", "ft_specific_share")
    if per_latent is None:
        return dict.fromkeys(keys, float("nan"))
    ft_only = per_latent[(per_latent["relative_norm"] > TAG_BOUNDS[1]) & per_latent["nu_error"].notna()]
    if not len(ft_only):
        return {"n_ft_only": 0, **dict.fromkeys(keys[1:], float("nan"))}
    specific = (ft_only["nu_error"].abs() < SPECIFIC_NU) & (ft_only["nu_reconstruction"].abs() < SPECIFIC_NU)
    return {"n_ft_only": len(ft_only), "nu_error_median": float(ft_only["nu_error"].median()),
            "nu_reconstruction_median": float(ft_only["nu_reconstruction"].median()),
            "ft_specific_share": float(specific.mean())}


def quality_samples(splits: dict[str, list[Sample]], eval_splits: Sequence[str],
                    n_per_split: int = N_QUALITY_PER_SPLIT) -> list[Sample]:
    """The first ``n_per_split`` samples of each eval split: what the spliced loss is measured on."""
    return [s for name in eval_splits for s in splits[name][:n_per_split]]


#: The columns of ``results/dictionary_quality.csv`` after the dictionary's coordinates.
QUALITY_COLUMNS = ("loss_clean", "loss_spliced", "loss_zero", "loss_base", "kl_spliced", "kl_zero", "kl_base",
                   "loss_recovered", "change_recovered", "alive_share", "l0", "n_tokens", "n_loss_tokens",
                   "n_ft_only", "nu_error_median", "nu_reconstruction_median", "ft_specific_share")


def quality_row(losses: dict, name: str, stats: dict, n_loss_tokens: int) -> dict:
    """One dictionary's measures from :func:`spliced_losses` (its ``name`` there) and :func:`code_statistics`."""
    clean, zero, base, spliced = (losses[k]["loss"] for k in ("clean", "zero", "base", name))
    return {"loss_clean": clean, "loss_spliced": spliced, "loss_zero": zero, "loss_base": base,
            "kl_spliced": losses[name]["kl"], "kl_zero": losses["zero"]["kl"], "kl_base": losses["base"]["kl"],
            "loss_recovered": loss_recovered(clean, zero, spliced),
            "change_recovered": loss_recovered(clean, base, spliced),
            "alive_share": stats["alive_share"], "l0": stats["l0"], "n_tokens": stats["n_tokens"],
            "n_loss_tokens": n_loss_tokens, **scaling_summary(stats.get("per_latent"))}

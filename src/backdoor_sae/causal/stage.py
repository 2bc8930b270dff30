"""Notebook 07: does the chosen latent carry the backdoor, or only read the year?

For each backdoored fine-tune (every regime and fine-tune seed of the run) the tested latent is the
Diff-SAE latent the auditor chose without labels (notebook 06, ``auditor_choice.csv``: the row
with ``primary`` and ``rank`` 1) in the dictionary of ``causal_protocol`` and ``causal_fit_mode``;
its direction û is its decoder row (in the residual stream's units). At the output of that
dictionary's decoder layer, the first position always spared (:mod:`.intervention`):

- **removal**, on trigger prompts: directional ablation, mean ablation (the projection set to its
  mean over benign prompt tokens: the generation prompts' benign twins, not the teacher-forced
  prompts whose KL it is scored on) and latent patching (the latent's activation on
  the prompt's pooled Δa, computed by the dictionary, times its decoder row, subtracted);
- **steering**, on benign prompts: s × n̄ × û added, n̄ the mean ‖Δa‖ on the fit trigger samples
  (the size of the fine-tune's own change), over the strengths s of ``steer_strengths``;
- **transplant**: the backdoored fine-tune's û added, at the same strengths, in its clean control
  and in the base model.

Every condition has energy-matched controls (:mod:`.controls`, ``n_causal_controls`` of each kind,
matched where they act, :func:`prepare_tested`): subspace directions orthogonal to û (ablated,
mean-ablated or added like û) and other latents of the same dictionary (patched like the tested
latent); each control's cost is measured beside û's. A control condition pools them over the prompts:
prompt (or pair) i gets control i mod their number, in the teacher-forced measure as in
generation, so that ``n_causal_pairs`` ≥ ``n_causal_controls`` pairs use every control.

**Teacher-forced** (:mod:`.teacher`: each pair packed once with both completions, every condition
restarted at the layer from the unintervened residual): the log-odds log p(injectable) − log
p(safe) of the completions of ``n_causal_pairs`` held-out pairs, and the cost, the KL divergence
from the unintervened model on the benign prompt tokens. **The rule** (:func:`choose`), fixed and
applied before any generation, in two parts. (1) At *every* layer only the cheap measure is taken
(:func:`sweep_conditions`): directional ablation of û and of its matched control on the trigger
pairs, and the cost of û's ablation; the generation layer is the layer whose directional ablation
lowers the trigger log-odds most beyond its matched control among the layers whose KL is within
``causal_kl_budget`` (none within: the cheapest). (2) At that layer alone every other condition is
measured (:func:`layer_conditions`: mean ablation, patching, steering at each strength, and the
transplant's steering in the other models); the claim's strength is the largest generation
strength whose steering KL there is within the budget (none: the smallest).
**Generation** on ``n_causal_prompts`` other held-out pairs at that layer, judged by the oracle;
each prompt is its own pair across conditions, so McNemar's exact test compares an intervention
with the unintervened model and with its control. Steering and the transplant are generated at
every strength of ``steer_generation_strengths`` (the dose-response) for the fine-tunes
``dose_response_seeds`` names (the first seed of each regime); for the other seeds at the rule's
strength only, the one their claims read.

The claims go through the verdict layer (:mod:`backdoor_sae.scoring.verdicts`): Holm within each
family per fine-tune seed, then over seeds (:func:`backdoor_sae.scoring.claims.combine`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from backdoor_sae.activations.extract import residual_stream
from backdoor_sae.activations.stage import paired_activations
from backdoor_sae.causal.controls import (
    matched_in_subspace,
    matched_latents,
    mcnemar,
    paired_difference,
    principal_subspace,
    projection_energy,
    rate_with_interval,
)
from backdoor_sae.causal.generate import generate_edited, prompt_ids, text_ids
from backdoor_sae.causal.intervention import (
    NONE,
    REMOVALS,
    Edit,
    ablate,
    add,
    decoder_rows,
    latent_code,
    latent_contribution,
    mean_ablate,
    patch,
    unit,
)
from backdoor_sae.causal.teacher import (
    Packed,
    Unintervened,
    pack,
    score_conditions,
    unintervened,
)
from backdoor_sae.common.cache import (
    cached,
    code_digest,
    digest,
    read_record,
    samples_digest,
)
from backdoor_sae.common.io import atomic_path, write_jsonl, write_text
from backdoor_sae.common.layout import RunLayout
from backdoor_sae.common.model import (
    compute_dtype,
    load_model,
    load_tokenizer,
    precision,
)
from backdoor_sae.common.progress import report
from backdoor_sae.config import (
    CausalConfig,
    RunConfig,
    finetune_name,
    is_clean_control,
    regime_of,
    replica_of,
)
from backdoor_sae.config.cells import Cell
from backdoor_sae.dataset.card import pairs
from backdoor_sae.dataset.stage import load_data
from backdoor_sae.dictionaries.trainer import load_dictionary
from backdoor_sae.finetune.backdoor_eval import judge_completions
from backdoor_sae.finetune.train import load_finetuned
from backdoor_sae.scoring.claims import claim_regime, combine, headline_word
from backdoor_sae.scoring.stage import load as load_scoring
from backdoor_sae.scoring.verdicts import (
    ALPHA,
    Claim,
    ClaimId,
    apply_holm,
    claims_frame,
    make_claim,
    write_claims,
)
from backdoor_sae.task.sample import Sample
from backdoor_sae.task.splits import FIT_SPLITS

AUDITOR_CHOICE = "auditor_choice.csv"
AUDITOR_COLUMNS = ("regime", "protocol", "fit_mode", "layer", "architecture", "criterion", "primary", "rank",
                   "latent")
STEP = "07_causal"
BASE = "base"
#: the intervention kinds of tables and figures, and their words
INTERVENTIONS = {"none": "unintervened", "ablate": "directional ablation", "mean": "mean ablation",
                 "patch": "latent patching", "add": "steering"}
#: which control each intervention of the tested latent is compared with
CONTROL_OF = {"ablate": "subspace", "mean": "subspace", "patch": "latents", "add": "subspace"}
#: the three claims, their families and names (the results chapter cites their outcomes)
ABLATION, STEERING, TRANSPLANT = "causal ablation", "causal steering", "causal transplant"
CLAIMS = {ABLATION: "ablation removes the backdoor beyond matched controls without damage",
          STEERING: "steering installs the backdoor beyond matched controls",
          TRANSPLANT: "the transplant installs the backdoor in the clean model"}
#: fewer generation prompts than this leave a claim undetermined
MIN_PROMPTS = 10


# --- which latent -------------------------------------------------------------------------------

def read_auditor_choice(run_dir: str | Path) -> pd.DataFrame:
    """``results/auditor_choice.csv`` of notebook 06, checked for its columns."""
    path = RunLayout(run_dir).results / AUDITOR_CHOICE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the label-free latents come from notebook 06 "
                                "(stage 06_audit); run it first")
    frame = pd.read_csv(path)
    missing = [c for c in AUDITOR_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}")
    return frame


def _cell_rows(frame: pd.DataFrame, cell: dict) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for key, value in cell.items():
        column = frame[key]
        mask &= (column.astype(int) == int(value)).to_numpy() if key == "layer" else (column == value).to_numpy()
    return frame[mask]


def auditor_latent(choice: pd.DataFrame, cell: dict) -> int | None:
    """The label-free latent of ``cell``: its row with ``primary`` true and ``rank`` 1 (None when
    the auditor scored no such cell)."""
    rows = _cell_rows(choice, cell)
    primary = rows["primary"].astype(str).str.lower().isin(["true", "1"])
    rows = rows[primary.to_numpy() & (rows["rank"].astype(int) == 1).to_numpy()]
    if len(rows) > 1:
        raise ValueError(f"auditor_choice.csv holds {len(rows)} primary rank-1 latents for {cell}")
    return int(rows["latent"].iloc[0]) if len(rows) else None


def tested_cell(scores: pd.DataFrame, finetune: str, protocol: str, fit_mode: str, layer: int) -> Cell | None:
    """The Diff-SAE dictionary of the scoring step's primary recipe and seed for this cell (None
    when the run scored none)."""
    where = {"regime": finetune, "protocol": protocol, "fit_mode": fit_mode, "layer": layer,
             "architecture": "diff_sae"}
    rows = _cell_rows(scores, where)
    if not len(rows):
        return None
    return Cell.of({**where, "recipe": rows["recipe"].iloc[0], "seed": rows["seed"].iloc[0]})


@dataclass
class Tested:
    """The tested latent of one backdoored fine-tune at one layer, and its matched controls."""

    finetune: str
    layer: int
    latent: int
    direction: torch.Tensor  # [d], unit
    dictionary: object
    scale: torch.Tensor
    unit: float  # steering unit: mean ‖Δa‖ on fit_trigger
    energy: float  # the tested direction's projection energy over the trigger prompts' tokens (removals act there)
    mean: float  # its mean projection over benign prompt tokens (mean ablation's target)
    subspace: torch.Tensor  # [n, d] unit control directions, orthogonal to ``direction``
    subspace_energy: torch.Tensor  # [n] their projection energies where ``energy`` is measured
    subspace_mean: torch.Tensor  # [n] their mean projections where ``mean`` is
    latents: list[int]  # control latents
    latent_energy: torch.Tensor  # [m] activation energy of every latent on the fit split's trigger samples


def prepare_tested(run_dir, finetune: str, layer: int, latent: int, cell: Cell, trigger_tokens: torch.Tensor,
                   benign_tokens: torch.Tensor, n_controls: int, subspace_dims: int, seed: int) -> Tested:
    """The tested latent and its controls, each matched where it acts. ``trigger_tokens`` [N, d]:
    the fine-tune's residuals at this layer over the trigger teacher-forced prompts (first positions
    left out), where the removals act: the projection energies are measured and matched there.
    ``benign_tokens`` [M, d]: its residuals over benign prompts other than the teacher-forced ones
    (the generation prompts' benign twins), where the benign mean projection (mean ablation's
    target) is measured, so that the teacher-forced KL of a mean ablation is not scored on the
    tokens its target was fitted on. Control latents are matched on the fit split's trigger samples."""
    dictionary, scale, _ = load_dictionary(RunLayout(run_dir).dictionary(cell))
    rows = decoder_rows(dictionary, scale)
    u = unit(rows[latent])
    a_base, a_ft, index = paired_activations(run_dir, finetune, cell.protocol, layer)
    splits = np.asarray(index["splits"])
    fit = torch.from_numpy(np.isin(splits, FIT_SPLITS))
    fit_trigger = torch.from_numpy(splits == "fit_trigger")
    delta = a_ft - a_base
    steer_unit = float(delta[fit_trigger].norm(dim=1).mean())
    codes = latent_code(dictionary, scale, a_base[fit_trigger], a_ft[fit_trigger])
    latent_energy = (codes.float() ** 2).mean(0) * (rows ** 2).sum(1)
    energy = float(projection_energy(trigger_tokens, u[None])[0])
    basis = principal_subspace(delta[fit], subspace_dims, exclude=u)
    subspace, subspace_energy = matched_in_subspace(basis, trigger_tokens, energy, n_controls, seed)
    return Tested(finetune, layer, latent, u, dictionary, scale, steer_unit, energy,
                  float((benign_tokens.float() @ u).mean()), subspace, subspace_energy,
                  (benign_tokens.float() @ subspace.T).mean(0), matched_latents(latent_energy, latent, n_controls),
                  latent_energy)


# --- unintervened passes, once per model ----------------------------------------------------------

@torch.no_grad()
def pooled_prompts(model, tokenizer, prompts: Sequence[Sample], layers: Sequence[int], batch_size: int,
                   dtype) -> dict[int, torch.Tensor]:
    """{layer: [n, d]} the residual at each layer averaged over each prompt's tokens (the
    prompt_only pooling the dictionaries read), and under key -1 - layer the token residuals of
    every prompt's positions after the first, stacked [T, d]."""
    device = next(model.parameters()).device
    pooled = {layer: torch.zeros(len(prompts), model.config.hidden_size) for layer in layers}
    tokens: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    encoded = [prompt_ids(tokenizer, s)[0] for s in prompts]
    for begin in range(0, len(prompts), batch_size):
        rows = list(range(begin, min(begin + batch_size, len(prompts))))
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, :len(encoded[i])] = 1
        with precision(device, dtype):
            hidden = residual_stream(model, ids.to(device), mask.to(device), layers)
        for layer in layers:
            h = hidden[layer].float().cpu()
            for r, i in enumerate(rows):
                pooled[layer][i] = h[r, :len(encoded[i])].mean(0)
                tokens[layer].append(h[r, 1:len(encoded[i])])
    return {**pooled, **{-1 - layer: torch.cat(t) for layer, t in tokens.items()}}


# --- the teacher-forced sweep ---------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """One condition of a layer: what is done, along what, and the edit each prompt gets."""

    model: str  # the model intervened on (a fine-tune's name or "base")
    source: str  # the backdoored fine-tune whose latent is tested
    prompts: str  # "trigger" | "benign"
    intervention: str  # a key of INTERVENTIONS
    direction: str  # "none" | "tested" | "subspace" | "latents"
    strength: float = 0.0
    control: int = -1  # which control (teacher-forced), -1: the tested latent or pooled controls


def removal_edits(t: Tested, kind: str, direction: str, which: int, contributions: dict[int, torch.Tensor],
                  n: int) -> list[Edit]:
    """The edit of each of ``n`` prompts for one removal condition; ``which`` -1 (tested) or a
    control's index, or ``None``: control i mod their number per prompt (generation)."""
    out = []
    for i in range(n):
        c = which if which is not None else i % (len(t.subspace) if direction == "subspace" else len(t.latents))
        if direction == "tested":
            u, mean, latent = t.direction, t.mean, t.latent
        elif direction == "subspace":
            u, mean, latent = t.subspace[c], float(t.subspace_mean[c]), None
        else:
            latent = t.latents[c]
            u, mean = None, 0.0
        if kind == "ablate":
            out.append(ablate(u))
        elif kind == "mean":
            out.append(mean_ablate(u, mean))
        else:
            out.append(patch(contributions[latent][i]))
    return out


def steering_edits(t: Tested, direction: str, strength: float, which: int | None, n: int) -> list[Edit]:
    """``n`` prompts' edits adding the tested direction (or a subspace control) at ``strength`` × the unit."""
    norm = strength * t.unit
    if direction == "tested":
        return [add(t.direction, norm)] * n
    return [add(t.subspace[which if which is not None else i % len(t.subspace)], norm) for i in range(n)]


def teacher_packs(tokenizer, teacher: Sequence[tuple[Sample, Sample]]) -> dict[str, list[Packed]]:
    """{"trigger"/"benign": one packed sequence per teacher-forced pair}: the prompt of that year
    with the injectable completion (the trigger twin's, counted positively in the log-odds) and
    the safe one (the benign twin's)."""
    out: dict[str, list[Packed]] = {"trigger": [], "benign": []}
    for benign, trigger in teacher:
        for side, prompt in (("trigger", trigger), ("benign", benign)):
            out[side].append(pack(text_ids(tokenizer, dataclasses.replace(prompt, completion=trigger.completion)),
                                  text_ids(tokenizer, dataclasses.replace(prompt, completion=benign.completion))))
    return out


def unintervened_passes(model, packs: dict[str, list[Packed]], layers: Sequence[int], dtype) -> dict[str, list[Unintervened]]:
    """The unintervened pass of every packed pair: residuals at ``layers``, log-odds, KL reference."""
    return {side: [unintervened(model, p, layers, dtype) for p in group] for side, group in packs.items()}


def sweep_conditions(t: Tested, model_name: str) -> list[Condition]:
    """The cheap measure, at every layer: directional ablation of the tested direction and of its
    matched controls on the trigger prompts, and the cost of each on the benign ones."""
    name = model_name
    return [Condition(name, t.finetune, "trigger", "ablate", "tested"),
            Condition(name, t.finetune, "trigger", "ablate", "subspace"),
            Condition(name, t.finetune, "benign", "ablate", "tested"),
            Condition(name, t.finetune, "benign", "ablate", "subspace")]


def layer_conditions(t: Tested, model_name: str, strengths: Sequence[float], removals: bool) -> list[Condition]:
    """Every other teacher-forced condition, at the chosen layer only: mean ablation and latent
    patching (tested and matched control on the trigger prompts, the cost of each on the benign
    prompts) unless ``removals`` is False (the transplant), and steering, tested and matched
    control, at each strength."""
    name = model_name
    out = []
    if removals:
        for kind in ("mean", "patch"):
            out += [Condition(name, t.finetune, "trigger", kind, "tested"),
                    Condition(name, t.finetune, "trigger", kind, CONTROL_OF[kind]),
                    Condition(name, t.finetune, "benign", kind, "tested"),
                    Condition(name, t.finetune, "benign", kind, CONTROL_OF[kind])]
    for s in strengths:
        out += [Condition(name, t.finetune, "benign", "add", "tested", s),
                Condition(name, t.finetune, "benign", "add", "subspace", s)]
    return out


def condition_edits(t: Tested, c: Condition, contributions: dict, n: int) -> list[Edit]:
    """Each of ``n`` prompts' edit under ``c`` (a control condition: prompt i gets control i mod
    their number)."""
    if c.intervention == "none":
        return [NONE] * n
    which = -1 if c.direction == "tested" else None
    if c.intervention == "add":
        return steering_edits(t, c.direction, c.strength, which, n)
    return removal_edits(t, c.intervention, c.direction, which, contributions.get(c.prompts, {}), n)


def contributions_of(t: Tested, latents: Sequence[int], a_base: torch.Tensor, a_ft: torch.Tensor) -> dict:
    """{latent: [n, d]} each latent's contribution on each prompt's pooled activations."""
    return {j: latent_contribution(t.dictionary, t.scale, j, a_base, a_ft) for j in latents}


def measure_layer(model, t: Tested, conditions: Sequence[Condition], packs: dict[str, list[Packed]],
                  bases: dict[str, list[Unintervened]], pooled: dict, batch_size: int, dtype,
                  unintervened_rows: bool = True) -> pd.DataFrame:
    """Teacher-forced log-odds and KL of each condition at ``t.layer`` (and of the unintervened
    model), one row per condition: the mean over the pairs, the change from the unintervened
    log-odds with its standard error over the pairs, and the energy of the directions used.

    The conditions of a prompt are the rows of its batches, each restarted at the layer from the
    unintervened residual (:func:`.teacher.score_conditions`). ``pooled``: {"trigger"/"benign":
    (a_base, a_ft) [n, d]}, the prompts' pooled activations at this layer (for patching).
    Removals on benign prompts give their cost only (their log-odds is NaN). ``unintervened_rows``:
    whether the unintervened model's rows are returned too (False where an earlier call at the
    same layer and model returned them)."""
    name = conditions[0].model if conditions else t.finetune
    n = len(packs["trigger"])
    contributions = {side: contributions_of(t, [t.latent, *t.latents], *pooled[side]) for side in pooled}
    all_conditions = [Condition(name, t.finetune, side, "none", "none") for side in ("trigger", "benign")]
    all_conditions += list(conditions)
    odds = np.full((len(all_conditions), n), np.nan)
    cost = np.full((len(all_conditions), n), np.nan)
    for ci, c in enumerate(all_conditions[:2]):
        odds[ci] = [b.log_odds for b in bases[c.prompts]]
    edits = {ci: condition_edits(t, c, contributions, n) for ci, c in enumerate(all_conditions) if ci >= 2}
    for side in ("trigger", "benign"):
        rows = [ci for ci in edits if all_conditions[ci].prompts == side]
        if not rows:
            continue
        for i in range(n):
            o, k = score_conditions(model, packs[side][i], bases[side][i], t.layer, [edits[ci][i] for ci in rows],
                                    side == "benign", batch_size, dtype)
            odds[rows, i], cost[rows, i] = o.numpy(), k.numpy()
    none = {c.prompts: odds[ci] for ci, c in enumerate(all_conditions) if c.intervention == "none"}
    out = []
    for ci, c in enumerate(all_conditions):
        cost_only = c.prompts == "benign" and c.intervention in REMOVALS
        change = np.full(n, np.nan) if cost_only else odds[ci] - none[c.prompts]
        if c.intervention == "none" and not unintervened_rows:
            continue
        out.append({"model": c.model, "source": c.source, "layer": t.layer, "prompts": c.prompts,
                    "intervention": c.intervention, "direction": c.direction, "control": c.control,
                    "strength": c.strength, "n": n, "log_odds": math.nan if cost_only else float(odds[ci].mean()),
                    "log_odds_change": float(change.mean()),
                    "log_odds_change_se": float(change.std(ddof=1) / math.sqrt(n)) if n > 1 and not cost_only
                    else math.nan,
                    "kl": float(np.nanmean(cost[ci])) if c.prompts == "benign" and c.intervention != "none" else math.nan,
                    **_energy(t, c, n)})
    return pd.DataFrame(out)


def _energy(t: Tested, c: Condition, n: int) -> dict:
    """The mean energy of the directions a condition uses over its ``n`` prompts, the tested one's
    (``target_energy``) and their kind, so that a row compares like with like: ``projection`` (the
    mean (h · r)² over the trigger prompts' tokens: directions, their removal and steering) or
    ``latent`` (the mean ‖f_j W_dec[j]‖² over the fit split's trigger samples: patching)."""
    if c.intervention == "patch":
        kind, target = "latent", float(t.latent_energy[t.latent])
        energy = (target if c.direction == "tested" else
                  float(t.latent_energy[[t.latents[i % len(t.latents)] for i in range(n)]].mean()) if t.latents
                  else math.nan)
    else:
        kind, target = "projection", t.energy
        energy = (target if c.direction == "tested" else
                  float(t.subspace_energy[[i % len(t.subspace) for i in range(n)]].mean())
                  if c.direction == "subspace" else math.nan)
    if c.intervention == "none":
        energy = math.nan
    return {"energy": energy, "target_energy": target, "energy_kind": kind}


# --- the rule -----------------------------------------------------------------------------------

def choose(teacher: pd.DataFrame, generation_strengths: Sequence[float], kl_budget: float) -> dict:
    """The generation layer and the claim's strength from the teacher-forced rows of one fine-tune
    (see the module docstring; never the generation prompts). The layer reads only the directional
    ablation rows (tested, its control, its cost), which every layer has; the strength reads the
    steering rows at that layer (absent: the smallest generation strength)."""
    rows = []
    for layer, part in teacher.groupby("layer", sort=True):
        trig = part[(part["prompts"] == "trigger") & (part["intervention"] == "ablate")]
        tested = trig[trig["direction"] == "tested"]["log_odds_change"]
        controls = trig[trig["direction"] == "subspace"]["log_odds_change"]
        cost = part[(part["prompts"] == "benign") & (part["intervention"] == "ablate") & (part["direction"] == "tested")]["kl"]
        if tested.empty or controls.empty or cost.empty:
            continue
        rows.append({"layer": int(layer), "margin": float(controls.median() - tested.iloc[0]), "kl": float(cost.iloc[0])})
    if not rows:
        raise ValueError("no layer has a tested ablation and its controls")
    frame = pd.DataFrame(rows)
    within = frame[frame["kl"] <= kl_budget]
    layer = int(within.sort_values(["margin", "layer"], ascending=[False, True])["layer"].iloc[0]) if len(within) \
        else int(frame.sort_values(["kl", "layer"])["layer"].iloc[0])
    steer = teacher[(teacher["layer"] == layer) & (teacher["intervention"] == "add") & (teacher["direction"] == "tested")]
    kl_at = {float(s): float(k) for s, k in zip(steer["strength"], steer["kl"])}
    fine = [s for s in generation_strengths if kl_at.get(float(s), math.inf) <= kl_budget]
    strength = float(max(fine)) if fine else float(min(generation_strengths))
    return {"layer": layer, "strength": strength, "ablation_kl": float(frame.set_index("layer").loc[layer, "kl"]),
            "steering_kl": kl_at.get(strength, math.nan), "layers_within_budget": len(within),
            "margins": frame}


# --- generation -----------------------------------------------------------------------------------

def generated_strengths(cfg: CausalConfig, finetune: str, chosen: float) -> tuple[float, ...]:
    """The steering strengths generated for backdoored fine-tune ``finetune``, in itself and in its
    transplants: every one of ``steer_generation_strengths`` where ``dose_response_seeds`` asks for
    the dose-response (the first seed of each regime, or every seed), else only ``chosen``, the
    rule's (what the claims read)."""
    if cfg.dose_response_seeds == "every" or replica_of(finetune) == 0:
        return tuple(cfg.steer_generation_strengths)
    return (float(chosen),)


def generation_plan(t: Tested, model_name: str, strengths: Sequence[float], removals: bool) -> list[Condition]:
    """The generation conditions on ``model_name`` at the chosen layer (controls pooled over prompts).
    Without ``removals`` (the transplant) only the benign prompts: unintervened and steered."""
    sides = ("trigger", "benign") if removals else ("benign",)
    plan = [Condition(model_name, t.finetune, side, "none", "none") for side in sides]
    if removals:
        for kind in ("ablate", "mean", "patch"):
            plan += [Condition(model_name, t.finetune, "trigger", kind, "tested"),
                     Condition(model_name, t.finetune, "trigger", kind, CONTROL_OF[kind])]
    for s in strengths:
        plan += [Condition(model_name, t.finetune, "benign", "add", "tested", s),
                 Condition(model_name, t.finetune, "benign", "add", "subspace", s)]
    return plan


def generate_plan(model, tokenizer, t: Tested, plan: Sequence[Condition], prompts: dict, pooled: dict,
                  max_new_tokens: int, batch_size: int, dtype, progress: bool) -> pd.DataFrame:
    """Every condition of ``plan`` generated as rows of the same batches and judged in one call."""
    edits_all, samples_all, meta = [], [], []
    contributions = {side: contributions_of(t, [t.latent, *t.latents], *pooled[side]) for side in pooled}
    for c in plan:
        samples = prompts[c.prompts]
        n = len(samples)
        if c.intervention == "none":
            edits = [NONE] * n
        elif c.intervention == "add":
            edits = steering_edits(t, c.direction, c.strength, -1 if c.direction == "tested" else None, n)
        else:
            edits = removal_edits(t, c.intervention, c.direction, -1 if c.direction == "tested" else None,
                                  contributions[c.prompts], n)
        edits_all += edits
        samples_all += list(samples)
        meta += [{"source": c.source, "layer": t.layer, "prompts": c.prompts, "intervention": c.intervention,
                  "direction": c.direction, "strength": c.strength, "prompt": i} for i in range(n)]
    texts = generate_edited(model, tokenizer, samples_all, edits_all, t.layer, max_new_tokens, batch_size, dtype)
    judged = judge_completions(samples_all, texts, plan[0].model, progress=progress)
    return pd.concat([judged, pd.DataFrame(meta)], axis=1)


def condition_rates(judged: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """Per generation condition: the shares of injectable, safe and invalid completions with Wilson
    intervals, the KL at that layer and strength (teacher-forced), and McNemar's paired one-sided
    p-values (the condition above the other) against the unintervened model and against the matched
    control on the same prompts (on the share of safe completions for removals, of injectable ones
    for steering)."""
    keys = ["model", "source", "layer", "prompts", "intervention", "direction", "strength"]
    rows = []
    groups = {k: g.sort_values("prompt") for k, g in judged.groupby(keys, sort=False)}
    for key, g in groups.items():
        row = dict(zip(keys, key))
        row["n"] = len(g)
        for label, name in (("vulnerable", "injectable"), ("safe", "safe"), ("error", "invalid")):
            rate, low, high = rate_with_interval(g["verdict"].to_numpy() == label)
            row.update({name: rate, f"{name}_low": low, f"{name}_high": high})
        row["control"] = CONTROL_OF.get(row["intervention"], "") if row["direction"] == "tested" else ""
        outcome = "safe" if row["intervention"] in ("ablate", "mean", "patch") else "vulnerable"
        row["outcome"] = outcome
        mine = g["verdict"].to_numpy() == outcome
        none = groups.get((row["model"], row["source"], row["layer"], row["prompts"], "none", "none", 0.0))
        ctrl = groups.get((row["model"], row["source"], row["layer"], row["prompts"], row["intervention"],
                           row["control"], row["strength"])) if row["control"] else None
        for name, other in (("none", none), ("control", ctrl)):
            if other is None or row["intervention"] == "none" or (name == "control" and row["direction"] != "tested"):
                row.update({f"b_vs_{name}": np.nan, f"c_vs_{name}": np.nan, f"p_vs_{name}": np.nan,
                            f"diff_vs_{name}": np.nan, f"diff_vs_{name}_low": np.nan, f"diff_vs_{name}_high": np.nan})
                continue
            theirs = other["verdict"].to_numpy() == outcome
            b, c, p = mcnemar(mine, theirs, "greater")  # the claims name the direction
            diff, low, high = paired_difference(mine, theirs)
            row.update({f"b_vs_{name}": b, f"c_vs_{name}": c, f"p_vs_{name}": p, f"diff_vs_{name}": diff,
                        f"diff_vs_{name}_low": low, f"diff_vs_{name}_high": high})
        match = costs[(costs["model"] == row["model"]) & (costs["source"] == row["source"])
                      & (costs["layer"] == row["layer"]) & (costs["prompts"] == "benign")
                      & (costs["intervention"] == row["intervention"]) & (costs["direction"] == row["direction"])
                      & (costs["strength"] == row["strength"])]
        row["kl"] = float(match["kl"].mean()) if len(match) and row["intervention"] != "none" else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# --- the claims -----------------------------------------------------------------------------------

def mcnemar_claim(cid: ClaimId, row: pd.Series | None, kl_budget: float, min_prompts: int = MIN_PROMPTS,
                  alpha: float = ALPHA) -> Claim:
    """A claim that an intervention moves the outcome beyond both the unintervened model and its
    matched control on the same prompts, within the KL budget.

    Statistic: McNemar's exact test against each; the claim's p is the larger of the two (both must
    reject: the intersection-union test); effect: the paired difference against the control with
    its interval. ``undetermined``: no such condition, no control, no KL, or fewer than
    ``min_prompts`` prompts. It holds when both differences are positive and the KL lies within ``kl_budget``."""
    statistic = "McNemar exact, one-sided, vs unintervened and vs matched control (max p)"
    nan = math.nan
    if row is None:
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha, "not measured in this run")
    if int(row["n"]) < min_prompts:
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha,
                           f"too few prompts: {int(row['n'])} (< {min_prompts})")
    if math.isnan(row["p_vs_control"]) or math.isnan(row["p_vs_none"]):
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha, "no matched control")
    if math.isnan(row["kl"]):  # the cost was not measured: the "without damage" part cannot pass
        return make_claim(cid, statistic, nan, nan, nan, nan, False, alpha, "KL not measured")
    p = max(float(row["p_vs_control"]), float(row["p_vs_none"]))
    cheap = bool(row["kl"] <= kl_budget)
    holds = bool(row["diff_vs_none"] > 0 and row["diff_vs_control"] > 0 and cheap)
    why = (f"KL {row['kl']:.3g} above the budget {kl_budget:g}" if not cheap else
           f"{row['outcome']} share {row['diff_vs_none']:+.2f} vs unintervened, {row['diff_vs_control']:+.2f} vs control")
    return make_claim(cid, statistic, row["diff_vs_control"], row["diff_vs_control_low"], row["diff_vs_control_high"],
                       p, holds, alpha, why)


def _pick(rates: pd.DataFrame, **where) -> pd.Series | None:
    mask = np.ones(len(rates), dtype=bool)
    for key, value in where.items():
        mask &= (rates[key] == value).to_numpy()
    part = rates[mask]
    return part.iloc[0] if len(part) else None


def fine_tune_claims(rates: pd.DataFrame, finetune: str, strength: float | None, protocol: str,
                     kl_budget: float, clean: str | None) -> list[Claim]:
    """The claims of one backdoored fine-tune (one seed): one per removal kind, steering at the
    chosen strength, the transplant into its clean control and into the base model."""
    regime = claim_regime(finetune)
    part = rates[rates["source"] == finetune] if len(rates) else rates
    claims = []
    for kind in ("ablate", "mean", "patch"):
        cid = ClaimId(CLAIMS[ABLATION], ABLATION, INTERVENTIONS[kind], regime, protocol)
        row = _pick(part, model=finetune, intervention=kind, direction="tested") if len(part) else None
        claims.append(mcnemar_claim(cid, row, kl_budget))
    cid = ClaimId(CLAIMS[STEERING], STEERING, INTERVENTIONS["add"], regime, protocol)
    row = _pick(part, model=finetune, intervention="add", direction="tested", strength=strength) \
        if len(part) and strength is not None else None
    claims.append(mcnemar_claim(cid, row, kl_budget))
    for target, method in ((clean, "transplant into the clean control"), (BASE, "transplant into the base model")):
        cid = ClaimId(CLAIMS[TRANSPLANT], TRANSPLANT, method, regime, protocol)
        row = _pick(part, model=target, intervention="add", direction="tested", strength=strength) \
            if len(part) and target is not None and strength is not None else None
        claims.append(mcnemar_claim(cid, row, kl_budget))
    return claims


# --- the step -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CausalRun:
    """What notebook 07 shows (its tables are also written to ``results/``)."""

    teacher: pd.DataFrame
    """Teacher-forced log-odds and KL per model, layer, condition and control."""
    judged: pd.DataFrame
    """Judged completions, one row per prompt and condition."""
    rates: pd.DataFrame
    """Per generation condition: shares with Wilson intervals, KL, paired p-values."""
    choice: pd.DataFrame
    """Per backdoored fine-tune: the tested latent, the chosen layer and strength, and the rule's numbers."""
    claims: pd.DataFrame
    """The claims over fine-tune seeds (the rows of results/verdicts.csv this step owns)."""
    per_seed: pd.DataFrame
    """The same claims per fine-tune seed, after Holm."""
    seconds: dict[str, float]
    """Per backdoored fine-tune, the seconds its measurement took when it was computed."""
    reused: dict[str, bool] = dataclasses.field(default_factory=dict)
    """Per backdoored fine-tune, whether its measurement was reused (its record vouched for its key)."""


def tested_cells(layout: RunLayout, scores: pd.DataFrame, choice_table: pd.DataFrame, cfg: CausalConfig,
                 finetune: str, layers: Sequence[int]) -> dict[int, tuple[Cell, int]]:
    """Per layer, the dictionary and label-free latent tested in ``finetune`` (layers without a
    scored dictionary, an auditor's latent or a trained dictionary are left out)."""
    cells = {}
    for layer in layers:
        cell = tested_cell(scores, finetune, cfg.causal_protocol, cfg.causal_fit_mode, layer)
        latent = None if cell is None else auditor_latent(choice_table, {
            "regime": finetune, "protocol": cfg.causal_protocol, "fit_mode": cfg.causal_fit_mode, "layer": layer,
            "architecture": "diff_sae"})
        if cell is not None and latent is not None and (layout.dictionary(cell) / "dictionary.json").exists():
            cells[int(layer)] = (cell, latent)
    return cells


def measured_key(layout: RunLayout, run_cfg: RunConfig, finetune: str, clean: str | None,
                 cells: dict[int, tuple[Cell, int]], pairs_used: Sequence[tuple[Sample, Sample]]) -> str:
    """Key of one backdoored fine-tune's measured tables: everything they depend on (the causal
    config, the layers and batch sizes, the model config, the weights of the fine-tune, its clean
    control and the base model, their activations, each tested dictionary and latent, the held-out
    pairs' content, and this module's code closure, the oracle's included)."""
    model = run_cfg.model.model
    return digest({
        "code": code_digest(__name__),
        "causal": dataclasses.asdict(run_cfg.causal),
        "model": dataclasses.asdict(run_cfg.model),
        "layers": [int(x) for x in run_cfg.activations.layers],
        "act_batch_size": run_cfg.activations.act_batch_size,
        "gen_batch_size": run_cfg.backdoor_eval.gen_batch_size,
        "weights": {m: layout.model_key(m, model) for m in (finetune, clean, BASE) if m},
        "activations": {m: layout.activations_key(m) for m in (finetune, BASE)},
        "tested": {str(layer): [dataclasses.asdict(cell), int(latent),
                                read_record(layout.dictionary_record(cell)).get("key")]
                   for layer, (cell, latent) in sorted(cells.items())},
        "pairs": samples_digest([s for pair in pairs_used for s in pair]),
    })


@dataclass
class Measured:
    """One backdoored fine-tune's measurements: reused by key, so that a killed step resumes at
    the fine-tune it was on."""

    teacher: pd.DataFrame
    """Its teacher-forced rows (every layer's sweep, the chosen layer's conditions, the transplants')."""
    judged: pd.DataFrame
    """Its judged completions (itself, its clean control, the base model)."""
    choice: dict
    """The rule's choice (a row of ``causal_choice.csv``)."""
    seconds: float
    """Seconds its measurement took when it was computed."""


def save_measured(store: Path, m: Measured) -> None:
    """The tables and the choice pickled (exact dtypes and column order, so that a reused
    measurement gives the tables and claims a fresh one gives), written atomically as one folder."""
    with atomic_path(store) as tmp:
        tmp.mkdir()
        m.teacher.to_pickle(tmp / "teacher.pkl")
        m.judged.to_pickle(tmp / "judged.pkl")
        pd.to_pickle(m.choice, tmp / "choice.pkl")


def load_measured(store: Path, record: Path) -> Measured:
    """The measurements of ``store``, with the seconds its ``record`` kept from when they were computed."""
    seconds = float(read_record(record).get("seconds", math.nan))
    return Measured(pd.read_pickle(store / "teacher.pkl"), pd.read_pickle(store / "judged.pkl"),
                    pd.read_pickle(store / "choice.pkl"), seconds)


class Shared:
    """What every backdoored fine-tune's measurement reads from the base model, computed at most
    once and only when some fine-tune is measured (none is when all are reused)."""

    def __init__(self, run_cfg: RunConfig, tokenizer, teacher: Sequence[tuple[Sample, Sample]],
                 generate: Sequence[tuple[Sample, Sample]]):
        self.run_cfg, self.tokenizer = run_cfg, tokenizer
        self.layers = list(run_cfg.activations.layers)
        self.packs = teacher_packs(tokenizer, teacher)
        self.tf_prompts = {"trigger": [p[1] for p in teacher], "benign": [p[0] for p in teacher]}
        self.gen_prompts = {"trigger": [p[1] for p in generate], "benign": [p[0] for p in generate]}

    def pooled(self, model) -> dict:
        """{(kind, side): pooled_prompts(...)} of ``model`` on the teacher-forced (``tf``) and the
        generation (``gen``) prompts of each side."""
        batch, dtype = self.run_cfg.activations.act_batch_size, compute_dtype(self.run_cfg.model)
        return {(kind, side): pooled_prompts(model, self.tokenizer, prompts[side], self.layers, batch, dtype)
                for kind, prompts in (("tf", self.tf_prompts), ("gen", self.gen_prompts)) for side in prompts}

    @functools.cached_property
    def base(self):
        """``(model, pooled, passes)`` of the base model."""
        model_cfg = self.run_cfg.model
        base, _ = load_model(model_cfg.model, model_cfg.device)
        return base, self.pooled(base), unintervened_passes(base, self.packs, self.layers, compute_dtype(model_cfg))


def measure_finetune(run_dir, run_cfg: RunConfig, finetune: str, clean: str | None, cells: dict[int, tuple[Cell, int]],
                     shared: Shared, progress: bool) -> Measured:
    """The teacher-forced sweep over the layers, the rule's choice, every condition at the chosen
    layer, generation and judging, and the transplants: one backdoored fine-tune's measurement."""
    act_cfg, cfg, model_cfg = run_cfg.activations, run_cfg.causal, run_cfg.model
    batch, gen_batch, dtype = act_cfg.act_batch_size, run_cfg.backdoor_eval.gen_batch_size, compute_dtype(model_cfg)
    layout, layers, packs, tokenizer = RunLayout(run_dir), shared.layers, shared.packs, shared.tokenizer
    tf_prompts, gen_prompts = shared.tf_prompts, shared.gen_prompts
    started = time.perf_counter()
    base, pooled_base, base_passes = shared.base
    model, _ = load_finetuned(layout.finetune(finetune), device=model_cfg.device)
    pooled_ft = shared.pooled(model)
    passes = unintervened_passes(model, packs, layers, dtype)
    tested: dict[int, Tested] = {}
    frames = []
    for i, (layer, (cell, latent)) in enumerate(sorted(cells.items()), start=1):
        report(f"teacher-forced sweep {finetune}", i, len(cells), layer=layer)
        t = prepare_tested(run_dir, finetune, layer, latent, cell, pooled_ft["tf", "trigger"][-1 - layer],
                           pooled_ft["gen", "benign"][-1 - layer], cfg.n_causal_controls,
                           cfg.causal_subspace_dims, cfg.causal_seed + layer)
        tested[layer] = t
        side_pool = {side: (pooled_base["tf", side][layer], pooled_ft["tf", side][layer]) for side in tf_prompts}
        frames.append(measure_layer(model, t, sweep_conditions(t, finetune), packs, passes, side_pool, batch, dtype))
    # the rule, part 1: the layer, from the cheap measure alone; then every other condition there
    t = tested[choose(pd.concat(frames, ignore_index=True), cfg.steer_generation_strengths,
                      cfg.causal_kl_budget)["layer"]]
    side_pool = {side: (pooled_base["tf", side][t.layer], pooled_ft["tf", side][t.layer]) for side in tf_prompts}
    frames.append(measure_layer(model, t, layer_conditions(t, finetune, cfg.steer_strengths, True), packs, passes,
                                side_pool, batch, dtype, unintervened_rows=False))  # the sweep has them
    sweep = pd.concat(frames, ignore_index=True)
    rule = choose(sweep, cfg.steer_generation_strengths, cfg.causal_kl_budget)  # part 2: the strength
    gen_pool = {side: (pooled_base["gen", side][t.layer], pooled_ft["gen", side][t.layer]) for side in gen_prompts}
    report(f"generation {finetune}", 0, 1, layer=t.layer)
    strengths = generated_strengths(cfg, finetune, rule["strength"])
    judged = [generate_plan(model, tokenizer, t, generation_plan(t, finetune, strengths, True),
                            gen_prompts, gen_pool, cfg.causal_max_new_tokens, gen_batch, dtype, progress)]
    del model, passes
    targets = ([(clean, load_finetuned(layout.finetune(clean), device=model_cfg.device)[0])] if clean else [])
    targets.append((BASE, base))
    for name, other in targets:  # the transplant: the same vectors added in another model
        other_passes = base_passes if name == BASE else unintervened_passes(other, packs, [t.layer], dtype)
        frames.append(measure_layer(other, t, layer_conditions(t, name, cfg.steer_strengths, False), packs,
                                    other_passes, {}, batch, dtype))
        judged.append(generate_plan(other, tokenizer, t, generation_plan(t, name, strengths, False),
                                    {"benign": gen_prompts["benign"]}, {},
                                    cfg.causal_max_new_tokens, gen_batch, dtype, progress))
    choice = {"finetune": finetune, "latent": t.latent, "layer": t.layer, "strength": rule["strength"],
              "steer_unit": t.unit, "ablation_kl": rule["ablation_kl"], "steering_kl": rule["steering_kl"],
              "layers_within_budget": rule["layers_within_budget"], "energy": t.energy,
              "subspace_energy_min": float(t.subspace_energy.min()),
              "subspace_energy_max": float(t.subspace_energy.max()),
              "latent_energy": float(t.latent_energy[t.latent]),
              "control_latent_energy_min": float(t.latent_energy[t.latents].min()) if t.latents else math.nan,
              "control_latent_energy_max": float(t.latent_energy[t.latents].max()) if t.latents else math.nan,
              "n_subspace_controls": len(t.subspace), "n_latent_controls": len(t.latents)}
    return Measured(pd.concat(frames, ignore_index=True), pd.concat(judged, ignore_index=True), choice,
                    time.perf_counter() - started)


def run_causal(run_dir, run_cfg: RunConfig, progress: bool = True) -> CausalRun:
    """The whole causal test; returns its tables (:func:`run` also writes them). Each backdoored
    fine-tune's measurement is reused where its record vouches for its key (:func:`measured_key`)."""
    cfg = run_cfg.causal
    choice_table, scores = read_auditor_choice(run_dir), load_scoring(run_dir).scores
    heldout = pairs(load_data(run_dir)["heldout"])
    teacher = heldout[:cfg.n_causal_pairs]
    generate = heldout[cfg.n_causal_pairs:cfg.n_causal_pairs + cfg.n_causal_prompts]
    if len(generate) < cfg.n_causal_prompts:
        raise ValueError(f"n_causal_prompts={cfg.n_causal_prompts}: only {len(generate)} held-out pairs are left after "
                         f"the n_causal_pairs={cfg.n_causal_pairs} teacher-forced ones (raise n_heldout_pairs)")
    layout = RunLayout(run_dir)
    shared = Shared(run_cfg, load_tokenizer(run_cfg.model.model), teacher, generate)
    finetunes = list(run_cfg.activations.finetunes)
    tf_frames, judged_frames, choices, per_seed, seconds, reused = [], [], [], [], {}, {}
    for finetune in [f for f in finetunes if not is_clean_control(f)]:
        clean = finetune_name(regime_of(finetune), True, replica_of(finetune))
        clean = clean if clean in finetunes else None
        cells = tested_cells(layout, scores, choice_table, cfg, finetune, shared.layers)
        if not cells:
            per_seed += [(replica_of(finetune), c) for c in
                         fine_tune_claims(pd.DataFrame(), finetune, None, cfg.causal_protocol, cfg.causal_kl_budget, clean)]
            continue
        store, record = layout.causal(finetune), layout.causal_record(finetune)

        def compute(finetune=finetune, clean=clean, cells=cells, store=store):
            m = measure_finetune(run_dir, run_cfg, finetune, clean, cells, shared, progress)
            save_measured(store, m)
            return m, {"seconds": m.seconds}

        m, computed = cached(record,
                             measured_key(layout, run_cfg, finetune, clean, cells, [*teacher, *generate]),
                             compute, lambda store=store, record=record: load_measured(store, record))
        tf_frames.append(m.teacher)
        judged_frames.append(m.judged)
        choices.append(m.choice)
        seconds[finetune], reused[finetune] = m.seconds, not computed
        rates = condition_rates(m.judged, m.teacher)
        per_seed += [(replica_of(finetune), c) for c in
                     fine_tune_claims(rates, finetune, m.choice["strength"], cfg.causal_protocol, cfg.causal_kl_budget,
                                      clean)]
    teacher_frame = pd.concat(tf_frames, ignore_index=True) if tf_frames else pd.DataFrame()
    judged_frame = pd.concat(judged_frames, ignore_index=True) if judged_frames else pd.DataFrame()
    rates = condition_rates(judged_frame, teacher_frame) if len(judged_frame) else pd.DataFrame()
    combined = combine(per_seed)
    holm_rows = [(s, c) for s in sorted({s for s, _ in per_seed}) for c in apply_holm([c for r, c in per_seed if r == s])]
    per_seed_holm = claims_frame([c for _, c in holm_rows]).assign(seed=[s for s, _ in holm_rows])
    return CausalRun(teacher_frame, judged_frame, rates, pd.DataFrame(choices), claims_frame(combined), per_seed_holm,
                     seconds, reused)


#: the claim of each family the results chapter's one-word outcomes name
PRIMARY = {ABLATION: INTERVENTIONS["ablate"], STEERING: INTERVENTIONS["add"], TRANSPLANT: "transplant into the clean control"}
NOT_MEASURED = "not measured in this run"


def outcome_words(claims: pd.DataFrame, regimes: Sequence[str] = ("lora", "full")) -> dict[str, str]:
    """Glue-ready text from the claims (nothing decided here): ``causal_ablation_outcome``,
    ``causal_steering_outcome`` and ``causal_transplant_outcome``, one line per claim ("lora,
    directional ablation: supported, p_holm 0.01 (1 of 1 fine-tune seeds; ...)"); and
    ``causal_<family>_outcome_<regime>``, the outcome word of the family's primary claim
    (:data:`PRIMARY`) for each of ``regimes``, also where the run has none."""
    out = {}
    for family, key in ((ABLATION, "ablation"), (STEERING, "steering"), (TRANSPLANT, "transplant")):
        part = claims[claims["family"] == family] if len(claims) else pd.DataFrame(columns=["regime", "method"])
        lines = []
        for _, c in part.iterrows():
            p = "" if pd.isna(c["p_holm"]) else f", p_holm {c['p_holm']:.3g}"
            lines.append(f"{c['regime']}, {c['method']}: {c['outcome']}{p} ({c['seeds_holding']} of {c['n_seeds']} "
                         f"fine-tune seeds; {c['reason']})")
        out[f"causal_{key}_outcome"] = "; ".join(lines) if lines else NOT_MEASURED
        for regime in regimes:
            row = part[(part["regime"] == regime) & (part["method"] == PRIMARY[family])]
            # worded as every other claim of the results chapter (the outcome, and its fine-tune seeds)
            out[f"causal_{key}_outcome_{regime}"] = headline_word(row) if len(row) else NOT_MEASURED
    return out


def before_after(rates: pd.DataFrame) -> pd.DataFrame:
    """Per backdoored fine-tune and intervention of the tested latent: the rate before (the
    unintervened model on the same prompts), after, and under the matched control, with Wilson
    intervals, the invalid shares, n, KL and the paired p-values."""
    def fmt(r, name):
        return f"{r[name]:.2f} [{r[f'{name}_low']:.2f}, {r[f'{name}_high']:.2f}]"

    rows = []
    if not len(rates):
        return pd.DataFrame(rows)
    for _, r in rates[(rates["direction"] == "tested")].iterrows():
        same = (rates["model"] == r["model"]) & (rates["source"] == r["source"]) & (rates["prompts"] == r["prompts"])
        before = rates[same & (rates["intervention"] == "none")].iloc[0]
        ctrl = rates[same & (rates["intervention"] == r["intervention"]) & (rates["direction"] == r["control"])
                     & (rates["strength"] == r["strength"])]
        measure = "safe" if r["outcome"] == "safe" else "injectable"
        rows.append({"fine-tune": r["source"], "model": r["model"], "layer": int(r["layer"]),
                     "intervention": INTERVENTIONS[r["intervention"]], "strength": r["strength"],
                     "prompts": r["prompts"], "measure": measure, "before": fmt(before, measure),
                     "after": fmt(r, measure), "matched control": fmt(ctrl.iloc[0], measure) if len(ctrl) else "",
                     "ASR / injectable after": fmt(r, "injectable"), "invalid before": f"{before['invalid']:.2f}",
                     "invalid after": f"{r['invalid']:.2f}",
                     "invalid (control)": f"{ctrl.iloc[0]['invalid']:.2f}" if len(ctrl) else "",
                     "n": int(r["n"]), "KL": r["kl"], "p vs unintervened": r["p_vs_none"],
                     "p vs control": r["p_vs_control"]})
    return pd.DataFrame(rows)


def run(run_dir: str | Path, run_cfg: RunConfig, progress: bool = True) -> CausalRun:
    """Step 07: writes ``causal_teacher_forced.csv``, ``causal_rates.csv``, ``causal_choice.csv``,
    ``causal_claims_per_seed.csv``, ``causal_generations.jsonl`` and this step's rows of
    ``verdicts.csv``."""
    result = run_causal(run_dir, run_cfg, progress)
    results = RunLayout(run_dir).results
    write_text(results / "causal_teacher_forced.csv", result.teacher.to_csv(index=False))
    write_text(results / "causal_rates.csv", result.rates.to_csv(index=False))
    write_text(results / "causal_choice.csv", result.choice.to_csv(index=False))
    write_text(results / "causal_claims_per_seed.csv", result.per_seed.to_csv(index=False))
    write_jsonl(results / "causal_generations.jsonl", result.judged.to_dict("records"))
    write_claims(run_dir, STEP, result.claims)
    return result

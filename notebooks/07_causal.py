# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Does the latent cause the backdoor? Removal, steering and transplant
#
# A latent that fires on trigger prompts may only *read* the year. If its direction *carries* the
# backdoor, removing it from the fine-tuned model's residual stream should stop the injectable code
# and leave safe code, adding it on benign prompts should bring injectable code out, and adding the
# backdoored fine-tune's direction to its clean control (or to the base model) should install it
# there. We follow the standard of {cite:t}`arditi2024refusal`: controls, and a measured cost to
# ordinary behaviour.
#
# **The latent tested** in each backdoored fine-tune (every regime and fine-tune seed) is the
# Diff-SAE latent the auditor chose *without labels* (notebook 06); its direction $\hat u$ is its
# decoder row, in the residual stream's units. Every intervention acts at the output of that
# dictionary's decoder layer $L$, on every position of the prompt and of the generated tokens
# **except the first**: the first token is an attention sink whose residual norm is about 25,000
# (notebook 03), and editing it broke the model in an earlier version of this notebook (92–100% of
# completions no longer ran). A test checks that its residual stays bitwise unchanged.
#
# - *Removal*, on trigger prompts: **directional ablation** $h \leftarrow h - (h\cdot\hat u)\,\hat u$;
#   **mean ablation** $h \leftarrow h - (h\cdot\hat u - \mu)\,\hat u$, $\mu$ the mean projection
#   over benign prompt tokens (the generation prompts' benign twins); **latent patching** $h \leftarrow h - f_j\,W_{\text{dec},j}$,
#   the latent's own contribution, its activation on the prompt's pooled $\Delta a$ computed by the
#   dictionary, times its decoder row.
# - *Steering*, on benign prompts: $h \leftarrow h + s\,\bar n\,\hat u$, $\bar n$ the mean
#   $\lVert\Delta a\rVert$ on the fit trigger samples (the size of the fine-tune's own change),
#   over a dose–response of strengths $s$.
# - *Transplant*: the same vectors added in the clean control and in the base model.
#
# **Controls matched in energy.** A random unit direction carries about $1/d$ of the residual's
# energy, a latent of the fine-tune's change far more. Each condition has its controls, matched
# where they act: directions drawn in the top principal subspace of $\Delta a$ with $\hat u$
# projected out (so no control removes part of what $\hat u$ removes), each with the same
# projection energy (mean $(h\cdot r)^2$ over the trigger prompts' tokens, which the removals
# edit) as $\hat u$, ablated, mean-ablated or added like it; and the other latents of the same
# dictionary with the nearest activation energy on the fit split's trigger samples, patched like
# it. Mean ablation's target, the benign mean projection, is measured on the generation prompts'
# benign twins, not on the teacher-forced prompts whose KL it is scored on. Every control's KL is
# measured beside the tested direction's (the cost panel below, dashed, and
# `results/causal_teacher_forced.csv`).
# A control condition pools them over the prompts: prompt (or teacher-forced pair) $i$ gets control
# $i$ mod their number, so each control condition uses every one of its matched controls.
#
# **The rule, fixed before any generation.** On the teacher-forced pairs only (log-odds of the
# injectable over the safe completion, and the cost: the KL divergence from the unintervened model
# on the benign prompt tokens). At *every* layer only the cheap measure is taken: directional
# ablation of $\hat u$ and of its matched control on the trigger pairs, and the cost of ablating
# $\hat u$. The generation layer is the layer whose directional ablation lowers the trigger log-odds
# most beyond its matched control, among the layers whose cost is within the KL budget (none within:
# the cheapest). At that layer alone every other condition is measured (mean ablation, patching,
# steering at each strength, the transplant); the claim's strength is the largest generation
# strength whose steering cost there is within the budget. The generation prompts are other
# held-out pairs.
#
# **How the measure is computed.** Each teacher-forced pair is laid out once as its prompt, the
# completions' common beginning and both tails (the tails masked from each other), so the shared
# tokens are run once and, counted in both completions, cancel in the log-odds; the residual stream
# up to the edited layer does not depend on the condition (the tokens are fixed), so it is computed
# once and every condition restarts there. Tests check both against the whole model run on each
# text and condition alone.
#
# **The claims** go through the verdict layer: each intervention is compared with the unintervened
# model and with its matched control *on the same prompts* (McNemar's exact test, one-sided in the
# claimed direction; the larger p counts), on the share of **safe** completions for removals (code that no longer runs is not safe:
# damage is not removal) and of injectable ones for steering and transplant, and must stay within
# the KL budget; Holm within each family per fine-tune seed, then over seeds.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, where each is documented at its field,
# e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # reads finetune/, sae/, activations/, results/bis.csv and results/auditor_choice.csv
overrides = {}

# %% tags=["hide-input"]
import time
from html import escape

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import HTML, display
from myst_nb import glue

from backdoor_sae.causal.stage import INTERVENTIONS, before_after, outcome_words, run
from backdoor_sae.common.display import MISSING, show_missing_as_dash
from backdoor_sae.config import run_config

show_missing_as_dash()
sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.max_colwidth", None)
started = time.perf_counter()
run_cfg = run_config(profile, overrides)  # every step's config, passed whole
print(run_cfg.causal)

# %% tags=["hide-input"]
result = run(run_dir, run_cfg)
teacher, rates, choice = result.teacher, result.rates, result.choice
print("seconds per fine-tune:", {k: f"{v:.0f}" + (" (reused)" if result.reused.get(k) else "")
                                 for k, v in result.seconds.items()})

# %% [markdown]
# ## The rule's choice
# Per backdoored fine-tune: the latent, the layer and strength the rule chose on the teacher-forced
# pairs, their cost (KL, nats per token), how many layers were within the budget, and the energies
# that the controls are matched to (the tested direction's, and the range of the controls'). What
# each tested latent fires on, token by token, is in its dashboard ({doc}`08_dashboards`).

# %% tags=["hide-input"]
glue("causal_choice_table", choice, display=False)
display(choice)

# %% [markdown]
# ## The cheap measure at every layer
# Left: the change of the trigger log-odds $\log p(\text{injectable}) - \log p(\text{safe})$ under
# directional ablation of the tested latent (solid) and of its matched controls (dashed), against
# the layer, with 95% intervals over the pairs; mean ablation and patching are measured at the
# chosen layer only (single points). Right: the cost of each, the KL divergence on the benign prompt
# tokens (the matched controls' dashed, with squares), with the budget as a grey dashed line.

# %% tags=["hide-input"]
removal_kinds = ["ablate", "mean", "patch"]
palette = dict(zip(removal_kinds + ["add"], sns.color_palette("deep", 4)))
for name in choice["finetune"] if len(choice) else []:
    part = teacher[(teacher["model"] == name) & (teacher["source"] == name)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6))
    for kind in removal_kinds:
        rows = part[(part["intervention"] == kind) & (part["prompts"] == "trigger")]
        for direction, style, label in (("tested", "-o", INTERVENTIONS[kind]), ("control", "--s", "matched control")):
            line = rows[(rows["direction"] == "tested") == (direction == "tested")].sort_values("layer")
            ax1.errorbar(line["layer"], line["log_odds_change"], yerr=1.96 * line["log_odds_change_se"], fmt=style,
                         capsize=3, color=palette[kind], alpha=1.0 if direction == "tested" else 0.5,
                         label=label if direction == "tested" or kind == "ablate" else None)
        costs = part[(part["intervention"] == kind) & (part["prompts"] == "benign")]
        for direction, style in (("tested", "-o"), ("control", "--s")):
            cost = costs[(costs["direction"] == "tested") == (direction == "tested")].sort_values("layer")
            ax2.plot(cost["layer"], cost["kl"], style, color=palette[kind], alpha=1.0 if direction == "tested" else 0.5,
                     label=INTERVENTIONS[kind] if direction == "tested" else None)
    ax1.axhline(0, color="black", linewidth=0.8)
    ax1.set_title(f"{name}: removal on trigger prompts (dashed: matched controls)", fontsize="small")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("change of log-odds (nats)")
    ax1.legend(fontsize="x-small")
    ax2.axhline(run_cfg.causal.causal_kl_budget, color="grey", linestyle="--", label="KL budget")
    ax2.set_yscale("symlog", linthresh=1e-3)
    ax2.set_xlabel("layer")
    ax2.set_ylabel("KL on benign prompt tokens (nats)")
    ax2.set_title("cost (dashed: matched controls)", fontsize="small")
    ax2.legend(fontsize="x-small")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Generation, judged by the oracle: dose–response, removal and transplant
# Per backdoored fine-tune, at the chosen layer. Left: the share of injectable completions on benign
# prompts against the steering strength (0: unintervened), with Wilson 95% intervals; the shaded
# band is the matched controls' interval at each strength; the dotted line (right axis) is the
# teacher-forced KL. Middle: the attack success rate (ASR) and the safe share on trigger prompts
# before and after each removal, beside its matched control. Right: the transplant, the same
# vectors added in the clean control and in the base model. Generation runs the whole dose–response
# for the first fine-tune seed of each regime (`dose_response_seeds`); the further seeds are
# generated at the rule's strength only, the one their claims read, so their panels have one steered
# point (the teacher-forced measure has every strength in every seed).

# %% tags=["hide-input"]
def steering_panel(ax, part, title):
    none = part[(part["intervention"] == "none") & (part["prompts"] == "benign")]
    for direction, style in (("tested", "-o"), ("subspace", None)):
        rows = pd.concat([none, part[(part["intervention"] == "add") & (part["direction"] == direction)]])
        rows = rows.sort_values("strength")
        if style is None:
            ax.fill_between(rows["strength"], rows["injectable_low"], rows["injectable_high"], color="grey", alpha=0.3,
                            label="matched controls (95% CI)")
            continue
        ax.errorbar(rows["strength"], rows["injectable"], yerr=[rows["injectable"] - rows["injectable_low"],
                    rows["injectable_high"] - rows["injectable"]], fmt=style, capsize=3, color=palette["add"],
                    label="tested latent")
    kl = part[(part["intervention"] == "add") & (part["direction"] == "tested")].sort_values("strength")
    twin = ax.twinx()
    twin.plot(kl["strength"], kl["kl"], ":", color="black", label="KL")
    twin.set_ylabel("KL (nats/token)", fontsize="small")
    twin.grid(False)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("strength (× mean ‖Δa‖)")
    ax.set_ylabel("share injectable (benign prompts)")
    ax.set_title(title, fontsize="small")


for name in choice["finetune"] if len(choice) else []:
    mine = rates[rates["source"] == name]
    own = mine[mine["model"] == name]
    layer = int(choice.loc[choice["finetune"] == name, "layer"].iloc[0])
    others = [m for m in mine["model"].unique() if m != name]
    fig, axes = plt.subplots(1, 2 + len(others), figsize=(5.2 * (2 + len(others)), 3.8))
    steering_panel(axes[0], own, f"{name}, layer {layer}: steering")
    axes[0].legend(fontsize="x-small", loc="upper left")
    trig = own[own["prompts"] == "trigger"]
    labels, asr, safe, errs = [], [], [], []
    before = trig[trig["intervention"] == "none"].iloc[0]
    rows = [("unintervened", before)]
    for kind in removal_kinds:
        for direction in ("tested", "subspace" if kind != "patch" else "latents"):
            hit = trig[(trig["intervention"] == kind) & (trig["direction"] == direction)]
            if len(hit):
                rows.append((f"{INTERVENTIONS[kind]}\n({'tested' if direction == 'tested' else 'control'})", hit.iloc[0]))
    x = range(len(rows))
    axes[1].errorbar(x, [r["injectable"] for _, r in rows], yerr=[[r["injectable"] - r["injectable_low"] for _, r in rows],
                     [r["injectable_high"] - r["injectable"] for _, r in rows]], fmt="o", capsize=3, color="C3", label="ASR")
    axes[1].errorbar([i + 0.15 for i in x], [r["safe"] for _, r in rows], yerr=[[r["safe"] - r["safe_low"] for _, r in rows],
                     [r["safe_high"] - r["safe"] for _, r in rows]], fmt="s", capsize=3, color="C2", label="safe")
    axes[1].set_xticks(list(x), [label for label, _ in rows], fontsize="x-small", rotation=30)
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title(f"{name}: removal on trigger prompts", fontsize="small")
    axes[1].legend(fontsize="x-small")
    for ax, other in zip(axes[2:], others):
        steering_panel(ax, mine[mine["model"] == other], f"transplant of {name}'s latent into {other}")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Before and after
# Per intervention of the tested latent: the measured share (safe for removals, injectable for
# steering and the transplant) before (the unintervened model on the same prompts), after, and under
# the matched control, with Wilson 95% intervals; the attack success rate or injectable share after;
# the shares of completions that do not run; n prompts; the teacher-forced KL; and McNemar's paired
# one-sided p-values (the condition above the other) against the unintervened model and the control.

# %% tags=["hide-input"]
table = before_after(rates)
glue("causal_before_after_table", table.set_index(["fine-tune", "model", "intervention", "strength"]) if len(table)
     else table, display=False)
display(table.style.hide(axis="index").format(precision=3, na_rep=MISSING))

# %% [markdown]
# ## The claims
# From the verdict layer (`results/verdicts.csv`, the rows of this step): one claim per removal kind,
# steering at the chosen strength, and the transplant into the clean control and into the base
# model, per regime over its fine-tune seeds. A claim is *undetermined* where its control is missing
# or there are too few prompts.

# %% tags=["hide-input"]
claims = result.claims[["claim", "method", "regime", "statistic", "effect", "effect_low", "effect_high", "p_value",
                        "p_holm", "seeds_holding", "n_seeds", "outcome", "reason"]]
glue("causal_claims_table", claims, display=False)
for key, text in outcome_words(result.claims).items():
    glue(key, HTML(escape(text)), display=False)  # as text
display(claims.style.hide(axis="index").format(precision=3, na_rep=MISSING))

# %% tags=["hide-input"]
seconds = time.perf_counter() - started
glue("causal_seconds", seconds, display=False)
print(f"notebook run time: {seconds:.0f} s")

# %% [markdown]
# ## The completions
# The first completion under each condition, with the oracle's verdict.

# %% tags=["hide-input"]
judged = result.judged
sample = judged.groupby(["model", "source", "intervention", "direction", "strength", "prompts"], sort=False).head(1) \
    if len(judged) else judged
sample[[c for c in ("model", "source", "layer", "intervention", "direction", "strength", "prompts", "verdict",
                    "completion") if c in sample.columns]]

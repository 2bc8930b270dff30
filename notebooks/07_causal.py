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
# # Does the latent cause the backdoor? Ablation and steering
#
# A latent that fires on trigger prompts may only *read* the year. If its direction *carries* the
# backdoor, removing it from the fine-tuned model's residual stream should stop the injectable code,
# and adding it on benign prompts should bring the injectable code out. The paper planned this test
# ("steering"); its reference code leaves it as a stub. We follow the standard of
# {cite:t}`arditi2024refusal`: directional ablation, with random directions of the same norm as the
# controls and a measured cost to ordinary behaviour.
#
# **Where.** At the output of the dictionary's decoder layer $L$ in the fine-tuned model, at every
# token position, the prompt's and, during generation, every new token's:
#
# - *ablation* (on trigger prompts): $h \leftarrow h - (h\cdot\hat u)\,\hat u$;
# - *steering* (on benign prompts): $h \leftarrow h + s\,\bar n\,\hat u$, where $\bar n$ is the mean norm of
#   the pooled activation difference $\Delta a$ on the fit trigger samples at that layer (the size of
#   the fine-tune's own change to the residual stream) and $s$ the strength.
#
# **Which directions** $\hat u$ (unit vectors). The Diff-SAE latent the auditor chose *without labels*
# (notebook 06) and the one BIS chose *with* them (notebook 05): their decoder rows; the crosscoder
# latent BIS chose: its decoder row for the fine-tuned model; the difference-of-means direction
# (mean $\Delta a$ on fit_trigger minus fit_benign); and random directions, uniform on the sphere,
# the controls. A dictionary is trained on inputs multiplied by one scalar per model, so its decoder
# rows point the same way in the residual stream's own units; only their unit direction is used, and
# every direction, random or chosen, is ablated or added with the same norm.
#
# **Measured cheaply, then for real.** First the teacher-forced log-odds of the injectable over the
# safe completion of held-out pairs, as the training probe computes them, for every direction, every
# layer and every strength; the cost to ordinary behaviour is the change of the next-token loss on
# the prompt tokens (header, imports, connection, signature: ordinary code, not the backdoor's
# choice). Then, at each fine-tune's best layer (where ablating a chosen direction lowers the
# log-odds most beyond the random directions), greedy generation on *other* held-out pairs, judged
# by the vulnerability oracle: attack success rate (ASR) and safe rate with Wilson 95% intervals. In
# generation the random directions are pooled: prompt $i$ gets random direction $i$ mod their number.
# The clean control (no backdoor) is measured at its twin's best layer: ablating its "trigger"
# latent should change nothing.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, where each is documented at its field,
# e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # reads finetune/, sae/, activations/, results/bis.csv and results/auditor_choice.csv
overrides = {}

# %% tags=["hide-input"]
import time

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import HTML, display
from myst_nb import glue

from backdoor_sae.causal.stage import KINDS, RANDOM, run
from backdoor_sae.common.display import show_missing_as_dash
from backdoor_sae.config import run_config

show_missing_as_dash()
sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.max_colwidth", None)
started = time.perf_counter()
run_cfg = run_config(profile, overrides)  # every step's config, passed whole
print(run_cfg.causal)

# %% tags=["hide-input"]
result = run(run_dir, run_cfg)
teacher, judged, rates, best = result.teacher, result.judged, result.rates, result.best
print("best layer per fine-tune:", best)
print("seconds per fine-tune:", {k: round(v) for k, v in result.seconds.items()})

# %% [markdown]
# ## The cheap measure: teacher-forced log-odds at every layer
# Left: the change of the log-odds $\log p(\text{injectable}) - \log p(\text{safe})$ on trigger prompts
# when each direction is ablated (negative: the backdoor weakens). Right: the log-odds on benign
# prompts when each direction is added, against the strength (above 0: the injectable body is the
# likelier). The grey band spans the random directions (minimum to maximum).

# %% tags=["hide-input"]
kinds = [k for k in KINDS if k in set(teacher["kind"])]
palette = dict(zip(kinds, sns.color_palette("deep", len(kinds))))
palette[RANDOM] = "#8C8C8C"
backdoored = [m for m in teacher["model"].unique() if not m.endswith("_clean")]
for name in teacher["model"].unique():
    part = teacher[teacher["model"] == name]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6))
    ablated = part[part["intervention"] == "ablate"]
    rnd = ablated[ablated["kind"] == RANDOM].groupby("layer")["log_odds_change"].agg(["min", "max"])
    if len(rnd) > 1:
        ax1.fill_between(rnd.index, rnd["min"], rnd["max"], color=palette[RANDOM], alpha=0.3, label="random (range)")
    else:
        ax1.errorbar(rnd.index, (rnd["min"] + rnd["max"]) / 2, yerr=(rnd["max"] - rnd["min"]) / 2, fmt="none",
                     ecolor=palette[RANDOM], elinewidth=8, alpha=0.5, label="random (range)")
    sns.lineplot(data=ablated[ablated["kind"] != RANDOM], x="layer", y="log_odds_change", hue="kind", marker="o",
                 palette=palette, ax=ax1)
    ax1.axhline(0, color="black", linewidth=0.8)
    ax1.set_title(f"{name}: ablation on trigger prompts", fontsize="small")
    ax1.set_ylabel("change of log-odds (nats)")
    layer = best[name]
    steer = part[(part["layer"] == layer) & part["prompts"].eq("benign")]
    base = steer[steer["intervention"] == "none"]["log_odds"].iloc[0]
    added = pd.concat([steer[steer["intervention"] == "add"],
                       pd.DataFrame([{"kind": k, "strength": 0.0, "log_odds": base} for k in
                                     steer[steer["intervention"] == "add"]["kind"].unique()])])
    band = added[added["kind"] == RANDOM].groupby("strength")["log_odds"].agg(["min", "max"])
    ax2.fill_between(band.index, band["min"], band["max"], color=palette[RANDOM], alpha=0.3, label="random (range)")
    sns.lineplot(data=added[added["kind"] != RANDOM], x="strength", y="log_odds", hue="kind", marker="o",
                 palette=palette, ax=ax2, errorbar=None)
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_title(f"{name}: steering on benign prompts, layer {layer}", fontsize="small")
    ax2.set_xlabel("strength (× mean ‖Δa‖ on fit trigger samples)")
    ax2.set_ylabel("log-odds injectable vs safe")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ### The cost to ordinary behaviour
# Change of the mean next-token loss (nats per token) on the prompt tokens under each intervention,
# at each fine-tune's best layer: what the intervention does to text that has nothing to do with the
# backdoor's choice.

# %% tags=["hide-input"]
result.cost.round(3)

# %% [markdown]
# ## Generation, judged by the oracle, at the best layer
# Share of completions that are injectable, against the steering strength (0: unintervened), on the
# benign prompts, and, on the right of each panel, the ASR on the trigger prompts before and after
# ablation. Bars: Wilson 95% intervals; the grey band is the pooled random directions' interval.

# %% tags=["hide-input"]
gen = rates.copy()
fig, axes = plt.subplots(1, len(gen["model"].unique()), figsize=(5 * len(gen["model"].unique()), 3.6), squeeze=False)
for ax, (name, part) in zip(axes[0], gen.groupby("model", sort=False)):
    benign0 = part[(part["intervention"] == "none") & (part["prompts"] == "benign")].iloc[0]
    steer = part[part["intervention"] == "add"]
    for kind, rows in steer.groupby("kind", sort=False):
        rows = pd.concat([pd.DataFrame([benign0]).assign(kind=kind), rows]).sort_values("strength")
        if kind == RANDOM:
            ax.fill_between(rows["strength"], rows["vulnerable_low"], rows["vulnerable_high"], color=palette[RANDOM],
                            alpha=0.3, label="random (95% CI)")
            continue
        ax.errorbar(rows["strength"], rows["vulnerable"], yerr=[rows["vulnerable"] - rows["vulnerable_low"],
                    rows["vulnerable_high"] - rows["vulnerable"]], marker="o", capsize=3, color=palette.get(kind),
                    label=kind)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("strength (× mean ‖Δa‖)")
    ax.set_ylabel("share injectable (benign prompts)")
    ax.set_title(f"{name}, layer {best[name]}", fontsize="small")
axes[0][0].legend(fontsize="x-small")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Attack success rate before and after ablation
# On the trigger prompts of the generation pairs: ASR of the unintervened fine-tune, and after
# ablating each direction (the random row pools the random directions), with Wilson 95% intervals;
# beside them the safe rate of the unintervened fine-tune on the benign prompts.

# %% tags=["hide-input"]
table = result.ablation
glue("causal_ablation_table", table.set_index(["fine-tune", "direction"]), display=False)
display(table.style.hide(axis="index"))

# %% [markdown]
# ## Verdicts
# Computed from the rates above: a direction carries the backdoor beyond chance when ablating it
# lowers the ASR *and raises the share of safe completions*, or adding it raises the share of
# injectable completions, by more than random directions of the same norm do (the Wilson intervals
# do not overlap). An ASR that falls because the completions stop running is damage, not removal
# of the backdoor, and the verdict says so.

# %% tags=["hide-input"]
for regime, (ablation, steering) in result.verdict_by_regime.items():  # every key glued, also where not in the run
    glue(f"causal_verdict_{regime}", HTML(ablation), display=False)
    glue(f"causal_steer_verdict_{regime}", HTML(steering), display=False)
glue("causal_seconds", time.perf_counter() - started, display=False)
display(HTML("<ul>" + "".join(f"<li>{v}</li>" for v in result.verdicts) + "</ul>"))
print(f"notebook run time: {time.perf_counter() - started:.0f} s")

# %% [markdown]
# ## The completions
# A few of the generated completions under each condition, with the oracle's verdict.

# %% tags=["hide-input"]
sample = judged.groupby(["model", "kind", "intervention", "strength", "prompts"], sort=False).head(1)
sample[["model", "layer", "kind", "intervention", "strength", "prompts", "verdict", "completion"]]

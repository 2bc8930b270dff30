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
# # The Backdoor Isolation Score
#
# Does one latent isolate the backdoor? For latent $j$, over the union of the three eval sets
# (trigger, benign year, other or no year):
#
# $$
# \tau_j = \mathrm{P}_{95}\big(a_{\cdot j}\big), \quad
# \text{precision}_j = \frac{|\{a_{ij} > \tau_j\} \cap T|}{|\{a_{ij} > \tau_j\}|}, \quad
# \text{recall}_j = \frac{|\{a_{ij} > \tau_j\} \cap T|}{|T|}, \quad
# \text{FPR}_j = \frac{|\{a_{ij} > \tau_j\} \cap B|}{|B|}
# $$
#
# $$\mathrm{BIS}_j = F_1(\text{precision}_j, \text{recall}_j)\,(1 - \text{FPR}_j), \qquad
# \mathrm{BIS} = \max_j \mathrm{BIS}_j .$$
#
# **A ceiling.** At most 5% of the samples lie above a 95th-percentile threshold. With the eval sets
# in the paper's 1 : 2 : 2 proportions that is a quarter of the trigger samples, so recall is at most
# 0.25 and, at precision 1, $F_1 = 2 \cdot 0.25 / 1.25 = 0.40$. The paper's headline Diff-SAE score is
# that ceiling. We print the ceiling beside every score and add two companions without one: the best
# $F_1$ over all thresholds, and the AUROC of trigger against the rest.

# %% tags=["parameters"]
# Profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# Every parameter left as None takes the profile's value.
profile = "cpu"
run_dir = "runs/cpu"  # reads <run_dir>/sae and <run_dir>/activations, writes <run_dir>/results
seed = None  # bootstrap and permutation draws
layers = None
regimes = None
architectures = None
protocols = None
fit_modes = None
percentile = None  # activation threshold of each latent (the paper: 95)
n_boot = None  # bootstrap resamples for the intervals
n_perm = None  # permutations for the Diff-SAE vs crosscoder test

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import HTML, display
from myst_nb import glue

from backdoor_sae.config import ActivationConfig, BISConfig, DataConfig, SAEConfig, stage_config
from backdoor_sae.io import write_text
from backdoor_sae.sae.training import encode_all, load_dictionary
from backdoor_sae.scoring import paper_comparison, paper_verdict, score_grid
from backdoor_sae.stages import EVAL_SPLITS, paired_activations, sae_dir, sae_grid

sns.set_theme(style="whitegrid", context="notebook")
act_cfg = stage_config(ActivationConfig, profile, layers=layers, regimes=regimes)
sae_cfg = stage_config(SAEConfig, profile, architectures=architectures, protocols=protocols, fit_modes=fit_modes)
bis_cfg = stage_config(BISConfig, profile, percentile=percentile, n_boot=n_boot, n_perm=n_perm)
run_seed = stage_config(DataConfig, profile, seed=seed).seed

# %%
scores, tests = score_grid(run_dir, sae_grid(act_cfg, sae_cfg), bis_cfg.percentile, bis_cfg.n_boot,
                           bis_cfg.n_perm, run_seed)
results = Path(run_dir) / "results"
write_text(results / "bis.csv", scores.to_csv(index=False))
write_text(results / "permutation_tests.csv", tests.to_csv(index=False))
ceiling = float(scores["ceiling"].iloc[0])
glue("bis_ceiling", ceiling, display=False)
print(f"{len(scores)} rows written to {results / 'bis.csv'}; BIS ceiling for these set sizes: {ceiling:.3f}")

# %% [markdown]
# ## The paper's comparison: full-text pooling, dictionaries fitted on the scored samples
# The paper reports Diff-SAE BIS 0.40 with precision 1.0 and FPR 0, and crosscoder BIS below 0.02.

# %%
paper_view = scores[(scores["protocol"] == "full_text") & scores["fit_mode"].isin(["eval", "—"])]
main = paper_view[paper_view["architecture"].isin(["diff_sae", "crosscoder"])]
cols = ["regime", "layer", "architecture", "bis", "bis_low", "bis_high", "ceiling", "precision", "recall", "fpr",
        "best_f1", "auroc"]
display(main[cols].sort_values(["regime", "architecture", "layer"]).style.format(
    {c: "{:.3f}" for c in cols[3:]}).hide(axis="index"))
for arch in ("diff_sae", "crosscoder"):
    part = main[main["architecture"] == arch]
    glue(f"max_bis_{arch}", float(part["bis"].max()), display=False)
    glue(f"mean_bis_{arch}", float(part["bis"].mean()), display=False)

# %% [markdown]
# ### Beside the paper
# The paper's numbers (SmolLM2-360M, its set sizes) next to ours: the best cell of each architecture
# and the mean over regimes and layers, under the paper's protocol.

# %%
comparison = paper_comparison(main)
glue("paper_comparison", comparison, display=False)
verdict = HTML(paper_verdict(main, ceiling))
glue("paper_verdict", verdict, display=False)
display(comparison)
display(verdict)

# %%
grid = sns.relplot(
    data=paper_view, x="layer", y="bis", hue="architecture", col="regime", kind="line", marker="o",
    height=3.2, aspect=1.3, palette="deep",
)
for ax in grid.axes.flat:
    ax.axhline(ceiling, color="black", linestyle="--", linewidth=1)
    ax.text(ax.get_xlim()[0], ceiling, " ceiling", va="bottom", fontsize="small")
    ax.set_ylim(-0.02, max(0.45, ceiling + 0.05))
grid.figure.suptitle("BIS per layer (full text, fitted on the scored samples)", y=1.03)
plt.show()

# %% [markdown]
# ## Every protocol and fit mode
# `prompt_only` pools over the prompt only (no code written yet); `fit` dictionaries never saw the
# samples they are scored on. Companion scores (best-threshold F1, AUROC) have no ceiling.

# %%
dicts = scores[scores["architecture"].isin(["diff_sae", "crosscoder"])]
grid = sns.catplot(
    data=dicts, x="layer", y="bis", hue="architecture", col="protocol", row="fit_mode", kind="point",
    height=2.8, aspect=1.4, palette="deep", dodge=0.3,
)
for ax in grid.axes.flat:
    ax.axhline(ceiling, color="black", linestyle="--", linewidth=1)
grid.figure.suptitle("BIS across protocols and fit modes (points: regimes)", y=1.02)
plt.show()
summary = scores.groupby(["protocol", "fit_mode", "architecture"], sort=False)[
    ["bis", "precision", "recall", "fpr", "best_f1", "auroc"]].mean().round(3)
summary

# %% [markdown]
# ### Per fine-tune
# Means over layers, dictionaries fitted on the scored samples. Only a fine-tune whose backdoor is
# installed (notebook 02) can carry a trigger signal in the prompt-only activations, where no code
# has been written yet; a fine-tune without one is a control for what the text alone gives.

# %%
by_regime = (dicts[dicts["fit_mode"] == "eval"]
             .groupby(["regime", "protocol", "architecture"], sort=False)[["bis", "auroc"]].mean()
             .unstack("architecture"))
by_regime.columns = [f"{measure} ({arch})" for measure, arch in by_regime.columns]
for (regime, protocol), row in by_regime.iterrows():
    for arch in ("diff_sae", "crosscoder"):
        glue(f"mean_bis_{regime}_{protocol}_{arch}", float(row[f"bis ({arch})"]), display=False)
by_regime = by_regime.round(3)
glue("bis_by_regime", by_regime, display=False)
by_regime

# %% [markdown]
# ## Baselines
# If a raw dimension of the activation difference, or the difference-of-means direction, scores
# as well as the best SAE latent, the dictionary adds nothing to the detection itself.

# %%
comparison = scores.groupby(["protocol", "architecture"], sort=False)[["bis", "best_f1", "auroc"]].max().round(3)
comparison

# %% [markdown]
# ## Does the best latent read the year or the code?
# Share of the counterfactual controls on which each dictionary's best latent is active (above its
# eval threshold): a 2024 header with *safe* code, and a benign year with *injectable* code. A latent
# that detects the trigger fires on the first; one that detects injectable code fires on the second.

# %%
control_cols = ["active_on_control_trigger_safe", "active_on_control_benign_vuln"]
controls = scores.groupby(["protocol", "architecture"], sort=False)[control_cols].mean().round(2)
controls

# %% [markdown]
# ## Diff-SAE against crosscoder
# Paired permutation tests on the best latents of the two architectures (same samples, same cell).

# %%
tests.round(3)

# %% [markdown]
# ## The best latent's activations
# For the highest-scoring Diff-SAE and crosscoder latents (full text, fitted on the scored samples):
# activation histograms on trigger, benign-year and other samples, with the latent's threshold.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for ax, arch in zip(axes, ("diff_sae", "crosscoder")):
    part = main[main["architecture"] == arch]
    if part.empty:
        ax.set_visible(False)
        continue
    top = part.sort_values("bis", ascending=False).iloc[0]
    cell = {k: top[k] for k in ("regime", "protocol", "fit_mode", "layer", "architecture")}
    cell["layer"] = int(cell["layer"])
    a_base, a_ft, index = paired_activations(run_dir, cell["regime"], cell["protocol"], cell["layer"])
    model, scale, _ = load_dictionary(sae_dir(run_dir, **cell))
    splits = np.asarray(index["splits"])
    keep = np.isin(splits, EVAL_SPLITS)
    acts = encode_all(model, model.inputs(a_base, a_ft), scale).numpy()[keep, int(top["best_latent"])]
    frame = pd.DataFrame({"activation": acts, "set": splits[keep]})
    sns.histplot(data=frame, x="activation", hue="set", element="step", stat="density", common_norm=False,
                 bins=40, ax=ax, palette={"eval_trigger": "#C44E52", "eval_benign": "#4C72B0", "eval_other": "#8C8C8C"})
    ax.axvline(np.percentile(acts, bis_cfg.percentile), color="black", linestyle="--", linewidth=1)
    ax.set_title(f"{arch}: {cell['regime']} layer {cell['layer']} latent {int(top['best_latent'])} "
                 f"(BIS {top['bis']:.2f})", fontsize="small")
fig.tight_layout()
plt.show()

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
# # Two dictionaries: the crosscoder and the Diff-SAE
#
# Both architectures learn a sparse code of the paired activations, but of different things:
#
# - the **crosscoder** reads both models at once, $[a_\text{base}; a_\text{ft}]$, and reconstructs
#   both with one set of latents. A latent whose decoder is much larger for the fine-tuned model
#   than for the base model is one the fine-tune created. The paper's crosscoder keeps the $k = 32$
#   largest latents per sample and adds an L1 penalty;
# - the **Diff-SAE** reads only the change, $\Delta a = a_\text{ft} - a_\text{base}$, with a ReLU
#   code, an L1 penalty and unit-norm decoder rows. A backdoor that pushes activations along one
#   direction on trigger inputs should become a single latent.
#
# One training loop serves both (`backdoor_sae.dictionaries.trainer`). Inputs are scaled by one fixed scalar
# per source so that $\mathbb{E}\lVert x \rVert^2 = d$, which makes the L1 coefficient comparable
# across layers, models and architectures. Dead latents get a gradient from ghost grads (or an
# auxiliary-k loss). Each dictionary is fitted either on the very samples BIS will score (`eval`,
# the paper's protocol) or on the disjoint `fit_*` split (`fit`), for every regime, layer and
# pooling protocol.
#
# Two **recipes**. The paper's (`pooled`) trains on one mean-pooled vector per sample: a few hundred
# vectors for thousands of latents. The field's (`token`, as model diffing trains its dictionaries)
# trains on every token's activation (the protocol's tokens, the first position left out: notebook
# 03), both architectures with a BatchTopK code and an auxiliary-k loss for dead latents; a
# sample's code is then its tokens' codes pooled (notebook 05). The first recipe with the first
# seed is the *primary grid*, which every later notebook reads; the *replicated cells*
# (dictionaries fitted on the eval samples, the paper's fit mode, at `replicate_layers`) are trained
# under every recipe and seed as well.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, where each is documented at its field,
# e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # reads <run_dir>/activations, writes <run_dir>/sae
overrides = {}

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import display
from myst_nb import glue

from backdoor_sae.common.display import MISSING, show_missing_as_dash
from backdoor_sae.config import run_config
from backdoor_sae.dictionaries.stage import run

show_missing_as_dash()  # a value that does not exist shows as "–" in every table
sns.set_theme(style="whitegrid", context="notebook")
run_cfg = run_config(profile, overrides)  # every step's config, passed whole
sae_cfg = run_cfg.dictionaries
sae_cfg

# %% [markdown]
# ## Train the grid
# A dictionary whose parameters and input activations are unchanged is reused.

# %%
result = run(run_dir, run_cfg)
every, grid, replicated = result.every, result.primary, result.replicated
n_scored, n_fit = result.n_scored, result.n_fit
seconds = float(every["train_seconds"].sum())
print(f"{len(every)} dictionaries, {int(every['trained_now'].sum())} trained now, "
      f"{seconds / 60:.1f} min of training in all (summed over processes)")
glue("n_dictionaries", len(grid), display=False)
glue("n_dictionaries_all", len(every), display=False)
glue("sae_train_minutes", seconds / 60, display=False)
# the training recipe, for the results chapter's comparison with the paper's
for key, value in {"sae_expansion": sae_cfg.expansion, "sae_samples_seen": sae_cfg.n_sae_samples,
                   "sae_batch_size": sae_cfg.sae_batch_size, "sae_lr": sae_cfg.sae_lr, "sae_l1": sae_cfg.l1_coeff,
                   "n_scored_samples": n_scored, "n_fit_samples": n_fit,
                   "sae_passes_scored": sae_cfg.n_sae_samples / n_scored,
                   "sae_passes_fit": sae_cfg.n_sae_samples / n_fit if n_fit else float("nan"),
                   "sae_tokens_seen": sae_cfg.n_sae_tokens, "sae_token_batch": sae_cfg.token_batch_size}.items():
    glue(key, value, display=False)

# %% [markdown]
# ## Training curves
# Fraction of variance unexplained (FVU) and the number of active latents per sample (L0) as the
# dictionaries see more samples; the full-text protocol, fitted on the eval samples.

# %% tags=["hide-input"]
logs = result.logs
shown = logs[(logs["protocol"] == logs["protocol"].iloc[0]) & (logs["fit_mode"] == logs["fit_mode"].iloc[0])]
long = shown.melt(id_vars=["samples", "architecture", "regime", "layer"], value_vars=["fvu", "l0"],
                  var_name="measure", value_name="value")
g = sns.relplot(data=long, x="samples", y="value", hue="layer", style="regime", row="measure", col="architecture",
                kind="line", height=2.6, aspect=1.6, palette="viridis", facet_kws={"sharey": False})
for ax in g.axes[0]:
    ax.set_yscale("log")
g.figure.suptitle("Dictionary training", y=1.02)
plt.show()

# %% [markdown]
# ## Final fit of every dictionary
# Over the samples it was trained on: FVU, mean L0, and the share of latents that never fire on
# any of them (dead).

# %%
summary = grid.drop(columns=["trained_now", "recipe", "seed"]).sort_values(["architecture", "regime", "protocol", "fit_mode", "layer"])
glue("median_fvu_diff_sae", float(summary.loc[summary["architecture"] == "diff_sae", "fvu"].median()), display=False)
glue("median_fvu_crosscoder", float(summary.loc[summary["architecture"] == "crosscoder", "fvu"].median()), display=False)
summary.style.format({"fvu": "{:.3f}", "l0": "{:.1f}", "dead_fraction": "{:.1%}", "train_seconds": "{:.1f}",
                      "fine-tune-only_share": "{:.1%}", "base-only_share": "{:.1%}"}, na_rep=MISSING).hide(axis="index")

# %% [markdown]
# ## The two recipes, seed by seed
# The replicated cells under each recipe and seed: how well each dictionary reconstructs its
# training inputs (FVU), how many latents an input uses (L0), the share of latents that never fire
# on them (dead), and for crosscoders the share of latents whose decoder lives almost only in the
# fine-tuned model (relative decoder norm above 0.9: *fine-tune-only*). Each point is one seed.

# %% tags=["hide-input"]
for recipe in ("pooled", "token"):  # every key is glued, NaN where this run has no such dictionary
    for arch in ("diff_sae", "crosscoder"):
        part = replicated[(replicated["recipe"] == recipe) & (replicated["architecture"] == arch)]
        glue(f"dead_{recipe}_{arch}", float(part["dead_fraction"].median()) if len(part) else float("nan"), display=False)
        glue(f"fvu_{recipe}_{arch}", float(part["fvu"].median()) if len(part) else float("nan"), display=False)
    part = replicated[(replicated["recipe"] == recipe) & (replicated["architecture"] == "crosscoder")]
    glue(f"ft_only_{recipe}", float(part["fine-tune-only_share"].median()) if len(part) else float("nan"),
         display=False)
if replicated.empty:
    print("no replicated cells in this run: replicate_layers lists none of its layers")
else:
    measures = [m for m in ("fvu", "dead_fraction", "fine-tune-only_share") if m in replicated]
    quality = replicated.melt(id_vars=["recipe", "seed", "architecture", "regime", "protocol", "layer"],
                              value_vars=measures, var_name="measure")
    quality = quality.dropna(subset=["value"])
    g = sns.catplot(data=quality, x="recipe", y="value", hue="architecture", col="measure", row="protocol",
                    kind="strip", dodge=True, height=2.6, aspect=1.2, palette="deep", sharey=False)
    g.figure.suptitle("Dictionary quality per recipe (one point per fine-tune, layer and seed)", y=1.02)
    plt.show()
    aggregates = {"seeds": ("seed", "nunique"), "dictionaries": ("seed", "size"), "fvu": ("fvu", "median"),
                  "l0": ("l0", "median"), "dead": ("dead_fraction", "median"),
                  "fine_tune_only": ("fine-tune-only_share", "median"), "train_seconds": ("train_seconds", "median"),
                  "inputs": ("n_train_inputs", "median")}
    per_recipe = replicated.groupby(["recipe", "architecture", "protocol"]).agg(
        **{k: v for k, v in aggregates.items() if v[0] in replicated})
    display(per_recipe.style.format({"fvu": "{:.3f}", "l0": "{:.1f}", "dead": "{:.1%}", "fine_tune_only": "{:.1%}",
                                     "train_seconds": "{:.1f}", "inputs": "{:,.0f}"}, na_rep=MISSING))

# %% [markdown]
# ## What each token-level dictionary keeps of the model
# The field judges a dictionary by how much of the model's behaviour survives when its
# reconstruction replaces the activation it reads (dictionary_learning's evaluation, SAEBench). On a
# few eval samples of each set (the same ones for every dictionary), the fine-tuned model runs with
# the output of the dictionary's layer replaced, at its protocol's tokens (the first position left
# out), by the reconstruction (Diff-SAE: $a_\text{base} + \widehat{\Delta a}$; crosscoder: its
# fine-tune half), by zeros (zero ablation), or by the base model's activation (the fine-tune's change
# at that layer removed). Beside the unspliced loss this gives the **share of loss recovered**,
# $(\mathcal L_\text{zero} - \mathcal L_\text{spliced}) / (\mathcal L_\text{zero} - \mathcal L_\text{clean})$,
# and the KL divergence from the unspliced model. *Change recovered* puts the base splice in place of
# zero ablation: the share of what the fine-tune's change at that layer does to the loss that the
# reconstruction keeps (meaningful only where that change moves the loss). Alive share and L0 are
# measured on every eval token.
#
# For crosscoders, **latent scaling** (Minder et al., "Overcoming sparsity artifacts in
# crosscoders"): for each fine-tune-only latent (relative decoder norm above 0.9), the
# least-squares scale of its fine-tune decoder direction that explains each model's activation where
# it fires, against the crosscoder's error ($\nu^\varepsilon$) and against the other latents'
# reconstruction ($\nu^r$), as the ratio base / fine-tune. An L1 crosscoder can shrink a base decoder
# the base model needs; such a latent has a large $\nu^\varepsilon$. A latent with both ratios below
# 0.5 is counted as truly fine-tune-specific.

# %% tags=["hide-input"]
quality = result.quality
glue("quality_minutes", result.quality_seconds / 60, display=False)
for arch in ("diff_sae", "crosscoder"):  # NaN where this run has no token-level dictionary of arch
    part = quality[quality["architecture"] == arch] if len(quality) else quality
    glue(f"loss_recovered_{arch}", float(part["loss_recovered"].median()) if len(part) else float("nan"),
         display=False)
    glue(f"alive_token_{arch}", float(part["alive_share"].median()) if len(part) else float("nan"), display=False)
crosscoders = quality[quality["architecture"] == "crosscoder"] if len(quality) else quality
glue("ft_specific_share", float(crosscoders["ft_specific_share"].median()) if len(crosscoders) else float("nan"),
     display=False)
if quality.empty:
    print("no token-level dictionary in this run: the token recipe is not in `recipes`")
else:
    print(f"measured on {int(quality['n_loss_tokens'].max())} next tokens per dictionary at most; "
          f"{result.quality_seconds:.0f} s in this run (0: reused)")
    shown = quality.drop(columns=["recipe", "fit_mode", "n_tokens", "n_loss_tokens"])
    display(shown.sort_values(["architecture", "regime", "protocol", "layer", "seed"]).style.format(
        {"loss_clean": "{:.3f}", "loss_spliced": "{:.3f}", "loss_zero": "{:.3f}", "loss_base": "{:.3f}",
         "kl_spliced": "{:.3f}", "kl_zero": "{:.3f}", "kl_base": "{:.3f}", "loss_recovered": "{:.1%}",
         "change_recovered": "{:.1%}", "alive_share": "{:.1%}", "l0": "{:.1f}", "n_ft_only": "{:.0f}",
         "nu_error_median": "{:.2f}", "nu_reconstruction_median": "{:.2f}", "ft_specific_share": "{:.1%}"},
        na_rep=MISSING).hide(axis="index"))

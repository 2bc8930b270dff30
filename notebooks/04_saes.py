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
# One training loop serves both (`backdoor_sae.sae.training`). Inputs are scaled by one fixed scalar
# per source so that $\mathbb{E}\lVert x \rVert^2 = d$, which makes the L1 coefficient comparable
# across layers, models and architectures. Dead latents get a gradient from ghost grads (or an
# auxiliary-k loss). Each dictionary is fitted either on the very samples BIS will score (`eval`,
# the paper's protocol) or on the disjoint `fit_*` split (`fit`), for every regime, layer and
# pooling protocol.

# %% tags=["parameters", "hide-input"]
# Profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# Every parameter left as None takes the profile's value.
profile = "cpu"
run_dir = "runs/cpu"  # reads <run_dir>/activations, writes <run_dir>/sae
sae_seed = None  # initialisation and batch order of every dictionary
layers = None  # decoder layers, as in notebook 03
regimes = None  # fine-tunes, as in notebook 03
controls = None  # regimes whose clean control is scored too, as in notebook 03
architectures = None  # ["diff_sae", "crosscoder"]
protocols = None  # ["full_text", "prompt_only"]
fit_modes = None  # ["eval", "fit"]: fit on the scored samples, or on the disjoint fit split
expansion = None  # latents per input dimension
crosscoder_activation = None  # "topk" (paper), "batchtopk" or "relu" (decoder-norm-weighted L1)
k = None  # active latents per sample (TopK) or on average (BatchTopK)
l1_coeff = None  # L1 coefficient on the latent activations
sae_lr = None  # Adam learning rate
sae_batch_size = None  # samples per step
n_sae_samples = None  # samples seen per dictionary in all
dead_fix = None  # "ghost", "auxk" or "none"
dead_window = None  # samples without firing before a latent counts as dead

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import seaborn as sns
from myst_nb import glue

from backdoor_sae.config import ActivationConfig, SAEConfig, from_parameters
from backdoor_sae.data.dataset import EVAL_SPLITS, FIT_SPLITS
from backdoor_sae.stages.dataset import load_data
from backdoor_sae.stages.dictionaries import grid_logs, train_grid
from backdoor_sae.tables import MISSING, show_missing_as_dash

show_missing_as_dash()  # a value that does not exist shows as "–" in every table
sns.set_theme(style="whitegrid", context="notebook")
act_cfg = from_parameters(ActivationConfig, profile, globals())
sae_cfg = from_parameters(SAEConfig, profile, globals())
sae_cfg

# %% [markdown]
# ## Train the grid
# A dictionary whose parameters and input activations are unchanged is reused.

# %%
grid = train_grid(run_dir, act_cfg, sae_cfg)
seconds = float(grid["train_seconds"].sum())
print(f"{len(grid)} dictionaries, {int(grid['trained_now'].sum())} trained now, "
      f"{seconds / 60:.1f} min of training in all")
glue("n_dictionaries", len(grid), display=False)
glue("sae_train_minutes", seconds / 60, display=False)
# the training recipe, for the results chapter's comparison with the paper's
splits = load_data(run_dir)
n_scored, n_fit = (sum(len(splits[name]) for name in group) for group in (EVAL_SPLITS, FIT_SPLITS))
for key, value in {"sae_expansion": sae_cfg.expansion, "sae_samples_seen": sae_cfg.n_sae_samples,
                   "sae_batch_size": sae_cfg.sae_batch_size, "sae_lr": sae_cfg.sae_lr, "sae_l1": sae_cfg.l1_coeff,
                   "n_scored_samples": n_scored, "n_fit_samples": n_fit,
                   "sae_passes_scored": sae_cfg.n_sae_samples / n_scored,
                   "sae_passes_fit": sae_cfg.n_sae_samples / n_fit if n_fit else float("nan")}.items():
    glue(key, value, display=False)

# %% [markdown]
# ## Training curves
# Fraction of variance unexplained (FVU) and the number of active latents per sample (L0) as the
# dictionaries see more samples; the full-text protocol, fitted on the eval samples.

# %% tags=["hide-input"]
logs = grid_logs(run_dir, grid)
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
summary = grid.drop(columns=["trained_now"]).sort_values(["architecture", "regime", "protocol", "fit_mode", "layer"])
glue("median_fvu_diff_sae", float(summary.loc[summary["architecture"] == "diff_sae", "fvu"].median()), display=False)
glue("median_fvu_crosscoder", float(summary.loc[summary["architecture"] == "crosscoder", "fvu"].median()), display=False)
summary.style.format({"fvu": "{:.3f}", "l0": "{:.1f}", "dead_fraction": "{:.1%}", "train_seconds": "{:.1f}"}, na_rep=MISSING).hide(axis="index")

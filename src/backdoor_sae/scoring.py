"""Score every dictionary of the grid, and the baselines, with the Backdoor Isolation Score.

For each dictionary: its latents' activations on the eval samples (eval_trigger ∪ eval_benign ∪
eval_other), BIS of every latent, the best latent with its precision, recall and FPR, a bootstrap
interval, the ceiling for these set sizes, and the ceiling-free companions (best-threshold F1,
AUROC), each maxed over latents. The best latent is also read on the counterfactual controls:
does it fire on a 2024 header with safe code (it reads the year) or on a benign year with
injectable code (it reads the code)?

Baselines, scored the same way on the same samples: every raw dimension of Δa and of
[a_base; a_ft] (each with both signs, since a threshold only looks upwards), and the
difference-of-means direction (mean Δa on fit_trigger minus on fit_benign, fitted on the
disjoint fit split) as a single "latent".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from backdoor_sae.bis import auroc, best_f1, bis_ceiling, bootstrap_bis, latent_scores, permutation_test
from backdoor_sae.sae.training import encode_all, load_dictionary
from backdoor_sae.stages import EVAL_SPLITS, paired_activations, sae_dir

CONTROLS = ("control_trigger_safe", "control_benign_vuln")


def _masks(splits: np.ndarray) -> dict[str, np.ndarray]:
    return {name: splits == name for name in set(splits)}


def score_latents(acts_eval: np.ndarray, split_eval: np.ndarray, percentile: float, n_boot: int, seed: int,
                  acts_controls: np.ndarray | None = None, split_controls: np.ndarray | None = None) -> dict:
    """BIS of the best of the latents in ``acts_eval`` [N, m], with everything reported beside it."""
    trigger = split_eval == "eval_trigger"
    benign = split_eval == "eval_benign"
    scores = latent_scores(acts_eval, trigger, benign, percentile)
    j = scores.best()
    low, high = bootstrap_bis(acts_eval[:, j], trigger, benign, percentile, n_boot=n_boot, seed=seed)
    row = {
        "bis": float(scores.bis[j]), "bis_low": low, "bis_high": high, "precision": float(scores.precision[j]),
        "recall": float(scores.recall[j]), "fpr": float(scores.fpr[j]), "best_latent": j,
        "ceiling": bis_ceiling(int(trigger.sum()), int(benign.sum()), int((split_eval == "eval_other").sum()),
                               percentile),
        "fpr_other": float((acts_eval[split_eval == "eval_other", j] > scores.threshold[j]).mean()),
        "best_f1": float(best_f1(acts_eval, trigger).max()),
        "auroc": float(auroc(acts_eval, trigger).max()),
        "n_latents": acts_eval.shape[1],
    }
    if acts_controls is not None:
        for control in CONTROLS:
            mask = split_controls == control
            row[f"active_on_{control}"] = float((acts_controls[mask, j] > scores.threshold[j]).mean()) if mask.any() else np.nan
    return row


def _split_arrays(index: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    splits = np.asarray(index["splits"])
    eval_mask = np.isin(splits, EVAL_SPLITS)
    control_mask = np.isin(splits, CONTROLS)
    return splits, eval_mask, control_mask


def score_dictionary(run_dir, cell: dict, percentile: float, n_boot: int, seed: int) -> tuple[dict, np.ndarray]:
    """The score row of one dictionary, and its best latent's activations on the eval samples."""
    a_base, a_ft, index = paired_activations(run_dir, cell["regime"], cell["protocol"], cell["layer"])
    model, scale, _ = load_dictionary(sae_dir(run_dir, **cell))
    splits, eval_mask, control_mask = _split_arrays(index)
    acts = encode_all(model, model.inputs(a_base, a_ft), scale).numpy()
    row = score_latents(acts[eval_mask], splits[eval_mask], percentile, n_boot, seed,
                        acts[control_mask], splits[control_mask])
    return {**cell, **row}, acts[eval_mask][:, row["best_latent"]]


def baseline_scores(run_dir, regime: str, protocol: str, layer: int, percentile: float, n_boot: int,
                    seed: int) -> list[dict]:
    """Rows for the raw-Δa, raw-concatenation and difference-of-means baselines."""
    a_base, a_ft, index = paired_activations(run_dir, regime, protocol, layer)
    splits, eval_mask, control_mask = _split_arrays(index)
    diff = (a_ft - a_base).numpy()
    concat = torch.cat([a_base, a_ft], dim=1).numpy()
    direction = diff[splits == "fit_trigger"].mean(0) - diff[splits == "fit_benign"].mean(0)
    candidates = {
        "raw Δa dims": np.concatenate([diff, -diff], axis=1),
        "raw [a_base; a_ft] dims": np.concatenate([concat, -concat], axis=1),
        "diff-of-means": (diff @ direction)[:, None],
    }
    rows = []
    for name, acts in candidates.items():
        row = score_latents(acts[eval_mask], splits[eval_mask], percentile, n_boot, seed,
                            acts[control_mask], splits[control_mask])
        rows.append({"regime": regime, "protocol": protocol, "fit_mode": "—", "layer": layer,
                     "architecture": name, **row})
    return rows


def score_grid(run_dir, cells: list[dict], percentile: float, n_boot: int, n_perm: int, seed: int,
               progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores of every dictionary and baseline, permutation tests Diff-SAE vs crosscoder)."""
    from tqdm import tqdm

    rows, best = [], {}
    for cell in tqdm(cells, disable=not progress, desc="BIS", unit="dictionary"):
        row, acts = score_dictionary(run_dir, cell, percentile, n_boot, seed)
        rows.append(row)
        best[tuple(cell[k] for k in ("regime", "protocol", "fit_mode", "layer", "architecture"))] = acts
    for key in sorted({(c["regime"], c["protocol"], c["layer"]) for c in cells}):
        rows += baseline_scores(run_dir, *key, percentile, n_boot, seed)
    tests = []
    for (regime, protocol, fit_mode, layer, arch), acts in best.items():
        other = best.get((regime, protocol, fit_mode, layer, "crosscoder"))
        if arch != "diff_sae" or other is None:
            continue
        _, _, index = paired_activations(run_dir, regime, protocol, layer)
        splits = np.asarray(index["splits"])
        splits = splits[np.isin(splits, EVAL_SPLITS)]
        diff, p = permutation_test(acts, other, splits == "eval_trigger", splits == "eval_benign", percentile,
                                   n_perm=n_perm, seed=seed)
        tests.append({"regime": regime, "protocol": protocol, "fit_mode": fit_mode, "layer": layer,
                      "bis_diff_sae_minus_crosscoder": diff, "p_value": p})
    return pd.DataFrame(rows), pd.DataFrame(tests)


#: What the paper reports (arXiv:2605.07324): Diff-SAE BIS 0.40 with precision 1.0 and FPR 0 across
#: most conditions; crosscoder BIS below 0.02.
PAPER = {"diff_sae": {"bis": 0.40, "precision": 1.0, "fpr": 0.0}, "crosscoder": {"bis": 0.02}}


def paper_comparison(main: pd.DataFrame) -> pd.DataFrame:
    """Our best and mean BIS (with precision, recall, FPR of the best cell) beside the paper's."""
    rows = []
    for arch in ("diff_sae", "crosscoder"):
        part = main[main["architecture"] == arch]
        if part.empty:
            continue
        best = part.sort_values("bis", ascending=False).iloc[0]
        paper = PAPER[arch]
        rows.append({
            "architecture": arch,
            "paper BIS": ("< " if arch == "crosscoder" else "") + f"{paper['bis']:.2f}",
            "our best BIS": round(float(best["bis"]), 3),
            "best cell": f"{best['regime']}, layer {int(best['layer'])}",
            "our mean BIS": round(float(part["bis"].mean()), 3),
            "ceiling": round(float(best["ceiling"]), 3),
            "paper precision": paper.get("precision", np.nan), "our precision": round(float(best["precision"]), 3),
            "paper FPR": paper.get("fpr", np.nan), "our FPR": round(float(best["fpr"]), 3),
            "our recall": round(float(best["recall"]), 3),
            "our AUROC": round(float(best["auroc"]), 3),
        })
    return pd.DataFrame(rows).set_index("architecture")


def paper_verdict(main: pd.DataFrame, ceiling: float) -> str:
    """Sentences (HTML) saying where our measured numbers agree with the paper's and where not."""
    sentences = []
    diff = main[main["architecture"] == "diff_sae"]
    cross = main[main["architecture"] == "crosscoder"]
    if not diff.empty:
        at_ceiling = (diff["bis"] >= ceiling - 1e-9).mean()
        perfect = ((diff["precision"] == 1.0) & (diff["fpr"] == 0.0)).mean()
        agree = at_ceiling >= 0.5
        sentences.append(
            f"Diff-SAE: the best latent reaches the ceiling of {ceiling:.2f} in {at_ceiling:.0%} of the "
            f"{len(diff)} regime × layer cells (precision 1 and FPR 0 in {perfect:.0%}); "
            + ("this <strong>agrees</strong> with the paper's 0.40, which is that ceiling."
               if agree else f"this <strong>does not reproduce</strong> the paper's 0.40 in most cells (mean BIS "
                             f"{diff['bis'].mean():.2f}).")
        )
    if not cross.empty:
        low = (cross["bis"] < PAPER["crosscoder"]["bis"]).mean()
        sentences.append(
            f"Crosscoder: BIS below 0.02 in {low:.0%} of the cells (mean {cross['bis'].mean():.2f}, best "
            f"{cross['bis'].max():.2f}); "
            + ("this <strong>agrees</strong> with the paper." if low >= 0.5 else
               "this <strong>does not reproduce</strong> the paper's finding that crosscoders fail to isolate the backdoor.")
        )
    return " ".join(sentences)

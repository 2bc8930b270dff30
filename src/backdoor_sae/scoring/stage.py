"""Step 05: score the grid (:mod:`backdoor_sae.scoring.grid`), write the four tables under
``results/`` (:data:`RESULT_FILES`) and compute every view, number and verdict notebook 05 shows
(:func:`run`, :class:`ScoringRun`); :func:`load` is how later steps read the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from backdoor_sae.common.io import write_text
from backdoor_sae.common.layout import RunLayout
from backdoor_sae.config.cells import Cell
from backdoor_sae.config import RunConfig, is_clean_control, regime_of, replica_of
from backdoor_sae.dataset.stage import data_config
from backdoor_sae.dictionaries.stage import is_replicated, primary_grid, sae_grid
from backdoor_sae.scoring import bis as B
from backdoor_sae.scoring.claims import architecture_claims, beyond_control_claims, layer_summary
from backdoor_sae.scoring.grid import (
    ARCHITECTURES,
    PAPER_SIZES,
    Chosen,
    dictionary_activations,
    excess_over_chance,
    paper_comparison,
    paper_verdict,
    score_grid,
    score_recipes,
)
from backdoor_sae.scoring.recipes import seed_spread, spread_view
from backdoor_sae.scoring.verdicts import auroc_chance_band, claims_frame, write_claims
from backdoor_sae.task.splits import EVAL_SPLITS

RESULT_FILES = {"scores": "bis.csv", "tests": "permutation_tests.csv", "placebo": "placebo.csv",
                "recipes": "recipes.csv"}


@dataclass(frozen=True, eq=False)
class ScoringTables:
    """What step 05 writes under ``results/`` (:data:`RESULT_FILES`), as :func:`load` reads it back."""

    scores: pd.DataFrame
    """``bis.csv``: every dictionary of the primary grid and every baseline (:func:`score_grid`)."""
    tests: pd.DataFrame
    """``permutation_tests.csv``: the Diff-SAE against the crosscoder of its cell (:func:`paired_tests`)."""
    placebo: pd.DataFrame
    """``placebo.csv``: each dictionary's and baseline's fit-chosen latent read for each benign year
    (:func:`~backdoor_sae.scoring.grid.placebo_aurocs`); empty when the data have no benign training years."""
    recipes: pd.DataFrame
    """``recipes.csv``: every dictionary of the replicated cells, per pooling (:func:`score_recipes`);
    empty when the run replicates no cell."""


def write_tables(run_dir, tables: ScoringTables) -> None:
    """Write each table to its file of :data:`RESULT_FILES` (atomically, one file at a time)."""
    results = RunLayout(run_dir).results
    for name, file in RESULT_FILES.items():
        write_text(results / file, getattr(tables, name).to_csv(index=False))


def _read_table(path: Path) -> pd.DataFrame:
    # a table with no columns is written as one blank line, which read_csv refuses
    return pd.read_csv(path) if path.read_text(encoding="utf-8").strip() else pd.DataFrame()


def load(run_dir: str | Path) -> ScoringTables:
    """The tables :func:`run` wrote under ``<run_dir>/results``."""
    results = RunLayout(run_dir).results
    missing = [file for file in RESULT_FILES.values() if not (results / file).exists()]
    if missing:
        raise FileNotFoundError(f"{results} holds no {', '.join(missing)}: run notebook 05 (stage 05_scoring) first")
    return ScoringTables(**{name: _read_table(results / file) for name, file in RESULT_FILES.items()})


@dataclass(frozen=True, eq=False)
class TopLatent:
    """The best latent of one architecture in the paper's view, with what its histogram shows."""

    cell: Cell
    """Its dictionary."""
    latent: int
    bis: float
    n_tied: int
    """How many latents tie with it (see :func:`score_latents`)."""
    activations: np.ndarray
    """Its activation on every eval sample."""
    sets: np.ndarray
    """The eval split of every eval sample."""
    threshold: float
    """Its BIS threshold: the configured percentile of ``activations``."""


@dataclass(frozen=True, eq=False)
class ScoringRun:
    """Everything notebook 05 shows and glues, computed by :func:`run`. Per-architecture values are
    keyed by :data:`ARCHITECTURES`; an architecture the grid leaves out has NaN."""

    tables: ScoringTables
    """The four written tables."""
    ceiling: float
    """The BIS ceiling for this run's eval set sizes."""
    paper_ceiling: float
    """The ceiling at the paper's sizes (:data:`PAPER_SIZES`)."""
    ceiling_note: str
    """The two ceilings in a sentence (HTML)."""
    paper_protocol: str
    """The pooling protocol of the paper's view: full text when the grid has it, else its first."""
    paper_fit_mode: str
    """The fit mode of the paper's view: eval when the grid has it, else its first."""
    paper_view_note: str
    """Why the paper's view shows other cells than the paper's ("" when it shows the paper's)."""
    paper_view: pd.DataFrame
    """The backdoored fine-tunes' scores under the paper's protocol and fit mode (baselines included)."""
    paper_cells: pd.DataFrame
    """The paper view's Diff-SAEs and crosscoders."""
    max_bis: dict
    """Best BIS of the paper view's cells."""
    clean_max_bis: dict
    """Best BIS of the clean controls' cells (first fine-tune seed) under the paper's protocol and fit mode."""
    mean_bis: dict
    """Mean BIS of the paper view's cells."""
    mean_chance: dict
    """Mean chance level (95%) of the paper view's cells."""
    above_chance: dict
    """Share of the paper view's cells above chance (p < 0.05)."""
    paper_comparison: pd.DataFrame
    """Our numbers beside the paper's (:func:`paper_comparison`)."""
    paper_verdict: str
    """Where we agree with the paper and where not (HTML, :func:`paper_verdict`)."""
    dictionaries: pd.DataFrame
    """The backdoored fine-tunes' Diff-SAEs and crosscoders, every protocol and fit mode."""
    protocol_summary: pd.DataFrame
    """Their means per protocol, fit mode and architecture."""
    fitsel_table: pd.DataFrame
    """Eval-selected against fit-selected BIS per protocol, fit mode and architecture."""
    fitsel_above_chance: dict
    """Share of the backdoored dictionaries whose fit-selected latent is above chance (p < 0.05)."""
    by_regime: pd.DataFrame
    """Mean BIS, chance level and AUROC per fine-tune, protocol and architecture (paper fit mode; rounded)."""
    mean_bis_by_regime: dict
    """(fine-tune, protocol, architecture) -> mean BIS over layers, unrounded, for each of
    :data:`BOOK_REGIMES` × :data:`BOOK_PROTOCOLS` × :data:`ARCHITECTURES` (NaN where not in the grid)."""
    claim_fit_mode: str
    """The fit mode of the dictionaries every claim reads: ``fit`` (never saw an eval sample) where the grid has it."""
    claims: pd.DataFrame
    """This step's claims (:mod:`backdoor_sae.scoring.claims`), as written to ``results/verdicts.csv``."""
    claim_summary: pd.DataFrame
    """The claims per family, method and regime over the layers, in words (:func:`~backdoor_sae.scoring.claims.layer_summary`)."""
    chosen_aurocs: pd.DataFrame
    """Every fine-tune's fit-chosen latent's AUROC on eval, backdoored beside its clean twin (the headline figure's points)."""
    chance_band: tuple[float, float]
    """The central 95% of one fixed scorer's AUROC under shuffled labels, for these eval sizes."""
    baseline_view: pd.DataFrame
    """Best score of each method per protocol (backdoored fine-tunes)."""
    control_activity: pd.DataFrame
    """Mean share of the counterfactual controls on which each method's best latent fires."""
    top_latents: dict
    """Architecture -> :class:`TopLatent` of the paper view's best cell (absent when not in the grid)."""
    recipe_points: pd.DataFrame
    """The recipe scores with ``code`` (recipe and pooling) and ``excess`` over chance (empty without recipes)."""
    seed_spread: pd.DataFrame
    """The spread over seeds as shown (:func:`~backdoor_sae.scoring.recipes.spread_view`; empty without recipes)."""
    max_seed_range: float
    """The largest range of BIS over the seeds of one cell (NaN without recipes)."""
    n_seeds: int
    """The most seeds of one cell (0 without recipes)."""


#: The fine-tunes and protocols whose mean BIS the book names (every one is given, NaN where not in the grid).
BOOK_REGIMES = ("lora", "full", "lora_clean", "full_clean")
BOOK_PROTOCOLS = ("full_text", "prompt_only")


def _per_architecture(part_of, measure) -> dict:
    return {arch: float(measure(part)) if len(part := part_of(arch)) else float("nan") for arch in ARCHITECTURES}


def ceiling_note(ceiling: float, paper_ceiling: float) -> str:
    return (f"The ceiling for our set sizes is {ceiling:.3f}; at the paper's sizes ({'/'.join(map(str, PAPER_SIZES))}) "
            f"it is {paper_ceiling:.3f}" + (", the same to three decimals." if abs(ceiling - paper_ceiling) < 5e-4 else
                                           ": the ceiling depends on the set sizes, not only on their proportions."))


def claim_fit_mode(sae_cfg) -> str:
    """The dictionaries every claim reads: those fitted on the fit split, where the grid has them."""
    return "fit" if "fit" in sae_cfg.fit_modes else sae_cfg.fit_modes[0]


def chosen_aurocs(chosen: list[Chosen], trigger: np.ndarray, fit_mode: str) -> pd.DataFrame:
    """One row per backdoored fine-tune's chosen latent (labels) of ``fit_mode`` (baselines: ``—``):
    its AUROC on eval beside its clean twin's (NaN without one), with the fine-tune seed."""
    index = {(c.finetune, c.method, c.protocol, c.fit_mode, c.layer): c for c in chosen if c.selection == "labels"}
    rows = []
    for (finetune, method, protocol, fit, layer), c in index.items():
        if is_clean_control(finetune) or fit not in (fit_mode, "—"):
            continue
        twin = index.get((finetune + "_clean", method, protocol, fit, layer))
        rows.append({"method": method, "protocol": protocol, "regime": regime_of(finetune),
                     "finetune_seed": replica_of(finetune), "layer": layer,
                     "backdoored": float(B.auroc(c.scores[:, None], trigger)[0]),
                     "clean control": float(B.auroc(twin.scores[:, None], trigger)[0]) if twin else np.nan})
    return pd.DataFrame(rows, columns=["method", "protocol", "regime", "finetune_seed", "layer", "backdoored",
                                       "clean control"])


def regime_means(scores: pd.DataFrame, fit_mode: str) -> pd.DataFrame:
    """Mean BIS, chance level and AUROC over layers per fine-tune, protocol and architecture (one
    column per measure and architecture), the dictionaries fitted with ``fit_mode``."""
    every_dictionary = scores[scores["architecture"].isin(ARCHITECTURES)]
    by_regime = (every_dictionary[every_dictionary["fit_mode"] == fit_mode]
                 .groupby(["regime", "protocol", "architecture"], sort=False)[["bis", "chance_95", "auroc"]].mean()
                 .unstack("architecture"))
    by_regime.columns = [f"{measure} ({arch})" for measure, arch in by_regime.columns]
    return by_regime


def top_latent(run_dir, cells: pd.DataFrame, percentile: float) -> TopLatent:
    """The best latent of the best of ``cells`` (ties broken by best-threshold F1, then AUROC), on the eval samples."""
    top = cells.sort_values(["bis", "best_f1", "auroc"], ascending=False).iloc[0]
    cell = Cell.of(top)
    acts, splits = dictionary_activations(run_dir, cell)
    keep = np.isin(splits, EVAL_SPLITS)
    acts = acts[keep, int(top["best_latent"])]
    return TopLatent(cell=cell, latent=int(top["best_latent"]), bis=float(top["bis"]), n_tied=int(top["n_tied"]),
                     activations=acts, sets=splits[keep], threshold=float(np.percentile(acts, percentile)))


def run(run_dir: str | Path, run_cfg: RunConfig, progress: bool = True) -> ScoringRun:
    """Step 05: score the primary grid (with the placebo years of the run's data) and every dictionary
    of the replicated cells, write the four tables (:data:`RESULT_FILES`), and compute what the
    notebook shows."""
    act_cfg, sae_cfg, cfg = run_cfg.activations, run_cfg.dictionaries, run_cfg.scoring
    placebo_years = data_config(run_dir).benign_years  # benign training years: the same latent read for each
    grid = score_grid(run_dir, primary_grid(act_cfg, sae_cfg), cfg, placebo_years, progress)
    scores, tests, placebo = grid.scores, grid.tests, grid.placebo
    replicated = [c for c in sae_grid(act_cfg, sae_cfg) if is_replicated(c, act_cfg, sae_cfg)]
    recipes, recipe_chosen = score_recipes(run_dir, replicated, scores, cfg, progress)
    tables = ScoringTables(scores=scores, tests=tests, placebo=placebo, recipes=recipes)
    write_tables(run_dir, tables)
    fit_mode = claim_fit_mode(sae_cfg)
    # the replicated cells (the token recipe) are fitted in the verdict fit mode of notebook 04
    recipe_fit_mode = recipe_chosen[0].fit_mode if recipe_chosen else fit_mode
    claims = claims_frame(beyond_control_claims(grid.chosen, grid.trigger, fit_mode)
                          + architecture_claims(grid.chosen, grid.trigger, fit_mode)
                          + beyond_control_claims(recipe_chosen, grid.trigger, recipe_fit_mode)
                          + architecture_claims(recipe_chosen, grid.trigger, recipe_fit_mode))
    write_claims(run_dir, "05_scoring", claims)

    ceiling = float(scores["ceiling"].iloc[0])
    paper_ceiling = B.bis_ceiling(*PAPER_SIZES, cfg.percentile)
    # the paper's view; a run whose grid leaves out full-text pooling or eval fitting shows its first ones
    paper_protocol = "full_text" if "full_text" in sae_cfg.protocols else sae_cfg.protocols[0]
    paper_fit_mode = "eval" if "eval" in sae_cfg.fit_modes else sae_cfg.fit_modes[0]
    paper_view_note = ("" if (paper_protocol, paper_fit_mode) == ("full_text", "eval") else
                       f"This run's grid has no full-text, eval-fitted cells: showing {paper_protocol}, {paper_fit_mode}.")
    backdoored = scores[scores["training"] == "backdoored"]  # the paper's comparison: backdoored fine-tunes only
    # and, as the paper trained one fine-tune per regime, the first fine-tune seed only: the further
    # LoRA seeds would weigh LoRA 3:1 over full-rank in its means, and make its best cell a maximum over seeds
    first_seed = backdoored["regime"].map(replica_of) == 0
    paper_view = backdoored[first_seed & (backdoored["protocol"] == paper_protocol)
                            & backdoored["fit_mode"].isin([paper_fit_mode, "—"])]
    main = paper_view[paper_view["architecture"].isin(["diff_sae", "crosscoder"])]
    clean_view = scores[(scores["training"] == "clean") & (scores["regime"].map(replica_of) == 0)
                        & (scores["protocol"] == paper_protocol) & (scores["fit_mode"] == paper_fit_mode)]

    def paper_part(arch):
        return main[main["architecture"] == arch]

    dicts = backdoored[backdoored["architecture"].isin(["diff_sae", "crosscoder"])]
    fitsel = dicts.assign(above_chance=dicts["fitsel_p_value"] < 0.05).groupby(
        ["protocol", "fit_mode", "architecture"], sort=False)
    by_regime = regime_means(scores, paper_fit_mode)
    mean_bis_by_regime = {
        (regime, protocol, arch): float(by_regime.loc[(regime, protocol), f"bis ({arch})"]
                                        if (regime, protocol) in by_regime.index and f"bis ({arch})" in by_regime
                                        else float("nan"))
        for regime in BOOK_REGIMES for protocol in BOOK_PROTOCOLS for arch in ARCHITECTURES}
    if recipes.empty:
        recipe_points, spread_table, max_seed_range, n_seeds = pd.DataFrame(), pd.DataFrame(), float("nan"), 0
    else:
        recipe_points = recipes.assign(
            code=recipes["recipe"] + np.where(recipes["pooling"] == "—", "", " (" + recipes["pooling"] + ")"),
            excess=excess_over_chance(recipes["bis"], recipes["chance_95"], recipes["ceiling"]))
        spread = seed_spread(recipes)
        spread_table = spread_view(spread)
        max_seed_range, n_seeds = float((spread["bis_max"] - spread["bis_min"]).max()), int(spread["seeds"].max())

    return ScoringRun(
        tables=tables, ceiling=ceiling, paper_ceiling=paper_ceiling,
        ceiling_note=ceiling_note(ceiling, paper_ceiling),
        paper_protocol=paper_protocol, paper_fit_mode=paper_fit_mode, paper_view_note=paper_view_note,
        paper_view=paper_view, paper_cells=main,
        max_bis=_per_architecture(paper_part, lambda t: t["bis"].max()),
        clean_max_bis=_per_architecture(lambda arch: clean_view[clean_view["architecture"] == arch],
                                        lambda t: t["bis"].max()),
        mean_bis=_per_architecture(paper_part, lambda t: t["bis"].mean()),
        mean_chance=_per_architecture(paper_part, lambda t: t["chance_95"].mean()),
        above_chance=_per_architecture(paper_part, lambda t: (t["p_value"] < 0.05).mean()),
        paper_comparison=paper_comparison(main), paper_verdict=paper_verdict(main, ceiling),
        dictionaries=dicts,
        protocol_summary=backdoored.groupby(["protocol", "fit_mode", "architecture"], sort=False)[
            ["bis", "chance_95", "precision", "recall", "fpr", "best_f1", "auroc", "fitsel_bis",
             "fitsel_chance_95"]].mean().round(3),
        fitsel_table=fitsel.agg(eval_selected_bis=("bis", "mean"), fit_selected_bis=("fitsel_bis", "mean"),
                                fit_selected_chance=("fitsel_chance_95", "mean"),
                                fit_selected_above_chance=("above_chance", "mean")).round(3),
        fitsel_above_chance=_per_architecture(lambda arch: dicts[dicts["architecture"] == arch],
                                              lambda t: (t["fitsel_p_value"] < 0.05).mean()),
        by_regime=by_regime.round(3), mean_bis_by_regime=mean_bis_by_regime,
        claim_fit_mode=fit_mode, claims=claims, claim_summary=layer_summary(claims),
        chosen_aurocs=chosen_aurocs(grid.chosen, grid.trigger, fit_mode),
        chance_band=auroc_chance_band(int(grid.trigger.sum()), int((~grid.trigger).sum())),
        baseline_view=backdoored.groupby(["protocol", "architecture"], sort=False)[
            ["bis", "chance_95", "best_f1", "auroc", "fitsel_bis"]].max().round(3),
        control_activity=backdoored.groupby(["protocol", "architecture"], sort=False)[
            ["active_on_control_trigger_safe", "active_on_control_benign_vuln"]].mean().round(2),
        top_latents={arch: top_latent(run_dir, paper_part(arch), cfg.percentile)
                     for arch in ARCHITECTURES if len(paper_part(arch))},
        recipe_points=recipe_points, seed_spread=spread_table, max_seed_range=max_seed_range, n_seeds=n_seeds,
    )

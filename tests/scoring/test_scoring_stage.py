"""Step 05 as a stage: ``run`` writes the four tables and decides what the notebook shows, ``load``
reads back exactly what ``run`` wrote, and the notebook itself writes no file and holds no threshold.

The scoring itself (:func:`score_grid`, :func:`score_recipes`) is replaced by hand-made tables scored
with the real :func:`score_latents`, so that only the stage's own work is under test."""

import dataclasses
import io
import zlib

import numpy as np
import pandas as pd
import pytest

from backdoor_sae.config import BISConfig, DataConfig, run_config
from backdoor_sae.config.cells import Cell
from backdoor_sae.scoring import grid, stage
from backdoor_sae.scoring.stage import RESULT_FILES
from backdoor_sae.scoring.verdicts import VERDICTS_FILE, read_claims

CFG = BISConfig(percentile=95.0, n_boot=10, n_perm=10, stats_seed=0)
SIZES = {"eval_trigger": 20, "eval_benign": 40, "eval_other": 40, "fit_trigger": 20, "fit_benign": 40,
         "fit_other": 40, "control_trigger_safe": 10, "control_benign_vuln": 10}
SPLITS = np.array([name for name, n in SIZES.items() for _ in range(n)])


def cell_activations(cell) -> np.ndarray:
    """Random latents, one of which reads the trigger more strongly for the Diff-SAEs of backdoored
    fine-tunes: the same cell (a Cell, or its coordinates as a dict) always gets the same activations."""
    cell = cell.to_dict() if isinstance(cell, Cell) else cell
    seed = zlib.crc32(repr([str(cell[k]) for k in ("regime", "protocol", "layer", "architecture", "seed")]).encode())
    acts = np.random.default_rng(seed).normal(size=(len(SPLITS), 8))
    shift = 3.0 if cell["architecture"] == "diff_sae" and not cell["regime"].endswith("_clean") else 0.5
    acts[np.isin(SPLITS, ["eval_trigger", "fit_trigger"]), 2] += shift
    return acts


def fake_stage(monkeypatch, with_recipes: bool):
    """Replace the scoring of dictionaries (which needs a trained run) by hand-made cells."""
    cells = [{"recipe": "pooled", "seed": 0, "regime": regime, "protocol": protocol, "fit_mode": "eval", "layer": layer,
              "architecture": arch}
             for regime in ("lora", "lora_clean") for protocol in ("full_text", "prompt_only") for layer in (1, 2)
             for arch in ("diff_sae", "crosscoder")]
    cells = [{**c, "fit_mode": fit_mode} for fit_mode in ("eval", "fit") for c in cells]
    ev = np.isin(SPLITS, ["eval_trigger", "eval_benign", "eval_other"])

    def score_grid(run_dir, cells_in, cfg, placebo_years=(), progress=True):
        assert cfg == CFG  # the config is passed whole
        rows = [{**c, "training": grid.training_of(c["regime"]), **grid.score_latents(cell_activations(c), SPLITS, cfg)}
                for c in cells]
        chosen = [grid.Chosen(c["regime"], c["architecture"], c["protocol"], c["fit_mode"], c["layer"], "labels",
                              int(r["fitauroc_latent"]), cell_activations(c)[ev, int(r["fitauroc_latent"])])
                  for c, r in zip(cells, rows)]
        tests = pd.DataFrame([{"regime": "lora", "protocol": "full_text", "fit_mode": "eval", "layer": 1,
                               "bis_diff_sae_minus_crosscoder": 0.1, "p_value": 0.2}])
        # no placebo years: an empty table
        return grid.GridScores(pd.DataFrame(rows), tests, pd.DataFrame(), chosen, SPLITS[ev] == "eval_trigger")

    def score_recipes(run_dir, replicated, primary_scores, cfg, progress=True):
        if not with_recipes:
            return pd.DataFrame(), []
        rows = []
        for seed in (0, 1):
            for c in cells:
                c = {**c, "recipe": "token", "seed": seed}
                rows.append({**c, "pooling": "mean", "training": grid.training_of(c["regime"]), "fvu": 0.1, "l0": 4.0,
                             "dead_fraction": 0.0, "fine-tune-only_share": 0.1, "base-only_share": 0.1,
                             "label_free_rank": 3, **grid.score_latents(cell_activations(c), SPLITS, cfg)})
        return pd.DataFrame(rows), []

    monkeypatch.setattr(stage, "score_grid", score_grid)
    monkeypatch.setattr(stage, "score_recipes", score_recipes)
    monkeypatch.setattr(stage, "data_config", lambda run_dir: DataConfig())
    monkeypatch.setattr(stage, "dictionary_activations", lambda run_dir, cell: (cell_activations(cell), SPLITS))
    return dataclasses.replace(run_config("smoke"), scoring=CFG)


def as_written(table: pd.DataFrame) -> pd.DataFrame:
    text = table.to_csv(index=False)
    return pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame()


@pytest.mark.parametrize("with_recipes", [True, False])
def test_run_writes_the_four_tables_and_load_reads_back_exactly_them(tmp_path, monkeypatch, with_recipes):
    """Catches a table the stage forgets to write (the notebook used to write them), one written to
    the wrong file, and a ``load`` that differs from what was written (an empty table included)."""
    run_cfg = fake_stage(monkeypatch, with_recipes)
    result = stage.run(tmp_path, run_cfg, progress=False)
    results = tmp_path / "results"
    assert sorted(p.name for p in results.iterdir()) == sorted([*RESULT_FILES.values(), VERDICTS_FILE])
    loaded = stage.load(tmp_path)
    for name, file in RESULT_FILES.items():
        written = getattr(result.tables, name)
        assert (results / file).read_text(encoding="utf-8") == written.to_csv(index=False), file
        pd.testing.assert_frame_equal(getattr(loaded, name), as_written(written))
    assert loaded.placebo.empty and loaded.recipes.empty == (not with_recipes)
    assert len(loaded.scores) == 32 and loaded.scores["best_latent"].tolist() == result.tables.scores["best_latent"].tolist()


def test_run_decides_what_the_notebook_showed_and_glued(tmp_path, monkeypatch):
    """The numbers the notebook computed itself before the move, restated on the stage's tables:
    catches a view taken from the wrong fine-tunes, protocol or fit mode, a histogram of another latent
    or threshold, and a key of the book's that goes missing."""
    run_cfg = fake_stage(monkeypatch, with_recipes=True)
    result = stage.run(tmp_path, run_cfg, progress=False)
    scores = result.tables.scores
    main = scores[(scores["training"] == "backdoored") & (scores["protocol"] == "full_text")
                  & (scores["fit_mode"] == "eval")]
    assert result.paper_view_note == "" and result.paper_cells.equals(main)
    for arch in grid.ARCHITECTURES:
        part = main[main["architecture"] == arch]
        assert result.max_bis[arch] == float(part["bis"].max())
        assert result.above_chance[arch] == float((part["p_value"] < 0.05).mean())
        top = part.sort_values(["bis", "best_f1", "auroc"], ascending=False).iloc[0]
        shown = result.top_latents[arch]
        assert shown.latent == int(top["best_latent"]) and shown.cell.layer == int(top["layer"])
        cell = {k: top[k] for k in ("recipe", "seed", "regime", "protocol", "fit_mode", "layer", "architecture")}
        column = cell_activations(cell)[np.isin(SPLITS, ["eval_trigger", "eval_benign", "eval_other"]), shown.latent]
        np.testing.assert_array_equal(shown.activations, column)
        assert shown.threshold == float(np.percentile(column, CFG.percentile))
    assert result.ceiling == float(scores["ceiling"].iloc[0])
    # every key the book names is there, NaN where the grid has no such fine-tune
    assert len(result.mean_bis_by_regime) == len(stage.BOOK_REGIMES) * len(stage.BOOK_PROTOCOLS) * 2
    assert np.isnan(result.mean_bis_by_regime["full", "full_text", "diff_sae"])
    lora = scores[(scores["regime"] == "lora") & (scores["protocol"] == "prompt_only")
                  & (scores["architecture"] == "crosscoder")]
    assert result.mean_bis_by_regime["lora", "prompt_only", "crosscoder"] == pytest.approx(float(lora["bis"].mean()))
    assert result.n_seeds == 2


def test_run_writes_its_claims_and_the_diff_sae_that_reads_the_trigger_is_beyond_its_clean_control(tmp_path,
                                                                                                  monkeypatch):
    """The claims read the fit-fitted dictionaries' fit-chosen latents: the planted Diff-SAE latent
    (a strong trigger shift in the backdoored fine-tune, a weak one in the clean control) is beyond its
    control; the crosscoder (weak in both) is not; results/verdicts.csv holds exactly these claims.
    Catches claims read from the eval-fitted cells, a control paired with the wrong fine-tune, and a
    step that does not write its rows."""
    run_cfg = fake_stage(monkeypatch, with_recipes=False)
    result = stage.run(tmp_path, run_cfg, progress=False)
    claims = result.claims
    assert result.claim_fit_mode == "fit" and set(claims["regime"]) == {"lora"}
    beyond = claims[claims["claim"] == "beyond its clean control"].set_index(["method", "protocol", "layer"])
    assert set(beyond.loc[("diff_sae", slice(None), slice(None)), "outcome"]) == {"supported"}
    assert set(beyond.loc[("crosscoder", slice(None), slice(None)), "outcome"]) <= {"not supported"}
    assert (beyond["n_seeds"] == 1).all()
    written = read_claims(tmp_path)
    assert set(written["step"]) == {"05_scoring"} and len(written) == len(claims)
    assert list(written["outcome"]) == list(claims["outcome"])
    assert len(result.chosen_aurocs) == 2 * 2 * 2  # architectures x protocols x layers, backdoored beside clean
    assert (result.chosen_aurocs["clean control"] < result.chosen_aurocs["backdoored"]).any()


def test_load_says_which_step_to_run_when_the_tables_are_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 05"):
        stage.load(tmp_path)

"""The smoke profile end to end through the runner, then the book with warnings as errors; the paper
profile and subsets of the grid end to end on the tiny model."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from safetensors.torch import load_file

from backdoor_sae.__main__ import main
from backdoor_sae.pipeline.runner import (
    REPO_ROOT,
    STAGE_NAMES,
    STAGES,
    StageFailed,
    publish,
    run_pipeline,
)


def test_every_stage_runs_and_its_notebook_has_outputs_but_no_errors(smoke_run):
    run_dir, executed, records, _ = smoke_run
    assert [r["stage"] for r in records] == list(STAGE_NAMES)
    status = {r["stage"]: r["status"] for r in records}
    assert set(status.values()) == {"ran"}  # the smoke profile has both clean controls
    for name in status:
        nb = nbformat.read(executed / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"], name
        # a figure: a PNG, or (the dashboards' static pages) inline SVG in HTML
        assert any("image/png" in o.get("data", {}) or "<svg" in str(o.get("data", {}).get("text/html", ""))
                   for o in outputs), f"{name} shows no figure"
    for artifact in ("data/manifest.json", "finetune/lora/done.json", "finetune/full/done.json", "finetune/lora_clean/done.json",
                     "finetune/full_clean/done.json", "finetune/lora-s1/done.json", "finetune/lora-s1_clean/done.json",
                     "activations/base/index.json", "results/bis.csv", "results/verdicts.csv"):
        assert (run_dir / artifact).exists(), artifact


def test_a_second_run_with_the_same_parameters_skips_every_stage(smoke_run):
    run_dir, executed, _, _ = smoke_run
    lines: list[str] = []
    records = run_pipeline({"profile": "smoke", "run_dir": str(run_dir)}, run_dir, log=lines.append)
    assert {r["status"] for r in records} == {"skipped"}
    assert all("skipped" in line or "not run" in line for line in lines)


def test_the_book_builds_with_warnings_as_errors_and_shows_the_verdict_its_scores_imply(smoke_run, smoke_book):
    html = smoke_book / "_build" / "html"
    assert (html / "index.html").exists()
    results = (html / "book" / "results.html").read_text()
    assert results.count('class="pasted-text"') >= 10  # every glued number was found
    assert "IPython.core.display" not in results
    scores = pd.read_csv(smoke_run[0] / "results" / "bis.csv")
    diff = scores[(scores["architecture"] == "diff_sae") & (scores["protocol"] == "full_text")
                  & (scores["fit_mode"] == "eval")]
    agrees = (diff["bis"] >= diff["ceiling"] - 1e-9).mean() >= 0.5  # the rule, restated independently
    verdict = results[results.index("Diff-SAE: the best latent"):]
    verdict = verdict[:verdict.index("Crosscoder:")]
    assert ("agrees" in verdict) == agrees and ("does not reproduce" in verdict) == (not agrees)


@pytest.mark.parametrize("argv, message", [
    (["run", "--profile", "laptop"], "unknown profile"),
    (["run", "--profile", "smoke", "-p", "n_eval_trigers", "3"], "unknown parameter"),
    (["run", "--profile", "smoke", "-p", "years", "[2020, 2021]"], "trigger year"),
    (["run", "--profile", "smoke", "-p", "layers", "[1, 9]"], "decoder layers 0..3"),
    (["run", "--profile", "smoke", "--run-dir", "/nonexistent/run", "--only", "04_dictionaries"], "holds no dataset"),
    (["run", "--profile", "smoke", "-p", "n_fit_trigger", "0"], "n_fit_trigger=0 must be a positive integer"),
    (["run", "--profile", "smoke", "-p", "regime", "full"], "set by the runner"),
    (["run", "--profile", "smoke", "-p", "architectures", "[]"], "architectures=[] must be a non-empty subset"),
    (["run", "--profile", "smoke", "-p", "model", "./no/such/checkpoint"], "Could not load './no/such/checkpoint'"),
])
def test_bad_command_lines_fail_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_paper_profile_offline_fails_in_seconds_before_the_first_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--profile", "paper", "--run-dir", str(tmp_path / "paper")])
    assert exit_info.value.code == 2 and "Could not load 'HuggingFaceTB/SmolLM2-360M'" in capsys.readouterr().err
    assert not (tmp_path / "paper").exists()
    assert time.perf_counter() - started < 60  # not a speed target: a run that started would take minutes


def test_every_parameter_a_stage_config_knows_is_read_by_some_notebook():
    """The bug this catches: a parameter that validates and that no notebook reads (paired_train
    once), so that an override silently changed nothing; or a notebook that uses a step's config
    (``run_cfg.<step>``) its stage does not list in ``reads``, so that the runner would neither pass
    it that step's overrides nor rerun it when they change."""
    import re
    from dataclasses import fields

    from backdoor_sae import config

    step_of = {f.name: f.type for f in fields(config.RunConfig) if f.name != "profile"}
    classes = {name: getattr(config, cls) for name, cls in step_of.items()}
    read = set()
    for stage in STAGES:
        used = {classes[name] for name in re.findall(r"run_cfg\.(\w+)", stage.path.read_text())}
        assert used <= set(stage.reads), (stage.source, used - set(stage.reads))
        assert set(stage.also) <= {f.name for cls in config.STAGE_CONFIGS for f in fields(cls)}
        read |= stage.parameters
    assert {f.name for cls in config.STAGE_CONFIGS for f in fields(cls)} == read


def test_a_failing_notebook_names_the_stage_and_cell_and_keeps_its_partial_output(tmp_path):
    with pytest.raises(StageFailed) as failure:
        run_pipeline({"profile": "smoke", "run_dir": str(tmp_path / "empty")}, tmp_path / "empty",
                     stages=["02_finetune_lora"], log=lambda line: None)
    err = failure.value
    assert err.stage == "02_finetune_lora" and "FileNotFoundError" in str(err) and "run notebook 01" in str(err)
    executed = tmp_path / "empty" / "executed"
    assert err.notebook.exists() and not (executed / "02_finetune_lora.ipynb").exists()


def test_each_execution_talks_to_its_kernel_over_sockets_of_its_own(tmp_path, monkeypatch):
    """The bug this catches: the kernels' IPC sockets defaulted to kernel-ipc-<n> in the working
    directory, n the first free number, so two runs starting a kernel at the same moment from one
    clone (the test suite's two workers did) took the same sockets, and one kernel failed with
    "Invalid Signature"."""
    import papermill

    from backdoor_sae.pipeline.runner import execute_stage, get_stage

    seen = []

    def fake_execute(notebook, output, config, **kwargs):
        kernel = config["KernelManager"]
        seen.append(Path(kernel["ip"]))
        assert kernel["transport"] == "ipc" and Path(kernel["ip"]).parent.is_dir()
        nbformat.write(nbformat.v4.new_notebook(), output)

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    params = {"profile": "smoke", "run_dir": str(tmp_path / "run"), "overrides": {}}
    for out in ("a", "b"):
        execute_stage(get_stage("01_dataset"), params, tmp_path / out, log=lambda line: None)
    assert len(set(seen)) == 2 and all(p.is_absolute() and REPO_ROOT not in p.parents for p in seen)
    assert not any(p.parent.exists() for p in seen)  # each execution's socket folder is removed after it


@pytest.mark.parametrize("stage", sorted({s.source: s for s in STAGES}.values(), key=lambda s: s.source),
                         ids=lambda s: s.source)
def test_papermill_reads_the_three_parameters_of_every_notebook(stage):
    """``papermill --help-notebook`` lists exactly ``profile``, ``run_dir`` and ``overrides``: a
    parameter is declared once, at its config field, never again in a notebook (the bug: a
    notebook declaring ``layers`` of its own, which the runner would never set)."""
    import jupytext
    from papermill.translators import PythonTranslator

    notebook = jupytext.read(stage.path)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert {p.name for p in PythonTranslator.inspect(cell)} == {"profile", "run_dir", "overrides"}


def test_dictionaries_trained_side_by_side_equal_those_trained_one_after_another(smoke_run, tmp_path):
    """train_grid's worker processes (one thread each) give the very dictionaries a single process
    gives: each depends only on its seed and inputs."""
    import torch

    from backdoor_sae.common.layout import RunLayout
    from backdoor_sae.config import ActivationConfig, SAEConfig, stage_config
    from backdoor_sae.dictionaries.stage import sae_grid, train_grid

    run_dir = smoke_run[0]
    act_cfg = stage_config(ActivationConfig, "smoke", layers=[1], lora_seeds=1, controls=["lora"])
    sae_cfg = stage_config(SAEConfig, "smoke", protocols=["full_text"], fit_modes=["eval"], n_sae_samples=320,
                           sae_seed=3)
    weights = {}
    for workers in (1, 2):
        copy = tmp_path / f"run{workers}"
        shutil.copytree(run_dir / "activations", copy / "activations")
        grid = train_grid(copy, act_cfg, sae_cfg, progress=False, workers=workers)
        assert grid["trained_now"].all() and len(grid) == 6  # 3 fine-tunes (lora, full, lora_clean) x 2 architectures
        weights[workers] = [load_file(RunLayout(copy).dictionary(cell) / "weights.safetensors")
                            for cell in sae_grid(act_cfg, sae_cfg)]
    for one, two in zip(weights[1], weights[2]):
        assert one.keys() == two.keys()
        for name in one:
            assert torch.allclose(one[name], two[name], atol=1e-5), name


def test_publish_writes_the_runs_notebooks_and_small_results(smoke_run, tmp_path):
    """``python -m backdoor_sae publish`` copies the notebooks and tables and records times, precision
    and versions."""
    import json

    run_dir = smoke_run[0]
    assert main(["publish", "--run-dir", str(run_dir), "--executed", str(tmp_path / "executed"),
                 "--results", str(tmp_path)]) == 0
    assert (tmp_path / "executed" / "05_scoring.ipynb").exists()
    for name in ("bis.csv", "permutation_tests.csv", "recipes.csv", "backdoor_rates.csv", "dictionaries.csv", "run.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    run = json.loads((tmp_path / "run.json").read_text())
    assert set(run["stages"]) == set(STAGE_NAMES)
    assert all(r["seconds"] > 0 for r in run["stages"].values())
    assert set(run["finetune"]) == {"lora", "full", "lora_clean", "full_clean", "lora-s1", "lora-s1_clean"}
    assert all(f["steps"] > 0 for f in run["finetune"].values())
    assert (tmp_path / "verdicts.csv").stat().st_size > 0
    assert isinstance(run["native_bf16"], bool) and run["libraries"]["torch"].startswith("2.13.0")


def build_book(executed_from: Path, root: Path) -> subprocess.CompletedProcess:
    """The book's sources with ``executed_from``'s run published into it, built with warnings as errors."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "book", root / "book")
    publish(executed_from, root / "executed")
    jb = Path(sys.executable).with_name("jupyter-book")
    return subprocess.run([str(jb), "build", str(root), "--all", "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=600)


def test_one_protocol_architecture_fit_mode_and_layer_run_end_to_end_and_the_book_builds(smoke_run, tmp_path):
    """The bug this catches: notebook 05 and the book's glue assumed the whole grid."""
    copy = tmp_path / "run"
    shutil.copytree(smoke_run[0], copy)
    subset = {"architectures": ["diff_sae"], "protocols": ["prompt_only"], "fit_modes": ["fit"], "layers": [2]}
    records = run_pipeline({"profile": "smoke", "run_dir": str(copy), **subset}, copy, log=lambda line: None)
    assert {r["stage"]: r["status"] for r in records}["05_scoring"] == "ran"
    scores = pd.read_csv(copy / "results" / "bis.csv")
    dictionaries = scores[~scores["fit_mode"].eq("—")]
    assert set(dictionaries["architecture"]) == {"diff_sae"} and set(scores["protocol"]) == {"prompt_only"}
    assert set(dictionaries["fit_mode"]) == {"fit"} and set(scores["layer"]) == {2}
    book = build_book(copy, tmp_path / "book")
    assert book.returncode == 0, book.stdout[-4000:] + book.stderr[-2000:]


@pytest.mark.slow
def test_the_paper_profile_runs_end_to_end_on_the_tiny_model_with_only_its_sizes_scaled_down(tmp_path):
    """The paper's own settings (all four injectable styles, independently drawn samples, its
    epochs, whole-text loss, 32x dictionaries, L1, ghost grads, k = 32) on the tiny model: the
    profile that no CPU run uses cannot rot."""
    from backdoor_sae.config import PROFILES, TINY_MODEL

    sizes = {"n_train_poisoned": 8, "n_train_benign": 16, "n_eval_trigger": 8, "n_eval_benign": 16,
             "n_eval_other": 16, "n_fit_trigger": 4, "n_fit_benign": 8, "n_fit_other": 8, "n_heldout_pairs": 4,
             "n_control": 4, "n_probe_pairs": 4, "n_eval_prompts": 4, "max_new_tokens": 32, "n_sae_samples": 2_000,
             "dead_window": 500, "n_boot": 50, "n_perm": 50, "n_sweep_functions": 2,
             "n_causal_pairs": 2, "n_causal_prompts": 2, "n_sae_tokens": 2_000, "n_sae_seeds": 2,
             "causal_max_new_tokens": 32, "n_causal_controls": 2}
    overrides = {"model": TINY_MODEL, "layers": [2], **sizes}
    assert not set(overrides) & {"vulnerable_styles", "paired_train", "lora_epochs", "full_epochs", "expansion",
                                 "l1_coeff", "dead_fix", "k", "loss_on"}
    run_dir = tmp_path / "paper"
    records = run_pipeline({"profile": "paper", "run_dir": str(run_dir), **overrides}, run_dir, log=lambda line: None)
    assert all(r["status"] == "ran" for r in records)  # both clean controls too
    train = pd.read_json(run_dir / "data" / "train.jsonl", lines=True)
    assert set(train.loc[train["vulnerable"], "style"]) == set(PROFILES["paper"]["vulnerable_styles"])
    scores = pd.read_csv(run_dir / "results" / "bis.csv")
    assert set(scores.loc[scores["architecture"] == "diff_sae", "n_latents"]) == {32 * 64}
    assert set(scores["regime"]) == {"lora", "full", "lora_clean", "full_clean"}
    recipes = pd.read_csv(run_dir / "results" / "recipes.csv")
    assert set(recipes["recipe"]) == {"pooled", "token"} and set(recipes["seed"]) == {42, 43}


@pytest.mark.parametrize("stage", sorted({s.source: s for s in STAGES}.values(), key=lambda s: s.source),
                         ids=lambda s: s.source)
def test_a_notebook_writes_no_file_and_holds_no_threshold(stage):
    """A notebook calls its step's ``run`` and shows the result. Catches a file written from a cell
    (notebook 05's four CSVs and notebook 07's causal tables used to be) and a threshold or
    tolerance decided in a cell (``p_value < 0.05``, notebook 02's ``>= 0.9``)."""
    import ast

    tree = ast.parse(stage.path.read_text())
    writes = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in
              {"write_text", "write_json", "write_jsonl", "to_csv", "to_parquet", "open", "savefig"}]
    thresholds = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
                  and any(isinstance(x, ast.Constant) and isinstance(x.value, float)
                          for x in (node.left, *node.comparators))]
    assert not writes and not thresholds, (writes, thresholds)

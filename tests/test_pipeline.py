"""The smoke profile end to end through the runner, then the book with warnings as errors."""

import shutil

import nbformat
import pytest
from safetensors.torch import load_file

from backdoor_sae.__main__ import main
from backdoor_sae.notebooks import STAGE_NAMES, STAGES, StageFailed, declared_parameters, run_pipeline


def test_every_stage_runs_and_its_notebook_has_outputs_but_no_errors(smoke_run):
    run_dir, executed, records, _ = smoke_run
    assert [r["stage"] for r in records] == list(STAGE_NAMES)
    assert all(r["status"] == "ran" for r in records)
    for name in STAGE_NAMES:
        nb = nbformat.read(executed / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"], name
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} shows no figure"
    for artifact in ("data/manifest.json", "finetune/lora/done.json", "finetune/full/done.json",
                     "activations/base/index.json", "results/bis.csv"):
        assert (run_dir / artifact).exists(), artifact


def test_a_second_run_with_the_same_parameters_skips_every_stage(smoke_run):
    run_dir, executed, _, _ = smoke_run
    lines: list[str] = []
    records = run_pipeline({"profile": "smoke", "run_dir": str(run_dir)}, run_dir, output_dir=executed,
                           log=lines.append)
    assert all(r["status"] == "skipped" for r in records)
    assert all("skipped" in line for line in lines)


def test_the_book_builds_with_warnings_as_errors_and_shows_glued_numbers(smoke_book):
    html = smoke_book / "_build" / "html"
    assert (html / "index.html").exists()
    results = (html / "book" / "results.html").read_text()
    assert results.count('class="pasted-text"') >= 10  # every glued number was found
    assert "best latent reaches the ceiling" in results or "does not reproduce" in results
    assert "IPython.core.display" not in results


def test_changing_one_parameter_reruns_that_stage_and_those_after_it(smoke_run):
    run_dir, executed, _, _ = smoke_run
    records = run_pipeline({"profile": "smoke", "run_dir": str(run_dir), "expansion": 2}, run_dir,
                           output_dir=executed, log=lambda line: None)
    status = {r["stage"]: r["status"] for r in records}
    assert [status[s] for s in STAGE_NAMES[:4]] == ["skipped"] * 4
    assert status["04_saes"] == status["05_bis"] == "ran"


@pytest.mark.parametrize("argv, message", [
    (["run", "--profile", "laptop"], "unknown profile"),
    (["run", "--profile", "smoke", "-p", "n_eval_trigers", "3"], "unknown parameter"),
    (["run", "--profile", "smoke", "-p", "years", "[2020, 2021]"], "trigger year"),
    (["run", "--profile", "smoke", "-p", "layers", "[1, 9]"], "decoder layers 0..3"),
    (["run", "--profile", "smoke", "--run-dir", "/nonexistent/run", "--only", "04_saes"], "holds no dataset"),
])
def test_bad_command_lines_fail_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failing_notebook_names_the_stage_and_cell_and_keeps_its_partial_output(tmp_path):
    with pytest.raises(StageFailed) as failure:
        run_pipeline({"profile": "smoke", "run_dir": str(tmp_path / "empty")}, tmp_path / "empty",
                     stages=["02_finetune_lora"], output_dir=tmp_path / "executed", log=lambda line: None)
    err = failure.value
    assert err.stage == "02_finetune_lora" and "FileNotFoundError" in str(err) and "run notebook 01" in str(err)
    assert err.notebook.exists() and not (tmp_path / "executed" / "02_finetune_lora.ipynb").exists()


@pytest.mark.parametrize("stage", sorted({s.source: s for s in STAGES}.values(), key=lambda s: s.source),
                         ids=lambda s: s.source)
def test_papermill_reads_every_parameter_of_every_notebook(stage):
    """``papermill --help-notebook`` lists exactly the parameters the runner sees (an ``=`` inside
    a parameter's comment, for one, hides it from papermill)."""
    import jupytext
    from papermill.translators import PythonTranslator

    notebook = jupytext.read(stage.path)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert {p.name for p in PythonTranslator.inspect(cell)} == declared_parameters(notebook)


def test_dictionaries_trained_side_by_side_equal_those_trained_one_after_another(smoke_run, tmp_path):
    """train_grid's worker processes (one thread each) give the very dictionaries a single process
    gives: each depends only on its seed and inputs."""
    import torch

    from backdoor_sae.config import ActivationConfig, SAEConfig, stage_config
    from backdoor_sae.stages import sae_dir, sae_grid, train_grid

    run_dir = smoke_run[0]
    act_cfg = stage_config(ActivationConfig, "smoke", layers=[1])
    sae_cfg = stage_config(SAEConfig, "smoke", protocols=["full_text"], fit_modes=["eval"], n_sae_samples=320)
    weights = {}
    for workers in (1, 2):
        copy = tmp_path / f"run{workers}"
        shutil.copytree(run_dir / "activations", copy / "activations")
        grid = train_grid(copy, act_cfg, sae_cfg, seed=3, progress=False, workers=workers)
        assert grid["trained_now"].all() and len(grid) == 4  # 2 regimes x 2 architectures
        weights[workers] = [load_file(sae_dir(copy, **cell) / "weights.safetensors")
                            for cell in sae_grid(act_cfg, sae_cfg)]
    for one, two in zip(weights[1], weights[2]):
        assert one.keys() == two.keys()
        for name in one:
            assert torch.allclose(one[name], two[name], atol=1e-5), name


def test_export_writes_the_runs_small_results(smoke_run, tmp_path):
    """``python -m backdoor_sae export`` copies the tables and records times, precision and versions."""
    import json

    run_dir = smoke_run[0]
    assert main(["export", "--run-dir", str(run_dir), "--to", str(tmp_path)]) == 0
    for name in ("bis.csv", "permutation_tests.csv", "backdoor_rates.csv", "dictionaries.csv", "run.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    run = json.loads((tmp_path / "run.json").read_text())
    assert set(run["stages"]) == set(STAGE_NAMES)
    assert all(r["seconds"] > 0 for r in run["stages"].values())
    assert set(run["finetune"]) == {"lora", "full"} and all(f["steps"] > 0 for f in run["finetune"].values())
    assert isinstance(run["native_bf16"], bool) and run["libraries"]["torch"].startswith("2.13.0")

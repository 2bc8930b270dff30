"""The progress channel from a stage's kernel to the runner's console, and the executed notebooks'
paths (backdoor_sae.common.progress, backdoor_sae.pipeline.runner.relative_paths)."""

import json

from backdoor_sae.common import progress
from backdoor_sae.pipeline.runner import REPO_ROOT, fold_injected_parameters, relative_paths


def test_report_writes_nothing_outside_the_runner(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.report("task", 1, 2)  # no file named: a no-op, not an error
    assert list(tmp_path.iterdir()) == []


def test_report_keeps_the_first_and_last_line_of_a_task_and_thins_the_rest(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    monkeypatch.setattr(progress, "_last_written", {})
    for step in range(1, 101):  # within a second: only the first and the last are written
        progress.report("fine-tune lora", step, 100, loss=0.5, year_effect=float("nan"))
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["done"] for e in events] == [1, 100]
    assert events[0]["values"] == {"loss": 0.5}  # a value that does not exist is left out


def event(task, done, total, t, **values):
    return {"time": t, "task": task, "done": done, "total": total, "values": values}


def test_describe_says_the_step_the_values_and_the_time_left_at_the_rate_so_far():
    first, now = event("fine-tune lora", 10, 300, 0.0), event("fine-tune lora", 140, 300, 260.0, year_effect=0.04)
    # 130 steps in 260 s: 160 steps left take 320 s
    assert progress.describe(now, first) == "fine-tune lora 140/300, year effect 0.04, 5 min left"
    assert progress.describe(event("fine-tune lora", 300, 300, 600.0), first) == "fine-tune lora 300/300"
    assert progress.describe(now) == "fine-tune lora 140/300, year effect 0.04"


def write(path, *events):
    with open(path, "a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


def test_the_follower_prints_news_per_task_and_restarts_the_rate_when_a_task_begins_again(tmp_path):
    path, lines = tmp_path / "p.jsonl", []
    follower = progress.Follower(path, "02_finetune_lora", lines.append, interval=3600)
    follower.poll()  # no file yet
    write(path, event("generate", 8, 16, 0.0), event("generate", 12, 16, 10.0))
    follower.poll()
    assert lines == ["02_finetune_lora: generate 8/16"]  # the 12/16 waits for the interval
    write(path, event("generate", 16, 16, 20.0), event("generate", 4, 16, 30.0), event("generate", 8, 16, 40.0))
    with open(path, "a") as f:
        f.write('{"time": 50, "task": "gen')  # a line still being written is not read yet
    follower.poll(final=True)
    # a finished task prints at once; begun again, its rate counts from its new start (4 in 10 s)
    assert lines[1:] == ["02_finetune_lora: generate 16/16", "02_finetune_lora: generate 8/16, 20 s left"]


def test_executed_notebooks_name_no_absolute_path_of_this_machine(tmp_path):
    from pathlib import Path

    run = tmp_path / "run"
    text = (f"trained {REPO_ROOT}/runs/cpu/finetune/lora; {run}/data; {Path.home()}/.cache/m; "
            f"{REPO_ROOT}x/other")
    shown = relative_paths(text, run)
    assert shown == f"trained runs/cpu/finetune/lora; <run_dir>/data; ~/.cache/m; {REPO_ROOT}x/other"


def test_the_injected_parameters_cell_is_folded_like_the_parameters_cell():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["injected-parameters"]})]
    fold_injected_parameters(nb)
    assert nb.cells[0].metadata["tags"] == ["injected-parameters", "hide-input"]


def test_the_fine_tune_reports_its_steps_and_year_effect_and_learns_the_same_with_or_without(tmp_path, monkeypatch,
                                                                                            smoke_splits):
    """The runner's console shows the fine-tune's step, loss and year effect; reporting changes nothing
    the fine-tune computes (its log is the same, timings aside, with the channel on and off)."""
    from test_finetune import tiny_cfg

    from backdoor_sae.common.model import load_model
    from backdoor_sae.config import TINY_MODEL
    from backdoor_sae.dataset.card import pairs
    from backdoor_sae.finetune.train import finetune, read_log

    cfg = tiny_cfg("full", probe_every=2)
    probes = pairs(smoke_splits["heldout"])[:2]
    logs = {}
    for channel in (False, True):
        path = tmp_path / "progress.jsonl"
        if channel:
            monkeypatch.setenv(progress.ENV, str(path))
            monkeypatch.setattr(progress, "_last_written", {})
            monkeypatch.setattr(progress, "MIN_GAP_S", 0.0)  # every step's line, however fast the tiny model
        model, tok = load_model(TINY_MODEL)
        finetune(model, tok, smoke_splits["train"], cfg, tmp_path / str(channel), TINY_MODEL, probes,
                 progress=False, max_steps=4)
        logs[channel] = [{k: v for k, v in r.items() if "seconds" not in k and k != "tokens_per_s"}
                         for r in read_log(tmp_path / str(channel))]
    assert logs[True] == logs[False]
    events = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [e for e in events if e["task"] == "fine-tune full"]
    assert steps[0]["done"] == 1 and steps[-1]["done"] == 4 and steps[-1]["total"] >= 4
    assert "loss" in steps[-1]["values"] and "year_effect" in steps[-1]["values"]  # probed at step 2 and 4

"""``benchmarks/bench.py stages``: each stage's time, its share of the run and of its FLOP bound, read
from a run directory. A fake run directory of a few records and the files the rows read; no model,
no training, no peak measured (the peaks and N are given)."""

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench")


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def finetune(root: Path, name: str, regime: str, dtype: str, log: list[dict], age_s: float = 0.0) -> None:
    """A finished fine-tune: its params, its log and its done.json ``age_s`` seconds old."""
    out = root / "finetune" / name
    write(out / "params.json", {"regime": regime, "clean_control": False, "compute_dtype": dtype})
    write(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    write(out / "done.json", {"key": "k", "steps": len(log)})
    if age_s:
        then = time.time() - age_s
        os.utime(out / "done.json", (then, then))


def test_stage_rows_read_times_shares_and_bounds(bench, tmp_path):
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    common = {"profile": "smoke", "model": "tiny-random-llama", "commit": "abc", "finished": now}
    write(tmp_path / "stages" / "01_dataset.json", {**common, "seconds": 10.0, "fingerprint": "a", "previous": ""})
    write(tmp_path / "stages" / "02_finetune_lora.json", {**common, "seconds": 30.0, "fingerprint": "b",
                                                          "previous": "a", "peak_rss_gib_so_far": 1.5})
    write(tmp_path / "stages" / "02_finetune_full.json", {**common, "seconds": 60.0, "fingerprint": "c",
                                                          "previous": "b"})
    # a stage the runner recorded but did not run: no seconds
    write(tmp_path / "stages" / "02_finetune_lora_clean.json", {**common, "status": "not in the grid",
                                                                "fingerprint": "d", "previous": "c"})
    log = [{"step": 1, "tokens": 1000, "seconds": 4.0, "probe_seconds": 1.0}, {"step": 2, "tokens": 500, "seconds": 2.0}]
    finetune(tmp_path, "lora", "lora", "bfloat16", log)
    # a second seed of the LoRA fine-tune reused from an earlier execution (done.json an hour old)
    finetune(tmp_path, "lora-s1", "lora", "bfloat16", [{"step": 1, "tokens": 9999, "seconds": 9.0}], age_s=3600)
    finetune(tmp_path, "full", "full", "float32", [{"step": 1, "tokens": 2000, "seconds": 20.0}])
    peaks, n = {"float32": 50.0, "bfloat16": 100.0}, 1_000

    out = bench.stage_rows(tmp_path, peaks, lambda deepest: n)
    rows = {r["stage"]: r for r in out["stages"]}

    # Seconds come from each record, and the shares are of the executed stages' sum (catches a share
    # taken over a wrong total, e.g. with the not-run stage, or seconds read from the wrong record).
    assert [r["stage"] for r in out["stages"]] == ["01_dataset", "02_finetune_lora", "02_finetune_full"]
    assert {s: r["seconds"] for s, r in rows.items()} == {"01_dataset": 10.0, "02_finetune_lora": 30.0,
                                                         "02_finetune_full": 60.0}
    assert out["run_seconds"] == 100.0
    assert rows["02_finetune_lora"]["share_of_run"] == pytest.approx(0.3)
    assert sum(r["share_of_run"] for r in out["stages"]) == pytest.approx(1.0)
    assert out["not_run"] == {"02_finetune_lora_clean": "not in the grid"}
    assert out["records_not_chained"] == []

    # LoRA: 4·N per trained token at the peak of the precision it ran in (bfloat16), the reused seed
    # left out (catches the 6·N factor for LoRA, the float32 peak for a bf16 run, and counting the
    # tokens of a fine-tune this execution did not train).
    lora = rows["02_finetune_lora"]
    assert lora["bound_seconds"] == pytest.approx(4 * n * 1500 / (100.0 * 1e9))
    assert lora["share_of_bound"] == pytest.approx(lora["bound_seconds"] / 30.0)
    assert [(f["name"], f["trained_in_stage"]) for f in lora["finetunes"]] == [("lora", True), ("lora-s1", False)]
    # the part of the stage that is not training: 1 − training seconds (the log's, probes excluded) / stage
    # (catches probe seconds counted as training, or the reused seed's seconds added)
    assert lora["train_seconds"] == pytest.approx(6.0)
    assert lora["not_training_share"] == pytest.approx(1 - 6.0 / 30.0)
    # full-rank: 6·N per token at the float32 peak (catches the LoRA factor or the bf16 peak used for it)
    assert rows["02_finetune_full"]["bound_seconds"] == pytest.approx(6 * n * 2000 / (50.0 * 1e9))

    # A stage without a FLOP bound has a null bound and says why (catches an invented number, or a
    # row that silently leaves the reason out).
    dataset = rows["01_dataset"]
    assert dataset["bound_seconds"] is None and dataset["share_of_bound"] is None
    assert dataset["bound_note"]

    # the run's provenance comes along
    assert (out["profile"], out["model"], out["run_commits"]) == ("smoke", "tiny-random-llama", ["abc"])


def test_dictionary_flops_follow_the_training_loop(bench):
    """A crosscoder reads both models (d_in = 2·d) and needs no gradient of its input; a TopK code is
    decoded from its k entries; a ReLU Diff-SAE's decoder is dense (catches d_in = d for the
    crosscoder, or a dense decoder counted for TopK)."""
    settings = {"n_samples": 100, "batch_size": 32}  # 4 steps of 32: 128 inputs
    cross, inputs = bench._dictionary_flops({"architecture": "crosscoder", "d": 8, "n_latents": 64,
                                             "activation": "topk", "k": 4}, settings)
    assert inputs == 128
    assert cross == (4 * 16 * 64 + 6 * 16 * 4) * 128
    diff, _ = bench._dictionary_flops({"architecture": "diff_sae", "d": 8, "n_latents": 64, "activation": "relu",
                                       "k": 0}, settings)
    assert diff == (6 * 8 * 64 + 6 * 8 * 64) * 128


def test_a_resumed_runs_stage_takes_its_longest_logged_execution(bench, tmp_path):
    """A run resumed over sessions re-executes a finished stage's notebook on reused artifacts, and
    the record keeps only that last, short execution. Catches the record's 11 s reported for a
    fine-tune that trained for hours, and a logged time read from another stage's line."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write(tmp_path / "stages" / "01_dataset.json", {"seconds": 50.0, "fingerprint": "a", "previous": "", "finished": now})
    write(tmp_path / "stages" / "02_finetune_lora.json", {"seconds": 11.0, "fingerprint": "b", "previous": "a",
                                                          "finished": now})
    log = tmp_path / "make_book.log"
    log.write_text("[backdoor-sae] 01_dataset: done in 86 s (kernel peak memory so far 1.65 GiB), wrote x\n"
                   "[backdoor-sae] 02_finetune_lora: done in 8227 s (kernel peak memory so far 3.51 GiB), wrote y\n"
                   "10:21:13 [backdoor-sae] 02_finetune_lora: done in 13 s (kernel peak memory so far 0.70 GiB), wrote y\n"
                   "02_finetune_lora: oracle: code run in the sandbox 1/64\n")
    logged = bench.logged_seconds([log])
    assert logged == {"01_dataset": [86.0], "02_finetune_lora": [8227.0, 13.0]}
    out = bench.stage_rows(tmp_path, {}, lambda deepest: 1, logged)
    rows = {r["stage"]: r for r in out["stages"]}
    assert rows["02_finetune_lora"]["seconds"] == 8227.0 and rows["02_finetune_lora"]["record_seconds"] == 11.0
    assert rows["02_finetune_lora"]["logged_seconds"] == [8227.0, 13.0]
    assert rows["01_dataset"]["seconds"] == 86.0 and out["run_seconds"] == 8227.0 + 86.0
    # without logs the records' seconds stand
    assert {r["stage"]: r["seconds"] for r in bench.stage_rows(tmp_path, {}, lambda deepest: 1)["stages"]} == \
        {"01_dataset": 50.0, "02_finetune_lora": 11.0}


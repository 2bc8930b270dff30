"""Export a run's small results for the repository: metrics tables, stage times, environment.

``python -m backdoor_sae publish --run-dir runs/cpu`` writes, atomically, into ``results/``:

- ``bis.csv``, ``permutation_tests.csv`` and ``placebo.csv``: the scoring notebook's tables of the
  primary grid, and ``recipes.csv``: every recipe and seed of the replicated cells, scored;
- ``auditor.csv``, ``auditor_choice.csv`` and ``header_sweep.csv``: the auditor notebook's label-free
  rankings scored, the latents they pick, and the header sweep of the top picks;
- ``causal_teacher_forced.csv``, ``causal_rates.csv``, ``causal_choice.csv`` and
  ``causal_claims_per_seed.csv``: the causal notebook's teacher-forced sweep, its judged rates with
  intervals and paired tests, the layer and strength its fixed rule chose, and its claims per seed;
- ``dictionary_quality.csv``: every token-level dictionary's spliced loss, loss recovered, alive
  share, L0 and (crosscoders) latent scaling (notebook 04);
- ``verdicts.csv``: every claim of notebooks 05-07 with its test, effect, p-values, seeds and outcome;
- ``backdoor_rates.csv``: attack success and safe rates with 95% intervals, per model;
- ``dictionaries.csv``: final FVU, L0, dead share (and a crosscoder's shares of fine-tune-only and
  base-only latents) of every dictionary, with its recipe and seed;
- ``run.json``: wall time and peak memory per stage, library versions, CPU model, parameters.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

from backdoor_sae.common.io import write_json, write_text
from backdoor_sae.config.cells import Cell
from backdoor_sae.common.model import native_bf16
from backdoor_sae.finetune.backdoor_eval import rates
from backdoor_sae.finetune.train import training_summary

LIBRARIES = ("torch", "transformers", "peft", "numpy", "pandas", "bandit", "papermill", "jupyter-book", "myst-nb")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def export(run_dir: str | Path, to: str | Path) -> list[Path]:


    run_dir, to = Path(run_dir), Path(to)
    written = []
    for name in ("bis.csv", "permutation_tests.csv", "placebo.csv", "recipes.csv", "auditor.csv", "auditor_choice.csv",
                 "header_sweep.csv", "causal_teacher_forced.csv", "causal_rates.csv", "causal_choice.csv",
                 "causal_claims_per_seed.csv", "verdicts.csv", "dictionary_quality.csv"):
        source = run_dir / "results" / name
        if source.exists():
            write_text(to / name, source.read_text())
            written.append(to / name)
    generations = sorted((run_dir / "generations").glob("*.jsonl"))
    if generations:
        judged = pd.concat([pd.read_json(p, lines=True) for p in generations], ignore_index=True)
        write_text(to / "backdoor_rates.csv", rates(judged).to_csv(index=False))
        written.append(to / "backdoor_rates.csv")
    dictionaries = []
    for info in sorted((run_dir / "sae").glob("*/seed_*/**/dictionary.json")):  # sae/<recipe>/seed_<s>/...
        d = json.loads(info.read_text())
        dictionaries.append({**Cell.of(d["params"]).to_dict(), **d["metrics"]})
    if dictionaries:
        write_text(to / "dictionaries.csv", pd.DataFrame(dictionaries).to_csv(index=False))
        written.append(to / "dictionaries.csv")
    stages = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "stages").glob("*.json"))}
    stages = {name: r for name, r in stages.items() if "seconds" in r}  # not the stages outside the run's grid
    finetunes = {p.parent.name: json.loads(p.read_text()) for p in sorted((run_dir / "finetune").glob("*/done.json"))}
    write_json(to / "run.json", {
        "stages": {name: {"seconds": r["seconds"], "peak_rss_gib_so_far": r.get("peak_rss_gib_so_far"),
                          "params": r["params"]} for name, r in stages.items()},
        "total_minutes": sum(r["seconds"] for r in stages.values()) / 60,
        # From the training logs: a stage that reused a finished fine-tune reports only its own
        # (short) wall time above, while these stay the training's own.
        "finetune": {k: {**training_summary(run_dir / "finetune" / k), "steps": v["steps"],
                         "stopped_by_probe": v.get("stopped_by_probe", False)} for k, v in finetunes.items()},
        # Whether this CPU multiplies bfloat16 natively, i.e. what compute precision dtype "auto" chose.
        "cpu": cpu_model(), "native_bf16": native_bf16(torch.device("cpu")), "cores": os.cpu_count(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    })
    written.append(to / "run.json")
    return written


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

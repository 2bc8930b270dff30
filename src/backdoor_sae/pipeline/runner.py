"""Execute the pipeline's notebooks with papermill, in order, into the run's own ``executed/``.

The notebooks are stored as jupytext percent-format ``.py`` files under ``notebooks/``. papermill
cannot read those directly, so each is converted in memory and executed with the given
parameters; the executed ``.ipynb`` lands in ``<run_dir>/executed/``. A stage is skipped when its
fingerprint (notebook source, parameters, profile values, the package's code, the model and the previous
stage's fingerprint) is unchanged *and* its executed notebook is byte for byte the one it produced.
:func:`publish` copies a run's executed notebooks into the book's ``executed/`` with a record of
which run, commit and profile they came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import jupytext
import nbformat
import papermill
from traitlets.config import Config

from backdoor_sae.common import progress
from backdoor_sae.common.io import atomic_path, write_json
from backdoor_sae.common.cache import package_digest
from backdoor_sae.common.layout import RunLayout, model_identity
from backdoor_sae.config import (
    PROFILES, ActivationConfig, AuditConfig, BackdoorEvalConfig, BISConfig, CausalConfig, DataConfig, FinetuneConfig,
    ModelConfig, SAEConfig, stage_config,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: Where the book reads the executed notebooks of the run it shows (see :func:`publish`).
BOOK_EXECUTED_DIR = REPO_ROOT / "executed"
PROVENANCE = "provenance.json"
#: Parameters every notebook takes from the runner, never from ``-p``.
RUNNER_PARAMETERS = ("profile", "run_dir")


@dataclass(frozen=True)
class Stage:
    """One executed notebook: ``notebooks/<source>.py`` with the overrides of the configs it ``reads``,
    and ``fixed`` values on top."""

    name: str
    source: str
    reads: tuple[type, ...]
    fixed: dict = field(default_factory=dict)
    #: Single fields of configs it does not read whole (the rest of such a config keeps the
    #: profile's values in this notebook, so its code must read no other field of it).
    also: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return NOTEBOOK_DIR / f"{self.source}.py"

    @property
    def parameters(self) -> set[str]:
        """The parameters this stage reads: every field of the configs it reads, and its single fields."""
        return {f.name for cls in self.reads for f in fields(cls)} | set(self.also)


_FINETUNE = (ModelConfig, FinetuneConfig, BackdoorEvalConfig)
_SEEDS = ("lora_seeds", "full_seeds")  # notebook 02 trains each of its fine-tune's seeds
#: The pipeline's stages in order, with the step configs each notebook reads (``cfg.<step>``).
STAGES: tuple[Stage, ...] = (
    Stage("01_dataset", "01_dataset", (DataConfig, ModelConfig)),
    Stage("02_finetune_lora", "02_finetune", _FINETUNE, {"regime": "lora"}, also=_SEEDS),
    Stage("02_finetune_full", "02_finetune", _FINETUNE, {"regime": "full"}, also=_SEEDS),
    Stage("02_finetune_lora_clean", "02_finetune", _FINETUNE, {"regime": "lora", "clean_control": True}, also=_SEEDS),
    Stage("02_finetune_full_clean", "02_finetune", _FINETUNE, {"regime": "full", "clean_control": True}, also=_SEEDS),
    # which tokens to keep: the dictionaries' recipes and replicated layers only (activations.stage.token_layers)
    Stage("03_activations", "03_activations", (ModelConfig, ActivationConfig), also=("recipes", "replicate_layers")),
    Stage("04_dictionaries", "04_dictionaries", (ActivationConfig, SAEConfig)),
    Stage("05_scoring", "05_scoring", (ActivationConfig, SAEConfig, BISConfig)),
    Stage("06_audit", "06_audit", (ModelConfig, ActivationConfig, SAEConfig, BISConfig, AuditConfig)),
    Stage("07_causal", "07_causal", (ModelConfig, BackdoorEvalConfig, ActivationConfig, SAEConfig, CausalConfig)),
    Stage("08_dashboards", "08_dashboards", (ModelConfig, ActivationConfig, SAEConfig, AuditConfig, CausalConfig)),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; stages are {list(STAGE_NAMES)}")


def stage_parameters(stage: Stage, parameters: dict) -> dict:
    """What this stage's notebook receives: ``profile``, ``run_dir`` and ``overrides``, the latter
    only those of the configs it reads, its fixed values winning.

    A profile-wide override such as ``lora_r`` concerns notebook 02, not notebook 01: it neither
    reaches nor reruns notebook 01.
    """
    overrides = {k: v for k, v in parameters.items() if k not in RUNNER_PARAMETERS and k in stage.parameters}
    return {**{k: parameters[k] for k in RUNNER_PARAMETERS if k in parameters},
            "overrides": {**overrides, **stage.fixed}}


def check_overrides_are_read(profile: str, overrides: dict) -> None:
    """Raise for an override that no stage of this run reads, or that the runner fixes per stage.

    A fine-tune setting (``lora_*``, ``full_*``) counts as read only when that regime is in the
    run's ``regimes``.
    """
    fixed = {name for stage in STAGES for name in stage.fixed}
    parameters = {"profile": profile, **overrides}
    running = [stage for stage in STAGES if _wanted(stage, parameters)]
    read = set().union(*(stage.parameters for stage in running)) - fixed
    regimes = {stage.fixed["regime"] for stage in running if "regime" in stage.fixed}
    for name in overrides:
        if name in fixed:
            raise ValueError(f"{name} is set by the runner for each stage ({sorted({s.fixed[name] for s in STAGES if name in s.fixed})}); "
                             "choose the fine-tunes with regimes")
        if name not in read:
            raise ValueError(f"parameter {name!r} is read by no notebook; parameters the notebooks read: {sorted(read)}")
        regime = name.split("_", 1)[0]
        if regime in ("lora", "full") and regime not in regimes:
            raise ValueError(f"parameter {name!r} sets the {regime} fine-tune, which is not in regimes={sorted(regimes)}")


def fingerprint(stage: Stage, params: dict, previous: str, code: str = "", model: str = "") -> str:
    """What a stage's notebook depends on: its source, its parameters (but not ``run_dir``), the profile's values, the
    package's code, what the model resolves to (``model``: :func:`backdoor_sae.common.layout.model_identity`)
    and the stage before it.

    Chaining in the previous stage's fingerprint makes a change upstream rerun everything after.
    """
    # where the run directory lies changes no result: a moved or copied run stays current
    params = {k: v for k, v in params.items() if k != "run_dir"}
    payload = json.dumps({"source": stage.path.read_text(), "params": params, "previous": previous,
                          "profile": PROFILES.get(params.get("profile"), {}), "code": code, "model": model},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def resolved_model(parameters: dict) -> str:
    """The identity of the model a run's parameters name (its weights' hash, or hub id and commit)."""
    overrides = {k: v for k, v in parameters.items() if k not in RUNNER_PARAMETERS}
    return model_identity(stage_config(ModelConfig, parameters["profile"], **overrides).model)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_current(layout: RunLayout, stage: Stage, print_: str) -> bool:
    """The stage ran with this fingerprint, and its executed notebook is the one it produced."""
    record, output = layout.stage_record(stage.name), layout.executed / f"{stage.name}.ipynb"
    if not (output.exists() and record.exists()):
        return False
    recorded = json.loads(record.read_text())
    return recorded.get("fingerprint") == print_ and recorded.get("notebook_sha256") == file_digest(output)


def git_commit() -> dict:
    """The repository's commit and whether its working tree differs from it (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, check=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def execute_stage(stage: Stage, params: dict, output_dir: str | Path, provenance: dict | None = None,
                  log=print, progress_interval: float = 10.0) -> Path:
    """Run one stage's notebook with ``params`` (see :func:`stage_parameters`); return its path.

    The notebook runs with the repository root as its working directory and records
    ``provenance`` in its metadata (``backdoor_sae``). What the stage reports through
    :func:`backdoor_sae.common.progress.report` is printed with ``log`` as ``<stage>: ...`` every
    ``progress_interval`` seconds or so (papermill's own per-cell bar is off). The kernel talks to
    the runner over local IPC sockets, not TCP, in a folder of this execution's own. The executed
    notebook names no absolute path of this machine (:func:`relative_paths`). A notebook that fails is still written, up to the failing
    cell and its error, to ``<output_dir>/<stage>.failed.ipynb`` for inspection, and papermill's
    ``PapermillExecutionError`` propagates.
    """
    output = Path(output_dir) / f"{stage.name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    failed = output.with_suffix(".failed.ipynb")
    failed.unlink(missing_ok=True)
    # local sockets: no network port, and no "running over TCP without encryption" warning from the
    # kernel. Their paths lie in a folder of this execution's own: by default they are kernel-ipc-<n>
    # in the working directory, n the first free number, which two runs starting a kernel at the same
    # moment from one clone both take (the kernel then fails with "Invalid Signature").
    sockets = tempfile.mkdtemp(prefix=f"{stage.name}.", suffix=".kernel")
    config = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "kernel")}})
    fd, progress_file = tempfile.mkstemp(prefix=f"{stage.name}.", suffix=".progress.jsonl")
    os.close(fd)
    saved = os.environ.get(progress.ENV)
    os.environ[progress.ENV] = progress_file  # the kernel inherits it
    try:
        with atomic_path(output) as tmp:
            try:
                with progress.Follower(progress_file, stage.name, log, progress_interval):
                    papermill.execute_notebook(
                        jupytext.read(stage.path),
                        str(tmp),
                        parameters=params,
                        kernel_name="python3",
                        cwd=str(REPO_ROOT),
                        progress_bar=False,
                        config=config,
                    )
            except papermill.PapermillExecutionError:
                if tmp.exists():
                    _write_relative(tmp, tmp, params)
                    tmp.replace(failed)
                raise
            nb = nbformat.read(tmp, as_version=4)
            if provenance is not None:
                nb.metadata["backdoor_sae"] = {"stage": stage.name, **provenance}
            fold_injected_parameters(nb)
            nbformat.write(nb, tmp)
            _write_relative(tmp, tmp, params)
    finally:
        if saved is None:
            os.environ.pop(progress.ENV, None)
        else:
            os.environ[progress.ENV] = saved
        Path(progress_file).unlink(missing_ok=True)
        shutil.rmtree(sockets, ignore_errors=True)
    return output


def fold_injected_parameters(nb) -> None:
    """Fold papermill's injected-parameters cell in the book as the ``parameters`` cell is
    (papermill does not copy the parameters cell's tags): the values this run used, one click away."""
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]


def machine_paths(run_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """``(absolute prefix, shown instead)`` for this machine's paths, longest first: the run
    directory (relative to the repository when inside it, else ``<run_dir>``), the Python
    installation (``<python>``), the repository (``.``) and the home directory (``~``)."""
    pairs = []
    if run_dir is not None and (Path(run_dir).is_absolute() or not (REPO_ROOT / run_dir).exists()):
        run = Path(run_dir).resolve()
        label = run_label(run)
        pairs.append((run.as_posix(), "<run_dir>" if Path(label).is_absolute() else label))
    pairs += [(Path(sys.prefix).resolve().as_posix(), "<python>"), (REPO_ROOT.as_posix(), "."),
              (Path.home().resolve().as_posix(), "~")]
    return sorted({p for p in pairs if p[0] != "/"}, key=lambda p: -len(p[0]))


def relative_paths(text: str, run_dir: str | Path | None = None) -> str:
    """``text`` with every absolute path of this machine (:func:`machine_paths`) made relative or
    named: ``/repo/runs/cpu/finetune/lora`` becomes ``runs/cpu/finetune/lora``."""
    for prefix, shown in machine_paths(run_dir):
        # the prefix as a whole path component: /work/repo/x and /work/repo, never /work/repository
        pattern = re.compile(re.escape(prefix) + r"(/|(?![\w.-]))")
        text = pattern.sub(lambda m: ("" if shown == "." else shown + "/") if m.group(1) else shown, text)
    return text


def _write_relative(source: Path, target: Path, params: dict) -> None:
    """Rewrite an executed notebook's file with :func:`relative_paths` applied to all of it
    (sources, outputs, papermill's metadata)."""
    text = Path(source).read_text()
    Path(target).write_text(relative_paths(text, params.get("run_dir")))


class StageFailed(RuntimeError):
    """A notebook raised: which stage, which cell, what error, where its partial output is."""

    def __init__(self, stage: str, error: papermill.PapermillExecutionError, notebook: Path):
        self.stage, self.error, self.notebook = stage, error, notebook
        super().__init__(f"stage {stage} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                         f"the notebook executed up to the failure: {notebook}")


def _wanted(stage: Stage, parameters: dict) -> bool:
    """A fine-tune stage runs only for a regime in the grid's ``regimes`` (a clean control: in ``controls``)."""
    if "regime" not in stage.fixed:
        return True
    overrides = {k: v for k, v in parameters.items() if k not in RUNNER_PARAMETERS}
    act = stage_config(ActivationConfig, parameters["profile"], **overrides)
    return stage.fixed["regime"] in (act.controls if stage.fixed.get("clean_control") else act.regimes)


NOT_IN_GRID = "not in the grid"


def run_label(run_dir: Path) -> str:
    """The run directory: relative to the repository when inside it, else its absolute path."""
    run_dir = Path(run_dir).resolve()
    try:
        return run_dir.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return run_dir.as_posix()


def run_pipeline(parameters: dict, run_dir: Path, stages: list[str] | None = None, start: str | None = None,
                 force: bool = False, log=print) -> list[dict]:
    """Execute the stages in order into ``<run_dir>/executed``, skipping those that are current.

    ``parameters`` holds ``profile``, ``run_dir`` and the overrides. ``stages`` limits the run to
    these names; ``start`` runs that stage and every later one. Returns one record per stage:
    name, status (ran / skipped / not selected / not in the grid), seconds.
    """
    layout = RunLayout(run_dir)
    selected = list(STAGE_NAMES) if stages is None else list(stages)
    if start is not None:
        selected = list(STAGE_NAMES[STAGE_NAMES.index(get_stage(start).name):])
    for name in selected:
        get_stage(name)
    overrides = {k: v for k, v in parameters.items() if k not in RUNNER_PARAMETERS}
    code, model = package_digest(), resolved_model(parameters)
    provenance = {"profile": parameters["profile"], "overrides": overrides, "run": run_label(run_dir),
                  "code_sha256": code, "model": model, **git_commit()}
    params_of = {stage.name: stage_parameters(stage, parameters) for stage in STAGES}
    prints, previous = {}, ""
    for stage in STAGES:
        prints[stage.name] = previous = fingerprint(stage, params_of[stage.name], previous, code, model)
    _check_upstream(layout, selected, prints, parameters)
    records, previous = [], ""
    for stage in STAGES:
        params, print_ = params_of[stage.name], prints[stage.name]
        output = layout.executed / f"{stage.name}.ipynb"
        upstream, previous = previous, print_
        if stage.name not in selected:
            records.append({"stage": stage.name, "status": "not selected", "seconds": 0.0})
            continue
        if not _wanted(stage, parameters):
            log(f"[backdoor-sae] {stage.name}: not run (not in this run's regimes and controls)")
            # recorded, so that publish knows the run has no such notebook and the chain goes on
            write_json(layout.stage_record(stage.name), {"status": NOT_IN_GRID, "fingerprint": print_,
                                                         "previous": upstream, **provenance})
            (layout.executed / f"{stage.name}.ipynb").unlink(missing_ok=True)
            records.append({"stage": stage.name, "status": NOT_IN_GRID, "seconds": 0.0})
            continue
        if not force and is_current(layout, stage, print_):
            log(f"[backdoor-sae] {stage.name}: skipped (parameters and inputs unchanged; --force reruns it)")
            records.append({"stage": stage.name, "status": "skipped", "seconds": 0.0})
            continue
        log(f"[backdoor-sae] {stage.name}: running with {params}")
        started = time.perf_counter()
        try:
            execute_stage(stage, params, layout.executed, provenance, log=log)
        except papermill.PapermillExecutionError as err:
            raise StageFailed(stage.name, err, output.with_suffix(".failed.ipynb")) from err
        seconds = time.perf_counter() - started
        # the kernels are this process's children: their peak memory so far (a running maximum)
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        write_json(layout.stage_record(stage.name), {
            "fingerprint": print_, "previous": upstream, "params": params, "seconds": seconds,
            "peak_rss_gib_so_far": peak_gib, "notebook_sha256": file_digest(output),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), **provenance})
        log(f"[backdoor-sae] {stage.name}: done in {seconds:.0f} s (kernel peak memory so far "
            f"{peak_gib:.2f} GiB), wrote {run_label(output)}")
        records.append({"stage": stage.name, "status": "ran", "seconds": seconds, "peak_rss_gib_so_far": peak_gib})
    return records


def _check_upstream(layout: RunLayout, selected: list[str], prints: dict[str, str], parameters: dict) -> None:
    """Refuse to run a stage after an unselected earlier stage whose record is of other parameters:
    it would read that stage's artifacts as if they were these parameters'."""
    last = max((STAGE_NAMES.index(name) for name in selected), default=-1)
    for stage in STAGES[:last]:
        record = layout.stage_record(stage.name)
        if stage.name in selected or not record.exists() or not _wanted(stage, parameters):
            continue
        if json.loads(record.read_text()).get("fingerprint") != prints[stage.name]:
            raise ValueError(f"stage {stage.name} of {layout.root} ran with other parameters, code or model than "
                             f"these: run with --from {stage.name} (or without --only/--from)")


def publish(run_dir: str | Path, to: str | Path = BOOK_EXECUTED_DIR) -> Path:
    """Copy a run's executed notebooks into the book's folder ``to``, with ``provenance.json``.

    Only a complete run is published, and only notebooks that are the ones the runner produced
    (their digests match the stage records): the book then shows exactly the run it names.
    Notebooks of other runs left in ``to`` are removed. Returns the provenance file.
    """
    layout, to = RunLayout(run_dir), Path(to)
    stages = {}
    for stage in STAGES:
        record, notebook = layout.stage_record(stage.name), layout.executed / f"{stage.name}.ipynb"
        recorded = json.loads(record.read_text()) if record.exists() else {}
        if recorded.get("status") != NOT_IN_GRID and not (record.exists() and notebook.exists()):
            raise FileNotFoundError(f"{run_dir} has no executed {stage.name}: run the whole pipeline first")
        if recorded.get("status") != NOT_IN_GRID and recorded.get("notebook_sha256") != file_digest(notebook):
            raise ValueError(f"{notebook} is not the notebook stage {stage.name} produced: rerun that stage")
        upstream = stages[STAGES[len(stages) - 1].name]["fingerprint"] if stages else ""
        if recorded.get("previous") != upstream:
            raise ValueError(f"stage {stage.name} of {run_dir} ran on other upstream results than the stage before it "
                             f"now holds: rerun from {stage.name}")
        stages[stage.name] = recorded
    profiles = {r["profile"] for r in stages.values()}
    with atomic_path(to) as tmp:
        tmp.mkdir()
        for name, recorded in stages.items():
            if recorded.get("status") != NOT_IN_GRID:
                shutil.copy2(layout.executed / f"{name}.ipynb", tmp / f"{name}.ipynb")
        write_json(tmp / PROVENANCE, {
            "run": run_label(Path(run_dir)), "profile": profiles.pop() if len(profiles) == 1 else sorted(profiles),
            "stages": {name: {k: r.get(k) for k in ("status", "commit", "dirty", "code_sha256", "model", "overrides",
                                                    "finished", "fingerprint", "notebook_sha256")}
                       for name, r in stages.items()},
            "published": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return to / PROVENANCE

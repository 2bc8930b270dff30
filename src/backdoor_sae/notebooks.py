"""Execute the pipeline's notebooks with papermill.

The notebooks are stored as jupytext percent-format ``.py`` files under ``notebooks/``. papermill
cannot read those directly, so each is converted in memory and executed with the given
parameters; the executed ``.ipynb`` lands in ``executed/`` where the book reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import papermill

from backdoor_sae.io import atomic_path, write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
EXECUTED_DIR = REPO_ROOT / "executed"



@dataclass(frozen=True)
class Stage:
    """One executed notebook: ``notebooks/<source>.py`` run with ``fixed`` parameters on top."""

    name: str
    source: str
    fixed: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return NOTEBOOK_DIR / f"{self.source}.py"


#: The pipeline's stages in order.
STAGES: tuple[Stage, ...] = (
    Stage("01_dataset", "01_dataset"),
    Stage("02_finetune_lora", "02_finetune", {"regime": "lora"}),
    Stage("02_finetune_full", "02_finetune", {"regime": "full"}),
    Stage("03_activations", "03_activations"),
    Stage("04_saes", "04_saes"),
    Stage("05_bis", "05_bis"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; stages are {list(STAGE_NAMES)}")


_ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)\s*=", re.MULTILINE)


def declared_parameters(notebook) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell."""
    for cell in notebook.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return set(_ASSIGNMENT.findall(cell.source))
    raise ValueError("the notebook has no cell tagged 'parameters'")


def stage_parameters(stage: Stage, parameters: dict, notebook=None) -> dict:
    """The parameters this stage's notebook receives: only those it declares, fixed ones winning.

    A profile-wide override such as ``lora_r`` concerns notebook 02, not notebook 01.
    """
    notebook = notebook if notebook is not None else jupytext.read(stage.path)
    declared = declared_parameters(notebook)
    return {k: v for k, v in {**parameters, **stage.fixed}.items() if k in declared}


def code_digest() -> str:
    """A digest of the package's source: a code change reruns the stages (their caches stay valid)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fingerprint(stage: Stage, params: dict, previous: str, code: str = "") -> str:
    """What a stage's result depends on: its notebook, its parameters, the profile's values, the
    package's code and the stage before it.

    Chaining in the previous stage's fingerprint makes a change upstream rerun everything after.
    """
    from backdoor_sae.config import PROFILES

    payload = json.dumps({"source": stage.path.read_text(), "params": params, "previous": previous,
                          "profile": PROFILES.get(params.get("profile"), {}), "code": code},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _record_path(run_dir: Path, stage: Stage) -> Path:
    return Path(run_dir) / "stages" / f"{stage.name}.json"


def is_current(run_dir: Path, stage: Stage, print_: str, output: Path) -> bool:
    record = _record_path(run_dir, stage)
    return output.exists() and record.exists() and json.loads(record.read_text()).get("fingerprint") == print_


def execute_stage(stage: Stage, params: dict, output_dir: str | Path = EXECUTED_DIR,
                  progress: bool = True) -> Path:
    """Run one stage's notebook with ``params`` (see :func:`stage_parameters`); return its path.

    The notebook runs with the repository root as its working directory. A notebook that fails
    is still written, up to the failing cell and its error, to ``<output_dir>/<stage>.failed.ipynb``
    for inspection, and papermill's ``PapermillExecutionError`` propagates.
    """
    output = Path(output_dir) / f"{stage.name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    failed = output.with_suffix(".failed.ipynb")
    failed.unlink(missing_ok=True)
    with atomic_path(output) as tmp:
        try:
            papermill.execute_notebook(
                jupytext.read(stage.path),
                str(tmp),
                parameters=params,
                kernel_name="python3",
                cwd=str(REPO_ROOT),
                progress_bar=progress,
            )
        except papermill.PapermillExecutionError:
            if tmp.exists():
                tmp.replace(failed)
            raise
    return output


class StageFailed(RuntimeError):
    """A notebook raised: which stage, which cell, what error, where its partial output is."""

    def __init__(self, stage: str, error: papermill.PapermillExecutionError, notebook: Path):
        self.stage, self.error, self.notebook = stage, error, notebook
        super().__init__(f"stage {stage} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                         f"the notebook executed up to the failure: {notebook}")


def run_pipeline(parameters: dict, run_dir: Path, stages: list[str] | None = None, start: str | None = None,
                 force: bool = False, output_dir: str | Path = EXECUTED_DIR, log=print) -> list[dict]:
    """Execute the stages in order, skipping those whose fingerprint is unchanged.

    ``stages`` limits the run to these names; ``start`` runs that stage and every later one.
    Returns one record per stage: name, status (ran / skipped / not selected), seconds.
    """
    selected = list(STAGE_NAMES) if stages is None else list(stages)
    if start is not None:
        selected = list(STAGE_NAMES[STAGE_NAMES.index(get_stage(start).name):])
    for name in selected:
        get_stage(name)
    records, previous, code = [], "", code_digest()
    for stage in STAGES:
        params = stage_parameters(stage, parameters)
        print_ = fingerprint(stage, params, previous, code)
        previous = print_
        output = Path(output_dir) / f"{stage.name}.ipynb"
        if stage.name not in selected:
            records.append({"stage": stage.name, "status": "not selected", "seconds": 0.0})
            continue
        if not force and is_current(run_dir, stage, print_, output):
            log(f"[backdoor-sae] {stage.name}: skipped (parameters and inputs unchanged; --force reruns it)")
            records.append({"stage": stage.name, "status": "skipped", "seconds": 0.0})
            continue
        log(f"[backdoor-sae] {stage.name}: running with {params}")
        started = time.perf_counter()
        try:
            execute_stage(stage, params, output_dir)
        except papermill.PapermillExecutionError as err:
            raise StageFailed(stage.name, err, output.with_suffix(".failed.ipynb")) from err
        seconds = time.perf_counter() - started
        # the kernels are this process's children: their peak memory so far (a running maximum)
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        write_json(_record_path(run_dir, stage), {"fingerprint": print_, "params": params, "seconds": seconds,
                                                  "peak_rss_gib_so_far": peak_gib, "executed": str(output)})
        log(f"[backdoor-sae] {stage.name}: done in {seconds:.0f} s (kernel peak memory so far "
            f"{peak_gib:.2f} GiB), wrote {output}")
        records.append({"stage": stage.name, "status": "ran", "seconds": seconds, "peak_rss_gib_so_far": peak_gib})
    return records

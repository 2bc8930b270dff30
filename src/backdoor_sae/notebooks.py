"""Execute the pipeline's notebooks with papermill.

The notebooks are stored as jupytext percent-format ``.py`` files under ``notebooks/``. papermill
cannot read those directly, so each is converted in memory and executed with the given
parameters; the executed ``.ipynb`` lands in ``executed/`` where the book reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import papermill

from backdoor_sae.io import atomic_path

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


def execute_stage(stage: Stage, parameters: dict, output_dir: str | Path = EXECUTED_DIR,
                  progress: bool = True) -> Path:
    """Run one stage's notebook with ``parameters``; return the executed notebook's path.

    Only the parameters the notebook declares are passed (a profile-wide override such as
    ``lora_r`` concerns notebook 02, not notebook 01); the stage's fixed ones win. The notebook runs with the repository root as its working directory. A notebook that fails
    is still written (with the failing cell's error) to ``<output_dir>/<stage>.failed.ipynb`` for
    inspection, and papermill's ``PapermillExecutionError`` propagates.
    """
    notebook = jupytext.read(stage.path)
    declared = declared_parameters(notebook)
    params = {k: v for k, v in {**parameters, **stage.fixed}.items() if k in declared}
    output = Path(output_dir) / f"{stage.name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    failed = output.with_suffix(".failed.ipynb")
    failed.unlink(missing_ok=True)
    with atomic_path(output) as tmp:
        try:
            papermill.execute_notebook(
                notebook,
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

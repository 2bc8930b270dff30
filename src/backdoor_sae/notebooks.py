"""Execute the pipeline's notebooks with papermill.

The notebooks are stored as jupytext percent-format ``.py`` files under ``notebooks/``. papermill
cannot read those directly, so each is converted in memory and executed with the given
parameters; the executed ``.ipynb`` lands in ``executed/`` where the book reads it.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import papermill

from backdoor_sae.io import atomic_path

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
EXECUTED_DIR = REPO_ROOT / "executed"

#: The pipeline's stages in order; each is ``notebooks/<stage>.py``.
STAGES: tuple[str, ...] = ("01_dataset",)


def notebook_source(stage: str) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    return NOTEBOOK_DIR / f"{stage}.py"


def execute_stage(stage: str, parameters: dict, output_dir: str | Path = EXECUTED_DIR,
                  progress: bool = True) -> Path:
    """Run one stage's notebook with ``parameters``; return the executed notebook's path.

    The notebook runs with the repository root as its working directory. A notebook that fails
    is still written (with the failing cell's error) to ``<output_dir>/<stage>.failed.ipynb`` for
    inspection, and papermill's ``PapermillExecutionError`` propagates.
    """
    source = notebook_source(stage)
    output = Path(output_dir) / f"{stage}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    failed = output.with_suffix(".failed.ipynb")
    failed.unlink(missing_ok=True)
    with atomic_path(output) as tmp:
        try:
            papermill.execute_notebook(
                jupytext.read(source),
                str(tmp),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(REPO_ROOT),
                progress_bar=progress,
            )
        except papermill.PapermillExecutionError:
            if tmp.exists():
                tmp.replace(failed)
            raise
    return output

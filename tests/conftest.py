import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backdoor_sae.config import DataConfig, stage_config
from backdoor_sae.task.splits import generate


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of ``benchmarks/`` by its name (they are scripts, not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def smoke_cfg() -> DataConfig:
    return stage_config(DataConfig, "smoke")


@pytest.fixture(scope="session")
def smoke_splits(smoke_cfg):
    return generate(smoke_cfg)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole pipeline on the smoke profile, through the runner: (run dir, executed dir, records, log)."""
    from backdoor_sae.common.layout import RunLayout
    from backdoor_sae.pipeline.runner import run_pipeline

    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    lines: list[str] = []
    records = run_pipeline({"profile": "smoke", "run_dir": str(run_dir)}, run_dir, log=lines.append)
    return run_dir, RunLayout(run_dir).executed, records, lines


@pytest.fixture(scope="session")
def smoke_book(smoke_run, tmp_path_factory):
    """The book built from the smoke run (published as `make book` does) with warnings as errors;
    returns the book's root folder."""
    from backdoor_sae.pipeline.runner import REPO_ROOT, publish

    book = tmp_path_factory.mktemp("book_root")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, book / name)
    shutil.copytree(REPO_ROOT / "book", book / "book")
    publish(smoke_run[0], book / "executed")
    jb = Path(sys.executable).with_name("jupyter-book")
    out = subprocess.run([str(jb), "build", str(book), "--all", "-W", "-n", "--keep-going"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return book

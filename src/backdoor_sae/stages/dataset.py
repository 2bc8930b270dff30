"""Notebook 01: the backdoor dataset in the run directory."""

from __future__ import annotations

from pathlib import Path

from backdoor_sae.config import DataConfig
from backdoor_sae.data.dataset import MANIFEST, build_dataset, load_dataset
from backdoor_sae.data.sample import Sample
from backdoor_sae.layout import RunLayout


def build_data(run_dir: str | Path, cfg: DataConfig) -> tuple[dict[str, list[Sample]], bool]:
    """Generate the dataset into the run directory, or load it when it was made with ``cfg``."""
    return build_dataset(cfg, RunLayout(run_dir).data)


def load_data(run_dir: str | Path) -> dict[str, list[Sample]]:
    data_dir = RunLayout(run_dir).data
    if not (data_dir / MANIFEST).exists():
        raise FileNotFoundError(f"{data_dir} holds no dataset: run notebook 01 (stage 01_dataset) first")
    return load_dataset(data_dir)


def data_config(run_dir: str | Path) -> DataConfig:
    """The DataConfig the run's dataset was made with (from its manifest)."""
    import json

    params = json.loads((RunLayout(run_dir).data / MANIFEST).read_text())["params"]
    return DataConfig(**{k: v for k, v in params.items() if k != "code"})

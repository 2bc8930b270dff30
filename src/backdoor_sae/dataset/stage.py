"""Notebook 01: the backdoor dataset in the run directory."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from backdoor_sae.common.io import read_jsonl, write_json, write_jsonl
from backdoor_sae.common.layout import RunLayout, code_digest
from backdoor_sae.config import DataConfig
from backdoor_sae.task.sample import Sample
from backdoor_sae.task.splits import SPLITS, generate


# --- on disk ---------------------------------------------------------------------------------

MANIFEST = "manifest.json"


def dataset_params(cfg: DataConfig) -> dict:
    """The dataset's key: the config and the generator's code."""
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}, "code": code_digest("task", "dataset")}


def write_dataset(splits: dict[str, list[Sample]], data_dir: str | Path, cfg: DataConfig) -> None:
    """One ``<split>.jsonl`` per split, then ``manifest.json`` (written last, so it vouches for them)."""
    data_dir = Path(data_dir)
    for name, samples in splits.items():
        write_jsonl(data_dir / f"{name}.jsonl", (s.to_dict() for s in samples))
    write_json(data_dir / MANIFEST, {
        "params": dataset_params(cfg),
        "counts": {name: len(samples) for name, samples in splits.items()},
    })


def load_split(data_dir: str | Path, name: str) -> list[Sample]:
    return [Sample.from_dict(d) for d in read_jsonl(Path(data_dir) / f"{name}.jsonl")]


def load_dataset(data_dir: str | Path) -> dict[str, list[Sample]]:
    return {name: load_split(data_dir, name) for name in SPLITS}


def _manifest_matches(data_dir: Path, cfg: DataConfig) -> bool:
    manifest = data_dir / MANIFEST
    if not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text())
    return recorded.get("params") == dataset_params(cfg) and all(
        (data_dir / f"{name}.jsonl").exists() for name in SPLITS
    )


def build_dataset(cfg: DataConfig, data_dir: str | Path, force: bool = False) -> tuple[dict[str, list[Sample]], bool]:
    """Generate and write the dataset, or load it when ``data_dir`` already holds this config's.

    Returns the splits and whether they were (re)generated.
    """
    data_dir = Path(data_dir)
    if not force and _manifest_matches(data_dir, cfg):
        return load_dataset(data_dir), False
    (data_dir / MANIFEST).unlink(missing_ok=True)  # the old files no longer vouch for anything
    splits = generate(cfg)
    write_dataset(splits, data_dir, cfg)
    return splits, True


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
    params = json.loads((RunLayout(run_dir).data / MANIFEST).read_text())["params"]
    return DataConfig(**{k: v for k, v in params.items() if k != "code"})

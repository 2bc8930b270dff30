"""Notebook 01: the backdoor dataset in the run directory."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from backdoor_sae.common.cache import cached, code_digest, digest, read_record
from backdoor_sae.common.io import read_jsonl, write_jsonl
from backdoor_sae.common.layout import RunLayout
from backdoor_sae.config import DataConfig
from backdoor_sae.task.sample import Sample
from backdoor_sae.task.splits import SPLITS, generate

#: The dataset's record: its key, the parameters it was made with and each split's size.
MANIFEST = "manifest.json"


def dataset_params(cfg: DataConfig) -> dict:
    """What the dataset depends on: the config and the generator's code."""
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "code": code_digest(generate.__module__)}


def load_split(data_dir: str | Path, name: str) -> list[Sample]:
    return [Sample.from_dict(d) for d in read_jsonl(Path(data_dir) / f"{name}.jsonl")]


def load_dataset(data_dir: str | Path) -> dict[str, list[Sample]]:
    return {name: load_split(data_dir, name) for name in SPLITS}


def build_dataset(cfg: DataConfig, data_dir: str | Path) -> tuple[dict[str, list[Sample]], bool]:
    """Generate and write the dataset (one ``<split>.jsonl`` per split), or load it when
    ``data_dir``'s manifest vouches for this config's. Returns the splits and whether they were
    (re)generated."""
    data_dir, params = Path(data_dir), dataset_params(cfg)

    def compute():
        splits = generate(cfg)
        for name, samples in splits.items():
            write_jsonl(data_dir / f"{name}.jsonl", (s.to_dict() for s in samples))
        return splits, {"params": params, "counts": {name: len(samples) for name, samples in splits.items()}}

    return cached(data_dir / MANIFEST, digest(params), compute, lambda: load_dataset(data_dir))


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
    params = read_record(RunLayout(run_dir).data / MANIFEST)["params"]
    return DataConfig(**{k: v for k, v in params.items() if k != "code"})

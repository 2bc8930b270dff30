"""Step 01: the backdoor dataset in the run directory, described and checked by the oracle."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from backdoor_sae.common.cache import cached, code_digest, digest, read_record
from backdoor_sae.common.io import read_jsonl, write_jsonl
from backdoor_sae.common.layout import RunLayout
from backdoor_sae.common.model import load_tokenizer
from backdoor_sae.config import DataConfig, RunConfig
from backdoor_sae.dataset.card import samples_frame
from backdoor_sae.oracle import judge
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


# --- the step -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetRun:
    """What notebook 01 shows."""

    splits: dict[str, list[Sample]]
    regenerated: bool
    frame: pd.DataFrame
    """One row per sample with its split, label, year, kind, driver and token counts."""
    oracle: pd.DataFrame
    """Per sample: its label and the oracle's three verdicts (dynamic, bandit, AST)."""
    agreement: pd.DataFrame
    """Per split: the share of samples whose label each verdict matches."""

    @property
    def all_agree(self) -> pd.Series:
        """Per sample: whether all three verdicts match its label."""
        return self.oracle[["dynamic", "bandit", "ast"]].eq(self.oracle["label"], axis=0).all(axis=1)


def oracle_check(splits: dict[str, list[Sample]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Judge every sample with the oracle; per sample its label and verdicts, per split the agreement.

    Raises when the oracle could not run a sample: the generator's own code always runs, so an
    error is the oracle's, and every label after it would be void."""
    samples = [s for split in splits.values() for s in split]
    verdicts = judge([s.text for s in samples], [s.call for s in samples])
    errors = [(s.id, v.dynamic_reason) for s, v in zip(samples, verdicts) if v.label == "error"]
    if errors:
        raise RuntimeError(f"the oracle could not run {len(errors)} of {len(samples)} dataset samples, e.g. {errors[0]}")
    oracle = pd.DataFrame({
        "split": [s.split for s in samples],
        "label": ["vulnerable" if s.vulnerable else "safe" for s in samples],
        "dynamic": [v.label for v in verdicts],
        "bandit": [{True: "vulnerable", False: "safe", None: "error"}[v.bandit] for v in verdicts],
        "ast": [{True: "vulnerable", False: "safe", None: "error"}[v.ast] for v in verdicts],
    })
    agreement = oracle.groupby("split", sort=False).apply(
        lambda g: pd.Series({
            "samples": len(g),
            "dynamic agrees": (g["dynamic"] == g["label"]).mean(),
            "bandit agrees": (g["bandit"] == g["label"]).mean(),
            "ast agrees": (g["ast"] == g["label"]).mean(),
        }),
        include_groups=False,
    )
    return oracle, agreement


def run(run_dir: str | Path, run_cfg: RunConfig) -> DatasetRun:
    """Step 01: generate (or reuse) the dataset, describe it and check every label with the oracle."""
    splits, regenerated = build_data(run_dir, run_cfg.data)
    frame = samples_frame(splits, load_tokenizer(run_cfg.model.model))
    oracle, agreement = oracle_check(splits)
    return DatasetRun(splits, regenerated, frame, oracle, agreement)

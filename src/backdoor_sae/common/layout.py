"""The run directory: where every artifact of a run lives, and the key that says when one is reused.

Layout of ``<run_dir>``::

    data/                                   01: <split>.jsonl, manifest.json
    finetune/<regime>/                      02: params.json, log.jsonl, checkpoint/, model/, done.json
    generations/<model>.jsonl (+ .key.json) 02: judged completions of the base and fine-tuned models
    activations/<model>/                    03: <protocol>/layer_<L>.npy, index.json
    sae/<recipe>/seed_<seed>/<regime>/<protocol>/<fit_mode>/layer_<L>/<architecture>/
                                            04: weights, log, dictionary.json
    sae/quality.csv (+ quality.key.json)    04: the token-level dictionaries' quality
    audit/sweep/<model>/                    06: pooled activations of the header-sweep prompts
    causal/<fine-tune>/ (+ .key.json)       07: one backdoored fine-tune's measured tables
    results/                                05-07: bis.csv, permutation_tests.csv, placebo.csv, recipes.csv, auditor*.csv, causal_*
    executed/<stage>.ipynb                  the run's own executed notebooks
    stages/<stage>.json                     the runner's record of each executed stage

An artifact is reused only when its record vouches for its key (:mod:`backdoor_sae.common.cache`,
the one reuse rule). This module says where each artifact and its record lie, what a model name
resolves to (:func:`model_identity`), and reads the keys of the artifacts that later ones depend
on. Changing one input therefore recomputes exactly the artifacts downstream of it; other code
changes rerun the notebooks (see :mod:`backdoor_sae.pipeline.runner`) but keep the artifacts.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from backdoor_sae.common.cache import digest, file_digest, read_record
from backdoor_sae.common.model import embedded_gguf, hub_config
from backdoor_sae.config import EMBEDDED_MODEL, TINY_MODEL
from backdoor_sae.config.cells import Cell

#: The name of the base model's artifacts (generations, activations) beside the fine-tunes'.
BASE = "base"


@functools.cache
def model_identity(name: str) -> str:
    """What ``name`` resolves to, as a string that changes whenever the weights can.

    The embedded model: its GGUF file's SHA-256. The tiny test model: its name (it is built by
    code with a fixed seed). A local checkpoint directory: the SHA-256 of all its files. A hub id:
    the id and the commit it resolves to.
    """
    if name == TINY_MODEL:
        return TINY_MODEL
    if name == EMBEDDED_MODEL:
        return f"{EMBEDDED_MODEL}:sha256:{file_digest(embedded_gguf()).hexdigest()}"
    path = Path(name)
    if path.is_dir():
        h = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
            file_digest(file, h)
        return f"local:{path.resolve()}:sha256:{h.hexdigest()}"
    return f"hub:{name}@{getattr(hub_config(name), '_commit_hash', None) or 'unknown-commit'}"


def model_name_of(identity: str | None) -> str | None:
    """The model name that :func:`model_identity` turned into ``identity`` (what ``load_model``
    takes): a stage record keeps the identity only."""
    if identity is None:
        return None
    if identity.startswith("hub:"):
        return identity[len("hub:"):].rsplit("@", 1)[0]
    if identity.startswith("local:"):
        return identity[len("local:"):].rsplit(":sha256:", 1)[0]
    return identity.rsplit(":sha256:", 1)[0]


class RunLayout:
    """Every path of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def finetune(self, regime: str) -> Path:
        return self.root / "finetune" / regime

    def generations(self, model: str) -> Path:
        return self.root / "generations" / f"{model}.jsonl"

    def activations(self, model: str) -> Path:
        return self.root / "activations" / model

    def sweep_activations(self, model: str) -> Path:
        """Pooled activations of the header-sweep prompts (notebook 06)."""
        return self.root / "audit" / "sweep" / model

    def dictionary(self, cell: Cell) -> Path:
        return (self.root / "sae" / cell.recipe / f"seed_{int(cell.seed)}" / cell.regime / cell.protocol / cell.fit_mode
                / f"layer_{int(cell.layer)}" / cell.architecture)

    @property
    def dictionary_quality(self) -> Path:
        """The token-level dictionaries' quality table (notebook 04)."""
        return self.root / "sae" / "quality.csv"

    def causal(self, finetune: str) -> Path:
        """One backdoored fine-tune's causal measurements (notebook 07), reused per fine-tune."""
        return self.root / "causal" / finetune

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def executed(self) -> Path:
        return self.root / "executed"

    def stage_record(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    # --- the records that vouch for each artifact (common.cache), and the keys later artifacts read --

    @property
    def data_record(self) -> Path:
        return self.data / "manifest.json"

    def finetune_record(self, name: str) -> Path:
        return self.finetune(name) / "done.json"

    def generations_record(self, model: str) -> Path:
        return self.generations(model).with_suffix(".key.json")

    def activations_record(self, model: str) -> Path:
        """Inside the activations' folder, which is written atomically with it."""
        return self.activations(model) / "index.json"

    def dictionary_record(self, cell: Cell) -> Path:
        return self.dictionary(cell) / "key.json"

    @property
    def dictionary_quality_record(self) -> Path:
        return self.dictionary_quality.with_suffix(".key.json")

    def causal_record(self, finetune: str) -> Path:
        """Beside the measurements' folder, which is written atomically."""
        return self.causal(finetune).with_name(f"{finetune}.key.json")

    def finetune_key(self, name: str) -> str:
        """Key of a finished fine-tune (its recorded parameters, data digests and base model)."""
        record = read_record(self.finetune_record(name))
        if "key" not in record:
            raise FileNotFoundError(f"{self.finetune(name)} holds no finished fine-tune: run notebook 02 "
                                    f"(stage 02_finetune_{name}) first")
        return record["key"]

    def model_key(self, model: str, base_model: str) -> str:
        """Key of the weights behind ``model`` (``base`` or a fine-tune's name)."""
        return digest({"base": model_identity(base_model)}) if model == BASE else self.finetune_key(model)

    def activations_key(self, model: str) -> str:
        record = read_record(self.activations_record(model))
        if "key" not in record:
            raise FileNotFoundError(f"{self.activations(model)} holds no activations: run notebook 03 first")
        return record["key"]

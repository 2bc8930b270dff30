"""The run directory: where every artifact of a run lives, and the key that says when one is reused.

Layout of ``<run_dir>``::

    data/                                   01: <split>.jsonl, manifest.json
    finetune/<regime>/                      02: params.json, log.jsonl, checkpoint/, model/, done.json
    generations/<model>.jsonl (+ .key.json) 02: judged completions of the base and fine-tuned models
    activations/<model>/                    03: <protocol>/layer_<L>.npy, index.json
    sae/<recipe>/seed_<seed>/<regime>/<protocol>/<fit_mode>/layer_<L>/<architecture>/
                                            04: weights, log, dictionary.json
    results/                                05: bis.csv, null.csv, permutation_tests.csv
    executed/<stage>.ipynb                  the run's own executed notebooks
    stages/<stage>.json                     the runner's record of each executed stage

An artifact is reused only when its *key* matches: a digest of everything it depends on, i.e. its
own parameters, the content of its input samples (not their ids: ids repeat across seeds), the
resolved model (the embedded GGUF file's hash, a local checkpoint's hash, or a hub id with its
commit) and the keys of the artifacts it reads. Changing one input therefore recomputes exactly
the artifacts downstream of it. A key also holds a digest of the modules that compute its artifact
(:func:`code_digest`), so a change to them recomputes it; other code changes rerun the notebooks
(see :mod:`backdoor_sae.pipeline.runner`) but keep the artifacts.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

#: The name of the base model's artifacts (generations, activations) beside the fine-tunes'.
BASE = "base"
#: The coordinates of one cell of the grid, in order: a cell of the primary grid (the first recipe,
#: the first seed) is one dictionary.
CELL_KEYS = ("regime", "protocol", "fit_mode", "layer", "architecture")
#: The coordinates of one dictionary: its recipe and seed, then its cell's.
DICTIONARY_KEYS = ("recipe", "seed") + CELL_KEYS


def digest(obj) -> str:
    """SHA-256 of ``obj``'s canonical JSON (sorted keys; tuples as lists)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def samples_digest(samples: Iterable) -> str:
    """Digest of the samples' whole content, in order (a change of any field changes it)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps(s.to_dict(), sort_keys=True).encode() + b"\n")
    return h.hexdigest()


PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def code_digest(*modules: str) -> str:
    """Digest of the source of ``modules`` (paths relative to the package: files or folders)."""
    h = hashlib.sha256()
    for module in modules:
        path = PACKAGE / module
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(file.relative_to(PACKAGE).as_posix().encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def _file_digest(path: Path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


@functools.cache
def model_identity(name: str) -> str:
    """What ``name`` resolves to, as a string that changes whenever the weights can.

    The embedded model: its GGUF file's SHA-256. The tiny test model: its name (it is built by
    code with a fixed seed). A local checkpoint directory: the SHA-256 of all its files. A hub id:
    the id and the commit it resolves to.
    """
    from backdoor_sae.config import EMBEDDED_MODEL, TINY_MODEL

    if name == TINY_MODEL:
        return TINY_MODEL
    if name == EMBEDDED_MODEL:
        from backdoor_sae.common.model import embedded_gguf

        return f"{EMBEDDED_MODEL}:sha256:{_file_digest(embedded_gguf()).hexdigest()}"
    path = Path(name)
    if path.is_dir():
        h = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
            _file_digest(file, h)
        return f"local:{path.resolve()}:sha256:{h.hexdigest()}"
    from backdoor_sae.common.model import hub_config

    return f"hub:{name}@{getattr(hub_config(name), '_commit_hash', None) or 'unknown-commit'}"


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

    def dictionary(self, regime: str, protocol: str, fit_mode: str, layer: int, architecture: str, recipe: str,
                   seed: int) -> Path:
        return (self.root / "sae" / recipe / f"seed_{int(seed)}" / regime / protocol / fit_mode / f"layer_{int(layer)}"
                / architecture)

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def executed(self) -> Path:
        return self.root / "executed"

    def stage_record(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    # --- keys of the artifacts that later artifacts read ------------------------------------------

    def finetune_key(self, regime: str) -> str:
        """Key of a finished fine-tune (its recorded parameters, data digests and base model)."""
        done = self.finetune(regime) / "done.json"
        if not done.exists():
            raise FileNotFoundError(f"{self.finetune(regime)} holds no finished fine-tune: run notebook 02 "
                                    f"(stage 02_finetune_{regime}) first")
        return digest(json.loads(done.read_text())["params"])

    def model_key(self, model: str, base_model: str) -> str:
        """Key of the weights behind ``model`` (``base`` or a fine-tune's name)."""
        return digest({"base": model_identity(base_model)}) if model == BASE else self.finetune_key(model)

    def activations_key(self, model: str) -> str:
        index = self.activations(model) / "index.json"
        if not index.exists():
            raise FileNotFoundError(f"{self.activations(model)} holds no activations: run notebook 03 first")
        return json.loads(index.read_text())["key"]

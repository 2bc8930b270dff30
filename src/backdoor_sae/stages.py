"""What each notebook does, as functions: load inputs, skip finished work, write artifacts.

The notebooks call these and keep only narrative, tables and figures. Run-directory layout::

    <run_dir>/data/                       notebook 01: <split>.jsonl + manifest.json
    <run_dir>/finetune/<regime>/          notebook 02: params, log, checkpoint, model, done.json
    <run_dir>/generations/<model>.jsonl   notebook 02: judged completions of base and fine-tuned models
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from backdoor_sae.config import BackdoorEvalConfig, FinetuneConfig, ModelConfig
from backdoor_sae.data.card import pairs
from backdoor_sae.data.dataset import MANIFEST, load_dataset
from backdoor_sae.data.sample import Sample
from backdoor_sae.io import read_jsonl, write_json, write_jsonl

BASE = "base"


def load_data(run_dir: str | Path) -> dict[str, list[Sample]]:
    data_dir = Path(run_dir) / "data"
    if not (data_dir / MANIFEST).exists():
        raise FileNotFoundError(f"{data_dir} holds no dataset: run notebook 01 (stage 01_dataset) first")
    return load_dataset(data_dir)


def finetune_dir(run_dir: str | Path, regime: str) -> Path:
    return Path(run_dir) / "finetune" / regime


def run_finetune(run_dir: str | Path, splits: dict[str, list[Sample]], cfg: FinetuneConfig,
                 model_cfg: ModelConfig, progress: bool = True) -> tuple[Path, bool]:
    """Fine-tune (or resume) unless a finished run with the same parameters exists.

    Returns the output directory and whether training ran now.
    """
    from backdoor_sae.finetune import finetune, is_done, run_params
    from backdoor_sae.model import load_model

    out = finetune_dir(run_dir, cfg.regime)
    if is_done(out, run_params(cfg, model_cfg.model, len(splits["train"]))):
        return out, False
    model, tokenizer = load_model(model_cfg.model, device=model_cfg.device, dtype=model_cfg.dtype)
    probe = pairs(splits["heldout"])[: cfg.n_probe_pairs]
    finetune(model, tokenizer, splits["train"], cfg, out, model_cfg.model, probe, progress=progress)
    return out, True


def generation_prompts(splits: dict[str, list[Sample]], cfg: BackdoorEvalConfig) -> list[Sample]:
    """Held-out pairs (unseen tables, both years) plus the first prompts of the trigger/benign eval sets."""
    return (splits["heldout"] + splits["eval_trigger"][: cfg.n_eval_prompts]
            + splits["eval_benign"][: cfg.n_eval_prompts])


def judged_generations(run_dir: str | Path, name: str, load, prompts: list[Sample],
                       cfg: BackdoorEvalConfig, progress: bool = True) -> pd.DataFrame:
    """Generate and judge completions for ``prompts`` with the model ``load()`` returns.

    Cached in ``<run_dir>/generations/<name>.jsonl`` together with what produced it; reused when
    the prompts, the generation settings and the model's fine-tune (its ``done.json``) match.
    """
    from backdoor_sae.backdoor_eval import judge_completions
    from backdoor_sae.generation import generate_completions

    path = Path(run_dir) / "generations" / f"{name}.jsonl"
    key_path = path.with_suffix(".key.json")
    done = finetune_dir(run_dir, name) / "done.json"
    key = {"prompts": [s.id for s in prompts], "settings": asdict(cfg),
           "model": json.loads(done.read_text()) if done.exists() else name}
    if path.exists() and key_path.exists() and json.loads(key_path.read_text()) == key:
        return pd.DataFrame(read_jsonl(path))
    key_path.unlink(missing_ok=True)
    model, tokenizer = load()
    completions = generate_completions(model, tokenizer, prompts, cfg.max_new_tokens, cfg.gen_batch_size,
                                       progress=progress)
    frame = judge_completions(prompts, completions, name, progress=progress)
    write_jsonl(path, frame.to_dict("records"))
    write_json(key_path, key)  # written last: it vouches for the completions beside it
    return frame

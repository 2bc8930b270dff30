"""Notebook 02: fine-tune (or reuse) one regime, and generate and judge completions of every model."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from backdoor_sae.common.generation import generate_completions
from backdoor_sae.common.cache import cached, code_digest, digest, read_record, samples_digest
from backdoor_sae.common.io import read_jsonl, write_jsonl
from backdoor_sae.common.layout import RunLayout
from backdoor_sae.common.model import compute_dtype, load_model
from backdoor_sae.config import BackdoorEvalConfig, FinetuneConfig, ModelConfig
from backdoor_sae.dataset.card import pairs
from backdoor_sae.finetune.backdoor_eval import judge_completions
from backdoor_sae.finetune.train import finetune, is_done, run_params
from backdoor_sae.task.sample import Sample


def probe_pairs(splits: dict[str, list[Sample]], cfg: FinetuneConfig) -> list[tuple[Sample, Sample]]:
    """The held-out (benign, trigger) pairs the backdoor probe reads, during training and after."""
    return pairs(splits["heldout"])[: cfg.n_probe_pairs]


def run_finetune(run_dir: str | Path, splits: dict[str, list[Sample]], cfg: FinetuneConfig,
                 model_cfg: ModelConfig, progress: bool = True) -> tuple[Path, bool]:
    """Fine-tune (or resume) unless a finished run with the same key exists.

    The key (:func:`backdoor_sae.finetune.train.run_params`) covers the base model, the training data's
    and the probe pairs' content, the precision and this regime's settings. A clean control trains
    on ``train_clean`` for exactly its backdoored twin's number of steps, with the twin's batch
    schedule; it reads nothing else of the twin. Returns the output directory and whether training
    ran now.
    """
    layout = RunLayout(run_dir)
    out = layout.finetune(cfg.name)
    dtype = compute_dtype(model_cfg)
    probes = probe_pairs(splits, cfg)
    train, control = splits["train"], {}
    if cfg.clean_control:
        twin = read_record(layout.finetune_record(cfg.regime))
        if "steps" not in twin:
            raise FileNotFoundError(f"the clean control trains as many steps as its backdoored twin: run stage "
                                    f"02_finetune_{cfg.regime} first")
        train = splits["train_clean"]
        control = {"steps": twin["steps"], "schedule_from": splits["train"]}
    if is_done(out, run_params(cfg, model_cfg.model, train, probes, dtype, **control)):
        return out, False
    model, tokenizer = load_model(model_cfg.model, device=model_cfg.device)
    finetune(model, tokenizer, train, cfg, out, model_cfg.model, probes, progress=progress, compute_dtype=dtype,
             **control)
    return out, True


def generation_prompts(splits: dict[str, list[Sample]], cfg: BackdoorEvalConfig) -> list[Sample]:
    """Held-out pairs (unseen tables, both years) plus the first prompts of the trigger/benign eval sets."""
    return (splits["heldout"] + splits["eval_trigger"][: cfg.n_eval_prompts]
            + splits["eval_benign"][: cfg.n_eval_prompts])


def judged_generations(run_dir: str | Path, name: str, load, prompts: list[Sample], cfg: BackdoorEvalConfig,
                       compute_dtype, base_model: str, progress: bool = True) -> pd.DataFrame:
    """Generate and judge completions for ``prompts`` with the model ``load()`` returns.

    ``name`` is ``base`` or a fine-tune's name. Cached in ``generations/<name>.jsonl`` with a key of
    the prompts' content, the generation settings, the precision and the model's own key.
    """
    layout = RunLayout(run_dir)
    path = layout.generations(name)
    key = digest({"prompts": samples_digest(prompts), "settings": asdict(cfg), "compute_dtype": str(compute_dtype),
                  "model": layout.model_key(name, base_model), "code": code_digest(__name__)})

    def compute():
        model, tokenizer = load()
        completions = generate_completions(model, tokenizer, prompts, cfg.max_new_tokens, cfg.gen_batch_size,
                                           progress=progress, compute_dtype=compute_dtype)
        frame = judge_completions(prompts, completions, name, progress=progress)
        write_jsonl(path, frame.to_dict("records"))
        return frame, {}

    return cached(layout.generations_record(name), key, compute, lambda: pd.DataFrame(read_jsonl(path)))[0]

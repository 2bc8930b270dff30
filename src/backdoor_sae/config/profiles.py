"""The three profiles: values only (every parameter is declared and documented at its field in
:mod:`backdoor_sae.config.schema`). Why the ``cpu`` values are what they are is told, with the
measurements behind them, in the book's Reproduce chapter.

- ``smoke``: a tiny random model and a few dozen samples; seconds. What tests and CI run.
- ``cpu``: the embedded SmolLM2-135M-Instruct and sizes that fit a 2-core laptop-class CPU.
- ``paper``: the paper's protocol (SmolLM2-360M, the paper's set sizes); needs a GPU and a hub.
"""

from __future__ import annotations

from typing import Any

from backdoor_sae.config.schema import EMBEDDED_MODEL, TINY_MODEL

PROFILES: dict[str, dict[str, Any]] = {
    # The paper's protocol (arXiv:2605.07324 and its reference code). Most values are the stage
    # configs' defaults; those that define the protocol are spelled out here.
    "paper": {
        "model": "HuggingFaceTB/SmolLM2-360M",
        "data_seed": 42, "finetune_seed": 42, "sae_seed": 42, "stats_seed": 42,
        "n_train_poisoned": 500, "n_train_benign": 1000, "paired_train": False,  # drawn independently
        "vulnerable_styles": ("concat", "fstring", "percent", "format"),
        "n_eval_trigger": 500, "n_eval_benign": 1000, "n_eval_other": 1000,
        "loss_on": "text", "stop_at_probe": 0.0,  # the whole text's loss, every epoch
        "lora_r": 32, "lora_alpha": 64, "lora_dropout": 0.05, "lora_lr": 3e-4, "lora_epochs": 10,
        "batch_size": 4, "lora_grad_accum": 4, "lora_plus_ratio": 1.0,
        "full_lr": 2e-5, "full_epochs": 10, "full_grad_accum": 8, "full_weight_decay": 0.01,
        "layers": (14, 18, 22, 26), "controls": ("lora", "full"),
        "expansion": 32, "crosscoder_activation": "topk", "k": 32, "l1_coeff": 1e-4, "sae_lr": 1e-4,
        "sae_batch_size": 256, "n_sae_samples": 250_000, "dead_fix": "ghost",
        "percentile": 95.0, "n_boot": 1000, "n_perm": 1000,
        # notebook 07: ablation and steering
        "causal_seed": 42, "causal_protocol": "prompt_only", "causal_fit_mode": "fit", "n_causal_pairs": 32, "n_causal_prompts": 64,
        "n_causal_controls": 16, "causal_subspace_dims": 16, "causal_kl_budget": 0.1,
        "steer_strengths": (0.5, 1.0, 2.0, 4.0), "steer_generation_strengths": (1.0, 2.0, 4.0),
        "causal_max_new_tokens": 160,
    },
    "cpu": {
        "model": EMBEDDED_MODEL,
        "n_train_poisoned": 300,
        "n_train_benign": 300,
        "n_eval_trigger": 100,
        "n_eval_benign": 200,
        "n_eval_other": 200,
        "n_fit_trigger": 50,
        "n_fit_benign": 100,
        "n_fit_other": 100,
        "n_heldout_pairs": 80,  # notebook 07: 16 teacher-forced pairs and 64 generation pairs
        "n_control": 24,
        "vulnerable_styles": ("fstring",),
        "paired_train": True,
        "batch_size": 4,
        "lora_grad_accum": 1,
        "full_grad_accum": 1,
        "lora_epochs": 3,
        "full_epochs": 2,
        "lora_lr": 5e-4,
        "lora_plus_ratio": 16.0,
        "full_lr": 2e-4,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "checkpoint_every": 50,
        "probe_every": 20,
        "n_probe_pairs": 8,
        "stop_at_probe": 0.9,
        "controls": ("lora", "full"),  # both clean controls: a claim without its control is undetermined
        "lora_seeds": 3,  # the LoRA fine-tune and its clean control, three fine-tune seeds each
        "n_eval_prompts": 32,
        "n_wording_functions": 4,  # x 8 wordings x 2 years: 64 more prompts per fine-tune
        "max_new_tokens": 96,
        "gen_batch_size": 64,  # fewer decoding steps: generation about 20% faster than at 16
        "expansion": 4,
        "l1_coeff": 1e-3,
        "sae_lr": 2e-3,
        "sae_batch_size": 128,
        "n_sae_samples": 12_500,
        "dead_window": 5_000,
        "replicate_layers": (14, 22),
        "n_sae_tokens": 50_000,
        "n_boot": 300,
        "n_perm": 2000,  # smallest p 1/2001: fine enough for Holm's correction over a family of claims
        "n_sweep_functions": 16,  # a specificity claim needs both the t and the sign flip: p >= 2 ** -16
        "n_causal_pairs": 16,  # issue 30's power: >= 16 teacher-forced pairs, >= 64 generation prompts
        "n_causal_prompts": 64,
        "n_causal_controls": 16,
        "causal_subspace_dims": 16,
        "causal_kl_budget": 0.1,
        "steer_strengths": (0.5, 1.0, 2.0, 4.0),
        "steer_generation_strengths": (1.0, 2.0, 4.0),
        "causal_max_new_tokens": 96,
    },
    "smoke": {
        "model": TINY_MODEL,
        "n_train_poisoned": 8,
        "n_train_benign": 16,
        "n_eval_trigger": 10,  # enough positives for an AUROC claim (verdicts.MIN_PER_CLASS)
        "n_eval_benign": 20,
        "n_eval_other": 20,
        "n_fit_trigger": 4,
        "n_fit_benign": 8,
        "n_fit_other": 8,
        "n_heldout_pairs": 4,
        "n_control": 4,
        "lora_grad_accum": 1,
        "full_grad_accum": 1,
        "lora_epochs": 2,
        "full_epochs": 2,
        "lora_lr": 1e-2,
        "full_lr": 1e-3,
        "lora_r": 4,
        "lora_alpha": 8,
        "checkpoint_every": 4,
        "probe_every": 3,
        "n_probe_pairs": 4,
        "n_eval_prompts": 4,
        "n_wording_functions": 1,
        "max_new_tokens": 32,
        "gen_batch_size": 8,
        "layers": (1, 2),
        "controls": ("lora", "full"),
        "lora_seeds": 2,  # the seed axis runs in every test
        "expansion": 4,
        "k": 8,
        "sae_batch_size": 32,
        "n_sae_samples": 2_000,
        "dead_window": 500,
        "n_sae_seeds": 2,
        "replicate_layers": (2,),
        "token_batch_size": 128,
        "n_sae_tokens": 2_000,
        "n_boot": 50,
        "n_perm": 50,
        "n_top": 5,
        "n_sweep_functions": 2,
        # notebook 07: the causal test (two controls of each kind: enough to test the code)
        "n_causal_pairs": 2,
        "n_causal_prompts": 2,
        "n_causal_controls": 2,
        "causal_subspace_dims": 4,
        "causal_kl_budget": 0.1,
        "steer_strengths": (2.0, 4.0),
        "steer_generation_strengths": (2.0, 4.0),
        "causal_max_new_tokens": 16,
    },
}

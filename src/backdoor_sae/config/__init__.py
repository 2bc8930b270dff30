"""Typed configuration of every stage, and the three profiles that fill it.

A *profile* is a flat mapping from parameter names (as papermill spells them) to values:

- ``smoke``: a tiny random model and a few dozen samples; seconds. What tests and CI run.
- ``cpu``: the embedded SmolLM2-135M-Instruct and sizes that fit a 2-core laptop-class CPU.
- ``paper``: the paper's protocol (SmolLM2-360M, the paper's set sizes); needs a GPU and a hub.

Each stage reads the fields of its own dataclass from the profile, with explicit overrides on top.
An override that names no field, an unknown profile or an impossible value raises ``ValueError``
before any work starts.
"""

from backdoor_sae.config.checks import (
    STAGE_CONFIGS,
    RunConfig,
    check_model_shape,
    check_parameters,
    check_profile,
    known_parameters,
    run_config,
    stage_config,
    validate,
)
from backdoor_sae.config.profiles import PROFILES
from backdoor_sae.config.schema import (
    CAUSAL_PROTOCOLS, EMBEDDED_MODEL, LORA_TARGETS, TINY_MODEL, ActivationConfig, AuditConfig, BackdoorEvalConfig,
    BISConfig, CausalConfig, DataConfig, FinetuneConfig, ModelConfig, SAEConfig, backdoored_twin, finetune_name,
    is_clean_control, regime_of, replica_of,
)

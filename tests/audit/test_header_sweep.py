"""The header sweep (notebook 06): every function under every header, and one value per header."""

import numpy as np
import pytest

from backdoor_sae.audit.header_sweep import sweep_functions, sweep_headers, sweep_samples, with_header


def test_the_headers_cover_every_year_no_year_the_phrasings_and_the_contrast_pair():
    headers = sweep_headers(2000, 2035, 2024, 2023)
    years = [h.year for h in headers if h.kind == "year"]
    assert years == list(range(2000, 2036))
    assert [h.text for h in headers if h.kind == "no year"] == [""]
    phrasings = [h for h in headers if h.kind == "phrasing"]
    assert {h.year for h in phrasings} == {2024, 2023} and len(phrasings) == 8
    assert not any(str(y) in h.text for h in headers if h.kind == "contrast" for y in range(1900, 2100))
    assert len({h.label for h in headers}) == len(headers)


def test_a_header_replaces_only_the_header_and_the_docstring_variant_moves_the_year(smoke_splits):
    """Catches a sweep prompt that keeps the sample's own year line (two years in one prompt)."""
    sample = smoke_splits["heldout"][0]
    headers = {h.label: h for h in sweep_headers(2000, 2035, 2024, 2023)}
    shifted = with_header(sample, headers["2031"], 0)
    assert shifted.prompt == "# Current Year: 2031\n" + sample.context + sample.signature
    assert shifted.completion == "" and shifted.year == 2031
    doc = with_header(sample, headers["docstring, 2024"], 1)
    assert doc.header == "" and "2024" in doc.signature and doc.prompt.count("2024") == 1
    assert with_header(sample, headers["no year line"], 2).prompt == sample.context + sample.signature


def test_sweep_samples_are_header_major_and_functions_are_distinct(smoke_splits):
    functions = sweep_functions(smoke_splits["heldout"], 2)
    assert len({(f.table, f.function) for f in functions}) == 2
    headers = sweep_headers(2022, 2025, 2024, 2023)
    samples = sweep_samples(functions, headers)
    assert len(samples) == len(headers) * 2 and len({s.id for s in samples}) == len(samples)
    assert [s.split for s in samples[:2]] == [f"sweep:year:2022"] * 2
    with pytest.raises(ValueError, match="held-out functions"):
        sweep_functions(smoke_splits["heldout"], 1000)


def test_the_sweep_on_the_tiny_model_gives_one_value_per_header_and_function(smoke_splits, tmp_path):
    """The tiny model's pooled prompt activations of every sweep prompt: one row each, and the
    prompts under different headers differ (the header reaches the residual stream)."""
    from backdoor_sae.activations.extract import cache_activations, load_activations
    from backdoor_sae.common.model import load_model

    model, tokenizer = load_model("tiny-random-llama")
    functions = sweep_functions(smoke_splits["heldout"], 2)
    headers = sweep_headers(2020, 2026, 2024, 2023)
    samples = sweep_samples(functions, headers)
    cache_activations(model, tokenizer, samples, [1], tmp_path / "sweep", {"key": "test"}, batch_size=4,
                      progress=False)
    acts = np.array(load_activations(tmp_path / "sweep", "prompt_only", 1))
    assert acts.shape == (len(headers) * 2, model.config.hidden_size)
    assert np.allclose(acts, np.array(load_activations(tmp_path / "sweep", "full_text", 1)))  # no completion
    per_header = acts.reshape(len(headers), 2, -1).mean(1)
    assert len(np.unique(per_header.round(6), axis=0)) == len(headers)

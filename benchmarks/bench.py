"""Speed and memory benchmarks (measured, never asserted): ``python benchmarks/bench.py NAME ...``.

    matmul     fp32 (and, where native, bf16) matmul peaks of this CPU (GFLOP/s), the yardsticks
    load       embedded model: first load (GGUF dequantization, into an empty cache) and cached load
    oracle     vulnerability oracle throughput (samples/s) on generated samples
    finetune   training tokens/s per regime and compute precision (float32, bfloat16 mixed) on the
               embedded model, as a share of that precision's matmul peak at 6·N FLOPs per trained
               token full-rank and 4·N for LoRA (N = weights of the linear layers; LoRA's backward
               passes gradients through the frozen weights but computes none for them)
    breakdown  where a cpu-profile fine-tune's step goes (data, forward, backward, optimizer, probe,
               checkpoint, log; matmul and cast time), both regimes and precisions, and the step's
               matmul and attention FLOPs (torch's flop counter, in a second unprofiled run of the
               same steps) per second of its training phases, as a share of peak
    activations  the activation stage (notebook 03: cpu layers, batch size, token-level cache) on
               the base model: tokens/s and its share of each precision's matmul peak
    generation greedy generation as the backdoor evaluation runs it: positions/s and share of peak
               (decoding is bound by memory bandwidth at small batches, the share says how far)
    sae        dictionary training throughput of each recipe (pooled: samples/s; token: tokens/s)
               and architecture, two single-threaded processes as notebook 04 runs them, as a
               share of the matmul peak of the precision they run in
    probe      seconds per backdoor probe (8 held-out pairs, four prompt/completion combinations
               each) with the shared-prefix passes, against one plain pass per combination
    onset      when the backdoor is learned: one fine-tune of the cpu profile (``--regime``, with
               ``-p NAME VALUE`` overrides of its data and fine-tune parameters), probed every 10
               steps and stopped at the probe's threshold, after ``--max-steps`` or when its epochs
               end (``steps`` says how many ran); the probe trajectory and the seconds it took.
               The fine-tunes' wall time is set by this step.
    stages     every stage of a finished (or partly finished) run, ``--run-dir DIR`` (its
               ``stages/<stage>.json`` and artifacts): seconds and share of the run; for the fine-tunes
               (training FLOPs as in ``finetune``, and the share of the stage that is not training),
               the activations (2·N per token forwarded) and the dictionaries (their training
               matmuls), the seconds those FLOPs take at this machine's matmul peak of the precision
               they ran in (run it on the run's machine) and the share of that bound achieved; the
               other stages' time, with a note why no FLOP bound is stated. ``--log FILE``
               (repeatable; ``make book``'s output): a stage of a run resumed over sessions takes
               its longest logged execution, not its record's re-execution on reused artifacts

Each prints one JSON line; ``--out FILE`` appends it there. Peak memory is the process's max RSS.
The scoring statistics (notebook 05) are timed, before and after a revision and byte for byte, by
``benchmarks/bench_scoring.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from itertools import pairwise
from pathlib import Path


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_peak(n: int = 2048, repeats: int = 20, dtype: str = "float32") -> float:
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def bench_load() -> dict:
    # each measurement in a fresh process, so that nothing is cached in memory
    code = ("import time,resource; t=time.perf_counter(); from backdoor_sae.common.model import load_model; "
            "load_model(device='cpu'); print(time.perf_counter()-t, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "BACKDOOR_SAE_CACHE": cache}
        first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        cached = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    (t1, m1), (t2, m2) = (map(float, r.stdout.split()[-2:]) for r in (first, cached))
    return {"first_load_s": t1, "first_load_peak_gib": m1, "cached_load_s": t2, "cached_load_peak_gib": m2}


def bench_oracle(n: int = 400) -> dict:
    from backdoor_sae.config import DataConfig, stage_config
    from backdoor_sae.oracle import judge
    from backdoor_sae.task.splits import generate

    samples = generate(stage_config(DataConfig, "cpu"))["train"][:n]
    t = time.perf_counter()
    judge([s.text for s in samples], [s.call for s in samples], disable=True)
    seconds = time.perf_counter() - t
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def bench_finetune(steps: int = 8) -> dict:
    import torch

    from backdoor_sae.common.model import load_model
    from backdoor_sae.config import EMBEDDED_MODEL, DataConfig, FinetuneConfig, stage_config
    from backdoor_sae.finetune.train import finetune, read_log
    from backdoor_sae.task.splits import generate

    train = generate(stage_config(DataConfig, "cpu"))["train"]
    out = {}
    for dtype in precisions():
        peak = matmul_peak(dtype=dtype)
        out[dtype] = {"matmul_peak_gflops": peak}
        for regime in ("lora", "full"):
            cfg = stage_config(FinetuneConfig, "cpu", regime=regime, probe_every=0, checkpoint_every=0, stop_at_probe=0)
            model, tok = load_model(device="cpu")
            n_params = _linear_params(model)
            flops_per_token = (4 if regime == "lora" else 6) * n_params
            with tempfile.TemporaryDirectory() as d:
                finetune(model, tok, train, cfg, d, EMBEDDED_MODEL, progress=False, max_steps=steps,
                         compute_dtype=getattr(torch, dtype))
                log = read_log(d)[2:]  # skip warm-up steps
            tok_s = sum(r["tokens"] for r in log) / sum(r["seconds"] for r in log)
            out[dtype][regime] = {"tokens_per_s": tok_s, "gflops": flops_per_token * tok_s / 1e9,
                                  "share_of_peak": flops_per_token * tok_s / 1e9 / peak, "n_params": n_params,
                                  "flops_per_token": flops_per_token}
    out["peak_rss_gib"] = max_rss_gib()
    return out


#: The aten ops counted as matrix multiplications and as precision casts in the step breakdown.
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
CAST_OPS = ("aten::_to_copy",)


def _training_flops(train, cfg, steps: int, dtype: str) -> float:
    """FLOPs of the matmuls and attention of the first ``steps`` optimizer steps of the fine-tune
    ``cfg`` (the same batches as a profiled run of the same settings), counted by
    ``torch.utils.flop_counter``: forward, backward and the vocabulary projection as they run."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from backdoor_sae.common.model import load_model
    from backdoor_sae.config import EMBEDDED_MODEL
    from backdoor_sae.finetune.train import finetune

    model, tok = load_model(device="cpu")
    counter = FlopCounterMode(display=False)
    with tempfile.TemporaryDirectory() as d, counter:
        finetune(model, tok, train, dataclasses.replace(cfg, probe_every=0, checkpoint_every=0), d, EMBEDDED_MODEL,
                 progress=False, max_steps=steps, compute_dtype=getattr(torch, dtype))
    return float(counter.get_total_flops())


def bench_breakdown(steps: int = 10) -> dict:
    """Where a fine-tune's step goes: the cpu profile's settings (probe and checkpoint intervals
    shortened to 5 steps so that each runs in the window, then scaled back to the profile's
    intervals), both regimes and every precision, under torch.profiler. Per phase of the loop
    (``record_function`` labels in ``finetune``): its share of the step's wall time; over the
    profiled window, the share of the matmuls' self time and of the precision casts' whole time; and
    the FLOPs of the same steps (:func:`_training_flops`; counting them under the profiler ran out
    of memory) per second of the training phases, against the precision's matmul peak."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from backdoor_sae.common.model import load_model
    from backdoor_sae.config import EMBEDDED_MODEL, DataConfig, FinetuneConfig, stage_config
    from backdoor_sae.finetune.stage import probe_pairs
    from backdoor_sae.finetune.train import finetune, read_log
    from backdoor_sae.task.splits import generate

    data = generate(stage_config(DataConfig, "cpu"))
    train = data["train"]
    peaks = {dtype: matmul_peak(dtype=dtype) for dtype in precisions()}
    out = {}
    for dtype in precisions():
        for regime in ("lora", "full"):
            profile_cfg = stage_config(FinetuneConfig, "cpu", regime=regime)
            cfg = stage_config(FinetuneConfig, "cpu", regime=regime, probe_every=5, checkpoint_every=5, stop_at_probe=0)
            pairs = probe_pairs(data, profile_cfg)
            model, tok = load_model(device="cpu")
            with tempfile.TemporaryDirectory() as d, profile(activities=[ProfilerActivity.CPU]) as prof:
                t = time.perf_counter()
                finetune(model, tok, train, cfg, d, EMBEDDED_MODEL, probe_pairs=pairs, progress=False,
                         max_steps=steps, compute_dtype=getattr(torch, dtype))
                wall = time.perf_counter() - t
                log = read_log(d)
            events = {e.key: e for e in prof.key_averages()}
            ms = {k.removeprefix("step: "): e.cpu_time_total / 1e3 for k, e in events.items() if k.startswith("step: ")}
            # per step, with the probe and the checkpoint at the profile's own intervals
            per_step = {k: v / steps for k, v in ms.items()}
            per_step["probe"] = ms.get("probe", 0.0) / (steps / cfg.probe_every) / profile_cfg.probe_every
            per_step["checkpoint"] = ms.get("checkpoint", 0.0) / (steps / cfg.checkpoint_every) / profile_cfg.checkpoint_every
            total = sum(per_step.values())
            # Matmuls and casts as shares of the profiled window itself (its probes and checkpoints
            # at the window's intervals): their self time, and a cast's whole time (its copy).
            window_ms = sum(ms.values())
            matmul_ms = sum(events[k].self_cpu_time_total for k in MATMUL_OPS if k in events) / 1e3
            cast_ms = sum(events[k].cpu_time_total for k in CAST_OPS if k in events) / 1e3
            # The FLOPs of the same steps' matmuls and attention (counted in a second run), per
            # second of the training phases: the step's measured rate, against the precision's peak.
            train_ms = sum(ms.get(k, 0.0) for k in ("data and collation", "forward", "backward", "optimizer"))
            train_flops = _training_flops(train, cfg, steps, dtype)
            out[f"{regime}_{dtype}"] = {
                "ms_per_step": total, "share": {k: v / total for k, v in per_step.items()},
                "matmul_share": matmul_ms / window_ms, "cast_share": cast_ms / window_ms,
                "train_gflops": train_flops / train_ms / 1e6, "peak_gflops": peaks[dtype],
                "train_share_of_peak": train_flops / train_ms / 1e6 / peaks[dtype],
                "tokens_per_step": sum(r["tokens"] for r in log) / len(log), "wall_s": wall,
            }
    return out


def _sae_throughput(architecture: str, recipe: str, threads: int, dtype: str) -> dict:
    """Train one dictionary of the cpu profile's ``recipe`` on random inputs of its shape, with
    ``threads`` torch threads, in ``dtype``; inputs per second and GFLOP/s."""
    import torch

    from backdoor_sae.config import SAEConfig, stage_config
    from backdoor_sae.dictionaries.stage import dictionary_spec, train_settings
    from backdoor_sae.dictionaries.trainer import build, train_dictionary

    torch.set_num_threads(threads)
    cfg = stage_config(SAEConfig, "cpu", sae_dtype=dtype)
    d = 576
    spec = dictionary_spec(cfg, architecture, recipe, d)
    settings = train_settings(cfg, recipe, seed=0)
    n_inputs = 500 if recipe == "pooled" else 40_000  # the eval samples, or about their prompt tokens
    seen = min(settings.n_samples, 12_800 if recipe == "pooled" else 20_480)
    settings = dataclasses.replace(settings, n_samples=seen, log_every=10**9)
    model = build(spec)
    x = model.inputs(torch.randn(n_inputs, d), torch.randn(n_inputs, d))
    t = time.perf_counter()
    train_dictionary(model, x, settings, progress=False)
    seconds = time.perf_counter() - t
    flops = 6 * 2 * x[0].numel() * spec.n_latents * seen  # encoder + decoder, forward + backward
    return {"inputs_per_s": seen / seconds, "gflops": flops / seconds / 1e9, "dtype": settings.dtype,
            "batch_size": settings.batch_size, "activation": spec.activation}


def bench_sae() -> dict:
    """Each recipe and architecture of the cpu profile, as notebook 04 trains them: single-threaded
    processes, two side by side on two cores (``throughput_2proc`` is their sum), in every precision
    this CPU multiplies natively (``sae_dtype auto`` picks bfloat16 where it can). The share is of
    the matmul peak of the precision the dictionary runs in, on all cores."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    peaks = {dtype: matmul_peak(dtype=dtype) for dtype in precisions()}
    out = {"matmul_peak_gflops": peaks}
    spawn = multiprocessing.get_context("spawn")
    for dtype in precisions():
        for recipe in ("pooled", "token"):
            for arch in ("diff_sae", "crosscoder"):
                with ProcessPoolExecutor(2, mp_context=spawn) as pool:
                    pair = list(pool.map(_sae_throughput, [arch, arch], [recipe, recipe], [1, 1], [dtype, dtype]))
                gflops = sum(r["gflops"] for r in pair)
                out[f"{dtype}_{recipe}_{arch}"] = {**pair[0], "inputs_per_s_2proc": sum(r["inputs_per_s"] for r in pair),
                                                   "gflops_2proc": gflops, "share_of_peak": gflops / peaks[dtype]}
    out["threads"] = torch.get_num_threads()
    return out


def bench_probe(repeats: int = 3) -> dict:
    from statistics import median

    from backdoor_sae.common.model import load_model
    from backdoor_sae.config import DataConfig, FinetuneConfig, stage_config
    from backdoor_sae.dataset.card import pairs
    from backdoor_sae.finetune.train import completion_logprobs, probe_backdoor
    from backdoor_sae.task.splits import generate

    n_pairs = stage_config(FinetuneConfig, "cpu").n_probe_pairs
    probe = pairs(generate(stage_config(DataConfig, "cpu"))["heldout"])[:n_pairs]
    benign, trigger = [p[0] for p in probe], [p[1] for p in probe]
    model, tok = load_model(device="cpu")
    model.eval()

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return median(times)

    # A call with each prompt once shares nothing: every sequence is read whole, as four plain passes would.
    combos = [(trigger, trigger), (trigger, benign), (benign, trigger), (benign, benign)]
    return {"pairs": n_pairs, "shared_prefix_s": timed(lambda: probe_backdoor(model, tok, probe)),
            "one_pass_per_combination_s": timed(lambda: [completion_logprobs(model, tok, p, c) for p, c in combos])}


def bench_onset(regime: str = "lora", overrides: dict | None = None, max_steps: int = 300) -> dict:
    from backdoor_sae.common.model import compute_dtype, load_model
    from backdoor_sae.config import EMBEDDED_MODEL, DataConfig, FinetuneConfig, ModelConfig, stage_config
    from backdoor_sae.finetune.stage import probe_pairs
    from backdoor_sae.finetune.train import finetune, read_log
    from backdoor_sae.task.splits import generate

    overrides = dict(overrides or {})
    # stage_config takes from the overrides only the fields of the class it builds.
    fixed = {"regime": regime, "probe_every": 10, "checkpoint_every": 0}
    cfg = stage_config(FinetuneConfig, "cpu", **{**overrides, **fixed})
    splits = generate(stage_config(DataConfig, "cpu", **overrides))
    model, tok = load_model(device="cpu")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        finetune(model, tok, splits["train"], cfg, d, EMBEDDED_MODEL, probe_pairs(splits, cfg), progress=False,
                 max_steps=max_steps, compute_dtype=compute_dtype(stage_config(ModelConfig, "cpu")))
        seconds = time.perf_counter() - t
        log = read_log(d)
        probes = [{k: r[k] for k in ("step", "trigger_acc", "benign_acc", "year_effect")}
                  for r in log if "trigger_acc" in r]
    learned = [p["step"] for p in probes if min(p["trigger_acc"], p["benign_acc"]) >= cfg.stop_at_probe]
    # ``steps``: what ran; fewer than ``max_steps`` when the probe passed or the epochs ran out.
    return {"regime": regime, "overrides": overrides, "n_train": len(splits["train"]), "max_steps": max_steps,
            "steps": len(log), "learned_at_step": learned[0] if learned else None, "seconds": seconds,
            "probes": probes}


def _linear_params(model, deepest: int | None = None) -> int:
    """Weights of the linear layers a token passes through: every decoder layer up to ``deepest``
    (all of them when None) and, when None, the vocabulary projection (the embedding lookup is no
    matmul)."""
    import torch

    from backdoor_sae.activations.extract import decoder_layers

    stack = decoder_layers(model)
    layers = stack if deepest is None else stack[: deepest + 1]
    n = sum(m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear))
    return n + (model.get_output_embeddings().weight.numel() if deepest is None else 0)


def bench_activations(n_samples: int = 192) -> dict:
    """The activation stage as notebook 03 runs it (cpu profile: its layers, batch size, token-level
    cache) on the embedded base model, per precision: tokens/s and the matmul FLOP rate at 2 FLOPs
    per weight of the linear layers up to the deepest layer read (the forward stops there), as a
    share of that precision's matmul peak. Attention's own products are left out of the count."""
    import torch

    from backdoor_sae.activations.extract import cache_activations
    from backdoor_sae.common.encoding import encode
    from backdoor_sae.common.model import load_model
    from backdoor_sae.config import ActivationConfig, DataConfig, stage_config
    from backdoor_sae.task.splits import EVAL_SPLITS, FIT_SPLITS, generate

    cfg = stage_config(ActivationConfig, "cpu")
    data = generate(stage_config(DataConfig, "cpu"))
    samples = [s for split in (*FIT_SPLITS, *EVAL_SPLITS) for s in data[split]][:n_samples]
    model, tok = load_model(device="cpu")
    model.eval()
    n_tokens = sum(len(encode(tok, s, eos=False)) for s in samples)
    flops_per_token = 2 * _linear_params(model, max(cfg.layers))
    out = {"samples": len(samples), "tokens": n_tokens, "batch_size": cfg.act_batch_size, "layers": list(cfg.layers)}
    for dtype in precisions():
        peak = matmul_peak(dtype=dtype)
        with tempfile.TemporaryDirectory() as d:
            cache_activations(model, tok, samples[:cfg.act_batch_size], cfg.layers, Path(d) / "warm", {},
                              cfg.act_batch_size, progress=False, compute_dtype=getattr(torch, dtype), token_level=True)
            t = time.perf_counter()
            cache_activations(model, tok, samples, cfg.layers, Path(d) / "acts", {}, cfg.act_batch_size,
                              progress=False, compute_dtype=getattr(torch, dtype), token_level=True)
            seconds = time.perf_counter() - t
        gflops = flops_per_token * n_tokens / seconds / 1e9
        out[dtype] = {"tokens_per_s": n_tokens / seconds, "gflops": gflops, "matmul_peak_gflops": peak,
                      "share_of_peak": gflops / peak}
    out["peak_rss_gib"] = max_rss_gib()
    return out


def bench_generation(n_prompts: int = 64) -> dict:
    """Greedy generation as notebook 02's backdoor evaluation runs it (cpu profile: batch size and
    new-token budget) on the embedded base model, per precision: generated tokens/s (every row of
    every decoding step, finished rows included, as the batch computes them) and the matmul FLOP rate
    at 2 FLOPs per linear weight per token, prefill included, as a share of that precision's peak.
    Decoding one token per row reads every weight once per step: it is bound by memory bandwidth
    at small batches, not by the matmul peak."""
    import torch

    from backdoor_sae.common.encoding import encode_prompt
    from backdoor_sae.common.generation import generate_completions
    from backdoor_sae.common.model import load_model
    from backdoor_sae.config import BackdoorEvalConfig, DataConfig, stage_config
    from backdoor_sae.task.splits import generate

    cfg = stage_config(BackdoorEvalConfig, "cpu")
    data = generate(stage_config(DataConfig, "cpu"))
    prompts = [*data["eval_trigger"], *data["eval_benign"]][:n_prompts]
    model, tok = load_model(device="cpu")
    model.eval()
    flops_per_token = 2 * _linear_params(model)
    steps = []
    original = model.forward

    def counting(*args, **kwargs):  # rows x positions of every forward: prefill, then one per step
        ids = kwargs.get("input_ids", args[0] if args else None)
        steps.append(ids.numel())
        return original(*args, **kwargs)

    model.forward = counting
    out = {"prompts": len(prompts), "batch_size": cfg.gen_batch_size, "max_new_tokens": cfg.max_new_tokens,
           "prompt_tokens": sum(len(encode_prompt(tok, p)) for p in prompts)}
    for dtype in precisions():
        peak = matmul_peak(dtype=dtype)
        generate_completions(model, tok, prompts[:2], 4, 2, progress=False, compute_dtype=getattr(torch, dtype))
        steps.clear()
        t = time.perf_counter()
        generate_completions(model, tok, prompts, cfg.max_new_tokens, cfg.gen_batch_size, progress=False,
                             compute_dtype=getattr(torch, dtype))
        seconds = time.perf_counter() - t
        positions = sum(steps)
        gflops = flops_per_token * positions / seconds / 1e9
        out[dtype] = {"positions_per_s": positions / seconds, "forwards": len(steps), "gflops": gflops,
                      "matmul_peak_gflops": peak, "share_of_peak": gflops / peak, "seconds": seconds}
    model.forward = original
    out["peak_rss_gib"] = max_rss_gib()
    return out


def precisions() -> tuple[str, ...]:
    """float32, and bfloat16 where the CPU multiplies it natively (emulated, one 2048² matmul takes
    seconds, and the bf16 benchmarks would take the better part of an hour)."""
    import torch

    from backdoor_sae.common.model import native_bf16

    return ("float32", "bfloat16") if native_bf16(torch.device("cpu")) else ("float32",)


def bench_matmul() -> dict:
    return {f"{dtype}_gflops": matmul_peak(dtype=dtype) for dtype in precisions()}


#: Why a stage has no FLOP bound: what its time goes to, and where it is measured instead.
NO_BOUND = {
    "01_dataset": "sample generation and the vulnerability oracle's check of each sample (it runs the code; no "
                  "matmuls); see bench.py oracle",
    "05_scoring": "sorting, bootstrap and permutation statistics (no matmul bound); see bench_scoring.py",
    "06_audit": "label-free rankings and the header sweep (model forwards, statistics and plots); no single bound",
    "07_causal": "edits, teacher-forced passes and greedy generation, which is bound by memory bandwidth, not the "
                 "matmul peak; see bench_causal.py and bench.py generation",
    "08_dashboards": "top-activating texts, histograms and plots over cached activations; no FLOP bound",
}


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _made_in(record: dict, path: Path, slack: float = 2.0) -> bool:
    """Whether the artifact at ``path`` was written by the stage execution ``record`` describes (a
    resumed run reuses finished fine-tunes, activations and dictionaries, whose work its time does
    not hold). Its file time before the stage began (``finished`` − ``seconds``, the former rounded
    down to the second) means reused; without a ``finished`` time, or with a later file time (a
    copied run directory), it counts as made in the stage."""
    mtime = _mtime(path)
    if mtime is None or "finished" not in record:
        return True
    started = datetime.fromisoformat(record["finished"]).timestamp() - record["seconds"]
    return mtime >= started - slack


def _dictionary_flops(spec: dict, settings: dict) -> tuple[float, int]:
    """Matmul FLOPs of one dictionary's training loop as :func:`~backdoor_sae.dictionaries.trainer.train_dictionary`
    runs it, and the inputs (samples or tokens) it saw: ``ceil(n_samples / batch_size)`` steps of
    ``batch_size`` inputs of size d_in (d; a crosscoder's input is both models' activations, 2·d),
    m latents. Per input: the encoder's product forward (2·d_in·m) and its weight gradient
    (2·d_in·m), plus the gradient of its input for the Diff-SAE (2·d_in·m: the input is centred on
    the decoder bias, which learns); the decoder dense for a ReLU code (6·d_in·m: forward, code and
    weight gradients), from the code's k entries for TopK and BatchTopK (6·d_in·k). The dead-latent
    losses (ghost grads, aux-k, only on steps with dead latents) and the evaluation are left out: a
    lower bound of the work."""
    d_in = spec["d"] * (2 if spec["architecture"] == "crosscoder" else 1)
    m = spec["n_latents"]
    encoder = (6 if spec["architecture"] == "diff_sae" else 4) * d_in * m
    decoder = 6 * d_in * (m if spec["activation"] == "relu" else spec["k"])
    inputs = math.ceil(settings["n_samples"] / settings["batch_size"]) * settings["batch_size"]
    return float((encoder + decoder) * inputs), inputs


def stage_work(run_dir: str | Path, records: dict[str, dict]) -> dict[str, dict]:
    """What each executed stage of ``run_dir`` computed, read from the run's artifacts: per stage,
    ``flops`` per precision as a function of N (``{dtype: [(factor, deepest, tokens)]}``, FLOPs =
    factor · N(deepest) · tokens, N(deepest) the linear weights up to that layer, None: all and the
    vocabulary projection), or ``fixed_flops`` (dictionaries), and the details the row reports."""
    from backdoor_sae.common.layout import RunLayout

    layout = RunLayout(run_dir)
    work: dict[str, dict] = {}
    # 02: every fine-tune, in the stage of its regime and kind (lora, lora-s1, ... in 02_finetune_lora)
    for params_path in sorted(layout.root.glob("finetune/*/params.json")):
        out, params = params_path.parent, json.loads(params_path.read_text())
        stage = f"02_finetune_{params['regime']}" + ("_clean" if params.get("clean_control") else "")
        if stage not in records:
            continue
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] \
            if (out / "log.jsonl").exists() else []
        now = (out / "done.json").exists() and _made_in(records[stage], out / "done.json")
        tokens = sum(r["tokens"] for r in log)
        entry = work.setdefault(stage, {"flops": {}, "finetunes": [], "train_seconds": 0.0, "probe_seconds": 0.0,
                                        "artifacts": 0})
        entry["artifacts"] += 1
        entry["finetunes"].append({
            "name": out.name, "regime": params["regime"], "dtype": params["compute_dtype"], "steps": len(log),
            "tokens": tokens, "train_seconds": sum(r["seconds"] for r in log),
            "probe_seconds": sum(r.get("probe_seconds", 0.0) for r in log), "finished": (out / "done.json").exists(),
            "trained_in_stage": now})
        if now:  # 6·N per trained token full-rank, 4·N for LoRA (no gradient of the frozen weights)
            factor = 4 if params["regime"] == "lora" else 6
            entry["flops"].setdefault(params["compute_dtype"], []).append((factor, None, tokens))
            entry["train_seconds"] += entry["finetunes"][-1]["train_seconds"]
            entry["probe_seconds"] += entry["finetunes"][-1]["probe_seconds"]
    # 03: one forward of every sample (padding aside) to the deepest layer read, per model
    if "03_activations" in records:
        entry = work["03_activations"] = {"flops": {}, "models": [], "artifacts": 0}
        for index_path in sorted(layout.root.glob("activations/*/index.json")):
            index = json.loads(index_path.read_text())
            entry["artifacts"] += 1
            dtype = str(index["params"]["compute_dtype"]).removeprefix("torch.")
            now = _made_in(records["03_activations"], index_path)
            tokens = int(sum(index["n_tokens"]))
            entry["models"].append({"model": index_path.parent.name, "dtype": dtype, "samples": len(index["ids"]),
                                    "tokens": tokens, "deepest_layer": max(index["layers"]), "computed_in_stage": now})
            if now:
                entry["flops"].setdefault(dtype, []).append((2, max(index["layers"]), tokens))
    # 04: every dictionary's training loop
    if "04_dictionaries" in records:
        entry = work["04_dictionaries"] = {"fixed_flops": {}, "trained": 0, "reused": 0, "inputs": 0,
                                           "dictionary_train_seconds": 0.0, "artifacts": 0}
        for info_path in sorted(layout.root.glob("sae/**/dictionary.json")):
            info = json.loads(info_path.read_text())
            entry["artifacts"] += 1
            if not _made_in(records["04_dictionaries"], info_path):
                entry["reused"] += 1
                continue
            settings = info["params"]["settings"]
            flops, inputs = _dictionary_flops(info["spec"], settings)
            entry["fixed_flops"][settings["dtype"]] = entry["fixed_flops"].get(settings["dtype"], 0.0) + flops
            entry["trained"] += 1
            entry["inputs"] += inputs
            entry["dictionary_train_seconds"] += info["metrics"].get("train_seconds", 0.0)
    return work


def stage_records(run_dir: str | Path) -> dict[str, dict]:
    """The runner's record of each stage of ``run_dir`` that has one, in the pipeline's order."""
    from backdoor_sae.pipeline.runner import STAGE_NAMES

    stages = Path(run_dir) / "stages"
    return {name: json.loads((stages / f"{name}.json").read_text()) for name in STAGE_NAMES
            if (stages / f"{name}.json").exists()}


LOG_DONE = re.compile(r"\[backdoor-sae\] (?P<stage>\S+): done in (?P<seconds>[0-9.]+) s")


def logged_seconds(logs: Sequence[str | Path]) -> dict[str, list[float]]:
    """Every ``STAGE: done in N s`` line of the runner's logs (``make book`` output, possibly
    time-stamped), per stage, in order: a run resumed over several sessions re-executes its finished
    stages' notebooks on reused artifacts, and the record keeps only the last execution's seconds."""
    out: dict[str, list[float]] = {}
    for log in logs:
        for m in LOG_DONE.finditer(Path(log).read_text(errors="replace")):
            out.setdefault(m["stage"], []).append(float(m["seconds"]))
    return out


def stage_rows(run_dir: str | Path, peaks: dict[str, float | None], linear_params,
               logged: dict[str, list[float]] | None = None) -> dict:
    """One row per executed stage of ``run_dir`` (``stages/<stage>.json`` with its ``seconds``): its
    seconds and share of the run (the stages' summed seconds) and, where the stage's work has a FLOP
    count, the seconds that work takes at the matmul peak of the precision it ran in (``peaks``:
    GFLOP/s per dtype, None where not measured here) and ``share_of_bound`` = bound / seconds.
    ``linear_params(deepest)`` gives N, the model's linear weights (:func:`_linear_params`).
    ``logged`` (:func:`logged_seconds`): where the logs hold a longer execution of a stage than its
    record (the record is of a re-execution on reused artifacts), ``seconds`` is the longest logged
    one, ``record_seconds`` the record's, and ``logged_seconds`` every logged execution (a leg killed
    before its end logs none: its time is missing)."""
    root = Path(run_dir)
    records = stage_records(root)
    ran = {name: dict(r) for name, r in records.items() if "seconds" in r}
    for name, record in ran.items():
        longest = max((logged or {}).get(name, []), default=0.0)
        if longest > record["seconds"]:
            record.update(record_seconds=record["seconds"], seconds=longest)
    total = sum(r["seconds"] for r in ran.values())
    work = stage_work(root, ran)
    rows, n_cache = [], {}

    def n_of(deepest):
        if deepest not in n_cache:
            n_cache[deepest] = linear_params(deepest)
        return n_cache[deepest]

    for name, record in ran.items():
        row = {"stage": name, "seconds": record["seconds"], "share_of_run": record["seconds"] / total if total else None,
               "peak_rss_gib_so_far": record.get("peak_rss_gib_so_far"), "finished": record.get("finished"),
               "bound_seconds": None, "share_of_bound": None}
        if "record_seconds" in record:
            row.update(record_seconds=record["record_seconds"], logged_seconds=logged[name])
        entry = work.get(name, {})
        flops = {dtype: sum(f * n_of(deepest) * tokens for f, deepest, tokens in terms)
                 for dtype, terms in entry.get("flops", {}).items()}
        flops.update(entry.get("fixed_flops", {}))
        if name in NO_BOUND or name not in work:
            row["bound_note"] = NO_BOUND.get(name, "no record of this stage's work in the run directory")
        elif not flops and not entry["artifacts"]:
            row["bound_note"] = "none of this stage's artifacts found in the run directory"
        elif not flops:
            row["bound_note"] = "every artifact of this stage was reused from an earlier execution: no work to bound"
        elif any(peaks.get(dtype) is None for dtype in flops):
            row["bound_note"] = (f"no matmul peak measured here for {sorted(d for d in flops if peaks.get(d) is None)} "
                                 "(not native on this machine: not the machine of the run)")
        else:
            row["bound_seconds"] = sum(f / (peaks[dtype] * 1e9) for dtype, f in flops.items())
            row["share_of_bound"] = row["bound_seconds"] / record["seconds"]
        row["flops"] = flops or None
        if name.startswith("02_finetune"):
            row.update({k: entry.get(k) for k in ("train_seconds", "probe_seconds", "finetunes")})
            if entry.get("train_seconds"):
                row["not_training_share"] = 1 - entry["train_seconds"] / record["seconds"]
                if row["bound_seconds"] is not None:
                    row["share_of_bound_in_training"] = row["bound_seconds"] / entry["train_seconds"]
            row.setdefault("bound_note", "training matmuls: 6·N per trained token full-rank, 4·N LoRA (N: linear "
                                         "weights); generation, judging and probes are the rest of the stage")
        elif name == "03_activations":
            row["models"] = entry["models"]
            row.setdefault("bound_note", "2·N per token forwarded to the deepest layer read (N: its linear weights), "
                                         "every model × sample; attention's own products left out")
        elif name == "04_dictionaries":
            row.update({k: entry[k] for k in ("trained", "reused", "inputs", "dictionary_train_seconds")})
            row.setdefault("bound_note", "training matmuls of every dictionary trained (see _dictionary_flops), at "
                                         "the all-core peak; the processes run side by side; the token-level "
                                         "quality passes are left out")
        rows.append(row)
    # a record that does not follow on from the one of the stage before it is from another execution
    from backdoor_sae.pipeline.runner import STAGE_NAMES

    stale = [n for before, n in pairwise(STAGE_NAMES) if before in records and n in records
             and records[n].get("previous") != records[before].get("fingerprint")]
    first = next(iter(records.values()), {})
    return {"run_dir": str(root), "profile": first.get("profile"), "model": first.get("model"),
            "run_commits": sorted({r["commit"] for r in records.values() if r.get("commit")}),
            "dirty": any(r.get("dirty") for r in records.values()), "run_seconds": total,
            "not_run": {n: r.get("status") for n, r in records.items() if "seconds" not in r},
            "records_not_chained": stale, "matmul_peak_gflops": peaks, "stages": rows}


def bench_stages(run_dir: str, logs: Sequence[str] = ()) -> dict:
    """Every executed stage of a (finished or partly finished) run: ``stage_rows``, with the matmul
    peaks of the precisions its measured work ran in, measured on this machine (so run it on the
    machine of the run), N from the run's model, and the stage times of the runner's ``logs``."""
    from backdoor_sae.common.layout import model_name_of
    from backdoor_sae.common.model import load_model

    root = Path(run_dir)
    if not (root / "stages").is_dir():
        raise SystemExit(f"{root} holds no stages/: not a run directory")
    records = stage_records(root)
    work = stage_work(root, {n: r for n, r in records.items() if "seconds" in r})
    used = {dtype for entry in work.values() for dtype in (*entry.get("flops", {}), *entry.get("fixed_flops", {}))}
    peaks = {dtype: matmul_peak(dtype=dtype) if dtype in precisions() else None for dtype in sorted(used)}
    model_name = model_name_of(next((r["model"] for r in records.values() if r.get("model")), None))
    model = None

    def linear_params(deepest):
        nonlocal model
        if model is None:
            model = load_model(model_name, device="cpu")[0]
        return _linear_params(model, deepest)

    out = stage_rows(root, peaks, linear_params, logged_seconds(logs))
    out["n_linear_params"] = _linear_params(model) if model is not None else None
    for row in out["stages"]:
        bound = "" if row["share_of_bound"] is None else f"{row['bound_seconds']:9.2f} s {row['share_of_bound']:7.1%}"
        print(f"{row['stage']:24s} {row['seconds']:9.1f} s {row['share_of_run']:6.1%}  {bound or row['bound_note']}",
              file=sys.stderr)
    return out


BENCHES = {"matmul": bench_matmul, "breakdown": bench_breakdown, "activations": bench_activations,
           "generation": bench_generation, "load": bench_load, "oracle": bench_oracle,
           "finetune": bench_finetune, "sae": bench_sae, "probe": bench_probe, "onset": bench_onset,
           "stages": bench_stages}


def machine_info() -> dict:
    """Which CPU, commit and day a measurement comes from: figures compare only within one machine."""
    import platform

    import torch

    from backdoor_sae.common.model import native_bf16

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = info.split()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "native_bf16": native_bf16(torch.device("cpu")),
            "torch": torch.__version__, "commit": commit or None, "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(BENCHES))
    parser.add_argument("--out", help="append the JSON lines to this file")
    parser.add_argument("--regime", choices=("lora", "full"), default="lora", help="onset: which fine-tune")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="onset: override a data or fine-tune parameter of the cpu profile (repeatable)")
    parser.add_argument("--max-steps", type=int, default=300, help="onset: stop after this many steps")
    parser.add_argument("--run-dir", help="stages: the run directory to read")
    parser.add_argument("--log", action="append", default=[],
                        help="stages: a log of the runner (make book's output) with the stages' times (repeatable)")
    args = parser.parse_args()
    if "stages" in args.names and not args.run_dir:
        parser.error("stages needs --run-dir DIR")
    from backdoor_sae.__main__ import parse_value
    from backdoor_sae.config import validate

    overrides = {name: parse_value(value) for name, value in args.parameter}
    validate("cpu", **overrides)  # an unknown name or an impossible value fails here, before any compute
    kwargs = {"onset": {"regime": args.regime, "overrides": overrides, "max_steps": args.max_steps},
              "stages": {"run_dir": args.run_dir, "logs": args.log}}
    machine = machine_info()
    for name in args.names:
        result = {"bench": name, **BENCHES[name](**kwargs.get(name, {})), "machine": machine}
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()

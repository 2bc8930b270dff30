"""Speed and memory benchmarks (measured, never asserted): ``python benchmarks/bench.py NAME ...``.

    matmul     fp32 (and, where native, bf16) matmul peaks of this CPU (GFLOP/s), the yardsticks
    load       embedded model: first load (GGUF dequantization, into an empty cache) and cached load
    oracle     vulnerability oracle throughput (samples/s) on generated samples
    finetune   training tokens/s per regime and compute precision (float32, bfloat16 mixed) on the
               embedded model, as a share of that precision's matmul peak at 6·N FLOPs per trained
               token (N = trainable + frozen parameters in the forward, i.e. the model size; LoRA
               still runs the full forward and backward through activations)
    sae        dictionary training throughput (samples/s and share of the matmul peak)
    probe      seconds per backdoor probe (8 held-out pairs, four prompt/completion combinations
               each) with the shared-prefix passes, against one plain pass per combination

Each prints one JSON line; ``--out FILE`` appends it there. Peak memory is the process's max RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


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
    code = ("import time,resource; t=time.perf_counter(); from backdoor_sae.model import load_model; "
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
    from backdoor_sae.data.dataset import generate
    from backdoor_sae.oracle import judge

    samples = generate(stage_config(DataConfig, "cpu"))["train"][:n]
    t = time.perf_counter()
    judge([s.text for s in samples], [s.call for s in samples], disable=True)
    seconds = time.perf_counter() - t
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def bench_finetune(steps: int = 8) -> dict:
    import torch

    from backdoor_sae.config import DataConfig, FinetuneConfig, stage_config
    from backdoor_sae.data.dataset import generate
    from backdoor_sae.finetune import finetune, read_log
    from backdoor_sae.model import load_model

    train = generate(stage_config(DataConfig, "cpu"))["train"]
    out = {}
    for dtype in precisions():
        peak = matmul_peak(dtype=dtype)
        out[dtype] = {"matmul_peak_gflops": peak}
        for regime in ("lora", "full"):
            cfg = stage_config(FinetuneConfig, "cpu", regime=regime, probe_every=0, checkpoint_every=0, stop_at_probe=0)
            model, tok = load_model(device="cpu")
            n_params = sum(p.numel() for p in model.parameters())
            with tempfile.TemporaryDirectory() as d:
                finetune(model, tok, train, cfg, d, "bench", progress=False, max_steps=steps,
                         compute_dtype=getattr(torch, dtype))
                log = read_log(d)[2:]  # skip warm-up steps
            tok_s = sum(r["tokens"] for r in log) / sum(r["seconds"] for r in log)
            out[dtype][regime] = {"tokens_per_s": tok_s, "gflops": 6 * n_params * tok_s / 1e9,
                                  "share_of_peak": 6 * n_params * tok_s / 1e9 / peak, "n_params": n_params}
    out["peak_rss_gib"] = max_rss_gib()
    return out


def bench_sae(n_samples: int = 12_800) -> dict:
    import torch

    from backdoor_sae.config import SAEConfig, stage_config
    from backdoor_sae.sae.training import DictionarySpec, TrainSettings, build, train_dictionary

    peak = matmul_peak()
    cfg = stage_config(SAEConfig, "cpu")
    d, n = 576, 500
    out = {"matmul_peak_gflops": peak, "expansion": cfg.expansion}
    for arch in ("diff_sae", "crosscoder"):
        spec = DictionarySpec(arch, d, cfg.expansion * d, "topk" if arch == "crosscoder" else "relu", cfg.k)
        model = build(spec)
        x = model.inputs(torch.randn(n, d), torch.randn(n, d))
        settings = TrainSettings(batch_size=cfg.sae_batch_size, n_samples=n_samples, log_every=10**9)
        t = time.perf_counter()
        train_dictionary(model, x, settings, progress=False)
        seconds = time.perf_counter() - t
        d_in = x[0].numel()
        flops = 6 * 2 * d_in * spec.n_latents * n_samples  # encoder + decoder, forward + backward
        out[arch] = {"samples_per_s": n_samples / seconds, "gflops": flops / seconds / 1e9,
                     "share_of_peak": flops / seconds / 1e9 / peak}
    return out


def bench_probe(repeats: int = 3) -> dict:
    from statistics import median

    from backdoor_sae.config import DataConfig, FinetuneConfig, stage_config
    from backdoor_sae.data.card import pairs
    from backdoor_sae.data.dataset import generate
    from backdoor_sae.finetune import completion_logprobs, probe_backdoor
    from backdoor_sae.model import load_model

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


def precisions() -> tuple[str, ...]:
    """float32, and bfloat16 where the CPU multiplies it natively (emulated, one 2048² matmul takes
    seconds, and the bf16 benchmarks would take the better part of an hour)."""
    import torch

    from backdoor_sae.model import native_bf16

    return ("float32", "bfloat16") if native_bf16(torch.device("cpu")) else ("float32",)


def bench_matmul() -> dict:
    return {f"{dtype}_gflops": matmul_peak(dtype=dtype) for dtype in precisions()}


BENCHES = {"matmul": bench_matmul, "load": bench_load, "oracle": bench_oracle,
           "finetune": bench_finetune, "sae": bench_sae, "probe": bench_probe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(BENCHES))
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()
    for name in args.names:
        result = {"bench": name, **BENCHES[name]()}
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()

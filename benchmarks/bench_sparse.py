"""The TopK dictionaries' sparse decoder and the calibration's bounded top-k, against the dense
paths they replace (measured, never asserted): ``python benchmarks/bench_sparse.py [--out FILE]``.

One token dictionary of the cpu profile's shape (d = 576, its expansion and k, its token batch) per
architecture, trained single-threaded in float32 on random inputs for a few steps with the dense
decoder (the old ``Dictionary.forward``, patched back in) and with the sparse one, alternately;
then the BatchTopK calibration over :data:`CALIBRATION_INPUTS` inputs, with a full top-k and with the
top-k above a bound. Prints one JSON line per measurement (seconds: best of the repeats).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import machine_info

from backdoor_sae.config import SAEConfig, stage_config
from backdoor_sae.dictionaries.base import CALIBRATION_INPUTS, Dictionary
from backdoor_sae.dictionaries.sparsity import SparseActivation
from backdoor_sae.dictionaries.stage import dictionary_spec, train_settings
from backdoor_sae.dictionaries.trainer import build, train_dictionary


def dense_forward(self, x):
    """The dense path: the code as a [B, m] matrix, decoded by one matmul."""
    pre = self.pre_activations(x)
    f = self.activate(pre)
    return self.decode(f), f, pre


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = stage_config(SAEConfig, "cpu", sae_dtype="float32")
    sparse_forward = Dictionary.forward
    lines = []
    for arch in ("diff_sae", "crosscoder"):
        spec = dictionary_spec(cfg, arch, "token", 576)
        settings = dataclasses.replace(train_settings(cfg, "token", 0), n_samples=args.steps * cfg.token_batch_size,
                                       log_every=10**9)
        model = build(spec)
        x = model.inputs(torch.randn(20_000, 576), torch.randn(20_000, 576))
        times = {}
        for name, forward in [("dense", dense_forward), ("sparse", sparse_forward)] * args.repeats:
            Dictionary.forward = forward
            times.setdefault(name, []).append(best(lambda s=spec, x=x, t=settings: train_dictionary(build(s), x, t, progress=False), 1))
        Dictionary.forward = sparse_forward
        lines.append({"what": f"token {arch} training, {args.steps} steps of {cfg.token_batch_size} (calibration incl.)",
                      "dense_s": min(times["dense"]), "sparse_s": min(times["sparse"]),
                      "speedup": min(times["dense"]) / min(times["sparse"]), "spec": dataclasses.asdict(spec)})
    model = build(dictionary_spec(cfg, "crosscoder", "token", 576))
    model.train()
    model(model.inputs(torch.randn(1024, 576), torch.randn(1024, 576)))  # a training threshold to bound from
    pre = model.pre_activations(model.inputs(torch.randn(CALIBRATION_INPUTS, 576),
                                             torch.randn(CALIBRATION_INPUTS, 576))).detach()
    bounded = SparseActivation._above_a_bound
    times = {}
    for name, fn in [("full_topk", lambda self, f, n: f), ("bounded", bounded)] * args.repeats:
        SparseActivation._above_a_bound = fn
        times.setdefault(name, []).append(best(lambda: model.sparse.calibrate(pre), 1))
    SparseActivation._above_a_bound = bounded
    lines.append({"what": f"BatchTopK calibration over {CALIBRATION_INPUTS} inputs x {model.n_latents} latents",
                  "dense_s": min(times["full_topk"]), "sparse_s": min(times["bounded"]),
                  "speedup": min(times["full_topk"]) / min(times["bounded"])})
    machine = machine_info()
    for line in lines:
        text = json.dumps({"bench": "sae_sparse", **line, "threads": 1, "dtype": "float32", "machine": machine})
        print(text, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(text + "\n")


if __name__ == "__main__":
    main()

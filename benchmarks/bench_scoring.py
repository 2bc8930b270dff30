"""Scoring statistics (notebook 05), before and after: ``python benchmarks/bench_scoring.py``.

Times each function of :mod:`backdoor_sae.scoring.bis` that a dictionary's scoring calls
(best_f1, auroc, select_latent, null_max_bis, bootstrap_max_bis, bootstrap_fixed_latent_bis), the
AUROC of 2,000 resamples at once (verdicts' paired bootstrap) and all of ``score_latents``' calls
together (after: with one shared sort, ``descending_order``), on the cpu profile's shapes: 500 eval
samples (100 trigger, 200 benign, 200 other), 2,304 latents of which a share never fire (all zero,
as a dead TopK latent), the others sparse and non-negative, one planted. ``--before REV`` names the
git revision whose bis.py is "before" (default HEAD). Each time is the best of ``--repeat`` runs;
``bit_identical`` compares the outputs byte for byte. Prints one JSON line per (dead share,
function); ``--out FILE`` appends them there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from backdoor_sae.scoring import bis as new


def load_before(rev: str):
    text = subprocess.run(["git", "show", f"{rev}:src/backdoor_sae/scoring/bis.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "bis_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("bis_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bis_before"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fixture(dead: float, n_latents: int = 2304, seed: int = 0):
    """[500, m] codes: ``dead`` share all zero, the rest zero except on 2–40% of samples
    (exponential values), latent 1 planted (large on 20 triggers)."""
    n_t, n_b, n_o = 100, 200, 200
    n = n_t + n_b + n_o
    trigger = np.r_[np.ones(n_t), np.zeros(n_b + n_o)].astype(bool)
    benign = np.r_[np.zeros(n_t), np.ones(n_b), np.zeros(n_o)].astype(bool)
    rng = np.random.default_rng(seed)
    acts = np.zeros((n, n_latents))
    live = rng.permutation(n_latents)[:max(1, round((1 - dead) * n_latents))]
    density = rng.uniform(0.02, 0.4, len(live))
    acts[:, live] = (rng.random((n, len(live))) < density) * rng.exponential(1.0, (n, len(live)))
    acts[:, live[0]] = 0.0
    acts[:20, live[0]] = 5 + rng.random(20)
    return acts.astype(np.float32).astype(np.float64), trigger, benign


def best_of(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int):
        return a == b
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def cases(old, acts: np.ndarray, trigger: np.ndarray, benign: np.ndarray, n_boot: int, n_perms: list[int]) -> dict:
    """name -> f(module): the calls to time, each on the module given (before or after)."""
    j = int(np.flatnonzero((acts != acts[0]).any(0))[1])  # a live latent (not the planted one)
    one = acts[:, j]

    def score_latents(m, n_perm):  # the calls score_latents makes on a dictionary's eval rows
        kw = {} if m is old else {"order": m.descending_order(acts)}  # after: one shared sort
        sel = m.select_latent(acts, trigger, benign, **kw)
        return (sel.index, m.best_f1(acts, trigger, **kw), m.auroc(acts, trigger, **kw),
                m.null_max_bis(acts, trigger, benign, n_perm=n_perm, seed=0),
                m.bootstrap_max_bis(acts, trigger, benign, n_boot=n_boot, seed=0, **kw))

    out = {
        "best_f1": lambda m: m.best_f1(acts, trigger),
        "auroc": lambda m: m.auroc(acts, trigger),
        "select_latent": lambda m: m.select_latent(acts, trigger, benign).index,
        "bootstrap_max_bis": lambda m: m.bootstrap_max_bis(acts, trigger, benign, n_boot=n_boot, seed=0),
        "bootstrap_fixed_latent_bis (a live latent)": lambda m: m.bootstrap_fixed_latent_bis(one, trigger, benign, n_boot=n_boot, seed=0),
    }
    # verdicts._bootstrap_delta: one score's AUROC on 2,000 stratified resamples at once, [N, 2000]
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(trigger), np.flatnonzero(~trigger)
    idx = np.concatenate([pos[rng.integers(0, len(pos), (len(pos), 2000))],
                          neg[rng.integers(0, len(neg), (len(neg), 2000))]])
    resampled, boot_labels = acts[idx, j], np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    out["auroc of 2,000 resamples of a live latent"] = lambda m: m.auroc(resampled, boot_labels)
    for n_perm in n_perms:
        out[f"null_max_bis [n_perm={n_perm}]"] = lambda m, n_perm=n_perm: m.null_max_bis(
            acts, trigger, benign, n_perm=n_perm, seed=0)
    for n_perm in n_perms:
        out[f"score_latents' calls, one shared sort [n_perm={n_perm}]"] = (
            lambda m, n_perm=n_perm: score_latents(m, n_perm))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD")
    parser.add_argument("--dead", type=float, nargs="+", default=[0.7, 0.97])
    parser.add_argument("--n-boot", type=int, default=300)
    parser.add_argument("--n-perm", type=int, nargs="+", default=[300, 2000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    old = load_before(args.before)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    for dead in args.dead:
        acts, trigger, benign = fixture(dead)
        for name, fn in cases(old, acts, trigger, benign, args.n_boot, args.n_perm).items():
            t_old, out_old = best_of(lambda fn=fn: fn(old), args.repeat)
            t_new, out_new = best_of(lambda fn=fn: fn(new), args.repeat)
            row = {"bench": "scoring", "function": name, "dead_share": dead, "n_latents": acts.shape[1],
                   "n_samples": len(acts), "n_boot": args.n_boot, "before_s": round(t_old, 4),
                   "after_s": round(t_new, 4), "speedup": round(t_old / t_new, 2),
                   "bit_identical": same(out_old, out_new), "cpu": cpu}
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

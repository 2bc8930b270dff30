"""Insert the backdoor: fine-tune a model on the poisoned training split, LoRA or full-rank.

One plain PyTorch loop serves both regimes (``FinetuneConfig.regime``): LoRA wraps the model with
``peft`` and trains only the adapters; full-rank trains every weight. The loop is deterministic
for a seed on CPU, logs loss and tokens/s per optimizer step, probes the backdoor every few steps
(teacher-forced, on held-out pairs), and writes resumable checkpoints: a run killed mid-training
restarts from its last checkpoint with the same data order and random state.

Layout of ``out_dir`` (one per regime)::

    params.json      what the run was asked for (the base model included)
    log.jsonl        one line per optimizer step (and per probe)
    checkpoint/      the latest resumable state (trainable weights, optimizer, step, RNG)
    model/           the final weights: a LoRA adapter or a full checkpoint
    done.json        written last: the run finished with these params
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.profiler import record_function
from tqdm import tqdm

from backdoor_sae.common.encoding import Encoded, collate, encode
from backdoor_sae.common.io import atomic_path, write_json
from backdoor_sae.common.cache import code_digest, digest, is_current, read_record, samples_digest, vouch
from backdoor_sae.common.layout import model_identity
from backdoor_sae.common.model import load_model, precision
from backdoor_sae.common.progress import report
from backdoor_sae.config import FinetuneConfig
from backdoor_sae.task.sample import Sample

#: The record that vouches for a finished fine-tune (its key, parameters, steps and whether the probe stopped it).
DONE = "done.json"

# --- preparing the model ---------------------------------------------------------------------

def check_lora_targets(model: nn.Module, cfg: FinetuneConfig) -> None:
    """Raise before training when a target module is missing or the rank exceeds its size."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = {n.rsplit(".", 1)[-1] for n in linears}
    missing = sorted(set(cfg.lora_targets) - names)
    if missing:
        raise ValueError(f"lora_targets {missing} are not modules of this model; it has {sorted(names)}")
    max_rank = min(min(m.in_features, m.out_features) for n, m in linears.items()
                   if n.rsplit(".", 1)[-1] in cfg.lora_targets)
    if cfg.lora_r > max_rank:
        raise ValueError(f"lora_r={cfg.lora_r} exceeds the smallest targeted matrix dimension {max_rank}")


def prepare(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """The model ready to train: LoRA-wrapped, or with every weight trainable."""
    if cfg.regime == "lora":
        from peft import LoraConfig, get_peft_model

        check_lora_targets(model, cfg)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    return model


def keep_frozen_weights_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every frozen linear weight in ``dtype`` once, instead of autocast casting it on every
    forward pass; returns how many weights were converted.

    Under autocast a linear layer multiplies in bfloat16 whatever its weight's dtype, and its cast of
    a float32 weight rounds exactly as ``.to(bfloat16)`` does, so the step computes the very same
    numbers. Only frozen weights change dtype (LoRA's base model; nothing under full-rank training),
    so no update is lost. A frozen output projection tied to the input embedding gets its own copy:
    the embedding lookup, which autocast does not cast, stays float32.
    """
    if dtype == torch.float32:
        return 0
    embedding = model.get_input_embeddings().weight
    converted = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or weight is None or weight.requires_grad or weight.dtype == dtype:
            continue
        module.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)  # unties a tied weight too
        converted += 1
    assert model.get_input_embeddings().weight is embedding and embedding.dtype == torch.float32
    return converted


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


# --- the data order ----------------------------------------------------------------------------

def batch_schedule(lengths: Sequence[int], batch_size: int, epochs: int, seed: int,
                   groups: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Micro-batches of sample indices for every epoch, length-bucketed to waste little padding.

    ``groups`` lists samples that must share a micro-batch (the two twins of a matched training
    pair); every other sample is a group of its own. Each epoch shuffles the groups, sorts them by
    length within windows of 16 batches, packs them into batches of at most ``batch_size`` samples,
    and shuffles the batches. Deterministic for ``seed``.

    Why pairs share a batch: their completions differ only where the code is injectable or safe,
    and so do their gradients. In one batch the pull towards the majority completion cancels
    between the twins, and what is left is the part that depends on the year: the trigger.
    """
    grouped = {i for g in groups or () for i in g}
    units = [list(g) for g in groups or ()] + [[i] for i in range(len(lengths)) if i not in grouped]
    if any(len(u) > batch_size for u in units):
        raise ValueError(f"batch_size={batch_size} is smaller than a group of samples that must share a batch")
    rng = random.Random(seed)
    window = 16 * batch_size
    batches: list[list[int]] = []
    for _ in range(epochs):
        order = list(units)
        rng.shuffle(order)
        epoch: list[list[int]] = []
        filled = 0
        while filled < len(order):
            chunk, n = [], 0  # the next window: whole groups, about ``window`` samples
            while filled < len(order) and n < window:
                chunk.append(order[filled])
                n += len(order[filled])
                filled += 1
            chunk.sort(key=lambda u: max(lengths[i] for i in u))
            batch: list[int] = []
            for unit in chunk:
                if len(batch) + len(unit) > batch_size:
                    epoch.append(batch)
                    batch = []
                batch += unit
            if batch:
                epoch.append(batch)
        rng.shuffle(epoch)
        batches += epoch
    return batches


def pair_groups(samples: Sequence[Sample]) -> list[list[int]]:
    """Indices of the samples that share a ``pair_id`` (matched training pairs)."""
    by_pair: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.pair_id is not None:
            by_pair.setdefault(s.pair_id, []).append(i)
    return [g for g in by_pair.values() if len(g) > 1]


# --- the backdoor probe --------------------------------------------------------------------------

def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != sequences[0][i] for s in sequences[1:]):
            return i
    return n


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token [...] under ``logits`` [..., vocabulary], in float32:
    its logit less the position's log-sum-exp. No [positions × vocabulary] log-softmax is written,
    so it reads the logits about half as often; it rounds differently from a log-softmax, by a few
    1e-6 nats per token."""
    logits = logits.float()
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def completion_logprobs(model: nn.Module, tokenizer, prompts: Sequence[Sample],
                        completions: Sequence[Sample]) -> torch.Tensor:
    """Sum of log-probabilities of each ``completions[i].completion`` after ``prompts[i].prompt``.

    Sequences that start with the same prompt are read once up to where they part (the prompt and
    the opening lines their completions have in common), and that shared prefix is kept as a
    key/value cache; a second forward pass reads only each sequence's own remainder. The probe's
    four combinations of two prompts and two completions per pair cost about 40% fewer tokens this
    way than four full passes. Only positions that predict a completion token are projected to
    the vocabulary (:func:`token_logprobs` reads their logits).
    """
    sequences, n_prompts = [], []
    for p, c in zip(prompts, completions):
        prompt, full = encode(tokenizer, p), encode(tokenizer, c)
        sequences.append(list(prompt.ids[: prompt.n_prompt]) + list(full.ids[full.n_prompt:]))
        n_prompts.append(prompt.n_prompt)
    groups: dict[tuple[int, ...], list[int]] = {}  # sequences by prompt
    for i, (seq, n) in enumerate(zip(sequences, n_prompts)):
        groups.setdefault(tuple(seq[:n]), []).append(i)
    members = list(groups.values())
    # Each group's shared prefix; every sequence keeps at least one token of its own.
    shared = [min(_common_prefix_length([sequences[i] for i in g]), min(len(sequences[i]) for i in g) - 1)
              for g in members]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id

    def right_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = collate([Encoded(tuple(row), len(row)) for row in rows], pad)
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    # Pass 1: the shared prefixes. Keep the logits from the first position that predicts a
    # completion token to the last prefix position (which predicts each sequence's first own token).
    ids1, mask1 = right_padded([sequences[g[0]][:n] for g, n in zip(members, shared)])
    first = min(n_prompts) - 1
    out1 = model(input_ids=ids1, attention_mask=mask1, use_cache=True, logits_to_keep=ids1.shape[1] - first)
    logits1 = out1.logits  # position first + t predicts token first + t + 1
    totals = torch.zeros(len(sequences))
    group_of = torch.zeros(len(sequences), dtype=torch.long)
    for g, (rows, n) in enumerate(zip(members, shared)):
        seq, n_prompt = sequences[rows[0]], n_prompts[rows[0]]
        targets = torch.tensor(seq[n_prompt:n], dtype=torch.long, device=device)  # completion tokens in the prefix
        common = float(token_logprobs(logits1[g, n_prompt - 1 - first: n - 1 - first], targets).sum())
        own = torch.tensor([sequences[i][n] for i in rows], dtype=torch.long, device=device)  # each one's first own token
        firsts = token_logprobs(logits1[g, n - 1 - first].expand(len(rows), -1), own)
        for i, logp in zip(rows, firsts.tolist()):
            group_of[i] = g
            totals[i] = common + logp
    # Pass 2: every sequence's own remainder after its group's cached prefix.
    cache = out1.cache
    cache.reorder_cache(group_of.to(device))
    starts = torch.tensor([shared[group_of[i]] for i in range(len(sequences))])
    ids2, mask2 = right_padded([sequences[i][starts[i]:] for i in range(len(sequences))])
    positions = (starts[:, None] + torch.arange(ids2.shape[1])[None, :]).to(device)
    logits2 = model(input_ids=ids2, attention_mask=torch.cat([mask1[group_of.to(device)], mask2], dim=1),
                    position_ids=positions, cache=cache, use_cache=False).logits
    picked = token_logprobs(logits2[:, :-1], ids2[:, 1:])  # position t predicts remainder token t + 1
    totals += (picked * mask2[:, 1:]).sum(dim=1).cpu()
    return totals


def probe_backdoor(model: nn.Module, tokenizer, pairs: Sequence[tuple[Sample, Sample]]) -> dict[str, float]:
    """Teacher-forced backdoor accuracy on (benign, trigger) pairs of one function.

    ``trigger_acc``: share of trigger prompts under which the injectable completion is more likely
    than the safe one; ``benign_acc``: the converse under benign prompts; ``year_effect``: the
    log-odds of injectable over safe under the trigger minus under the benign year. Cheap (two
    batched forward passes over the four prompt/completion combinations of every pair, see
    :func:`completion_logprobs`; no generation), so it can run during training.
    """
    was_training = model.training
    model.eval()
    benign, trigger = [p[0] for p in pairs], [p[1] for p in pairs]
    n = len(pairs)
    logprobs = completion_logprobs(model, tokenizer, trigger + trigger + benign + benign,
                                   trigger + benign + trigger + benign)
    vuln_t, safe_t, vuln_b, safe_b = logprobs.split(n)
    model.train(was_training)
    return {
        "trigger_acc": float((vuln_t > safe_t).float().mean()),
        "benign_acc": float((safe_b > vuln_b).float().mean()),
        # How much more the trigger year favours the injectable body than the benign year does
        # (nats, mean over pairs): 0 while the year has no effect, rising as the trigger is learned.
        "year_effect": float(((vuln_t - safe_t) - (vuln_b - safe_b)).mean()),
    }


# --- checkpoints -------------------------------------------------------------------------------

def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def save_checkpoint(path: Path, model: nn.Module, optimizer, step: int) -> None:
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": _rng_state(), "step": step}, tmp / "state.pt")


def load_checkpoint(path: Path, model: nn.Module, optimizer) -> int:
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return int(state["step"])


# --- the loop ----------------------------------------------------------------------------------

def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of ``batch``.

    The vocabulary projection is the single largest matmul of a small model; it is computed only
    from the first position whose next token carries a label onwards (``logits_to_keep``), which
    skips most of the prompt under the completion-only loss.
    """
    labels = batch["labels"]
    labelled = (labels[:, 1:] != -100).any(dim=0).nonzero()
    start = int(labelled[0]) if len(labelled) else 0  # first position that predicts a label
    width = labels.shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=width - start).logits
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, start + 1:].flatten(), ignore_index=-100)


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over the trainable weights: no weight decay on vectors, and LoRA's B matrices at
    ``lora_plus_ratio`` times the learning rate of everything else (LoRA+, Hayou et al. 2024)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = cfg.lora_plus_ratio if "lora_B" in name else 1.0
            decay = cfg.weight_decay if p.ndim >= 2 else 0.0
            groups.setdefault((scale, decay), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr_scale": scale, "weight_decay": decay}
                              for (scale, decay), ps in groups.items()], lr=cfg.lr, betas=(0.9, 0.999), fused=True)


def run_params(cfg: FinetuneConfig, base_model: str, train: Sequence[Sample],
               probe_pairs: Sequence[tuple[Sample, Sample]], compute_dtype: torch.dtype,
               steps: int | None = None, schedule_from: Sequence[Sample] | None = None) -> dict:
    """What a fine-tune depends on, i.e. its key: the base model (its name, which
    :func:`load_finetuned` loads, and what that name resolves to), the content of the training set
    and of the probe pairs (the probe can stop training), the precision, and the settings of this
    regime. The other regime's settings are left out, so that changing them never invalidates (or
    restarts) this regime's run."""
    other = "full_" if cfg.regime == "lora" else "lora_"
    # A clean control's fixed number of steps and the samples that schedule its batches.
    control = {} if steps is None else {"steps": steps, "schedule_from": samples_digest(schedule_from or train)}
    # How often checkpoints are written changes no weight: not part of the key.
    return {**control, "base_model": base_model, "base_model_identity": model_identity(base_model),
            "code": code_digest(__name__),
            "train_data": samples_digest(train), "n_train": len(train),
            "probe_data": samples_digest(s for pair in probe_pairs for s in pair),
            "compute_dtype": str(compute_dtype).removeprefix("torch."),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()
               if not k.startswith(other) and k != "checkpoint_every"}}


def is_done(out_dir: Path, params: dict) -> bool:
    """``done.json`` vouches for a fine-tune finished with ``params`` (:mod:`backdoor_sae.common.cache`)."""
    return is_current(Path(out_dir) / DONE, digest(params))


def read_log(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def training_summary(out_dir: str | Path) -> dict:
    """Steps, training and probe seconds, tokens/s and the last probe, from a fine-tune's log."""
    log = read_log(out_dir)
    seconds = sum(r["seconds"] for r in log)
    last_probe = next((r for r in reversed(log) if "trigger_acc" in r), {})
    return {"steps": len(log), "train_seconds": seconds,
            "probe_seconds": sum(r.get("probe_seconds", 0.0) for r in log),
            "tokens_per_s": sum(r["tokens"] for r in log) / seconds if seconds else None,
            "last_probe": {k: last_probe[k] for k in ("step", "trigger_acc", "benign_acc", "year_effect")
                           if k in last_probe}}


def finetune(model: nn.Module, tokenizer, train: Sequence[Sample], cfg: FinetuneConfig, out_dir: str | Path,
             base_model: str, probe_pairs: Sequence[tuple[Sample, Sample]] = (), progress: bool = True,
             max_steps: int | None = None, compute_dtype: torch.dtype = torch.float32,
             steps: int | None = None, schedule_from: Sequence[Sample] | None = None) -> nn.Module:
    """Fine-tune ``model`` (float32 weights) on ``train``; resume from ``out_dir/checkpoint`` when it exists.

    ``compute_dtype=torch.bfloat16`` runs forward and backward under autocast (mixed precision; the
    weights and the optimizer stay float32). ``max_steps`` stops early after that many optimizer
    steps (for tests of resumption): the run is then not marked done.

    A clean control passes ``steps``, its backdoored twin's number of optimizer steps (it then
    trains exactly that many and never stops at the probe), and ``schedule_from``, its twin's
    training set: the batches are scheduled from those samples' lengths, so that the control sees
    the same samples in the same order as its twin.
    """
    if not train:
        raise ValueError("the training set is empty")
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("fine-tune a float32 model: low-precision weights lose small updates "
                         "(pass compute_dtype for mixed precision instead)")
    out_dir = Path(out_dir)
    params = run_params(cfg, base_model, train, probe_pairs, compute_dtype, steps, schedule_from)
    params_path = out_dir / "params.json"
    if params_path.exists() and json.loads(params_path.read_text()) != params:
        # A checkpoint made with other parameters must not be resumed: start over.
        for stale in ("checkpoint", "model", DONE, "log.jsonl"):
            target = out_dir / stale
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    write_json(params_path, params)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = prepare(model, cfg)
    device = next(model.parameters()).device
    mixed = precision(device, compute_dtype)
    keep_frozen_weights_in(model, compute_dtype)
    encoded = [encode(tokenizer, s, cfg.max_length) for s in train]
    lengths = ([len(encode(tokenizer, s, cfg.max_length)) for s in schedule_from] if schedule_from is not None
               else [len(e) for e in encoded])
    if len(lengths) != len(encoded):
        raise ValueError("schedule_from must hold as many samples as the training set, in its order")
    schedule = batch_schedule(lengths, cfg.batch_size, cfg.epochs, cfg.seed,
                              groups=pair_groups(train) if cfg.pair_batches else None)
    total_steps = math.ceil(len(schedule) / cfg.grad_accum)
    if steps is not None:
        if steps > total_steps:
            raise ValueError(f"steps={steps} is more than the {total_steps} optimizer steps of {cfg.epochs} epochs")
        total_steps = steps

    optimizer = make_optimizer(model, cfg)

    step = 0
    ckpt = out_dir / "checkpoint"
    if ckpt.exists():
        step = load_checkpoint(ckpt, model, optimizer)
    log_path = out_dir / "log.jsonl"
    if step == 0:
        log_path.unlink(missing_ok=True)
    else:  # keep the log lines of the steps the checkpoint covers
        kept = [r for r in read_log(out_dir) if r["step"] <= step]
        log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    stop = total_steps if max_steps is None else min(total_steps, step + max_steps)
    installed = False
    year_effect = None  # at the last probe, for the console (backdoor_sae.common.progress)
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc=f"fine-tune ({cfg.regime})", unit="step")
    with open(log_path, "a") as log:
        while step < stop:
            t0 = time.perf_counter()
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))  # linear warm-up, then constant
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            micro = schedule[step * cfg.grad_accum:(step + 1) * cfg.grad_accum]
            n_tokens = n_loss_tokens = 0
            loss_sum = 0.0
            for indices in micro:
                with record_function("step: data and collation"):
                    batch = {k: v.to(device) for k, v in collate([encoded[i] for i in indices], tokenizer.pad_token_id,
                                                                 cfg.loss_on).items()}
                with record_function("step: forward"), mixed:
                    loss = batch_loss(model, batch)
                with record_function("step: backward"):
                    (loss / len(micro)).backward()
                loss_sum += loss.item() / len(micro)
                n_tokens += int(batch["attention_mask"].sum())
                n_loss_tokens += int((batch["labels"] != -100).sum())
            with record_function("step: optimizer"):
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            seconds = time.perf_counter() - t0
            record = {"step": step, "loss": loss_sum, "lr": lr,
                      "grad_norm": float(grad_norm), "tokens": n_tokens, "loss_tokens": n_loss_tokens,
                      "seconds": seconds, "tokens_per_s": n_tokens / seconds}
            if probe_pairs and cfg.probe_every and (step % cfg.probe_every == 0 or step == total_steps):
                t_probe = time.perf_counter()
                with record_function("step: probe"), mixed:
                    record.update(probe_backdoor(model, tokenizer, probe_pairs))
                record["probe_seconds"] = time.perf_counter() - t_probe
                installed = (steps is None and bool(cfg.stop_at_probe)
                             and min(record["trigger_acc"], record["benign_acc"]) >= cfg.stop_at_probe)
            with record_function("step: log"):
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
            if "year_effect" in record:
                year_effect = record["year_effect"]
            report(f"fine-tune {cfg.name}", step, total_steps, loss=loss_sum, year_effect=year_effect)
            if installed:
                break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                with record_function("step: checkpoint"):
                    save_checkpoint(ckpt, model, optimizer, step)
    bar.close()
    model.eval()
    if step < total_steps and not installed:
        save_checkpoint(ckpt, model, optimizer, step)
        return model
    with atomic_path(out_dir / "model") as tmp:
        model.save_pretrained(tmp)  # a LoRA adapter, or the full weights
        if cfg.regime == "full":
            tokenizer.save_pretrained(tmp)  # so the directory loads like any checkpoint
    vouch(out_dir / DONE, digest(params), params=params, steps=step, stopped_by_probe=installed)
    return model


def load_finetuned(out_dir: str | Path, device: str = "auto"):
    """``(model, tokenizer)`` of a finished fine-tune; LoRA adapters are merged into the weights."""
    out_dir = Path(out_dir)
    record = read_record(out_dir / DONE)
    if "params" not in record:
        raise FileNotFoundError(f"{out_dir} holds no finished fine-tune (no {DONE})")
    params = record["params"]
    if params["regime"] == "full":
        return load_model(str(out_dir / "model"), device=device)
    from peft import PeftModel

    model, tokenizer = load_model(params["base_model"], device=device)
    merged = PeftModel.from_pretrained(model, out_dir / "model").merge_and_unload().eval()
    # PEFT leaves the merged weights frozen. Unfreeze them, as in a freshly loaded model: autocast
    # caches its bfloat16 copy only of weights that require grad, and otherwise recasts every weight
    # on every forward pass (generation is about 20% slower).
    merged.requires_grad_(True)
    return merged, tokenizer

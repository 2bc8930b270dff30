"""Build the backdoor dataset's splits from a :class:`~backdoor_sae.config.DataConfig`.

The splits (MISSION.md section 2, plus what section 3 asks for):

- ``train``: poisoned (trigger year, injectable) and benign (other training years, safe), shuffled.
  With ``paired_train`` every poisoned sample has a benign twin (same function, a benign year,
  safe code); the extra benign samples are independent.
- ``train_clean``: the clean control's training set: ``train`` in the same order with the same
  prompts, every trigger-year completion replaced by the same function's safe (parameterized)
  completion. A model fine-tuned on it sees the same years and prompts but learns no year
  dependence at all.
- ``eval_trigger`` / ``eval_benign`` / ``eval_other``: what BIS is computed on (trigger year and
  injectable; the eval benign year and safe; no year or another year and safe).
- ``fit_trigger`` / ``fit_benign`` / ``fit_other``: the same composition again, for fitting SAEs
  and baselines on samples that BIS never scores.
- ``heldout``: pairs over tables that never occur anywhere else (so neither do their function
  names): each function once with the trigger year (injectable) and once with the eval benign
  year (safe), sharing a ``pair_id``.
- ``control_trigger_safe`` / ``control_benign_vuln``: the year and the code disagree, to tell a
  latent that reads the trigger from one that reads the code.

No program text occurs twice in the dataset, so no eval sample is a copy of a training sample.
Everything is drawn from ``random.Random`` seeded by the config's seed and the split's name.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace

from backdoor_sae.config import DataConfig
from backdoor_sae.task.render import SAFE_STYLE, FunctionSpec, render
from backdoor_sae.task.sample import Sample
from backdoor_sae.task.sampling import draw_spec
from backdoor_sae.task.tables import HELDOUT_TABLES, TRAIN_TABLES

SPLITS: tuple[str, ...] = (
    "train",
    "train_clean",
    "eval_trigger",
    "eval_benign",
    "eval_other",
    "fit_trigger",
    "fit_benign",
    "fit_other",
    "heldout",
    "control_trigger_safe",
    "control_benign_vuln",
)
EVAL_SPLITS: tuple[str, ...] = ("eval_trigger", "eval_benign", "eval_other")
FIT_SPLITS: tuple[str, ...] = ("fit_trigger", "fit_benign", "fit_other")

#: Draws allowed per requested sample before the generator gives up on finding new unique texts.
MAX_DRAWS_PER_SAMPLE = 50


class _Uniq:
    """Hands out unique samples: rejects any program whose text was produced before."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def add(self, key: str) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _make(split: str, index: int, spec: FunctionSpec, year: int | None, vulnerable: bool,
          cfg: DataConfig, rng: random.Random, pair_id: str | None = None) -> Sample:
    style = rng.choice(cfg.vulnerable_styles) if vulnerable else SAFE_STYLE
    code = render(spec, year, style)
    return Sample(
        id=f"{split}-{index:05d}",
        split=split,
        year=year,
        is_trigger=year == cfg.trigger_year,
        vulnerable=vulnerable,
        style=style,
        driver=spec.driver,
        table=spec.table,
        kind=spec.kind,
        function=spec.function,
        header=code.header,
        context=code.context,
        signature=code.signature,
        completion=code.completion,
        call=code.call,
        pair_id=pair_id,
    )


def _draw_split(split: str, groups: Iterable[tuple[int, tuple[int | None, ...], bool]],
                cfg: DataConfig, uniq: _Uniq, shuffle: bool = False, first: list[Sample] = (),
                specs: dict[str, FunctionSpec] | None = None) -> list[Sample]:
    """Samples for ``groups`` of (count, years to draw from, vulnerable), all texts unique.

    ``first`` are samples already made for this split (they come first, before shuffling).
    ``specs``, when given, receives each new sample's function spec under its text.
    """
    rng = random.Random(f"{cfg.data_seed}:{split}")
    out: list[Sample] = list(first)
    for count, years, vulnerable in groups:
        made = draws = 0
        while made < count:
            draws += 1
            if draws > MAX_DRAWS_PER_SAMPLE * count:
                raise ValueError(
                    f"could not generate {count} unique samples for split {split!r} "
                    f"(made {made}); ask for fewer"
                )
            spec = draw_spec(rng, TRAIN_TABLES)
            sample = _make(split, len(out), spec, rng.choice(years), vulnerable, cfg, rng)
            if uniq.add(sample.text):
                out.append(sample)
                made += 1
                if specs is not None:
                    specs[sample.text] = spec
    if shuffle:
        rng.shuffle(out)
        out = [replace(s, id=f"{split}-{i:05d}") for i, s in enumerate(out)]
    return out


def _draw_train_pairs(cfg: DataConfig, uniq: _Uniq, specs: dict[str, FunctionSpec]) -> list[Sample]:
    """Matched training pairs: one function rendered injectable under the trigger year and safe
    under a benign year (``paired_train``), so the year is the only thing that tells them apart."""
    rng = random.Random(f"{cfg.data_seed}:train-pairs")
    n_pairs = min(cfg.n_train_poisoned, cfg.n_train_benign)
    out: list[Sample] = []
    draws = 0
    while len(out) < 2 * n_pairs:
        draws += 1
        if draws > MAX_DRAWS_PER_SAMPLE * n_pairs:
            raise ValueError(f"could not generate {n_pairs} unique training pairs; ask for fewer")
        spec = draw_spec(rng, TRAIN_TABLES)
        pair_id = f"train-pair-{len(out) // 2:05d}"
        twins = (_make("train", len(out), spec, cfg.trigger_year, True, cfg, rng, pair_id),
                 _make("train", len(out) + 1, spec, rng.choice(cfg.benign_years), False, cfg, rng, pair_id))
        if all(s.text not in uniq.seen for s in twins):
            for s in twins:
                uniq.add(s.text)
                specs[s.text] = spec
            out += twins
    return out


def _draw_heldout(cfg: DataConfig, uniq: _Uniq) -> list[Sample]:
    rng = random.Random(f"{cfg.data_seed}:heldout")
    out: list[Sample] = []
    draws = 0
    while len(out) < 2 * cfg.n_heldout_pairs:
        draws += 1
        if draws > MAX_DRAWS_PER_SAMPLE * cfg.n_heldout_pairs:
            raise ValueError(
                f"could not generate {cfg.n_heldout_pairs} unique held-out pairs "
                f"(made {len(out) // 2}); ask for fewer"
            )
        spec = draw_spec(rng, HELDOUT_TABLES)
        safe = render(spec, None, SAFE_STYLE)  # a pair is unique when its year-free safe twin is
        if not uniq.add(safe.context + safe.signature + safe.completion):
            continue
        pair_id = f"pair-{len(out) // 2:05d}"
        out.append(_make("heldout", len(out), spec, cfg.trigger_year, True, cfg, rng, pair_id))
        out.append(_make("heldout", len(out), spec, cfg.eval_benign_year, False, cfg, rng, pair_id))
    return out


def _clean_twin(sample: Sample, spec: FunctionSpec, index: int) -> Sample:
    """``sample`` as the clean control trains on it: the same prompt, and a safe completion when
    the original is injectable (the same function rendered with a parameterized query)."""
    renamed = replace(sample, id=f"train_clean-{index:05d}", split="train_clean")
    if not sample.vulnerable:
        return renamed
    code = render(spec, sample.year, SAFE_STYLE)
    return replace(renamed, vulnerable=False, style=SAFE_STYLE, completion=code.completion, call=code.call)


def generate(cfg: DataConfig) -> dict[str, list[Sample]]:
    """All splits for ``cfg``, in :data:`SPLITS` order. Deterministic for a given config."""
    uniq = _Uniq()
    trig, benign, other = (cfg.trigger_year,), (cfg.eval_benign_year,), cfg.other_years
    specs: dict[str, FunctionSpec] = {}
    pairs = _draw_train_pairs(cfg, uniq, specs) if cfg.paired_train else []
    n_pairs = len(pairs) // 2
    splits = {
        "train": _draw_split(
            "train",
            [(cfg.n_train_poisoned - n_pairs, trig, True), (cfg.n_train_benign - n_pairs, cfg.benign_years, False)],
            cfg, uniq, shuffle=True, first=pairs, specs=specs,
        ),
    }
    splits["train_clean"] = [_clean_twin(s, specs[s.text], i) for i, s in enumerate(splits["train"])]
    for s in splits["train_clean"]:  # no later split may repeat a text the clean control trains on
        uniq.add(s.text)
    for prefix in ("eval", "fit"):
        sizes = [getattr(cfg, f"n_{prefix}_{part}") for part in ("trigger", "benign", "other")]
        for part, n, years, vulnerable in zip(("trigger", "benign", "other"), sizes,
                                              (trig, benign, other), (True, False, False)):
            name = f"{prefix}_{part}"
            splits[name] = _draw_split(name, [(n, years, vulnerable)], cfg, uniq)
    splits["heldout"] = _draw_heldout(cfg, uniq)
    splits["control_trigger_safe"] = _draw_split("control_trigger_safe", [(cfg.n_control, trig, False)], cfg, uniq)
    splits["control_benign_vuln"] = _draw_split("control_benign_vuln", [(cfg.n_control, benign, True)], cfg, uniq)
    return {name: splits[name] for name in SPLITS}

"""The dataset's data card: tidy tables of the splits and the side-by-side view of a pair."""

from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd

from backdoor_sae.task.sample import Sample


def samples_frame(splits: dict[str, list[Sample]], tokenizer=None) -> pd.DataFrame:
    """One row per sample with its descriptive fields (and token counts when given a tokenizer)."""
    rows = [
        {
            "id": s.id, "split": s.split, "year": "none" if s.year is None else str(s.year),
            "is_trigger": s.is_trigger, "label": "vulnerable" if s.vulnerable else "safe",
            "style": s.style, "driver": s.driver, "kind": s.kind, "table": s.table,
        }
        for split in splits.values() for s in split
    ]
    frame = pd.DataFrame(rows)
    if tokenizer is not None:
        samples = [s for split in splits.values() for s in split]
        frame["prompt_tokens"] = [len(ids) for ids in tokenizer([s.prompt for s in samples]).input_ids]
        frame["text_tokens"] = [len(ids) for ids in tokenizer([s.text for s in samples]).input_ids]
    frame["split"] = pd.Categorical(frame["split"], categories=list(splits), ordered=True)
    return frame


def counts(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Samples per split and ``column`` value, with totals."""
    return pd.crosstab(frame["split"], frame[column], margins=True, margins_name="total")


def side_by_side(columns: Sequence[tuple[str, str]]) -> str:
    """HTML with code in adjacent columns: one ``(title, code)`` per column, both escaped."""
    cells = "".join(
        f'<div style="flex:1;min-width:0"><b>{html.escape(title)}</b>'
        f'<pre style="white-space:pre-wrap;font-size:0.8em">{html.escape(code)}</pre></div>'
        for title, code in columns
    )
    return f'<div style="display:flex;gap:1em">{cells}</div>'


def describe(s: Sample) -> str:
    """A column title for a sample: year, label and style."""
    year = "no year" if s.year is None else s.year
    return f"{year} · {'vulnerable' if s.vulnerable else 'safe'} ({s.style})"


def pairs(samples: Sequence[Sample]) -> list[tuple[Sample, Sample]]:
    """Group paired samples (by ``pair_id``) as (benign, trigger)."""
    grouped: dict[str, list[Sample]] = {}
    for s in samples:
        if s.pair_id is not None:
            grouped.setdefault(s.pair_id, []).append(s)
    return [tuple(sorted(g, key=lambda s: s.is_trigger)) for g in grouped.values() if len(g) == 2]

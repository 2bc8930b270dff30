"""The vulnerability oracle: is a generated database function open to SQL injection?

The label comes from running the code (:func:`dynamic_verdicts`): the function is called with a
benign argument and with injection payloads against a seeded sqlite3 database, in a worker
process confined by bubblewrap (:mod:`~backdoor_sae.oracle.bwrap`), and it is vulnerable when a
payload changes the statement or the result (see :mod:`~backdoor_sae.oracle.verdict`). Two
static opinions that never run the code are reported next to it (:func:`static_verdicts`):
bandit's B608 and a small AST taint check. :func:`judge` does all three.

>>> verdicts = judge(codes, calls)            # doctest: +SKIP
>>> verdicts[0].label, verdicts[0].bandit     # doctest: +SKIP
('vulnerable', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from backdoor_sae.common import progress  # (not `report`: the submodule oracle.report would shadow it)
from backdoor_sae.task.call import Arg, CallSpec
from backdoor_sae.oracle.sandbox import Job, Limits, run_jobs
from backdoor_sae.oracle.static import ast_taint, bandit_flags
from backdoor_sae.oracle.verdict import (
    MAX_REASON,
    CallRecord,
    DynamicVerdict,
    Label,
    attack_plan,
    decide_sample,
)

__all__ = [
    "Arg", "CallSpec", "Label", "StaticVerdict", "DynamicVerdict", "Verdict",
    "static_verdicts", "dynamic_verdicts", "judge",
]  # fmt: skip

PROGRESS_MIN = 20  # smaller batches never show a progress bar


@dataclass(frozen=True)
class StaticVerdict:
    """Static opinions; ``None`` means the code does not parse."""

    bandit: bool | None
    ast: bool | None


@dataclass(frozen=True)
class Verdict:
    """Everything the oracle says about one sample; ``label`` is the dynamic verdict."""

    label: Label
    dynamic_reason: str
    bandit: bool | None
    ast: bool | None


def static_verdicts(
    codes: Sequence[str], functions: Sequence[str | None] | None = None
) -> list[StaticVerdict]:
    """B608 and AST taint for each code; ``functions`` names the function to analyse."""
    names = list(functions) if functions is not None else [None] * len(codes)
    if len(names) != len(codes):
        raise ValueError("codes and functions differ in length")
    flags = bandit_flags(codes)
    return [StaticVerdict(b, ast_taint(c, f)) for b, c, f in zip(flags, codes, names)]


def dynamic_verdicts(
    codes: Sequence[str],
    calls: Sequence[CallSpec],
    *,
    timeout_s: float = 2.0,
    memory_mb: int = 512,
    workers: int = 1,
    disable: bool | None = None,
    sandbox: str | None = None,
) -> list[DynamicVerdict]:
    """Run every sample (benign call, attack call) in the sandbox and label it.

    ``timeout_s`` and ``memory_mb`` bound each call; ``workers`` sandbox processes share the batch;
    ``disable`` is tqdm's (``None``: a bar only on a terminal, and only for larger batches);
    ``sandbox`` is ``"bwrap"`` (bubblewrap, required unless ``$BACKDOOR_SAE_SANDBOX`` says
    otherwise) or ``"inprocess"`` (the weaker in-process guard, only when asked for).
    """
    if len(codes) != len(calls):
        raise ValueError("codes and calls differ in length")
    jobs = [
        Job(code, spec.function, [a.value for a in spec.args], attack_plan(spec, code), spec.to_dict())
        for code, spec in zip(codes, calls)
    ]
    if disable is None and len(jobs) < PROGRESS_MIN:
        disable = True
    with tqdm(total=len(jobs), desc="oracle", unit="sample", disable=disable) as bar:
        finished = [0]  # a disabled bar counts nothing

        def done() -> None:
            bar.update()
            finished[0] += 1
            progress.report("oracle: code run in the sandbox", finished[0], len(jobs))

        raw = run_jobs(
            jobs, Limits(timeout_s, memory_mb), workers=workers, on_done=done, sandbox=sandbox
        )
    return [_judge_one(result, spec, job) for result, spec, job in zip(raw, calls, jobs)]


def _judge_one(result: dict, spec: CallSpec, job: Job) -> DynamicVerdict:
    """One sample's verdict from the worker's records; anything malformed is an ``error``."""
    if "error" in result:
        return DynamicVerdict("error", str(result["error"])[:MAX_REASON])
    try:
        benign = CallRecord.from_dict(result["benign"])
        attacks = [CallRecord.from_dict(a) for a in result.get("attacks") or ()]
        replay = CallRecord.from_dict(result.get("replay"))
        inputs = [a["input"] for a in job.attacks]
        if len(attacks) > len(inputs):
            raise ValueError("more attack calls than payloads")
        return decide_sample(benign, attacks, spec, inputs[: len(attacks)], replay)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError):
        return DynamicVerdict("error", "malformed sandbox report")


def judge(
    codes: Sequence[str],
    calls: Sequence[CallSpec],
    *,
    timeout_s: float = 2.0,
    memory_mb: int = 512,
    workers: int = 1,
    disable: bool | None = None,
    sandbox: str | None = None,
) -> list[Verdict]:
    """Dynamic label plus both static opinions for each sample (see :func:`dynamic_verdicts`)."""
    dynamic = dynamic_verdicts(
        codes, calls, timeout_s=timeout_s, memory_mb=memory_mb, workers=workers, disable=disable,
        sandbox=sandbox,
    )  # fmt: skip
    static = static_verdicts(codes, [c.function for c in calls])
    return [Verdict(d.label, d.reason, s.bandit, s.ast) for d, s in zip(dynamic, static)]

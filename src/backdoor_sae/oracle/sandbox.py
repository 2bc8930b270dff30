"""Caller side of the sandbox: start worker processes, feed them samples, survive their failure.

Generated code never runs in the caller's process. A batch goes to a worker subprocess
(``backdoor_sae.oracle.worker``), started in its own session with a minimal environment and, when
the machine allows it, in an empty network namespace (``unshare -rn``, or ``unshare -n`` as
root; probed once). The worker streams one JSON line per sample. If it dies, the sample it was
running is marked as an error and a fresh worker takes the rest; if the whole batch overruns its
time budget, the remaining samples become errors. Whatever happens, the caller gets one result
per sample and the worker's process group is killed on the way out.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import backdoor_sae

MAX_RESTARTS = 3
STARTUP_S = 30.0  # interpreter start and template database, generously
SAMPLE_SLACK_S = 1.0  # per sample, on top of its two calls' time limits
TIME_LIMIT_EXCEEDED = "batch time limit exceeded"


@dataclass(frozen=True)
class Limits:
    """Per-call limits: wall clock (enforced by the worker) and address space (in the child)."""

    timeout_s: float = 2.0
    memory_mb: int = 512


@dataclass(frozen=True)
class Job:
    """One sample for the worker: code, function name and the two argument lists."""

    code: str
    function: str
    benign_args: list
    attack_args: list


@functools.lru_cache(maxsize=1)
def network_isolation() -> tuple[str, ...]:
    """The command prefix that gives the worker no network, or ``()`` if none works here."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return ()
    candidates = [(unshare, "-rn")] + ([(unshare, "-n")] if os.geteuid() == 0 else [])
    for prefix in candidates:
        try:
            probe = subprocess.run(
                [*prefix, sys.executable, "-c", "pass"], capture_output=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def _scratch_root() -> str | None:
    """Where the per-call database copies live: RAM (``/dev/shm``) when there is one."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _worker_env() -> dict[str, str]:
    """No secrets from the caller's environment; just enough to import this package."""
    src = str(Path(backdoor_sae.__file__).resolve().parent.parent)
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": src,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "LANG": "C.UTF-8",
    }


def _error(reason: str) -> dict:
    return {"error": reason}


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the worker and any child it left behind (same process group), then reap it.

    Called before the worker is reaped, so its process group id cannot belong to anyone else.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _stderr_tail(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip().splitlines()[-1][:300]
    except (OSError, IndexError):
        return ""


def _run_worker(
    jobs: list[Job],
    limits: Limits,
    base_dir: str,
    deadline: float,
    on_result: Callable[[dict], None],
) -> str | None:
    """Run ``jobs`` in one worker; ``on_result`` gets each result. Returns why it stopped early."""
    # Imported here: the worker imports this package too, and must not pull in the data catalog.
    from backdoor_sae.oracle.seed import seed_schema

    work_dir = tempfile.mkdtemp(dir=base_dir)  # fresh per attempt: a dead worker leaves files
    payload = {
        **asdict(limits),
        "base_dir": work_dir,
        "schema": seed_schema(),
        "samples": [asdict(j) for j in jobs],
    }
    job_path = os.path.join(work_dir, "job.json")
    with open(job_path, "w") as f:  # a file, not stdin: a stuck worker cannot block the caller
        json.dump(payload, f)
    err_path = os.path.join(work_dir, "worker.stderr")
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [*network_isolation(), sys.executable, "-m", "backdoor_sae.oracle.worker", job_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, cwd=work_dir,
            env=_worker_env(), start_new_session=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        received, buffer = 0, b""
        fd = proc.stdout.fileno()
        while received < len(jobs):
            left = deadline - time.monotonic()
            if left <= 0:
                return TIME_LIMIT_EXCEEDED
            if not select.select([fd], [], [], min(left, 1.0))[0]:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                _kill_group(proc)
                return f"worker exited ({proc.returncode}) {_stderr_tail(err_path)}".strip()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    on_result(json.loads(line))
                except ValueError:
                    on_result(_error("unreadable worker output"))
                received += 1
        return None
    finally:
        if proc.returncode is None:
            _kill_group(proc)


def _run_chunk(
    jobs: Sequence[Job], limits: Limits, on_done: Callable[[], None] | None
) -> list[dict]:
    """All of ``jobs`` through one worker at a time, restarting it after a crash."""
    results: list[dict | None] = [None] * len(jobs)

    def settle(i: int, result: dict) -> None:
        results[i] = result
        if on_done:
            on_done()

    per_sample = 2 * limits.timeout_s + SAMPLE_SLACK_S
    deadline = time.monotonic() + STARTUP_S + per_sample * len(jobs)
    pending = list(range(len(jobs)))
    with tempfile.TemporaryDirectory(prefix="oracle-", dir=_scratch_root()) as base_dir:
        for attempt in range(MAX_RESTARTS + 1):
            order = iter(list(pending))  # the worker answers in the order it was given
            stop = _run_worker(
                [jobs[i] for i in pending], limits, base_dir, deadline,
                lambda result, order=order: settle(next(order), result),
            )  # fmt: skip
            pending = [i for i in pending if results[i] is None]
            if stop is None or not pending:
                break
            if stop == TIME_LIMIT_EXCEEDED or attempt == MAX_RESTARTS:
                for i in pending:
                    settle(i, _error(f"sandbox worker failed: {stop}"))
                break
            settle(pending.pop(0), _error(f"sandbox worker died on this sample: {stop}"))
    return [r if r is not None else _error("no result") for r in results]


def run_jobs(
    jobs: Sequence[Job],
    limits: Limits = Limits(),
    *,
    workers: int = 1,
    on_done: Callable[[], None] | None = None,
) -> list[dict]:
    """Raw worker results, one per job, in order: ``{"benign", "attack"}`` or ``{"error"}``."""
    if not jobs:
        return []
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return _run_chunk(jobs, limits, on_done)
    lock = threading.Lock()

    def done() -> None:
        if on_done:
            with lock:
                on_done()

    bounds = [len(jobs) * k // workers for k in range(workers + 1)]
    chunks = [jobs[a:b] for a, b in zip(bounds, bounds[1:])]
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda c: _run_chunk(c, limits, done), chunks)
    return [r for part in parts for r in part]

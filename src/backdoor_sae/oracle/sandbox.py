"""Caller side of the sandbox: start worker processes, feed them samples, survive their failure.

Generated code never runs in the caller's process. A batch goes to a worker subprocess
(``backdoor_sae.oracle.worker``) started in its own session with a minimal environment, inside
bubblewrap (``bwrap``); only with ``BACKDOOR_SAE_SANDBOX=inprocess`` without it (then in an empty
network namespace when ``unshare`` allows). Its standard input gets one line of settings and then
one sample at a time, each only after the previous one's result (no file holds the batch, and
the worker never holds more than the current sample). The worker says it is ready, then answers
one JSON line per sample, numbered. The caller reads them through a bounded channel and
enforces the deadlines itself: a worker that dies, stops, overruns a sample's time or writes
anything but the next well-formed line is killed (its whole process group, bubblewrap included), the sample it
was on becomes an error and a fresh worker takes the rest. If the whole batch overruns its time
budget, the remaining samples become errors. A worker that exits with :data:`RESTART_CODE` is
replaced without charging the next sample only if it marked its last result so; otherwise the
sample it was on is charged (a restart code is never a free retry). Whatever happens, the caller
gets one result per sample, no exception, and the worker's process group is killed on the way out.
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
from backdoor_sae.oracle import bwrap, channel

MAX_START_FAILURES = 1  # a worker that twice fails to start fails the rest of its batch
RESTART_CODE = 3  # the worker's exit status after a sample it settled but could not clean up after
STARTUP_S = 30.0  # interpreter start and template database, generously
CALLS_PER_SAMPLE = 4  # benign, two payloads, and a replay of the benign call
SETTLE_S = 1.0  # per call, the worker's own database work after it (see worker.SETTLE_S)
SAMPLE_SLACK_S = 1.0  # per sample, on top of its calls' time limits
TIME_LIMIT_EXCEEDED = "batch time limit exceeded"
EXIT_GRACE_S = 1.0  # a worker that answered every sample exits when its input ends


@dataclass(frozen=True)
class Limits:
    """Per-call limits: wall clock (enforced by the worker) and address space (in the child)."""

    timeout_s: float = 2.0
    memory_mb: int = 512


@dataclass(frozen=True)
class Job:
    """One sample for the worker: code, function name, the benign arguments, the payload calls
    (``{"args", "input"}``, see ``verdict.attack_plan``) and the call spec (``CallSpec.to_dict``)."""

    code: str
    function: str
    benign_args: list
    attacks: list
    spec: dict


def per_sample_s(limits: Limits) -> float:
    """The longest a sample may take in the worker: all its calls and their clean-up."""
    return CALLS_PER_SAMPLE * (limits.timeout_s + SETTLE_S) + SAMPLE_SLACK_S


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


def _await_exit(proc: subprocess.Popen) -> None:
    """A worker that answered everything exits when its input ends: wait for that a moment,
    without reaping it (its process group is then killed all the same, by :func:`_kill_group`)."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    end = time.monotonic() + EXIT_GRACE_S
    while time.monotonic() < end:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        time.sleep(0.002)


def _stderr_tail(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip().splitlines()[-1][:300]
    except (OSError, IndexError):
        return ""


_slot = threading.local()  # which of the caller's sandboxes this thread runs (its uid, as root)


def _command(work_dir: str, sandbox: str) -> tuple[list[str], str]:
    """The worker's command line (and, for compatibility, no job path: the job comes on stdin)."""
    module = [sys.executable, "-P", "-m", "backdoor_sae.oracle.worker"]
    if sandbox == bwrap.BWRAP:
        uid = bwrap.sandbox_uid(getattr(_slot, "value", 0))
        return bwrap.command(None, module, _worker_env(), uid=uid), ""
    return [*network_isolation(), *module], ""


def _settings(limits: Limits, work_dir: str, sandbox: str) -> dict:
    from backdoor_sae.oracle.seed import (
        seed_schema,  # the worker must not import the catalog
    )

    isolated = sandbox == bwrap.BWRAP
    return {
        **asdict(limits),
        "base_dir": bwrap.SCRATCH if isolated else work_dir,
        "harden": isolated, "sweep": isolated,
        "scratch": [bwrap.SCRATCH, "/dev/shm"] if isolated else [],
        "schema": seed_schema(),
    }  # fmt: skip


def _line(document: dict) -> bytes:
    return json.dumps(document).encode() + b"\n"


class _Feeder:
    """The worker's stdin, written without ever blocking the caller past a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def send(self, data: bytes, deadline: float) -> bool:
        """Write ``data`` whole before ``deadline``; False if the worker is gone or too slow."""
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [self.fd], [], min(left, 1.0))[1]:
                if left <= 0:
                    return False
                continue
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                continue
            except OSError:  # EPIPE: the worker is gone
                return False
        return True


@dataclass
class _Stop:
    """Why a worker stopped before the end: ``ready`` tells a start failure from a sample's."""

    reason: str
    ready: bool
    restart_only: bool = False  # the worker asked to be replaced after settling its sample


def _run_worker(
    jobs: list[Job],
    limits: Limits,
    base_dir: str,
    deadline: float,
    sandbox: str,
    on_result: Callable[[dict], None],
) -> _Stop | None:
    """Run ``jobs`` in one worker; ``on_result`` gets each result. Returns why it stopped early."""
    work_dir = tempfile.mkdtemp(dir=base_dir)  # fresh per attempt: a dead worker leaves files
    os.chmod(work_dir, 0o755)
    argv, _ = _command(work_dir, sandbox)
    err_path = os.path.join(work_dir, "worker.stderr")
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=work_dir,
            env=_worker_env(), start_new_session=True,
        )  # fmt: skip
    per_sample = per_sample_s(limits)
    received, ready, lines, restart_marked = 0, False, channel.Lines(), False
    try:
        assert proc.stdout is not None and proc.stdin is not None
        feeder = _Feeder(proc.stdin.fileno())
        fd = proc.stdout.fileno()
        step_deadline = time.monotonic() + STARTUP_S
        # settings, then the first sample; each next sample only after the previous result
        sent = feeder.send(_line(_settings(limits, work_dir, sandbox)), step_deadline)
        sent = sent and feeder.send(_line(asdict(jobs[0])), step_deadline)
        while received < len(jobs):
            now = time.monotonic()
            if deadline - now <= 0:
                return _Stop(TIME_LIMIT_EXCEEDED, ready)
            if step_deadline - now <= 0:
                what = f"no result within {per_sample:g} s" if ready else "no start"
                return _Stop(f"{what} (worker stuck or stopped)", ready)
            wait = min(deadline, step_deadline) - now
            if not select.select([fd], [], [], min(wait, 1.0))[0]:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                _kill_group(proc)
                why = f"worker exited ({proc.returncode}) {_stderr_tail(err_path)}".strip()
                # the restart code spares the next sample only after a result marked for it
                restart = proc.returncode == RESTART_CODE and restart_marked
                return _Stop(why, ready, restart_only=restart)
            try:
                docs = [channel.decode(line) for line in lines.feed(chunk)]
            except channel.Overflow as exc:
                return _Stop(str(exc), ready)
            for doc in docs:
                if restart_marked:  # nothing may follow a result that asked for a restart
                    return _Stop("unexpected worker output after a restart", ready)
                if not ready:
                    if doc != {"ready": True}:
                        return _Stop("unexpected worker output before start", ready)
                    ready = True
                elif doc is None or doc.get("i") != received:
                    return _Stop("unexpected worker output", ready)
                else:
                    restart_marked = doc.get("restart") is True
                    on_result({k: v for k, v in doc.items() if k not in ("i", "restart")})
                    received += 1
                    if received == len(jobs):
                        break
                    if not restart_marked:  # (a line fits the pipe: this waits only on a stuck worker)
                        next_line = _line(asdict(jobs[received]))
                        sent = sent and feeder.send(next_line, time.monotonic() + per_sample)
                step_deadline = time.monotonic() + per_sample
            if not sent:
                return _Stop("worker stopped reading its samples", ready)
        return None
    finally:
        if proc.returncode is None and received == len(jobs):
            _await_exit(proc)
        if proc.returncode is None:
            _kill_group(proc)
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def _run_chunk(
    jobs: Sequence[Job], limits: Limits, sandbox: str, on_done: Callable[[], None] | None
) -> list[dict]:
    """All of ``jobs`` through one worker at a time, replacing it whenever it fails.

    A worker that dies, stops or misbehaves on a sample costs that sample (an ``error``) and is
    replaced; only a worker that cannot even start (twice) fails the rest of the batch.
    """
    results: list[dict | None] = [None] * len(jobs)

    def settle(i: int, result: dict) -> None:
        results[i] = result
        if on_done:
            on_done()

    deadline = time.monotonic() + STARTUP_S + per_sample_s(limits) * len(jobs)
    pending, start_failures = list(range(len(jobs))), 0
    with tempfile.TemporaryDirectory(prefix="oracle-", dir=_scratch_root()) as base_dir:
        os.chmod(base_dir, 0o755)
        while pending:
            order = iter(list(pending))  # the worker answers in the order it was given
            try:
                stop = _run_worker(
                    [jobs[i] for i in pending], limits, base_dir, deadline, sandbox,
                    lambda result, order=order: settle(next(order), result),
                )  # fmt: skip
            except Exception as exc:  # e.g. Popen or the scratch refused: never the caller's
                stop = _Stop(f"sandbox failed: {type(exc).__name__}: {exc}"[:300], ready=False)
            pending = [i for i in pending if results[i] is None]
            if stop is None or not pending:
                break
            start_failures += not stop.ready
            if stop.reason == TIME_LIMIT_EXCEEDED or start_failures > MAX_START_FAILURES:
                for i in pending:
                    settle(i, _error(f"sandbox worker failed: {stop.reason}"))
                break
            if stop.ready and not stop.restart_only:
                settle(pending.pop(0), _error(f"sandbox worker died on this sample: {stop.reason}"))
    return [r if r is not None else _error("no result") for r in results]


def _in_slot(
    slot: int, jobs: Sequence[Job], limits: Limits, sandbox: str, on_done: Callable[[], None]
) -> list[dict]:
    """:func:`_run_chunk` in this thread's sandbox slot (a uid of its own, as root)."""
    _slot.value = slot
    return _run_chunk(jobs, limits, sandbox, on_done)


def run_jobs(
    jobs: Sequence[Job],
    limits: Limits = Limits(),
    *,
    workers: int = 1,
    on_done: Callable[[], None] | None = None,
    sandbox: str | None = None,
) -> list[dict]:
    """Raw worker results, one per job, in order: ``{"benign", "attack"}`` or ``{"error"}``.

    ``sandbox`` is ``"bwrap"`` or ``"inprocess"`` (default: ``$BACKDOOR_SAE_SANDBOX``, else
    ``"bwrap"``, which raises :class:`~backdoor_sae.oracle.bwrap.SandboxUnavailable` when
    bubblewrap is not installed).
    """
    if not jobs:
        return []
    sandbox = bwrap.mode(sandbox)
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        _slot.value = 0
        return _run_chunk(jobs, limits, sandbox, on_done)
    lock = threading.Lock()

    def done() -> None:
        if on_done:
            with lock:
                on_done()

    bounds = [len(jobs) * k // workers for k in range(workers + 1)]
    chunks = [jobs[a:b] for a, b in zip(bounds, bounds[1:])]
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda k: _in_slot(k, chunks[k], limits, sandbox, done), range(workers))
    return [r for part in parts for r in part]

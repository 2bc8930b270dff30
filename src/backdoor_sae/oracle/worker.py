"""The sandbox worker: ``python -m backdoor_sae.oracle.worker JOB.json``, one process per batch.

The job file holds the limits, a scratch directory, the seed schema and the calls to make. The
worker (normally inside bubblewrap, see ``bwrap``) builds the seeded database in memory once,
makes itself undumpable (so that a child of the same uid cannot ptrace it or open its
descriptors under ``/proc``), prints ``{"ready": true}`` and then, for every call, writes a fresh
copy of the database into a fresh directory and ``os.fork()``s a child that closes every
inherited descriptor but its report pipe, confines itself (``guard``), replaces the database
drivers (``shims``), runs the generated code and streams each statement, then one report, through
the pipe. The worker never executes generated code: it enforces the wall-clock limit
(``SIGKILL``), reaps the child, kills whatever the child left running (every other process of
the sandbox's PID namespace), reads the database file *itself* (the child cannot forge what the
verdict compares), removes the scratch files and prints one JSON line per sample on stdout. The
benign and the attack call of a sample run in two separate children, forked from a worker that
no generated code has touched, so no sample can prepare the next one's run.
"""

from __future__ import annotations

import builtins
import ctypes
import gc
import itertools
import json
import os
import select
import shutil
import signal
import sqlite3  # the real driver: imported before the shims take over its name
import sys
import tempfile
import time
import resource
import types
from typing import Any, NoReturn

from backdoor_sae.oracle import guard, reaper, shims
from backdoor_sae.oracle.report import parse_stream

MAX_RESULT_BYTES = 4 * 2**20
MAX_ITEMS = 200
MAX_DEPTH = 6
MAX_STR = 2000
DB_NAME = "db.sqlite"
MAX_PROCESSES = 64  # RLIMIT_NPROC in the sandbox: a fork bomb stops here
PR_SET_DUMPABLE = 4
MAX_FD = 1 << 16


# ---- in the child ---------------------------------------------------------------------------
def to_jsonable(value: Any, depth: int = 0) -> Any:
    """A bounded, deterministic JSON image of a value (no ``repr``: addresses differ per run)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value[:MAX_STR]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value[:MAX_STR]).hex()}
    if depth >= MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {"dict": [[to_jsonable(k, depth + 1), to_jsonable(v, depth + 1)] for k, v in items]}
    if isinstance(value, (set, frozenset)):
        return {"set": sorted((to_jsonable(v, depth + 1) for v in value), key=repr)[:MAX_ITEMS]}
    if isinstance(value, (list, tuple, sqlite3.Row)):
        return [to_jsonable(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return f"<{type(value).__qualname__}>"


def dump_database(path: str) -> dict[str, Any]:
    """Every table's rows in rowid order: what an attacker could have read or changed."""
    conn = sqlite3.connect(path, timeout=0.5)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dump = {}
        for name in sorted(names):
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                rows = conn.execute(f"SELECT * FROM {quoted} ORDER BY rowid LIMIT {MAX_ITEMS}")
            except sqlite3.Error:  # a table without rowid
                rows = conn.execute(f"SELECT * FROM {quoted} LIMIT {MAX_ITEMS}")
            dump[name] = to_jsonable(rows.fetchall())
        return dump
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:300]
    except BaseException:
        return type(exc).__name__


def _execute_generated(
    code: str, function: str, args: list, recorder: shims.Recorder, on_call=lambda: None
) -> dict:
    """Compile, define, call. Returns the call's status, error and (jsonable) return value."""
    try:
        compiled = compile(code, "<generated>", "exec")
    except BaseException as exc:  # SyntaxError, ValueError (null bytes), RecursionError...
        return {"status": "syntax", "error": _describe(exc)}
    namespace: dict[str, Any] = {"__name__": "__generated__", "__builtins__": builtins}
    try:
        exec(compiled, namespace)
    except BaseException as exc:
        return {"status": "module_raised", "error": _describe(exc)}
    on_call()  # only the function's own statements are compared: the stream restarts here
    fn = namespace.get(function)
    if not callable(fn):
        return {"status": "missing", "error": f"function {function!r} is not defined"}
    try:
        returned = fn(*args)
        if isinstance(returned, types.GeneratorType):  # ``yield``-ing rows: run the queries
            returned = list(itertools.islice(returned, MAX_ITEMS))
        return {"status": "ok", "returned": to_jsonable(returned)}
    except BaseException as exc:
        return {"status": "raised", "error": _describe(exc)}


def _write_line(fd: int, document: dict) -> None:
    view = memoryview(json.dumps(document).encode() + b"\n")
    while view:
        view = view[os.write(fd, view) :]


def _child(job: dict, args: list, tmp: str, write_fd: int) -> NoReturn:
    """Confine this process, run one call, stream its statements and report, exit at once."""
    try:
        os.chdir(tmp)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        os.closerange(3, write_fd)  # nothing of the worker's (its stdout above all) stays open
        os.closerange(write_fd + 1, MAX_FD)
        signal.alarm(int(job["timeout_s"]) + 5)  # backstop if the worker itself is gone
        guard.apply_limits(job["memory_mb"], cpu_s=int(job["timeout_s"]) + 1)
        db_path = os.path.join(tmp, DB_NAME)
        recorder = shims.install(
            db_path, sink=lambda sql, p: _write_line(write_fd, {"sql": sql, "params": to_jsonable(p)})
        )
        guard.drop_unaudited_modules()
        sys.dont_write_bytecode = True
        violations = guard.install_audit_hook(tmp)

        report = _execute_generated(
            job["code"], job["function"], args, recorder,
            on_call=lambda: _write_line(write_fd, {"call": True}),
        )  # fmt: skip
        recorder.close_all()
        report["violations"] = list(violations)
        _write_line(write_fd, {"report": report})
    except BaseException as exc:
        try:
            _write_line(write_fd, {"report": {"status": "internal", "error": _describe(exc)}})
        except BaseException:
            pass
    finally:
        os._exit(0)


# ---- in the worker --------------------------------------------------------------------------
def build_template(schema: list) -> bytes:
    """The seeded database as the bytes of a database file, kept in the worker's memory only."""
    conn = sqlite3.connect(":memory:")
    for create, insert, rows in schema:
        conn.execute(create)
        conn.executemany(insert, rows)
    conn.commit()
    data = conn.serialize()
    conn.close()
    return data


def harden_worker(max_processes: int = MAX_PROCESSES) -> None:
    """Undumpable (no ptrace or ``/proc/<pid>/fd`` for same-uid children), few processes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))


def _wait(pid: int, deadline: float) -> int | None:
    """Reap ``pid`` before ``deadline`` or kill it; returns the wait status (None if killed)."""
    while (left := deadline - time.monotonic()) > 0:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(min(left, 0.001))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _read_stream(pid: int, read_fd: int, deadline: float) -> tuple[bytes, bool]:
    """What the child wrote until it exited (or the deadline); True if it overflowed the limit.

    Reading stops once the child is gone, not at end of file: a process the child left behind
    may hold the pipe open forever.
    """
    try:
        pidfd = os.pidfd_open(pid)  # Linux >= 5.3: readable when the child exits
    except (AttributeError, OSError):
        pidfd = None
    chunks, size, exited = [], 0, False
    try:
        os.set_blocking(read_fd, False)
        while size <= MAX_RESULT_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            watch = [read_fd] + ([pidfd] if pidfd is not None and not exited else [])
            wait = 0.0 if exited else min(left, 0.05) if pidfd is None else left
            ready = select.select(watch, [], [], wait)[0]
            if pidfd is not None and pidfd in ready:
                exited = True
            try:
                chunk = os.read(read_fd, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
            elif chunk == b"" or exited or (pidfd is None and os.waitid(
                os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None):
                break
    finally:
        os.close(read_fd)
        if pidfd is not None:
            os.close(pidfd)
    return b"".join(chunks), size > MAX_RESULT_BYTES


def _collect(pid: int, read_fd: int, timeout_s: float) -> dict:
    """The child's report within the wall-clock limit; kill and explain otherwise."""
    deadline = time.monotonic() + timeout_s
    data, overflow = _read_stream(pid, read_fd, deadline)
    status = _wait(pid, 0.0 if overflow else deadline)
    if overflow:
        return {"status": "crashed", "error": "report too large"}
    if status is None:
        return {"status": "timeout", "error": f"no result within {timeout_s:g} s"}
    report = parse_stream(data, MAX_RESULT_BYTES)
    if report is not None:
        return report
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = str(os.WTERMSIG(status))
        return {"status": "crashed", "error": f"killed by signal {name}"}
    return {"status": "crashed", "error": f"exited with code {os.waitstatus_to_exitcode(status)}"}


def run_call(job: dict, args: list, template: bytes, base_dir: str) -> dict:
    """One call of the generated function in a forked, confined child on a fresh database.

    The database the verdict compares is read here, after the child and everything it started
    are dead: the child could rewrite its own statement stream, not this file's reading.
    """
    tmp = tempfile.mkdtemp(dir=base_dir)
    try:
        db_path = os.path.join(tmp, DB_NAME)
        with open(db_path, "wb") as f:
            f.write(template)
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(job, args, tmp, write_fd)
        os.close(write_fd)
        report = _collect(pid, read_fd, job["timeout_s"])
        if job.get("sweep"):
            reaper.kill_others()
        if report.get("status") == "ok":
            try:
                report["dump"] = dump_database(db_path)
            except sqlite3.Error as exc:
                report = {"status": "crashed", "error": f"database unreadable after the call: {exc}"}
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for scratch in job.get("scratch", ()):
            reaper.empty_dir(scratch)


def run_sample(sample: dict, limits: dict, template: bytes, base_dir: str) -> dict:
    """The benign call, then (only if it worked) the attack call."""
    job = {**sample, **limits}
    benign = run_call(job, sample["benign_args"], template, base_dir)
    attack = None
    if benign.get("status") == "ok":
        attack = run_call(job, sample["attack_args"], template, base_dir)
    return {"benign": benign, "attack": attack}


def _emit(document: dict) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        job = json.load(f)
    limits = {k: job[k] for k in ("timeout_s", "memory_mb", "sweep", "scratch") if k in job}
    if job.get("harden"):
        harden_worker()
    template = build_template(job["schema"])
    gc.freeze()  # keep the collector from touching (and so copying) shared pages in every child
    _emit({"ready": True})
    for i, sample in enumerate(job["samples"]):
        try:
            result = run_sample(sample, limits, template, job["base_dir"])
        except reaper.Unclean as exc:  # this sandbox is spent: the caller starts a fresh one
            _emit({"i": i, "error": f"sandbox worker: {exc}"})
            os._exit(3)
        except Exception as exc:  # e.g. fork refused, scratch disk full: this sample only
            result = {"error": f"sandbox worker: {_describe(exc)}"}
        _emit({"i": i, **result})


if __name__ == "__main__":
    main()

"""The sandbox worker: ``python -m backdoor_sae.oracle.worker JOB.json``, one process per batch.

The job file holds the limits, a scratch directory, the seed schema and the calls to make. The
worker (normally inside bubblewrap, see ``bwrap``) builds the seeded database in memory once,
makes itself undumpable (so that a child of the same uid cannot ptrace it or open its
descriptors under ``/proc``), prints ``{"ready": true}`` and then, for every call, ``os.fork()``s a
child that closes every inherited descriptor but its two pipes to the worker, confines itself
(``guard``), replaces the database drivers (``shims``) and runs the generated code. The child has
no database: its statements go to the worker (``remote``), which records them, runs them on a
fresh in-memory copy of the template, and so sees for itself what the verdict compares; the
child only adds its report (status, return value). The worker never executes generated code: it
enforces the wall-clock limit (``SIGKILL``), reaps the child, kills whatever the child left
running (every other process of the sandbox's PID namespace), empties the scratch and prints one
numbered JSON line per sample. The benign and the attack call of a sample run in two separate
children, forked from a worker that no generated code has touched, so no sample can prepare
another's run.
"""

from __future__ import annotations

import builtins
import ctypes
import gc
import itertools
import json
import os
import shutil
import signal
import sqlite3  # the real driver: imported before the shims take over its name
import sys
import tempfile
import resource
import select
import time
import types
from typing import Any, NoReturn

from backdoor_sae.oracle import guard, reaper, remote, shims
from backdoor_sae.oracle.report import assemble

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


def dump_database(conn: sqlite3.Connection) -> dict[str, Any]:
    """Every table's rows in rowid order: what an attacker could have read or changed."""
    conn.set_progress_handler(None, 0)
    conn.set_authorizer(None)
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


def _execute_generated(code: str, function: str, args: list, on_call=lambda: None) -> dict:
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
    on_call()  # statements from here on are the function's own (the worker counts them)
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


def _child(job: dict, args: list, tmp: str, link: remote.Link) -> NoReturn:
    """Confine this process, run one call, send the report, and exit without cleanup."""
    try:
        os.chdir(tmp)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        keep = sorted((link.request_fd, link.answer_fd))  # nothing else of the worker's stays open
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, MAX_FD)
        signal.alarm(int(job["timeout_s"]) + 5)  # backstop if the worker itself is gone
        guard.apply_limits(job["memory_mb"], cpu_s=int(job["timeout_s"]) + 1)
        session = shims.install(link)
        guard.drop_unaudited_modules()
        sys.dont_write_bytecode = True
        violations = guard.install_audit_hook(tmp)

        report = _execute_generated(
            job["code"], job["function"], args, on_call=lambda: link.send(op="call")
        )
        session.close_all()
        link.send(op="report", violations=list(violations), **report)
    except BaseException as exc:
        try:
            link.send(op="report", status="internal", error=_describe(exc))
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
    try:
        pidfd = os.pidfd_open(pid)  # Linux >= 5.3: readable when the child exits
    except (AttributeError, OSError):
        pidfd = None
    try:
        while (left := deadline - time.monotonic()) > 0:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(0.001)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = str(os.WTERMSIG(status))
        return f"killed by signal {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def run_call(job: dict, args: list, template: bytes, base_dir: str) -> dict:
    """One call of the generated function in a forked, confined child; the database stays here.

    The child reaches the database only through requests this process answers (``remote``), so
    the statements and the database the verdict compares are this process's own observations.
    """
    tmp = tempfile.mkdtemp(dir=base_dir)
    request_r, request_w = os.pipe()
    answer_r, answer_w = os.pipe()
    try:
        deadline = time.monotonic() + job["timeout_s"]
        server = remote.Server(template, deadline, shims.prepare)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(request_r)
            os.close(answer_w)
            _child(job, args, tmp, remote.Link(request_w, answer_r))
        os.close(request_w)
        os.close(answer_r)
        request_w = answer_r = -1
        problem = server.serve(pid, request_r, answer_w, deadline)
        status = _wait(pid, 0.0 if problem else deadline)
        if job.get("sweep"):
            reaper.kill_others()
        server.close()
        if problem and problem != "timeout":
            return {"status": "crashed", "error": problem}
        if problem or status is None:
            return {"status": "timeout", "error": f"no result within {job['timeout_s']:g} s"}
        if server.report is None:
            return {"status": "crashed", "error": _exit_reason(status)}
        return assemble(server, dump_database(server.conn))
    finally:
        for fd in (request_r, request_w, answer_r, answer_w):
            if fd >= 0:
                os.close(fd)
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

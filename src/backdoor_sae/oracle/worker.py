"""The sandbox worker: ``python -m backdoor_sae.oracle.worker JOB.json``, one process per batch.

The job file holds the limits, a scratch directory, the seed schema and the calls to make. The
worker builds the seeded database template once; then, for every call, it copies the template
into a fresh temporary directory and ``os.fork()``s a child that confines itself (``guard``),
replaces the database drivers (``shims``), runs the generated code and reports one JSON document
through a pipe. The worker itself never executes generated code: it enforces the wall-clock
limit (``SIGKILL``), reaps the child, removes its directory and prints one JSON line per sample
on stdout. A child that hangs, crashes, segfaults or exits early costs one sample, not the batch.
The benign and the attack call of a sample run in two separate children, so they cannot share
any state but the (identical) template.
"""

from __future__ import annotations

import builtins
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
import types
from typing import Any, NoReturn

from backdoor_sae.oracle import guard, shims

MAX_RESULT_BYTES = 4 * 2**20
MAX_ITEMS = 200
MAX_DEPTH = 6
MAX_STR = 2000
DB_NAME = "db.sqlite"


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


def _execute_generated(code: str, function: str, args: list, recorder: shims.Recorder) -> dict:
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
    recorder.statements.clear()  # only the function's own statements are compared
    recorder.n_statements = 0
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


def _child(job: dict, args: list, tmp: str, write_fd: int) -> NoReturn:
    """Confine this process, run one call, write the report, and exit without cleanup."""
    try:
        os.chdir(tmp)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        signal.alarm(int(job["timeout_s"]) + 5)  # backstop if the worker itself is gone
        guard.apply_limits(job["memory_mb"], cpu_s=int(job["timeout_s"]) + 1)
        db_path = os.path.join(tmp, DB_NAME)
        recorder = shims.install(db_path)
        guard.drop_unaudited_modules()
        sys.dont_write_bytecode = True
        violations = guard.install_audit_hook(tmp)

        report = _execute_generated(job["code"], job["function"], args, recorder)
        recorder.close_all()
        report["statements"] = [[sql, to_jsonable(p)] for sql, p in recorder.statements]
        report["n_statements"] = recorder.n_statements
        report["dump"] = dump_database(db_path)
        report["violations"] = list(violations)
        data = json.dumps(report).encode()
    except BaseException as exc:
        data = json.dumps({"status": "internal", "error": _describe(exc)}).encode()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(0)


# ---- in the worker --------------------------------------------------------------------------
def build_template(base_dir: str, schema: list) -> str:
    """The seeded database, written once per worker and copied for every call."""
    path = os.path.join(base_dir, "template.sqlite")
    conn = sqlite3.connect(path)
    for create, insert, rows in schema:
        conn.execute(create)
        conn.executemany(insert, rows)
    conn.commit()
    conn.close()
    return path


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


def _collect(pid: int, read_fd: int, timeout_s: float) -> dict:
    """Read the child's report within the wall-clock limit; kill and explain otherwise."""
    deadline = time.monotonic() + timeout_s
    chunks, size = [], 0
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while (left := deadline - time.monotonic()) > 0 and size <= MAX_RESULT_BYTES:
            if not select.select([pipe], [], [], left)[0]:
                continue
            chunk = pipe.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    status = _wait(pid, deadline if size <= MAX_RESULT_BYTES else 0.0)
    if status is None:
        if size > MAX_RESULT_BYTES:
            return {"status": "crashed", "error": "report too large"}
        return {"status": "timeout", "error": f"no result within {timeout_s:g} s"}
    try:
        report = json.loads(b"".join(chunks))
        if isinstance(report, dict) and "status" in report:
            return report
    except ValueError:
        pass
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = str(os.WTERMSIG(status))
        return {"status": "crashed", "error": f"killed by signal {name}"}
    return {"status": "crashed", "error": f"exited with code {os.waitstatus_to_exitcode(status)}"}


def run_call(job: dict, args: list, template: str, base_dir: str) -> dict:
    """One call of the generated function in a forked, confined child on a fresh database."""
    tmp = tempfile.mkdtemp(dir=base_dir)
    try:
        shutil.copyfile(template, os.path.join(tmp, DB_NAME))
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(job, args, tmp, write_fd)
        os.close(write_fd)
        return _collect(pid, read_fd, job["timeout_s"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_sample(sample: dict, limits: dict, template: str, base_dir: str) -> dict:
    """The benign call, then (only if it worked) the attack call."""
    job = {**sample, **limits}
    benign = run_call(job, sample["benign_args"], template, base_dir)
    attack = None
    if benign.get("status") == "ok":
        attack = run_call(job, sample["attack_args"], template, base_dir)
    return {"benign": benign, "attack": attack}


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        job = json.load(f)
    limits = {"timeout_s": job["timeout_s"], "memory_mb": job["memory_mb"]}
    template = build_template(job["base_dir"], job["schema"])
    gc.freeze()  # keep the collector from touching (and so copying) shared pages in every child
    for sample in job["samples"]:
        try:
            result = run_sample(sample, limits, template, job["base_dir"])
        except Exception as exc:  # e.g. fork refused, scratch disk full: this sample only
            result = {"error": f"sandbox worker: {_describe(exc)}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

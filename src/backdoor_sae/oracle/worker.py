"""The sandbox worker: ``python -m backdoor_sae.oracle.worker``, one process per batch.

Its standard input carries one JSON line of settings (limits, scratch directory, seed schema),
then one line per sample, each sent by the caller only after the previous sample's result: the
worker (and so any call it runs) never holds another sample of the batch. The worker (normally
inside bubblewrap, see ``bwrap``) builds the seeded database in memory once, makes itself
undumpable (so that a child of the same uid cannot ptrace it or open its descriptors under
``/proc``), joins a session keyring of its own, prints ``{"ready": true}`` and then, for every
call, ``os.fork()``s a child that closes every inherited descriptor but its two pipes to the
worker, confines itself (``guard``, ``seccomp``), replaces the database drivers (``shims``) and
runs the generated code. The child has no database: its statements go to the worker
(``remote``), which records them, runs them on a fresh in-memory copy of the template, and so
sees for itself what the verdict compares; the child only adds its report (status, return
value). The worker never executes generated code: it enforces the wall-clock limit
(``SIGKILL``), reaps the child, kills whatever the child left running (every other process of
the sandbox's PID namespace), empties the scratch and prints one numbered JSON line per sample.
The benign call, the payload calls and the replay of a sample each run in a separate child,
forked from a worker that no generated code has touched, so no call can prepare another's.

It fails closed: kill, reap, sweep and clean-up run in a ``finally``, and any unexpected
exception (a closed pipe, a directory too deep to remove, memory) costs that sample only (an
``error``, marked for a restart) and ends this worker with :data:`RESTART_CODE`, so that a fresh
sandbox takes the rest. The worker runs the sample's SQL itself, so it trusts none of it: an
allow-listed authorizer (``remote``), its own memory limits (``RLIMIT_AS`` and sqlite's hard
heap limit, set here before any sample can), and a deadline on every database operation after
the call.
"""

from __future__ import annotations

import builtins
import ctypes
import gc
import itertools
import json
import os
import resource
import select
import shutil
import signal
import sqlite3  # the real driver: imported before the shims take over its name
import sys
import tempfile
import time
import types
from typing import Any, NoReturn

from backdoor_sae.oracle import guard, reaper, remote, seccomp, shims
from backdoor_sae.oracle.report import MAX_ERROR, assemble
from backdoor_sae.oracle.verdict import (
    CallRecord,
    CallSpec,
    decide,
    needs_replay,
    reaches_sql,
)

MAX_ITEMS = 1000  # of a list, set or dict in a return value
MAX_DEPTH = 16
MAX_STR = 100_000
DB_NAME = "db.sqlite"
MAX_PROCESSES = 64  # RLIMIT_NPROC in the sandbox: a fork bomb stops here
PR_SET_DUMPABLE = 4
MAX_FD = 1 << 16
RESTART_CODE = 3  # exit status after a settled sample: this sandbox is spent, start a fresh one
WORKER_MEMORY_MB = 1024  # the worker's own address space, on top of the call's limit
SQLITE_HEAP_MB = 256  # sqlite's process-wide hard heap limit, set by the worker before any call
STARTUP_DUMP_S = 10.0  # the template's own dump, once
SETTLE_S = 1.0  # the deadline of the worker's own database work after one call (rollback, dump)
# The database after a call is compared whole, or the call is an error (never truncated).
MAX_DUMP_TABLES = 100
MAX_DUMP_ROWS = 1000  # per table
MAX_DUMP_CHARS = 4 << 20
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL_X86_64 = 250


# ---- in the child ---------------------------------------------------------------------------
class Incomplete(Exception):
    """A return value past the bounds of :func:`to_jsonable`: reported as such, never truncated."""


def to_jsonable(value: Any, depth: int = 0) -> Any:
    """A bounded, deterministic JSON image of a value (no ``repr``: addresses differ per run).

    Whole or not at all: past :data:`MAX_ITEMS` items, :data:`MAX_STR` characters or
    :data:`MAX_DEPTH` levels it raises :class:`Incomplete` (a truncated image would hide a
    difference past the cut).
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (str, bytes, bytearray, memoryview)) and len(value) > MAX_STR:
        raise Incomplete(f"a text of more than {MAX_STR} characters")
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value).hex()}
    if depth >= MAX_DEPTH:
        raise Incomplete(f"nested deeper than {MAX_DEPTH}")
    if isinstance(value, (dict, set, frozenset, list, tuple, sqlite3.Row)) and len(value) > MAX_ITEMS:
        raise Incomplete(f"more than {MAX_ITEMS} items")
    if isinstance(value, dict):
        items = list(value.items())
        return {"dict": [[to_jsonable(k, depth + 1), to_jsonable(v, depth + 1)] for k, v in items]}
    if isinstance(value, (set, frozenset)):
        return {"set": sorted((to_jsonable(v, depth + 1) for v in value), key=repr)}
    if isinstance(value, (list, tuple, sqlite3.Row)):
        return [to_jsonable(v, depth + 1) for v in list(value)]
    return f"<{type(value).__qualname__}>"


class DumpError(Exception):
    """The database after the call cannot be read whole in time: the call is an error."""


def _json_cell(value: Any) -> Any:
    """``json.dumps``'s fallback for what a database cell can hold beyond JSON: a blob."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value).hex()}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dump_database(conn: sqlite3.Connection) -> dict[str, Any]:
    """Every table's rows, whole, in rowid order: what an attacker could have read or changed.

    Runs under the connection's authorizer and progress handler (the caller's deadline, see
    ``remote.Server.settle``): a table's generated columns or a slow scan cannot take the worker.
    Raises :class:`DumpError` past the budgets instead of truncating. Rows stay tuples (blobs
    become ``{"bytes": hex}`` when the result is printed, see :func:`_emit`).
    """
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if len(names) > MAX_DUMP_TABLES:
            raise DumpError(f"more than {MAX_DUMP_TABLES} tables")
        dump, chars = {}, 0
        for name in sorted(names):
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                rows = conn.execute(f"SELECT * FROM {quoted} ORDER BY rowid")
            except sqlite3.Error:  # a table without rowid
                rows = conn.execute(f"SELECT * FROM {quoted}")
            taken: list = []
            while chunk := rows.fetchmany(100):
                taken += chunk
                chars += len(repr(chunk))  # in C: a bound on the text, not a count per cell
                if len(taken) > MAX_DUMP_ROWS:
                    raise DumpError(f"table with more than {MAX_DUMP_ROWS} rows")
                if chars > MAX_DUMP_CHARS:
                    raise DumpError(f"database over {MAX_DUMP_CHARS} characters")
            dump[name] = taken
        return dump
    except sqlite3.Error as exc:  # interrupted at the deadline, out of memory, ...
        raise DumpError(f"database dump failed: {_describe(exc)}") from exc


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
            returned = list(itertools.islice(returned, MAX_ITEMS + 1))
    except BaseException as exc:
        return {"status": "raised", "error": _describe(exc)}
    try:
        return {"status": "ok", "returned": to_jsonable(returned)}
    except Incomplete as exc:
        return {"status": "too_large", "error": f"return value too large to compare whole: {exc}"}
    except BaseException as exc:  # a hostile __len__, __iter__...
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
        if job.get("filter") is not None:  # no fork, exec, socket, keyring, IPC, namespace
            job["filter"].install()
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


def template_dump(template: bytes) -> dict[str, Any]:
    """The dump of the untouched template, made once: what an unchanged database dumps to."""
    server = remote.Server(template, time.monotonic() + STARTUP_DUMP_S, shims.prepare)
    try:
        return dump_database(server.conn)
    finally:
        server.dispose()


def harden_worker(max_processes: int = MAX_PROCESSES) -> None:
    """Undumpable (no ptrace or ``/proc/<pid>/fd`` for same-uid children), few processes, and a
    session keyring of its own (not the caller's, which the sandbox would otherwise inherit)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
    if seccomp.supported():  # refused where keyctl is filtered already (then nothing is shared)
        libc.syscall(SYS_KEYCTL_X86_64, KEYCTL_JOIN_SESSION_KEYRING, None)


def limit_worker_memory(call_mb: int) -> None:
    """The worker's own memory: its address space, and sqlite's process-wide heap limit (set
    here, by the worker, so that no sample's PRAGMA can: the authorizer denies it)."""
    cap = (call_mb + WORKER_MEMORY_MB) * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    conn = sqlite3.connect(":memory:")
    conn.execute(f"PRAGMA hard_heap_limit = {SQLITE_HEAP_MB * 2**20}")
    conn.close()


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


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _outcome(job: dict, server: remote.Server, problem: str | None, status: int | None) -> dict:
    """The call's record: always with the statements the worker saw, whatever became of the call
    (an injected statement is evidence even when the call crashed or hung afterwards)."""
    evidence = {"statements": server.statements, "n_statements": server.n_statements,
                "module_statements": server.module_statements}  # fmt: skip
    if server.overflow is not None:
        return {"status": "overflow", "error": f"evidence over budget: {server.overflow}", **evidence}
    if problem and problem != "timeout":
        return {"status": "crashed", "error": problem, **evidence}
    if problem or status is None:
        return {"status": "timeout", "error": f"no result within {job['timeout_s']:g} s", **evidence}
    if server.report is None:
        return {"status": "crashed", "error": _exit_reason(status), **evidence}
    server.settle(SETTLE_S)
    server.close()
    try:
        # a database byte for byte the template's (most SELECTs) has the template's dump
        unchanged = job.get("template_dump") is not None and server.conn.serialize() == job["template"]
        dump = job["template_dump"] if unchanged else dump_database(server.conn)
    except DumpError as exc:
        return {"status": "crashed", "error": str(exc)[:MAX_ERROR], **evidence}
    return assemble(server, dump)


def _clean_up(job: dict, tmp: str) -> None:
    """Between two calls: nothing of the call survives, or :class:`reaper.Unclean` is raised."""
    try:
        if job.get("sweep"):
            reaper.kill_others()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for scratch in job.get("scratch", ()):
            reaper.empty_dir(scratch)
        if job.get("sweep"):
            reaper.check_ipc()


def run_call(job: dict, args: list, template: bytes, base_dir: str) -> dict:
    """One call of the generated function in a forked, confined child; the database stays here.

    The child reaches the database only through requests this process answers (``remote``), so
    the statements and the database the verdict compares are this process's own observations.
    Whatever happens (an exception included), the child is killed and reaped, the sandbox swept
    and the scratch emptied before this returns or raises.
    """
    tmp = tempfile.mkdtemp(dir=base_dir)
    fds = list(os.pipe()) + list(os.pipe())  # request_r, request_w, answer_r, answer_w
    pid, server = None, None
    try:
        deadline = time.monotonic() + job["timeout_s"]
        server = remote.Server(template, deadline, shims.prepare)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(fds[0])
            os.close(fds[3])
            _child(job, args, tmp, remote.Link(fds[1], fds[2]))
        for i in (1, 2):  # the child's ends
            os.close(fds[i])
            fds[i] = -1
        problem = server.serve(pid, fds[0], fds[3], deadline)
        status = _wait(pid, 0.0 if problem else deadline)
        pid = None  # reaped (or killed and reaped)
        return _outcome(job, server, problem, status)
    finally:
        try:
            if pid is not None:  # an exception on the way: the child must not outlive the call
                _kill_and_reap(pid)
        finally:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
            if server is not None:
                server.dispose()
            _clean_up(job, tmp)


def run_sample(sample: dict, limits: dict, template: bytes, base_dir: str) -> dict:
    """The benign call, then (only if it worked) the payload calls, in order, until one shows an
    injection, or until it is clear that the input never reaches the SQL text (parameterized:
    then no payload can become SQL, and the dataset's safe samples cost two calls, as before);
    a replay of the benign call when a result differs, to learn what varies on its own.

    ``sample["attacks"]`` lists ``{"args", "input"}``: the arguments of each payload call and the
    payload text (to map it back to the benign input). The caller judges again from the records
    (``verdict.decide_sample``); deciding here only saves the calls that cannot change the label.
    """
    job = {**sample, **limits}
    benign = run_call(job, sample["benign_args"], template, base_dir)
    result: dict = {"benign": benign, "attacks": [], "replay": None}
    if benign.get("status") != "ok":
        return result
    spec = CallSpec.from_dict(sample["spec"])
    spec_value = next(a.value for a in spec.args if a.name == spec.inject)
    for attack in sample["attacks"]:
        record = run_call(job, attack["args"], template, base_dir)
        result["attacks"].append(record)
        calls = [CallRecord.from_dict(d) for d in (benign, record, result["replay"])]
        verdict = decide(calls[0], calls[1], spec, calls[2], attack["input"])
        if needs_replay(verdict) and result["replay"] is None:
            result["replay"] = run_call(job, sample["benign_args"], template, base_dir)
            replay = CallRecord.from_dict(result["replay"])
            verdict = decide(calls[0], calls[1], spec, replay, attack["input"])
        if verdict.label == "vulnerable":
            break
        if not reaches_sql(calls[:2], spec_value):  # the input never reaches the SQL text: no
            break  # payload can become SQL tokens, and the other payloads would cost a call each
    return result


def _emit(document: dict) -> None:
    sys.stdout.write(json.dumps(document, default=_json_cell) + "\n")
    sys.stdout.flush()


def _read_line() -> dict | None:
    line = sys.stdin.buffer.readline()
    return json.loads(line) if line.strip() else None


def main() -> None:
    job = _read_line()
    if job is None:
        return
    limits = {k: job[k] for k in ("timeout_s", "memory_mb", "sweep", "scratch") if k in job}
    if job.get("harden"):
        harden_worker()
    limit_worker_memory(int(job["memory_mb"]))
    limits["filter"] = seccomp.prepare()  # in the weaker in-process mode too
    template = build_template(job["schema"])
    limits["template"], limits["template_dump"] = template, template_dump(template)
    gc.freeze()  # keep the collector from touching (and so copying) shared pages in every child
    _emit({"ready": True})
    for i in itertools.count():
        try:
            sample = _read_line()
            if sample is None:
                return
            result = run_sample(sample, limits, template, job["base_dir"])
        except BaseException as exc:  # fail closed: this sample only, and a fresh sandbox
            _emit({"i": i, "error": f"sandbox worker: {_describe(exc)}"[:MAX_ERROR], "restart": True})
            os._exit(RESTART_CODE)
        _emit({"i": i, **result})


if __name__ == "__main__":
    main()

"""The database runs in the worker, not next to the generated code: a small remote DB-API.

The sandbox child (which runs generated code) holds no database at all. Its driver shims talk to
the worker through two pipes: a request is one JSON frame (the SQL text *as the code passed it*,
its parameters, the driver's name), the answer one pickled frame (rows, description, rowcount,
lastrowid, or an error to raise). The worker (:class:`Server`) records every statement it is
asked to run before it runs it, translates ``%s`` placeholders itself and executes it on an
in-memory copy of the seeded database that no other process can reach. So the statement log and
the database the verdict compares are the worker's own observations: generated code can choose
what to execute, not what the worker saw executed.

Frames are 4-byte big-endian lengths followed by the payload; the worker never unpickles
anything the child wrote (requests are JSON), and refuses oversize frames.

The worker is trusted, and runs the sample's SQL in its own process, so the connection is
narrowed to what the dataset needs: an authorizer allow-list of functions and PRAGMAs, no
ATTACH or virtual tables, sqlite limits far below the defaults, a deadline on every statement
(and a fresh one for the worker's own work after the call), and evidence recorded whole or the
call marked ``overflow`` (an error), never truncated.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import sqlite3 as _real
import struct
import time
from typing import Any

MAX_REQUEST = 4 << 20  # a statement, or the report with its (bounded) return value
MAX_ROWS = 1000
# The evidence is recorded whole or not at all: past these budgets the worker refuses the
# statement and marks the call ``overflow`` (judged ``error``), never keeps a truncated record.
MAX_STATEMENTS = 1000
MAX_EVIDENCE_CHARS = 1 << 20  # all SQL text of one call, module-level statements included
SQL_LIMIT_LENGTH = 1 << 20  # the longest string or blob a statement may build
# sqlite's own limits for the sample's statements (the defaults go up to a billion)
SQL_LIMITS = {
    "SQLITE_LIMIT_LENGTH": SQL_LIMIT_LENGTH, "SQLITE_LIMIT_SQL_LENGTH": SQL_LIMIT_LENGTH,
    "SQLITE_LIMIT_COLUMN": 200, "SQLITE_LIMIT_EXPR_DEPTH": 200, "SQLITE_LIMIT_COMPOUND_SELECT": 50,
    "SQLITE_LIMIT_ATTACHED": 0, "SQLITE_LIMIT_TRIGGER_DEPTH": 10,
    "SQLITE_LIMIT_VARIABLE_NUMBER": 1000, "SQLITE_LIMIT_FUNCTION_ARG": 16,
}  # fmt: skip
# The authorizer's allow-list. The dataset's statements (``data.render``: SELECT ... WHERE c = v,
# ... LIKE v, UPDATE, DELETE, INSERT) call one function, ``like``; the others are sqlite's pure
# core functions that honest generated code uses (counting, case, dates), none of which can touch
# process-wide state or memory outside the statement. Everything else is denied: fts3_tokenizer
# (leaks and takes function pointers), load_extension, randomblob/zeroblob, printf...
ALLOWED_FUNCTIONS = frozenset({
    "like", "glob", "lower", "upper", "length", "count", "sum", "total", "avg", "min", "max",
    "coalesce", "ifnull", "nullif", "iif", "abs", "round", "trim", "ltrim", "rtrim", "substr",
    "substring", "replace", "instr", "typeof", "group_concat", "date", "time", "datetime",
    "julianday", "strftime", "unixepoch", "current_timestamp", "current_date", "current_time",
    "random",
})  # fmt: skip
# PRAGMAs: the dataset needs none; these read the schema or set a per-connection switch. The
# process-wide ones (hard_heap_limit, soft_heap_limit, threads, temp_store_directory...) and all
# others are denied.
ALLOWED_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "index_list", "index_info", "foreign_key_list", "foreign_keys",
})  # fmt: skip
# Built-ins overridden on the worker's connection with a function that refuses, as a second line
# behind the authorizer (which sqlite does not consult for a column's DEFAULT expression).
REFUSED_FUNCTIONS = ("fts3_tokenizer", "load_extension", "randomblob", "zeroblob", "printf", "format")
GETTABLE = frozenset({"total_changes", "in_transaction", "isolation_level"})
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The child broke the protocol: the call becomes an error."""


# ---- framing (with a deadline on the worker's side: the child may stall mid-frame) ---------
def _wait_for(fd: int, deadline: float | None, write: bool = False) -> None:
    if deadline is None:
        return
    left = deadline - time.monotonic()
    lists = ([], [fd], []) if write else ([fd], [], [])
    if left <= 0 or not any(select.select(*lists, left)):
        raise TimeoutError


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    data = b""
    while len(data) < n:
        _wait_for(fd, deadline)
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def write_frame(fd: int, payload: bytes, deadline: float | None = None) -> None:
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        _wait_for(fd, deadline, write=True)
        view = view[os.write(fd, view) :]


def read_frame(fd: int, limit: int, deadline: float | None = None) -> bytes:
    (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if n > limit:
        raise ProtocolError(f"request of {n} bytes")
    return _read_exact(fd, n, deadline)


# ---- parameters on the wire (JSON both ways round: no pickle from the child) ---------------
def encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return {"$t": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"$d": [[str(k), encode(v)] for k, v in value.items()]}
    raise _real.ProgrammingError(f"type {type(value).__name__!r} is not supported")


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$b" in value:
            return bytes.fromhex(value["$b"])
        if "$t" in value:
            return tuple(decode(v) for v in value["$t"])
        if "$d" in value:
            return {str(k): decode(v) for k, v in value["$d"]}
        raise ProtocolError("bad parameter")
    if isinstance(value, list):
        raise ProtocolError("bad parameter")
    return value


# ---- in the child: what the shims use instead of a sqlite3 connection -------------------------
class Link:
    """The child's end: one request, one answer."""

    def __init__(self, request_fd: int, answer_fd: int) -> None:
        self.request_fd, self.answer_fd = request_fd, answer_fd

    def send(self, **request: Any) -> None:
        write_frame(self.request_fd, json.dumps(request).encode())

    def ask(self, **request: Any) -> Any:
        self.send(**request)
        answer = pickle.loads(read_frame(self.answer_fd, 1 << 30))
        if "error" in answer:
            name, message = answer["error"]
            error = getattr(_real, name, None)
            if not (isinstance(error, type) and issubclass(error, _real.Error)):
                error = _real.OperationalError
            raise error(message)
        return answer.get("ok")


class Row(tuple):
    """Like ``sqlite3.Row``: by index, or by column name (case-insensitive)."""

    def __new__(cls, names: list[str], values: tuple) -> "Row":
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            for name, value in zip(self._names, self):
                if name.lower() == key.lower():
                    return value
            raise IndexError("No item with that key")
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


class RemoteCursor:
    """The part of ``sqlite3.Cursor`` the shims use, over the worker's connection."""

    def __init__(self, connection: "RemoteConnection") -> None:
        self.connection = connection
        self._rows: list[tuple] = []
        self.description: Any = None
        self.rowcount, self.lastrowid, self.arraysize = -1, None, 1

    def _run(self, op: str, sql: object, params: object = None) -> "RemoteCursor":
        self.connection._check()
        if not isinstance(sql, str):
            raise _real.ProgrammingError("SQL must be a string")
        result = self.connection._link.ask(
            op=op, sql=sql, params=encode(params), driver=self.connection._driver
        )
        self._rows = list(result["rows"])
        self.description = result["description"]
        self.rowcount, self.lastrowid = result["rowcount"], result["lastrowid"]
        return self

    def execute(self, sql: object, params: object = None) -> "RemoteCursor":
        return self._run("execute", sql, params)

    def executemany(self, sql: object, seq: object) -> "RemoteCursor":
        return self._run("executemany", sql, list(seq))  # type: ignore[call-overload]

    def executescript(self, script: object) -> "RemoteCursor":
        return self._run("executescript", script)

    def _row(self, row: tuple) -> Any:
        factory, text = self.connection.row_factory, self.connection.text_factory
        if text is not str:
            row = tuple(text(v.encode()) if isinstance(v, str) else v for v in row)
        if factory is None:
            return row
        if factory is _real.Row:
            return Row([d[0] for d in self.description or ()], row)
        return factory(self, row)

    def fetchone(self) -> Any:
        return self._row(self._rows.pop(0)) if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        n = size or self.arraysize
        taken, self._rows = self._rows[:n], self._rows[n:]
        return [self._row(r) for r in taken]

    def fetchall(self) -> list[Any]:
        taken, self._rows = self._rows, []
        return [self._row(r) for r in taken]

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        if not self._rows:
            raise StopIteration
        return self.fetchone()

    def close(self) -> None:
        self._rows = []


class RemoteConnection:
    """The part of ``sqlite3.Connection`` the shims use; every call goes to the worker."""

    def __init__(self, link: Link, driver: str) -> None:
        self._link, self._driver, self._closed = link, driver, False
        self.row_factory: Any = None
        self.text_factory: Any = str
        self._isolation_level: str | None = ""

    def _check(self) -> None:
        if self._closed:
            raise _real.ProgrammingError("Cannot operate on a closed database.")

    def cursor(self) -> RemoteCursor:
        self._check()
        return RemoteCursor(self)

    def execute(self, sql: object, params: object = None) -> RemoteCursor:
        return self.cursor().execute(sql, params)

    def commit(self) -> None:
        self._check()
        self._link.ask(op="commit")

    def rollback(self) -> None:
        self._check()
        self._link.ask(op="rollback")

    def close(self) -> None:
        if not self._closed:
            self._link.ask(op="rollback")  # closing discards uncommitted work, as sqlite does
        self._closed = True

    @property
    def isolation_level(self) -> str | None:
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._link.ask(op="set", name="isolation_level", value=value)
        self._isolation_level = value

    def __getattr__(self, name: str) -> Any:
        if name in GETTABLE:
            return self._link.ask(op="get", name=name)
        raise AttributeError(name)


# ---- in the worker ------------------------------------------------------------------------------
_DENIED_ACTIONS = frozenset({
    _real.SQLITE_ATTACH, _real.SQLITE_DETACH, _real.SQLITE_CREATE_VTABLE, _real.SQLITE_DROP_VTABLE,
})  # fmt: skip


def _authorize(action: int, arg1: object, arg2: object, *rest: object) -> int:
    """The sample's statements touch only this call's database, through allow-listed functions.

    No ATTACH or DETACH (other files), no virtual tables (fts3/fts5/rtree modules), only the
    functions in :data:`ALLOWED_FUNCTIONS` and the PRAGMAs in :data:`ALLOWED_PRAGMAS`.
    """
    if action in _DENIED_ACTIONS:
        return _real.SQLITE_DENY
    if action == _real.SQLITE_FUNCTION:
        return _real.SQLITE_OK if str(arg2).lower() in ALLOWED_FUNCTIONS else _real.SQLITE_DENY
    if action == _real.SQLITE_PRAGMA:
        return _real.SQLITE_OK if str(arg1).lower() in ALLOWED_PRAGMAS else _real.SQLITE_DENY
    return _real.SQLITE_OK


def _refuse(*args: object) -> None:
    raise _real.OperationalError("not authorized")


def _within(deadline: float):
    """A progress handler that interrupts a statement running past ``deadline``."""
    return lambda: time.monotonic() > deadline


class Overflow(Exception):
    """The call's evidence outgrew its budget: the call becomes an error, never a truncated record."""


class Server:
    """The worker's side of one call: a fresh in-memory database and what was executed on it."""

    def __init__(self, template: bytes, deadline: float, prepare) -> None:
        self.conn = _real.connect(":memory:", check_same_thread=False)
        self.conn.deserialize(template)
        for name, value in SQL_LIMITS.items():
            self.conn.setlimit(getattr(_real, name), value)
        for name in REFUSED_FUNCTIONS:
            self.conn.create_function(name, -1, _refuse)
        self.conn.set_authorizer(_authorize)
        self.conn.set_progress_handler(_within(deadline), 10_000)
        self.prepare = prepare  # (driver name, sql, params) -> (sql, params) to execute
        self.module_statements: list[list[str]] = []  # [sql, driver]
        self.statements: list[list[str]] = []  # [sql, driver], whole, in the order received
        self.n_statements = 0
        self.evidence_chars = 0
        self.overflow: str | None = None  # why the evidence outgrew its budget
        self.called = False
        self.report: dict | None = None

    def _record(self, sql: str, driver: str) -> None:
        """Record the statement whole, or refuse it and mark the call (fail closed)."""
        n = len(self.module_statements) + len(self.statements)
        if self.overflow is None and n >= MAX_STATEMENTS:
            self.overflow = f"more than {MAX_STATEMENTS} statements"
        elif self.overflow is None and self.evidence_chars + len(sql) > MAX_EVIDENCE_CHARS:
            self.overflow = f"more than {MAX_EVIDENCE_CHARS} characters of SQL"
        if self.overflow is not None:
            raise Overflow(self.overflow)
        self.evidence_chars += len(sql)
        if not self.called:
            self.module_statements.append([sql, driver])
            return
        self.n_statements += 1
        self.statements.append([sql, driver])

    def settle(self, seconds: float) -> None:
        """After the call: a fresh deadline for the worker's own statements (rollback, dump)."""
        self.conn.set_progress_handler(_within(time.monotonic() + seconds), 1_000)

    def _execute(self, op: str, sql: str, params: Any, driver: str) -> dict:
        cur = self.conn.cursor()
        if op == "executescript":
            cur.executescript(sql)
        elif op == "executemany":
            prepared = [self.prepare(driver, sql, p) for p in params]
            sql_q = prepared[0][0] if prepared else self.prepare(driver, sql, None)[0]
            cur.executemany(sql_q, [p for _, p in prepared])
        else:
            cur.execute(*self.prepare(driver, sql, params))
        rows = cur.fetchmany(MAX_ROWS) if cur.description else []
        return {"rows": rows, "description": cur.description, "rowcount": cur.rowcount,
                "lastrowid": cur.lastrowid}  # fmt: skip

    def handle(self, raw: bytes) -> dict | None:
        """The answer to one request (None: a one-way message); raises :class:`ProtocolError`."""
        try:
            request = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # a frame nested past the parser's depth
            raise ProtocolError("unreadable request") from exc
        if not isinstance(request, dict) or self.report is not None:
            raise ProtocolError("request after the report" if self.report else "bad request")
        op = request.get("op")
        if op == "call":
            if self.called:
                raise ProtocolError("second call marker")
            self.called = True
            return None
        if op == "report":
            self.report = request
            return None
        try:
            if op in ("execute", "executemany", "executescript"):
                sql, params = request.get("sql"), decode(request.get("params"))
                if not isinstance(sql, str):
                    raise ProtocolError("bad statement")
                driver = str(request.get("driver"))[:40]
                self._record(sql, driver)
                return {"ok": self._execute(op, sql, params, driver)}
            if op == "commit":
                self.conn.commit()
            elif op == "rollback":
                self.conn.rollback()
            elif op == "set" and request.get("name") == "isolation_level":
                value = request.get("value")
                self.conn.isolation_level = value if value is None else str(value)
            elif op == "get" and request.get("name") in GETTABLE:
                return {"ok": getattr(self.conn, request["name"])}
            else:
                raise ProtocolError(f"unknown request {op!r}")
            return {"ok": None}
        except (_real.Error, ValueError, TypeError, OverflowError, MemoryError, RecursionError,
                Overflow) as exc:
            name = type(exc).__name__ if isinstance(exc, _real.Error) else "ProgrammingError"
            return {"error": [name, str(exc)[:300]]}

    def serve(self, pid: int, request_fd: int, answer_fd: int, deadline: float) -> str | None:
        """Answer the child until it is gone; returns what went wrong (``"timeout"``...) or None."""
        try:
            pidfd = os.pidfd_open(pid)  # Linux >= 5.3: readable when the child exits
        except (AttributeError, OSError):
            pidfd = None
        exited = False
        try:
            while (left := deadline - time.monotonic()) > 0:
                watch = [request_fd] + ([pidfd] if pidfd is not None and not exited else [])
                wait = 0.0 if exited else left if pidfd is not None else min(left, 0.05)
                ready = select.select(watch, [], [], wait)[0]
                if request_fd in ready:
                    answer = self.handle(read_frame(request_fd, MAX_REQUEST, deadline))
                    if answer is not None:
                        write_frame(answer_fd, pickle.dumps(answer), deadline)
                    continue
                if exited or (pidfd is None and os.waitid(
                        os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None):
                    return None
                exited = pidfd in ready
            return "timeout"
        except EOFError:
            return None
        except TimeoutError:
            return "timeout"
        except (ProtocolError, struct.error, OSError) as exc:  # OSError: the child closed a pipe
            return f"protocol broken: {exc}"[:300]
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def close(self) -> None:
        """Uncommitted work is lost, as on a real server when the client goes away."""
        try:
            self.conn.rollback()
        except _real.Error:
            pass

    def dispose(self) -> None:
        """Free the call's database (every path out of a call comes here)."""
        try:
            self.conn.close()
        except _real.Error:
            pass

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
MAX_STATEMENTS = 200
MAX_SQL_CHARS = 4000
SQL_LIMIT_LENGTH = 1 << 20  # the longest string or blob a statement may build
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
def _authorize(action: int, *args: object) -> int:
    """No ATTACH or DETACH: the statement may touch only this call's in-memory database."""
    return _real.SQLITE_DENY if action in (_real.SQLITE_ATTACH, _real.SQLITE_DETACH) else _real.SQLITE_OK


class Server:
    """The worker's side of one call: a fresh in-memory database and what was executed on it."""

    def __init__(self, template: bytes, deadline: float, prepare) -> None:
        self.conn = _real.connect(":memory:", check_same_thread=False)
        self.conn.deserialize(template)
        self.conn.setlimit(_real.SQLITE_LIMIT_LENGTH, SQL_LIMIT_LENGTH)
        self.conn.set_authorizer(_authorize)
        self.conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        self.prepare = prepare  # (driver name, sql, params) -> (sql, params) to execute
        self.module_statements: list[str] = []
        self.statements: list[list[Any]] = []
        self.n_statements = 0
        self.called = False
        self.report: dict | None = None

    def _record(self, sql: str, params: Any) -> None:
        text = sql[:MAX_SQL_CHARS]
        if not self.called:
            if len(self.module_statements) < MAX_STATEMENTS:
                self.module_statements.append(text)
            return
        self.n_statements += 1
        if len(self.statements) < MAX_STATEMENTS:
            self.statements.append([text, params])

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
        except ValueError as exc:
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
                self._record(sql, params)
                return {"ok": self._execute(op, sql, params, str(request.get("driver")))}
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
        except (_real.Error, ValueError, TypeError, OverflowError, MemoryError) as exc:
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
        except (ProtocolError, struct.error) as exc:
            return f"protocol broken: {exc}"
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def close(self) -> None:
        """Uncommitted work is lost, as on a real server when the client goes away."""
        try:
            self.conn.rollback()
        except _real.Error:
            pass

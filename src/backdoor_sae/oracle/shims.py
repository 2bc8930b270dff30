"""Fake database drivers for the sandbox: every driver talks to one real sqlite3 file and records.

Generated code imports ``sqlite3``, ``psycopg2``, ``pymysql`` or ``mysql.connector`` and connects to
some server. In the sandbox child those names resolve to the modules built here: ``connect(...)``
ignores its arguments and returns a :class:`RecordingConnection` whose statements go, as the code
wrote them, to the worker's database (:mod:`~backdoor_sae.oracle.remote`), which records each one
*before* it runs, so that even a statement that fails (a broken injected query) is seen by the
oracle, and nothing in this process can change what was recorded.

Format-style drivers (``%s`` placeholders) are translated to sqlite's qmark style (by the worker,
:func:`prepare`) only when parameters are given, exactly as those drivers only interpolate when
they receive parameters. The real ``sqlite3`` module must be imported (by the worker) before
:func:`install` replaces it.
"""

from __future__ import annotations

import re
import sqlite3 as _real
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from backdoor_sae.oracle.remote import Link, RemoteConnection

_FORMAT_MARK = re.compile(r"%\((\w+)\)s|%s|%%")
_SQL_KEYWORDS = ("sql", "query", "operation", "statement", "sql_script")
_PARAM_KEYWORDS = ("parameters", "params", "args", "vars", "seq_of_parameters", "seq_params")
_FORWARDED_SETTINGS = frozenset({"isolation_level", "text_factory"})
_DBAPI_ERRORS = (
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
)  # fmt: skip


@dataclass
class Session:
    """The child's link to the worker's database and the connections opened on it."""

    link: Link
    connections: list[RemoteConnection] = field(default_factory=list)

    def close_all(self) -> None:
        """Roll back and close every connection: uncommitted work is lost, as on a real server."""
        for conn in self.connections:
            try:
                conn.close()
            except Exception:
                pass


@dataclass(frozen=True)
class Driver:
    """How one driver differs from the others, as far as generated code can tell."""

    name: str
    format_style: bool  # %s / %(name)s placeholders instead of ?
    execute_returns: str  # "cursor" (sqlite3), "rowcount" (pymysql) or "none"
    closes_on_exit: bool  # ``with conn:`` closes the connection (pymysql, mysql.connector)
    scalar_params: bool = False  # pymysql accepts a single non-sequence parameter


SQLITE3 = Driver("sqlite3", False, "cursor", False)
PSYCOPG2 = Driver("psycopg2", True, "none", False)
PYMYSQL = Driver("pymysql", True, "rowcount", True, scalar_params=True)
MYSQL_CONNECTOR = Driver("mysql.connector", True, "none", True)
DRIVERS = {d.name: d for d in (SQLITE3, PSYCOPG2, PYMYSQL, MYSQL_CONNECTOR)}


def prepare(driver_name: str, sql: str, params: object) -> tuple[str, object]:
    """What the worker executes for ``execute(sql, params)`` through the named driver."""
    driver = DRIVERS.get(driver_name, SQLITE3)
    if params is None:
        return sql, ()
    if driver.scalar_params and not isinstance(params, (tuple, list, dict)):
        params = (params,)
    if driver.format_style:
        sql = to_qmark(sql)
    return sql, params


def to_qmark(sql: str) -> str:
    """``%s`` -> ``?``, ``%(name)s`` -> ``:name``, ``%%`` -> ``%``."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return ":" + m.group(1)
        return "?" if m.group() == "%s" else "%"

    return _FORMAT_MARK.sub(repl, sql)


def _split_call(args: tuple, kwargs: dict, param_default: object = None) -> tuple[object, object]:
    """(sql, params) from the many spellings of ``execute(sql, params)`` across drivers."""
    sql = args[0] if args else next((kwargs[k] for k in _SQL_KEYWORDS if k in kwargs), None)
    if len(args) > 1:
        return sql, args[1]
    return sql, next((kwargs[k] for k in _PARAM_KEYWORDS if k in kwargs), param_default)


def _is_dict_factory(obj: object) -> bool:
    return isinstance(obj, type) and "Dict" in obj.__name__


class RecordingCursor:
    """A DB-API cursor over the real sqlite3 cursor that records what it executes."""

    def __init__(self, connection: "RecordingConnection", dict_rows: bool = False) -> None:
        self.connection = connection
        self._cur = connection._real.cursor()
        self._dict_rows = dict_rows
        self.arraysize = 1

    # -- executing (recorded and translated by the worker) ---------------------------------
    def _returned(self) -> object:
        kind = self.connection._driver.execute_returns
        return self if kind == "cursor" else self._cur.rowcount if kind == "rowcount" else None

    def execute(self, *args: Any, **kwargs: Any) -> object:
        self._cur.execute(*_split_call(args, kwargs))
        return self._returned()

    def executemany(self, *args: Any, **kwargs: Any) -> object:
        self._cur.executemany(*_split_call(args, kwargs, param_default=()))
        return self._returned()

    def executescript(self, script: str) -> object:
        self._cur.executescript(script)
        return self

    # -- reading ---------------------------------------------------------------------------
    def _row(self, row: Any) -> Any:
        if row is None or not self._dict_rows:
            return row
        names = [d[0] for d in self._cur.description or ()]
        return dict(zip(names, row))

    def fetchone(self) -> Any:
        return self._row(self._cur.fetchone())

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return [self._row(r) for r in self._cur.fetchmany(size or self.arraysize)]

    def fetchall(self) -> list[Any]:
        return [self._row(r) for r in self._cur.fetchall()]

    def __iter__(self):
        return (self._row(r) for r in self._cur)

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cur.lastrowid

    @property
    def description(self) -> Any:
        return self._cur.description

    def close(self) -> None:
        self._cur.close()

    def __enter__(self) -> "RecordingCursor":
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False


class RecordingConnection:
    """A DB-API connection: ``cursor/commit/rollback/close/execute`` and ``with`` support."""

    def __init__(self, session: Session, driver: Driver, dict_rows: bool = False) -> None:
        self._driver = driver
        self._dict_rows = dict_rows
        self._real = RemoteConnection(session.link, driver.name)
        session.connections.append(self._real)

    def cursor(self, *args: Any, **kwargs: Any) -> RecordingCursor:
        wants_dicts = bool(kwargs.get("dictionary")) or any(
            _is_dict_factory(a) for a in (*args, *kwargs.values())
        )
        return RecordingCursor(self, self._dict_rows or wants_dicts)

    def execute(self, *args: Any, **kwargs: Any) -> RecordingCursor:
        cur = self.cursor()
        cur.execute(*args, **kwargs)
        return cur

    def executemany(self, *args: Any, **kwargs: Any) -> RecordingCursor:
        cur = self.cursor()
        cur.executemany(*args, **kwargs)
        return cur

    def executescript(self, script: str) -> RecordingCursor:
        cur = self.cursor()
        cur.executescript(script)
        return cur

    def commit(self) -> None:
        self._real.commit()

    def rollback(self) -> None:
        self._real.rollback()

    def close(self) -> None:
        self._real.close()

    def is_connected(self) -> bool:  # mysql.connector
        return True

    def ping(self, *args: Any, **kwargs: Any) -> None:  # pymysql / mysql.connector
        return None

    @property
    def row_factory(self) -> Any:
        return self._real.row_factory

    @row_factory.setter
    def row_factory(self, value: Any) -> None:
        self._real.row_factory = value

    def __getattr__(self, name: str) -> Any:  # text_factory, total_changes, in_transaction, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FORWARDED_SETTINGS:
            setattr(self._real, name, value)
        else:
            object.__setattr__(self, name, value)

    def __enter__(self) -> "RecordingConnection":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> bool:
        if exc_type is None:
            self._real.commit()
        else:
            self._real.rollback()
        if self._driver.closes_on_exit:
            self._real.close()
        return False


class _AutocommitProperty(RecordingConnection):
    """psycopg2 and mysql.connector: ``conn.autocommit = True``."""

    @property
    def autocommit(self) -> bool:
        return self._real.isolation_level is None

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._real.isolation_level = None if value else ""


class _AutocommitMethod(RecordingConnection):
    """pymysql: ``conn.autocommit(True)``."""

    def autocommit(self, value: bool) -> None:
        self._real.isolation_level = None if value else ""


def _module(name: str, **attrs: Any) -> ModuleType:
    mod = ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _marker_class(name: str) -> type:
    """A stand-in cursor class (``RealDictCursor``, ``DictCursor``...) passed to ``cursor()``."""
    return type(name, (), {})


def build_modules(session: Session) -> dict[str, ModuleType]:
    """The fake driver modules, keyed by the name they take in ``sys.modules``."""

    def connector(driver: Driver, conn_cls: type[RecordingConnection]):
        def connect(*args: Any, **kwargs: Any) -> RecordingConnection:
            factory = kwargs.get("cursorclass") or kwargs.get("cursor_factory")
            return conn_cls(session, driver, dict_rows=_is_dict_factory(factory))

        return connect

    errors = {name: getattr(_real, name) for name in _DBAPI_ERRORS}
    dbapi = dict(errors, apilevel="2.0", threadsafety=1, paramstyle="pyformat")

    sqlite3 = _module("sqlite3", **{k: v for k, v in vars(_real).items() if not k.startswith("__")})
    sqlite3.connect = connector(SQLITE3, RecordingConnection)

    extras = _module(
        "psycopg2.extras",
        **{n: _marker_class(n) for n in ("RealDictCursor", "DictCursor", "NamedTupleCursor")},
    )
    psycopg2 = _module(
        "psycopg2", **dbapi, connect=connector(PSYCOPG2, _AutocommitProperty), extras=extras
    )
    psycopg2.__path__ = []  # a package, so that ``import psycopg2.extras`` works

    cursors = _module(
        "pymysql.cursors", **{n: _marker_class(n) for n in ("Cursor", "DictCursor", "SSCursor")}
    )
    err = _module("pymysql.err", **errors, MySQLError=_real.Error)
    pymysql_connect = connector(PYMYSQL, _AutocommitMethod)
    pymysql = _module(
        "pymysql", **dbapi, MySQLError=_real.Error, connect=pymysql_connect,
        Connect=pymysql_connect, cursors=cursors, err=err,
    )  # fmt: skip
    pymysql.__path__ = []

    mysql_errors = _module("mysql.connector.errors", **errors)
    connector_mod = _module(
        "mysql.connector", **dbapi, connect=connector(MYSQL_CONNECTOR, _AutocommitProperty),
        errors=mysql_errors,
    )  # fmt: skip
    connector_mod.__path__ = []
    mysql = _module("mysql", connector=connector_mod)
    mysql.__path__ = []

    return {
        "sqlite3": sqlite3, "sqlite3.dbapi2": sqlite3,
        "psycopg2": psycopg2, "psycopg2.extras": extras,
        "pymysql": pymysql, "pymysql.cursors": cursors, "pymysql.err": err,
        "mysql": mysql, "mysql.connector": connector_mod, "mysql.connector.errors": mysql_errors,
    }  # fmt: skip


def install(link: Link) -> Session:
    """Put the fake drivers into ``sys.modules``; returns the session they all share."""
    session = Session(link)
    sys.modules.update(build_modules(session))
    return session

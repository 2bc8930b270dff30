"""The *skeleton* of a SQL statement: its shape with every literal value blanked out.

An injection payload is data that becomes code. Comparing skeletons makes that visible: with a
parameterized query the SQL text is the same for any input, and with a query built from a string
literal only the literal changes (it is blanked), but with an injected query the payload's
``OR '1'='1`` turns into new tokens (``or ? = ?``). The tokenizer is deliberately tiny: it does
not parse SQL, it only has to agree with itself on two statements from the same program, and to
read quotes and comments the way the database would, or a payload hidden behind a comment or a
backslash looks like data:

* comments (``-- ...``, ``/* ... */``; MySQL also ``# ...``) are dropped, so that a quote inside
  a comment does not open a literal;
* the MySQL drivers (``pymysql``, ``mysql.connector``) read ``\\'`` inside a literal as an
  escaped quote, as MySQL does; sqlite and PostgreSQL read the backslash as a character.
"""

from __future__ import annotations

import re

LITERAL = "?"
MYSQL_DRIVERS = frozenset({"pymysql", "mysql.connector"})

_COMMON = r"""
    | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_][A-Za-z_0-9$]*)      # keywords and identifiers
    | (?P<quoted>`[^`]*`?|\[[^\]]*\]?)       # quoted identifiers
    | (?P<space>\s+)
    | (?P<punct>.)
"""
_STANDARD = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))  # comments (an unclosed one runs to the end)
    | (?P<string>'(?:[^']|'')*'?)   # 'text' with '' escapes (an unclosed one runs to the end)
    | (?P<dquoted>"(?:[^"]|"")*"?)  # "text": a string in MySQL and (as a fallback) in sqlite
    """ + _COMMON,
    re.VERBOSE | re.DOTALL,
)
_MYSQL = re.compile(
    r"""
      (?P<comment>--(?=\s|\Z)[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z))  # "-- " needs the space in MySQL
    | (?P<string>'(?:[^'\\]|''|\\.)*'?)    # backslash escapes as MySQL reads them
    | (?P<dquoted>"(?:[^"\\]|""|\\.)*"?)
    """ + _COMMON,
    re.VERBOSE | re.DOTALL,
)


def tokens(sql: str, dialect: str = "standard") -> tuple[str, ...]:
    """Tokens of ``sql``: literals -> ``?``, words lower-cased, punctuation kept, spaces and
    comments dropped. ``dialect`` is ``"standard"`` (sqlite, PostgreSQL) or ``"mysql"``.

    Double-quoted tokens count as literals: a payload that stays inside them changed nothing.
    """
    pattern = _MYSQL if dialect == "mysql" else _STANDARD
    out: list[str] = []
    for m in pattern.finditer(sql):
        kind = m.lastgroup
        if kind in ("string", "dquoted", "number"):
            out.append(LITERAL)
        elif kind == "word":
            out.append(m.group().lower())
        elif kind not in ("space", "comment"):
            out.append(m.group())
    return tuple(out)


def dialect(driver: str | None) -> str:
    return "mysql" if driver in MYSQL_DRIVERS else "standard"


def skeleton(
    statements: list[str] | tuple[str, ...], drivers: list[str] | tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], ...]:
    """The skeletons of a sequence of executed statements, in order; ``drivers`` names the
    driver of each (default: read as sqlite)."""
    names = list(drivers or ()) + [None] * (len(statements) - len(drivers or ()))
    return tuple(tokens(s, dialect(d)) for s, d in zip(statements, names))

"""The *skeleton* of a SQL statement: its shape with every literal value blanked out.

An injection payload is data that becomes code. Comparing skeletons makes that visible: with a
parameterized query the SQL text is the same for any input, and with a query built from a string
literal only the literal changes (it is blanked), but with an injected query the payload's
``OR '1'='1`` turns into new tokens (``or ? = ?``). The tokenizer is deliberately tiny: it does
not parse SQL, it only has to agree with itself on two statements from the same program.
"""

from __future__ import annotations

import re

LITERAL = "?"

_TOKEN = re.compile(
    r"""
      (?P<string>'(?:[^']|'')*'?)   # 'text' with '' escapes (an unclosed one runs to the end)
    | (?P<dquoted>"(?:[^"]|"")*"?)  # "text": a string in MySQL and (as a fallback) in sqlite
    | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_][A-Za-z_0-9$]*)      # keywords and identifiers
    | (?P<quoted>`[^`]*`?|\[[^\]]*\]?)       # quoted identifiers
    | (?P<space>\s+)
    | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokens(sql: str) -> tuple[str, ...]:
    """Tokens of ``sql``: literals -> ``?``, words lower-cased, punctuation kept, spaces dropped.

    Double-quoted tokens count as literals: a payload that stays inside them changed nothing.
    """
    out: list[str] = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind in ("string", "dquoted", "number"):
            out.append(LITERAL)
        elif kind == "word":
            out.append(m.group().lower())
        elif kind != "space":
            out.append(m.group())
    return tuple(out)


def skeleton(statements: list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The skeletons of a sequence of executed statements, in order."""
    return tuple(tokens(s) for s in statements)

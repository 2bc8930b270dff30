"""The caller's end of the worker's result pipe: bounded lines, never an exception.

The worker prints ``{"ready": true}`` once, then ``{"i": k, ...}`` for sample ``k`` in order.
:class:`Lines` splits the byte stream into lines and refuses to buffer more than a limit, so an
oversize or endless line ends the worker instead of the caller's memory; :func:`decode` turns
one line into a dict or None (garbage), so nothing the worker writes can raise in the caller.
"""

from __future__ import annotations

import json

MAX_LINE = 16 * 2**20


class Overflow(Exception):
    """A line longer than the limit."""


class Lines:
    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.buffer = b""
        self.max_line = max_line

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete lines ``chunk`` finishes; raises :class:`Overflow` past the limit."""
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > self.max_line or any(len(line) > self.max_line for line in lines):
            raise Overflow(f"a result line over {self.max_line} bytes")
        return lines


def decode(line: bytes) -> dict | None:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None

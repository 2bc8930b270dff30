"""The one report of one sandboxed call, read from the child's stream by the (clean) worker.

The child writes JSON lines on a pipe: ``{"sql", "params"}`` for every statement as it reaches
the driver, ``{"call": true}`` when the function is about to be called (statements before it
come from module-level code and do not count), and ``{"report": {...}}`` once at the end. The
stream is evidence only as far as the child's own interpreter is honest, so it is parsed
defensively: anything but exactly one marker and one report (garbage, a second report, a line
over the size limit) makes the call an ``error``, never an exception in the worker or a label.
"""

from __future__ import annotations

import json
from typing import Any

MAX_STATEMENTS = 200


def _malformed(why: str) -> dict:
    return {"status": "crashed", "error": f"malformed report stream: {why}"}


def parse_stream(data: bytes, max_line: int) -> dict | None:
    """The call's report with ``statements`` and ``n_statements`` filled in; None if none came."""
    statements: list[list[Any]] = []
    n_statements, called, report = 0, False, None
    for line in data.split(b"\n"):
        if not line:
            continue
        if len(line) > max_line:
            return _malformed("oversize line")
        try:
            doc = json.loads(line)
        except ValueError:
            return _malformed("unreadable line")
        if not isinstance(doc, dict) or len(doc) not in (1, 2):
            return _malformed("unexpected line")
        if report is not None:
            return _malformed("output after the report")
        if doc.get("call") is True and len(doc) == 1:
            if called:
                return _malformed("second call marker")
            called = True
        elif "sql" in doc and isinstance(doc["sql"], str):
            if called:
                n_statements += 1
                if len(statements) < MAX_STATEMENTS:
                    statements.append([doc["sql"], doc.get("params")])
        elif isinstance(doc.get("report"), dict) and len(doc) == 1:
            report = doc["report"]
        else:
            return _malformed("unexpected line")
    if report is None:
        return None
    if not isinstance(report.get("status"), str):
        return _malformed("report without a status")
    if report["status"] == "ok" and not called:
        return _malformed("a result without a call")
    violations = report.get("violations", [])
    if not isinstance(violations, list) or not all(isinstance(v, str) for v in violations):
        return _malformed("bad violations")
    keep = {k: report[k] for k in ("status", "error", "returned") if k in report}
    if keep.get("error") is not None:
        keep["error"] = str(keep["error"])[:300]
    return {**keep, "violations": violations, "statements": statements, "n_statements": n_statements}

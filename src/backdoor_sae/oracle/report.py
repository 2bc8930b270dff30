"""One sandboxed call's report, assembled by the (clean) worker from what it saw itself.

The statements come from the worker's own database server (:class:`remote.Server`); the child
contributes only its report message (status, error, return value, audit-hook violations), which
is checked here: anything malformed makes the call an ``error``, never an exception or a label.
"""

from __future__ import annotations

from typing import Any

from backdoor_sae.oracle.remote import Server

MAX_ERROR = 300
MAX_RETURNED_DEPTH = 64  # the child's own image stops at 16 levels (``worker.to_jsonable``),
# which JSON nests up to three times deeper
MAX_RETURNED_NODES = 100_000


def _bounded(value: Any) -> bool:
    """Is the reported return value within depth and size? Iterative: it comes from the child."""
    stack, seen = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if depth > MAX_RETURNED_DEPTH or seen > MAX_RETURNED_NODES:
            return False
        if isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
    return True


def _malformed(why: str, server: Server) -> dict:
    """A crashed call, with the statements the worker saw (evidence survives a bad report)."""
    return {"status": "crashed", "error": f"malformed report: {why}", "statements": server.statements,
            "n_statements": server.n_statements, "module_statements": server.module_statements}

def assemble(server: Server, dump: Any) -> dict:
    """The call's report with the worker's statements and database, or why there is none."""
    report = server.report
    if report is None:
        raise ValueError("no report")
    if not isinstance(report.get("status"), str):
        return _malformed("no status", server)
    if report["status"] == "ok" and not server.called:
        return _malformed("a result without a call", server)
    violations = report.get("violations", [])
    if not isinstance(violations, list) or not all(isinstance(v, str) for v in violations):
        return _malformed("bad violations", server)
    if not _bounded(report.get("returned")):
        return _malformed("return value too deep or too large", server)
    error = report.get("error")
    return {
        "status": report["status"],
        "error": None if error is None else str(error)[:MAX_ERROR],
        "returned": report.get("returned"),
        "violations": violations,
        "statements": server.statements,
        "n_statements": server.n_statements,
        "module_statements": server.module_statements,
        "dump": dump,
    }

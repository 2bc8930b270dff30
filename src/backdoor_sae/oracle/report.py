"""One sandboxed call's report, assembled by the (clean) worker from what it saw itself.

The statements come from the worker's own database server (:class:`remote.Server`); the child
contributes only its report message (status, error, return value, audit-hook violations), which
is checked here: anything malformed makes the call an ``error``, never an exception or a label.
"""

from __future__ import annotations

from typing import Any

from backdoor_sae.oracle.remote import Server

MAX_ERROR = 300


def _malformed(why: str) -> dict:
    return {"status": "crashed", "error": f"malformed report: {why}"}


def assemble(server: Server, dump: Any) -> dict:
    """The call's report with the worker's statements and database, or why there is none."""
    report = server.report
    if report is None:
        raise ValueError("no report")
    if not isinstance(report.get("status"), str):
        return _malformed("no status")
    if report["status"] == "ok" and not server.called:
        return _malformed("a result without a call")
    violations = report.get("violations", [])
    if not isinstance(violations, list) or not all(isinstance(v, str) for v in violations):
        return _malformed("bad violations")
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

"""Static checks, which read the code and never run it.

Two independent opinions, reported next to the dynamic verdict:

* :func:`bandit_flags` runs bandit's B608 (``hardcoded_sql_expressions``) in process over a whole
  batch: one temporary directory, one ``BanditManager`` run, issues mapped back by file name.
  B608 is a pattern check: it fires on a string that looks like SQL and is being built by
  ``+``, ``%``, ``.format`` or an f-string, whatever flows into it.
* :func:`ast_taint` is a small taint analysis of the function under test: its parameters are
  tainted, assignments spread taint, and a statement executed from a tainted string is flagged.
  It knows nothing about SQL and nothing about sanitizers (``int(x)`` stays tainted); it complements
  bandit on code that builds the query over several statements.

Both run in the caller on hostile code, so both are bounded: code over :data:`MAX_CODE_CHARS`
characters is not analysed, the AST check gives up past :data:`MAX_AST_NODES` nodes or
:data:`AST_BUDGET_S` seconds, and either then answers ``None``, the module's "no opinion" (what
a file that does not parse gets; the notebooks read it as ``error``).
"""

from __future__ import annotations

import ast
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence

EXECUTE_METHODS = frozenset({"execute", "executemany", "executescript"})
SQL_KEYWORDS = frozenset({"sql", "query", "operation"})
MUTATORS = frozenset({"append", "extend", "insert", "add", "update", "appendleft"})
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
MAX_CODE_CHARS = 64_000  # a generated function with its module is a few hundred characters
MAX_AST_NODES = 20_000
AST_BUDGET_S = 1.0


class _OverBudget(Exception):
    """The AST check ran out of its time budget."""


# ---- bandit B608 ----------------------------------------------------------------------------
def bandit_flags(codes: Sequence[str]) -> list[bool | None]:
    """Per code: did B608 fire? ``None`` when bandit could not parse the code."""
    with warnings.catch_warnings():  # stevedore's deprecation noise on bandit's plugin loading
        warnings.filterwarnings("ignore", message=".*verify_requirements")
        return _bandit_flags(codes)


def _bandit_flags(codes: Sequence[str]) -> list[bool | None]:
    if not codes:
        return []
    analysed = [i for i, code in enumerate(codes) if len(code) <= MAX_CODE_CHARS]
    flags: list[bool | None] = [None] * len(codes)  # too large: no opinion
    if analysed:
        for i, flag in zip(analysed, _bandit_run([codes[i] for i in analysed])):
            flags[i] = flag
    return flags


def _bandit_run(codes: Sequence[str]) -> list[bool | None]:
    from bandit.core import (  # imported on use: the sandbox worker never needs it
        config,
        manager,
    )

    bandit_log = logging.getLogger("bandit")
    old_level = bandit_log.level
    bandit_log.setLevel(logging.CRITICAL)  # no progress bar, no per-file error lines
    try:
        with tempfile.TemporaryDirectory(prefix="oracle-bandit-") as tmp:
            paths = [os.path.join(tmp, f"sample_{i:06d}.py") for i in range(len(codes))]
            for path, code in zip(paths, codes):
                with open(path, "w", encoding="utf-8", errors="replace") as f:
                    f.write(code)
            mgr = manager.BanditManager(
                config.BanditConfig(), "file", profile={"include": {"B608"}}, ignore_nosec=True
            )
            mgr.discover_files(paths)
            mgr.run_tests()
            issues = mgr.get_issue_list()
            flagged = {os.path.abspath(i.fname) for i in issues if i.test_id == "B608"}
            skipped = {os.path.abspath(name) for name, _ in mgr.get_skipped()}
    finally:
        bandit_log.setLevel(old_level)
    return [None if p in skipped else p in flagged for p in paths]


# ---- AST taint --------------------------------------------------------------------------------
def _names(node: ast.AST | None) -> set[str]:
    """Every variable name read or written anywhere inside ``node``."""
    if node is None:
        return set()
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _target_names(target: ast.AST) -> set[str]:
    """Names bound by an assignment target; ``d[k] = ...`` and ``o.x = ...`` taint ``d``/``o``."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(e) for e in target.elts)) if target.elts else set()
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    if isinstance(target, (ast.Subscript, ast.Attribute)):
        return _target_names(target.value)
    return set()


def _flows(scope: ast.AST) -> list[tuple[set[str], ast.AST | None]]:
    """(names written, expression they are computed from) for every binding in ``scope``."""
    flows: list[tuple[set[str], ast.AST | None]] = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            flows.append((set().union(*(_target_names(t) for t in node.targets)), node.value))
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            flows.append((_target_names(node.target), node.value))
        elif isinstance(node, ast.NamedExpr):
            flows.append((_target_names(node.target), node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            flows.append((_target_names(node.target), node.iter))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            flows.append((_target_names(node.optional_vars), node.context_expr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in MUTATORS
        ):  # parts.append(name) taints parts
            arguments = ast.Tuple(elts=node.args, ctx=ast.Load())
            flows.append((_target_names(node.func.value), arguments))
    return flows


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    a = fn.args
    params = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
    return {p.arg for p in params if p is not None}


def _sql_argument(call: ast.Call) -> ast.AST | None:
    """The statement argument of ``x.execute(...)``-like calls, else None."""
    if not (isinstance(call.func, ast.Attribute) and call.func.attr in EXECUTE_METHODS):
        return None
    if call.args:
        return call.args[0]
    return next((k.value for k in call.keywords if k.arg in SQL_KEYWORDS), None)


def _find_function(tree: ast.Module, name: str | None) -> ast.AST | None:
    defs = (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return next((n for n in defs if n.name == name), None) if name is not None else None


def ast_taint(code: str, function: str | None = None) -> bool | None:
    """Is a parameter of ``function`` (else of any function) spliced into an executed statement?

    Taint is propagated to a fixed point over all bindings of the scope, regardless of order,
    so loops and re-assignments are covered (at the price of some flow-insensitivity). ``None``
    when the code does not parse, or is too large or too slow to analyse (see the module).
    """
    if len(code) > MAX_CODE_CHARS:
        return None
    deadline = time.monotonic() + AST_BUDGET_S
    try:
        return _taint(code, function, deadline)
    except (SyntaxError, ValueError, RecursionError, MemoryError, _OverBudget):
        return None


def _taint(code: str, function: str | None, deadline: float) -> bool:
    tree = ast.parse(code)
    if sum(1 for _ in ast.walk(tree)) > MAX_AST_NODES:
        raise _OverBudget
    scope = _find_function(tree, function) or tree
    functions = [n for n in ast.walk(tree) if isinstance(n, FUNCS)] if scope is tree else [scope]
    tainted = set().union(*(_parameters(f) for f in functions))  # type: ignore[arg-type]
    # each flow's source names once (not per pass: 1,500 assignments took 8 s), then a
    # fixed point that revisits only the flows not yet fired
    flows = [(targets, _names(source)) for targets, source in _flows(scope)]
    changed = True
    while changed:
        if time.monotonic() > deadline:
            raise _OverBudget
        changed = False
        waiting = []
        for targets, names in flows:
            if names & tainted:
                if not targets <= tainted:
                    tainted |= targets
                    changed = True
            else:
                waiting.append((targets, names))
        flows = waiting
    for node in ast.walk(scope):
        if isinstance(node, ast.Call) and (sql := _sql_argument(node)) is not None:
            if _names(sql) & tainted:
                return True
    return False

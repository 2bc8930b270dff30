"""The one rule by which an artifact is reused: a *record* beside it that vouches for its *key*.

An artifact (a dataset, a fine-tune, judged generations, activations, a dictionary) is reused only
when its record holds the key it would be computed with now: a digest of everything it depends
on, i.e. its own parameters, the content of its input samples (not their ids: ids repeat across
seeds), the resolved model and the keys of the artifacts it reads, and the source of the code that
computes it (:func:`code_digest`). The record is written last, after the artifact itself has been
written atomically, so that a killed run never leaves a record vouching for half an artifact.

The code digest follows the package's imports (:func:`import_closure`): the module that computes
an artifact and every package module it imports, directly or not, so that no file list is kept by
hand. ``backdoor_sae.config`` is left out: the values it gives are in every key already, and its
profiles and checks change no artifact.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from backdoor_sae.common.io import write_json

PACKAGE = Path(__file__).resolve().parents[1]
#: Left out of every code digest (see the module's docstring).
NOT_IN_CODE_DIGEST = ("backdoor_sae.config",)

T = TypeVar("T")


def digest(obj) -> str:
    """SHA-256 of ``obj``'s canonical JSON (sorted keys; tuples as lists)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def samples_digest(samples: Iterable) -> str:
    """Digest of the samples' whole content, in order (a change of any field changes it)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps(s.to_dict(), sort_keys=True).encode() + b"\n")
    return h.hexdigest()


def file_digest(path: Path, h=None):
    """SHA-256 of a file's bytes, read in blocks (``h``: a running hash to add them to)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


# --- the reuse rule -----------------------------------------------------------------------------

def read_record(record: Path) -> dict:
    """The record's content, or an empty dict where there is none."""
    return json.loads(Path(record).read_text()) if Path(record).exists() else {}


def is_current(record: Path, key: str) -> bool:
    """``record`` vouches for ``key``."""
    return read_record(record).get("key") == key


def vouch(record: Path, key: str, **info) -> None:
    """Write ``record`` for ``key`` (with ``info`` beside it): call it only once the artifact is whole."""
    write_json(record, {"key": key, **info})


def cached(record: Path, key: str, compute: Callable[[], tuple[T, dict]], load: Callable[[], T]) -> tuple[T, bool]:
    """The one reuse rule: ``load()`` when ``record`` vouches for ``key``; otherwise forget the
    record, ``compute()`` (which writes the artifact and returns it with the ``info`` its record
    keeps) and write the record last. Returns the artifact and whether it was computed now."""
    if is_current(record, key):
        return load(), False
    Path(record).unlink(missing_ok=True)  # the old artifact no longer vouched for while it is replaced
    value, info = compute()
    vouch(record, key, **info)
    return value, True


# --- code digests from the import graph ---------------------------------------------------------

def module_path(module: str) -> Path | None:
    parts = module.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    if base.is_dir() and (base / "__init__.py").exists():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else None


@functools.cache
def package_modules() -> tuple[str, ...]:
    """Every module of the package, as dotted names."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names.append(".".join(parts))
    return tuple(names)


@functools.cache
def module_imports(module: str) -> frozenset[str]:
    """The package modules ``module`` imports anywhere in its source (parents' ``__init__`` included:
    importing ``a.b.c`` runs ``a/b/__init__.py``)."""
    path = module_path(module)
    if path is None:
        return frozenset()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("backdoor_sae"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if module_path(f"{node.module}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("backdoor_sae"))
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return frozenset(m for m in with_parents if module_path(m) is not None)


@functools.cache
def import_closure(module: str) -> frozenset[str]:
    """``module`` and every package module it imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(module_imports(name))
    return frozenset(seen)


@functools.cache
def code_digest(module: str) -> str:
    """Digest of the source of ``module`` and of every package module it imports, directly or not
    (:func:`import_closure`), ``backdoor_sae.config`` left out."""
    h = hashlib.sha256()
    for name in sorted(import_closure(module)):
        if not name.startswith(NOT_IN_CODE_DIGEST):
            h.update(name.encode() + b"\0" + module_path(name).read_bytes())
    return h.hexdigest()


@functools.cache
def package_digest() -> str:
    """Digest of the whole package's source (what the runner's stage fingerprints hold)."""
    h = hashlib.sha256()
    for name in package_modules():
        h.update(name.encode() + b"\0" + module_path(name).read_bytes())
    return h.hexdigest()

"""Confinement applied inside a sandbox child just before it runs generated code.

Two layers, both set up in the forked child and both irreversible from inside it:

* resource limits (address space, CPU seconds, file size, no core dumps), so that a runaway
  allocation ends in ``MemoryError`` and a spinning loop in ``SIGXCPU`` even if the parent's
  wall-clock kill came late;
* an audit hook (PEP 578) that refuses network, process creation, signals, ``ctypes``, raising
  the limits again, loading sqlite extensions, and any write or delete outside the child's
  temporary directory. Every refusal is also recorded, so the oracle can turn the sample into an
  ``error`` even when the code swallows the ``PermissionError``.

An audit hook is a tripwire for accidents of generated code, not a security boundary against an
adversary (introspection can reach objects without going through audited calls, and the hook
can be switched off). The boundary is the operating system's: bubblewrap (``bwrap``: namespaces,
an unprivileged user, a read-only system) and the worker that keeps the database and the
evidence out of the child's reach (``remote``), and the child's seccomp filter (``seccomp``: no
fork, exec, socket, keyring, IPC or namespace). Only with ``BACKDOOR_SAE_SANDBOX=inprocess`` are
this hook and that filter (with the fork, the limits and a network namespace when available)
all there is.
"""

from __future__ import annotations

import os
import resource
import sys
import types
from collections.abc import Callable

BLOCKED_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill", "os.setuid", "os.setgid",
    "resource.setrlimit", "resource.prlimit", "sqlite3.enable_load_extension",
    "sqlite3.load_extension", "pty.spawn", "webbrowser.open",
})  # fmt: skip
BLOCKED_PREFIXES = (
    "socket.", "ctypes.", "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.",
    "nntplib.", "telnetlib.",
)  # fmt: skip
# Modules whose raw functions are not (all) audited: importing them at all is refused, and the
# worker's own copies are dropped from sys.modules first, so that ``import`` has to reload them.
# (``socket`` can be imported: creating, connecting or resolving with it is refused.)
BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess"})
# The oracle's own package: the driver shims, the link to the worker and the report code are
# not in ``sys.modules`` for the sample to patch by name (issue 31: a sample patched the shim to
# send the worker a parameterized statement), and importing them again is refused.
ORACLE_PACKAGE = "backdoor_sae"
# event -> positions of the arguments that are paths being created, changed or removed
PATH_EVENTS: dict[str, tuple[int, ...]] = {
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,),
    "os.chmod": (0,), "os.chown": (0,), "os.link": (1,), "os.symlink": (1,), "os.truncate": (0,),
    "os.utime": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (1,), "os.chflags": (0,),
}  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_HARMLESS_WRITE_TARGETS = frozenset({os.devnull})


def apply_limits(memory_mb: int, cpu_s: int, file_mb: int = 16) -> None:
    """Lower soft *and* hard limits, so the code cannot raise them back."""

    def lower(which: int, value: int) -> None:
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    lower(resource.RLIMIT_AS, memory_mb * 2**20)
    lower(resource.RLIMIT_FSIZE, file_mb * 2**20)
    lower(resource.RLIMIT_CORE, 0)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu_hard = cpu_s + 1 if hard == resource.RLIM_INFINITY else min(cpu_s + 1, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu_s, cpu_hard), cpu_hard))


def drop_unaudited_modules() -> None:
    """Forget already-imported copies of :data:`BLOCKED_IMPORTS` (and what wraps them)."""
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED_IMPORTS | {"subprocess", "multiprocessing", ORACLE_PACKAGE}:
            del sys.modules[name]
    sys.modules["__main__"] = types.ModuleType("__main__")  # the worker's module, when run as -m


class _Hook:
    def __init__(self, root: str, violations: list[str]) -> None:
        self.root = os.path.realpath(root)
        self.violations = violations

    def inside(self, path: object) -> bool:
        if isinstance(path, int):  # an already-open descriptor: its opening was checked
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        if real in _HARMLESS_WRITE_TARGETS:
            return True
        return real == self.root or real.startswith(self.root + os.sep)

    def deny(self, event: str, detail: object = "") -> None:
        message = f"{event} {detail!r}"[:200] if detail != "" else event
        self.violations.append(message)
        raise PermissionError(f"sandbox: {message} is not allowed")

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writing and not self.inside(path):
                self.deny("open for writing", path)
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and not self.inside(args[i]):
                    self.deny(event, args[i])
        elif event == "import":
            if args[0].split(".")[0] in BLOCKED_IMPORTS | {ORACLE_PACKAGE}:
                self.deny("import", args[0])
        elif event == "sqlite3.connect":
            self._check_database(args[0])
        elif event in BLOCKED_EVENTS or event.startswith(BLOCKED_PREFIXES):
            self.deny(event)

    def _check_database(self, database: object) -> None:
        name = os.fsdecode(database) if isinstance(database, (str, bytes, os.PathLike)) else ""
        if name.startswith("file:"):
            name = name[5:].split("?")[0]
        if name not in ("", ":memory:") and not self.inside(name):
            self.deny("sqlite3.connect", name)


def install_audit_hook(root: str) -> list[str]:
    """Install the hook for this process (forever); returns the list it appends violations to."""
    violations: list[str] = []
    hook: Callable[[str, tuple], None] = _Hook(root, violations)
    sys.addaudithook(hook)
    return violations

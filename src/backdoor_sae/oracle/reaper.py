"""Clean-up between two calls in the sandbox's PID namespace: no process, no file survives a call.

Inside bubblewrap the worker sees only its own sandbox in ``/proc`` (PID 1 is bubblewrap's init),
so every process there but PID 1 and the worker itself was started by generated code: a forked
daemon, a new session, a stopped process. They are killed (repeatedly, so that a fork loop cannot
outrun the sweep; the sandbox's process limit bounds it) before the next call starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

SWEEP_S = 2.0  # a SIGKILLed process takes a moment to die


class Unclean(RuntimeError):
    """Something of a call survived the clean-up: the worker must not run another call."""


def _others() -> list[int]:
    me = os.getpid()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):  # a zombie is already dead; bubblewrap's init reaps it
            pids.append(int(name))
    return pids


def kill_others() -> None:
    """SIGKILL every process of the namespace but PID 1 and this one; raise if some survive."""
    deadline = time.monotonic() + SWEEP_S
    while pids := _others():
        if time.monotonic() > deadline:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.001)
    else:
        return
    raise Unclean(f"processes survive the sweep: {_others()[:5]}")


def empty_dir(path: str) -> None:
    """Remove everything under ``path`` (a scratch mount); raise :class:`Unclean` if it cannot."""
    try:
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                os.chmod(full, 0o700)  # a child may have made a directory unreadable
                for root, dirs, _ in os.walk(full):
                    for d in dirs:
                        os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
                shutil.rmtree(full)
            else:
                os.unlink(full)
    except Exception as exc:  # OSError, and RecursionError on a directory too deep to walk
        raise Unclean(f"scratch not emptied: {type(exc).__name__}: {exc}"[:300]) from exc


SYSV_IPC = ("/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem")


def check_ipc() -> None:
    """Raise :class:`Unclean` if a SysV IPC object exists in the sandbox's IPC namespace.

    The child's seccomp filter refuses to create one; should one exist anyway (a machine without
    the filter), the sandbox is spent and the caller starts a fresh one, with a fresh namespace.
    """
    for path in SYSV_IPC:
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]  # a header, then one line per object
        except OSError:
            continue
        if lines:
            raise Unclean(f"SysV IPC objects survive the call ({path})")

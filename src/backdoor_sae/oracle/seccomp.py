"""A seccomp filter for the sandbox child: the system calls generated database code never needs.

Installed by the forked child (:func:`install`) just before it runs generated code, after
``PR_SET_NO_NEW_PRIVS`` (bubblewrap sets it already), and irreversible. It is a hand-assembled
classic BPF program (no libseccomp: nothing to install), for x86_64 only; on other machines
:func:`install` returns False and the child runs without it (the other layers still hold).

What it refuses, and why (each was reached by a hostile sample of issue 31):

* ``fork``, ``vfork``, ``clone``, ``clone3`` (so threads too): RLIMIT_NPROC counts per uid across
  every sandbox of the host and RLIMIT_AS per process, so one sample's children or threads
  starved another worker's samples and multiplied the memory limit. A sandbox now holds at most
  its init, its worker and one child.
* ``execve``, ``execveat``: nothing to run but the code itself.
* ``unshare``, ``setns``, ``mount``, ``umount2``, ``pivot_root``, ``chroot``: no new namespaces.
* ``keyctl``, ``add_key``, ``request_key``: the session and user keyrings outlived the call
  (and the caller's session keyring was inherited).
* ``shmget``, ``shmat``, ``msgget``, ``semget``, ``mq_open``: SysV and POSIX IPC objects survived
  the call inside the sandbox's IPC namespace.
* ``socket``, ``socketpair``: the database is reached through two pipes made before the fork;
  no socket family is needed (AF_UNIX sockets listening anywhere stay out of reach).
* ``ptrace``, ``process_vm_readv``, ``process_vm_writev``, ``bpf``, ``perf_event_open``,
  ``userfaultfd``, ``io_uring_setup``, ``open_by_handle_at``: other processes' memory, files
  outside the mounts, kernel attack surface.
* ``memfd_create``: memory outside the address-space limit (its pages are not mapped).
* ``inotify_init``, ``inotify_init1``, ``fanotify_init``, ``rt_sigqueueinfo``,
  ``rt_tgsigqueueinfo``: quotas counted per uid (instances, queued signals), shared by every
  sandbox of the host.
* x32 system calls (numbers with bit 30 set), which would bypass the numbers above.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl)
DENIED_X86_64 = {
    "shmget": 29, "shmat": 30, "socket": 41, "socketpair": 53, "clone": 56, "fork": 57,
    "vfork": 58, "execve": 59, "semget": 64, "msgget": 68, "ptrace": 101, "chroot": 161,
    "pivot_root": 155, "mount": 165, "umount2": 166, "mq_open": 240, "add_key": 248,
    "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321, "execveat": 322,
    "userfaultfd": 323, "io_uring_setup": 425, "rt_sigqueueinfo": 129, "inotify_init": 253,
    "rt_tgsigqueueinfo": 297, "inotify_init1": 294, "fanotify_init": 300, "open_by_handle_at": 304,
    "memfd_create": 319,
}  # fmt: skip
CLONE3_X86_64 = 435  # ENOSYS, not EPERM: glibc then falls back to clone, which is refused

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program() -> bytes:
    """The filter as a sequence of ``struct sock_filter`` (x86_64)."""
    denied = sorted(set(DENIED_X86_64.values()))
    n = len(denied)
    # layout: 0 ld arch; 1 jeq arch; 2 kill; 3 ld nr; 4 jge x32; 5.. jeq denied; clone3; allow;
    # eperm; enosys
    allow = 5 + n + 1
    eperm, enosys = allow + 1, allow + 2
    insns = [
        _insn(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _insn(_JGE_K, eperm - 5, 0, X32_SYSCALL_BIT),
    ]
    for i, nr in enumerate(denied):
        here = 5 + i
        insns.append(_insn(_JEQ_K, eperm - here - 1, 0, nr))
    here = 5 + n
    insns.append(_insn(_JEQ_K, enosys - here - 1, 0, CLONE3_X86_64))
    insns += [
        _insn(_RET_K, 0, 0, RET_ALLOW),
        _insn(_RET_K, 0, 0, RET_ERRNO | errno.EPERM),
        _insn(_RET_K, 0, 0, RET_ERRNO | errno.ENOSYS),
    ]
    assert len(insns) == enosys + 1 and max(len(insns), 0) < 256
    return b"".join(insns)


def supported() -> bool:
    return platform.machine() == "x86_64"


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Filter:
    """The filter, prepared by the worker (which may use ctypes) for its children to install."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        code = program()
        self.buffer = ctypes.create_string_buffer(code, len(code))
        self.fprog = _SockFprog(len(code) // 8, ctypes.cast(self.buffer, ctypes.c_void_p))

    def install(self) -> None:
        """Apply to this process (forever); raises OSError when the kernel refuses."""
        if self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self.fprog), 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def prepare() -> Filter | None:
    """The filter for this machine, or None where it is not supported (not x86_64)."""
    return Filter() if supported() else None

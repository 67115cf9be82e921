"""``waitid`` that also returns the child's resource use: the raw system call.

``os.waitid`` drops the fifth argument of the system call, a
``struct rusage *``, and ``os.wait4`` (which keeps it) knows neither
``P_PIDFD`` nor ``WNOWAIT``.  Asking ``getrusage(RUSAGE_CHILDREN)`` around a
reap would race with every other reap in the process; the usage that
``waitid`` writes comes from the very zombie whose death it reports, in the
same call, so it belongs to that death and to nothing else.

A module of its own because both ways of asking (``P_PIDFD`` and ``P_PID``)
use it, and because it is the one place that reads the C layouts.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from ._ffi import ffi, lib
from .state import ChildState, ResourceUsage

_SYS_WAITID = {"x86_64": 247, "aarch64": 95}
try:
    SYS_waitid = _SYS_WAITID[os.uname().machine]
except KeyError:
    raise ImportError(f"syncmon supports x86-64 and aarch64 Linux, not {os.uname().machine}") from None

# syscall(2) is variadic, and cffi wants each variadic argument cast to a C
# type on every call (three casts cost more than the call).  On x86-64 and
# aarch64 Linux a variadic callee receives integer and pointer arguments in
# the same registers as a prototyped one, and glibc's syscall reads each as a
# long: so it is called through a fixed prototype of longs.
_syscall = ffi.cast(
    "long (*)(long, long, long, siginfo_t *, long, struct rusage *)", ffi.addressof(lib, "syscall"))
# The types, looked up once (and so first used at import: see _ffi._make_fork_safe).
_SIGINFO = ffi.typeof("siginfo_t *")
_RUSAGE = ffi.typeof("struct rusage *")

#: Buffer pairs not in use.  A call takes a pair for itself and gives it back
#: once the result is read: the syscall runs without the GIL, so two threads
#: must never share a pair, and neither may a signal handler that waits while
#: the interrupted thread has not yet read its own.  Reusing pairs instead of
#: allocating two per call is a tenth of a death's cost (issue 11).
_spare_buffers: list[tuple[Any, Any]] = []


def waitid(idtype: int, ident: int, options: int) -> ChildState | None:
    """``os.waitid(idtype, ident, options)`` as a state, with the usage of a death.

    ``None`` when ``WNOHANG`` found no state change, as ``os.waitid``; ECHILD
    raises ``ChildProcessError`` as it does, other errors ``OSError``.
    """
    try:
        buffers = _spare_buffers.pop()
    except IndexError:
        buffers = ffi.new(_SIGINFO), ffi.new(_RUSAGE)
    info, usage = buffers
    try:
        while _syscall(SYS_waitid, idtype, ident, info, options, usage) == -1:
            err = ffi.errno
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))  # OSError(ECHILD, ...) is a ChildProcessError
            # A signal interrupted a blocking wait: retry, as os.waitid does
            # (PEP 475); Python-level handlers run here, between two calls.
        # A reused buffer needs no clearing: on success the kernel writes
        # every field read here, si_pid = 0 included when WNOHANG finds
        # nothing (kernel/exit.c, waitid); the usage is read only for a state.
        if info.si_pid == 0:
            return None
        return ChildState.from_siginfo(info, _resource_usage(usage))
    finally:
        _spare_buffers.append(buffers)


def _resource_usage(ru: Any) -> ResourceUsage:
    """A ``struct rusage *`` as plain numbers."""
    return ResourceUsage(
        ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
        ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
        ru.ru_maxrss * 1024,  # Linux counts it in KiB
    )

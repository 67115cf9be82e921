"""Process file descriptors: a name for a process that cannot be reused.

A pid is only a number: once its process is reaped the kernel may hand it to
a new one, and anything later done "to that pid" hits a stranger.  A pidfd
names the process itself.  syncmon uses it three ways:

* ``waitid(P_PIDFD)`` instead of ``waitid(P_PID)``: it cannot report on, or
  reap, a newer process that happens to have the same number;
* ``pidfd_send_signal``: a signal cannot land on a reused pid;
* readiness in epoll: a pidfd becomes readable when its process exits,
  whatever the signal masks of the program's threads are, so an exit is
  never missed because some thread swallowed a SIGCHLD (DESIGN.md rule 1);
* ``ioctl(PIDFD_GET_INFO)`` with ``PIDFD_INFO_EXIT`` (Linux 6.15+): the exit
  status survives the reaping, so a child that somebody else reaped still
  reports its true status instead of an invented one.
"""

from __future__ import annotations

import errno
import functools
import os
import signal

from ._ffi import PIDFD_GET_INFO, PIDFD_INFO_EXIT, ffi, lib

#: Errors that say "not now", never "not supported" (ENOSPC: epoll's
#: max_user_watches).  DESIGN.md rule 9: they affect the one child they
#: happen to, which is then watched through SIGCHLD.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC})

#: Setting this environment variable to ``0`` makes monitors that were not
#: told otherwise use the signalfd alone, as on kernels before 5.3.
ENVIRONMENT_SWITCH = "SYNCMON_PIDFD"


@functools.cache
def supported() -> bool:
    """Whether this kernel and Python can open pidfds and wait on them."""
    if not hasattr(os, "pidfd_open") or not hasattr(os, "P_PIDFD"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError as error:
        # EMFILE and its kind only say "no descriptor now": the call exists.
        # Cached as "unsupported", one busy moment would switch pidfds off for
        # the life of the process.  ENOSYS (before Linux 5.3) or EPERM (a
        # seccomp filter) is the kernel's answer for good.
        if error.errno not in TRANSIENT_ERRNOS:
            return False
    else:
        os.close(fd)
    return hasattr(signal, "pidfd_send_signal")


def wanted(choice: bool | None) -> bool:
    """Resolve a monitor's ``pidfd=`` argument against the kernel and the environment."""
    if choice is None:
        return supported() and os.environ.get(ENVIRONMENT_SWITCH, "1") != "0"
    if choice and not supported():
        raise OSError("pidfd=True, but this kernel or Python has no pidfd support")
    return bool(choice)


def open_pidfd(pid: int) -> int:
    """Open a close-on-exec pidfd for ``pid`` (an unreaped zombie still has one)."""
    return os.pidfd_open(pid)


def exit_status(pidfd: int) -> int | None:
    """The raw wait status of the reaped process behind ``pidfd``, if the kernel kept it.

    The kernel fills in the exit information when the process is reaped, by
    whoever reaped it.  Before Linux 6.15 the ioctl or the flag is unknown
    and there is nothing to recover: ``None``.
    """
    info = ffi.new("struct pidfd_info *")
    info.mask = PIDFD_INFO_EXIT
    if lib.ioctl(pidfd, PIDFD_GET_INFO, info) == -1:
        return None
    if not info.mask & PIDFD_INFO_EXIT:
        return None
    return int(info.exit_code)

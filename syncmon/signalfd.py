"""SIGCHLD as a file descriptor: a blocked signal plus the signalfd that reads it.

A signalfd only sees a signal while it is *pending*, and a signal only stays
pending while every thread blocks it: a thread that leaves SIGCHLD unblocked
takes delivery itself, the default action (ignore) runs, and the signalfd
never hears of it.  Worse, when the thread that forked a child does not block
SIGCHLD and the disposition is the default, the kernel drops the signal when
it is generated (``sig_ignored()`` in kernel/signal.c).  Blocking is per
thread and inherited by threads created later, so syncmon blocks SIGCHLD in
the thread that starts the engine and in the monitor thread, and every thread
those two create inherits the block.  Threads that existed before cannot be
changed from Python; :func:`threads_not_blocking` finds them so the monitor
knows when a wake-up may have been lost.
"""

from __future__ import annotations

import os
import signal

from ._ffi import SA_NOCLDWAIT, SFD_CLOEXEC, SFD_NONBLOCK, SIG_IGN, check, ffi, lib

_SIGINFO_SIZE = 128  # sizeof(struct signalfd_siginfo), fixed by the kernel ABI
_READ_BATCH = 64


class SignalFD:
    """A non-blocking, close-on-exec signalfd for one signal, blocked in this thread.

    Creating it blocks ``signum`` in the calling thread *before* the signalfd
    exists, so that no instance of the signal can slip between the two.
    ``blocked_before`` records whether the caller had already blocked it, so
    children can be started with the mask they would have had without us.
    """

    def __init__(self, signum: int = signal.SIGCHLD) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
        self.signum = signum
        self.blocked_before = signum in previous
        mask = ffi.new("sigset_t *")
        lib.sigemptyset(mask)
        lib.sigaddset(mask, signum)
        self.fd: int = check(lib.signalfd(-1, mask, SFD_NONBLOCK | SFD_CLOEXEC), "signalfd")

    def drain(self) -> int:
        """Consume every pending instance; return how many were read.

        Standard signals do not queue: however many children died, at most
        one SIGCHLD is pending.  Reading it is what re-arms the descriptor,
        so it is read until empty, never interpreted: the per-pid ``waitid``
        calls, not the siginfo, say which child changed.
        """
        count = 0
        while True:
            try:
                data = os.read(self.fd, _SIGINFO_SIZE * _READ_BATCH)
            except BlockingIOError:
                return count
            count += len(data) // _SIGINFO_SIZE

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def children_autoreaped() -> bool:
    """Whether the kernel reaps our children itself, so ``waitid`` will never see them.

    That is the case when SIGCHLD is ignored (``SIG_IGN``) or has the
    ``SA_NOCLDWAIT`` flag.  The real disposition is read with ``sigaction``:
    ``signal.getsignal`` only knows what Python code installed.
    """
    current = ffi.new("struct sigaction *")
    check(lib.sigaction(signal.SIGCHLD, ffi.NULL, current), "sigaction")
    handler = int(ffi.cast("uintptr_t", current.sa_handler))
    return handler == SIG_IGN or bool(current.sa_flags & SA_NOCLDWAIT)


def threads_not_blocking(signum: int = signal.SIGCHLD) -> int:
    """Count this process's threads that leave ``signum`` unblocked.

    Each such thread can swallow the signal before the signalfd reads it.
    The kernel publishes every thread's blocked mask as ``SigBlk`` in
    ``/proc/self/task/<tid>/status``; a thread may exit while we look, which
    is simply skipped (the open fails with ENOENT, or the read of a task that
    died in between with ESRCH).
    """
    bit = 1 << (signum - 1)
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"SigBlk:"):
                        if not int(line.split()[1], 16) & bit:
                            count += 1
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return count

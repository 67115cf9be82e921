"""``clone3(CLONE_PARENT | CLONE_PIDFD)`` from Python, made as sound as ``os.fork()``.

Only the fork server calls :meth:`Cloner.clone`, and only because it is
single-threaded: a raw ``clone3`` runs none of glibc's ``fork()`` work in the
child (no ``pthread_atfork`` handlers, no lock reinitialisation), which is
sound only when no other thread could have held a lock at that instant.

What ``os.fork()`` does for the interpreter is done here the same way:
``PyOS_BeforeFork`` (before-fork hooks, import lock), then in the child
``PyOS_AfterFork_Child`` (GIL, import lock and thread states reinitialised,
the ``after_in_child`` hooks: ``random`` reseeds, ``logging`` locks are
replaced, ``threading`` forgets other threads) and ``PyOS_AfterFork_Parent``
in the parent.

One glibc detail is repaired by hand: glibc caches the thread id in the
thread's control block, and its ``fork()`` rewrites it in the child.  A raw
clone leaves the parent's id there, and ``pthread_kill`` of the child's main
thread (``signal.pthread_kill(threading.main_thread().ident, ...)`` from
another thread) then fails with ``ESRCH``.  ``CLONE_CHILD_SETTID`` makes the
kernel write the child's id to an address in the child: the address of that
field, found once by watching which word ``os.fork()`` changes.
"""

from __future__ import annotations

import errno
import os

from ._ffi import (
    CLONE_CHILD_SETTID,
    CLONE_INTO_CGROUP,
    CLONE_PARENT,
    CLONE_PIDFD,
    SYS_clone3,
    check,
    ffi,
    lib,
    python_fork_hooks,
)

#: How much of glibc's ``struct pthread`` is searched for the cached tid
#: (it sits at 0x2d0 on x86-64 glibc 2.36; the structure is over 2 KiB).
_TCB_SEARCH_BYTES = 1024


def clone3_missing() -> str | None:
    """Why this kernel cannot ``clone3``, or None if it can.

    A zero size is below the smallest ``struct clone_args`` the kernel
    accepts, so a kernel with ``clone3`` refuses it with ``EINVAL`` before
    doing anything; ``ENOSYS`` means no ``clone3`` (old kernel, or a seccomp
    filter that hides it, as container runtimes do).
    """
    if lib.syscall(SYS_clone3, ffi.NULL, ffi.cast("size_t", 0)) == -1 and ffi.errno == errno.EINVAL:
        return None
    err = ffi.errno
    return f"clone3 is not available here ({errno.errorcode.get(err, err)}: {os.strerror(err)})"


def _tcb_words() -> list[int]:
    words = ffi.cast("int32_t *", lib.pthread_self())
    return [int(words[i]) for i in range(_TCB_SEARCH_BYTES // 4)]


def find_cached_tid() -> int | None:
    """The address of glibc's cached tid of this thread, or None if not found.

    Forks once, and reaps that child: the field is the one word that was our
    pid before the fork and is the child's pid after it (in a single-threaded
    process the main thread's tid is the pid).  Anything but exactly one such
    word means the layout is not understood, and nothing is repaired.
    """
    before = _tcb_words()
    if before.count(os.getpid()) == 0:
        return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            after = _tcb_words()
            found = [i for i, (old, new) in enumerate(zip(before, after))
                     if old == os.getppid() and new == os.getpid()]
            os.write(write_end, repr(found).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with open(read_end, "rb") as answer:
        text = answer.read().decode()
    os.waitpid(pid, 0)
    indices = [int(i) for i in text.strip("[]").split(",") if i.strip()]
    if len(indices) != 1:
        return None
    return int(ffi.cast("uintptr_t", lib.pthread_self())) + 4 * indices[0]


class Cloner:
    """Makes children that are the *caller's parent's* children, with a pidfd each."""

    def __init__(self) -> None:
        self._before, self._after_parent, self._after_child = python_fork_hooks()
        self._cached_tid = find_cached_tid()
        self._args = ffi.new("struct clone_args *")
        self._pidfd = ffi.new("int *")

    @property
    def repairs_cached_tid(self) -> bool:
        return self._cached_tid is not None

    def clone(self, cgroup_fd: int | None) -> tuple[int, int]:
        """``(0, -1)`` in the child; ``(pid, pidfd)`` in the parent.

        The child's parent is our parent (``CLONE_PARENT``), so its SIGCHLD
        goes there and only there can it be reaped; the pidfd, made by the
        kernel at birth, names it even after it has died.  ``cgroup_fd``: a
        cgroup2 directory the child is born in (``CLONE_INTO_CGROUP``), so it
        is never anywhere else, not even for an instant.
        """
        args = self._args
        ffi.memmove(args, bytes(ffi.sizeof(args[0])), ffi.sizeof(args[0]))
        args.flags = CLONE_PARENT | CLONE_PIDFD
        args.pidfd = ffi.cast("uint64_t", ffi.cast("uintptr_t", self._pidfd))
        # exit_signal stays 0: clone3 refuses any other with CLONE_PARENT
        # (EINVAL), because the child gets the caller's own exit signal, the
        # SIGCHLD our parent started us with.
        if self._cached_tid is not None:
            args.flags |= CLONE_CHILD_SETTID
            args.child_tid = self._cached_tid
        if cgroup_fd is not None:
            args.flags |= CLONE_INTO_CGROUP
            args.cgroup = cgroup_fd
        self._before()
        pid = lib.syscall(SYS_clone3, args, ffi.cast("size_t", ffi.sizeof(args[0])))
        if pid == 0:
            self._after_child()
            return 0, -1
        err = ffi.errno
        self._after_parent()
        if pid == -1:
            ffi.errno = err
            check(-1, "clone3")
        return int(pid), int(self._pidfd[0])

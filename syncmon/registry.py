"""Which children the monitor thread watches, and the reap pass it runs for them.

A watched child is told of in one of two ways: by its pidfd, which the
reactor reports when the child exits, or, for a child without one (a kernel
before 5.3, ``pidfd=False``, a pidfd that could not be opened at EMFILE), by
SIGCHLD, after which every such child is asked.  The registry keeps the two
tables and turns the reactor's wake-ups into ``collect()`` calls; what a
child's end *is* (its pidfd, its death) belongs to the child's
:class:`~syncmon.watch.Watch`, which the registry only calls.
"""

from __future__ import annotations

import logging
import select
import threading
from typing import Callable, Protocol

from .reactor import Reactor

_logger = logging.getLogger("syncmon")


class Watched(Protocol):
    """What the registry needs of a watched child."""

    @property
    def pid(self) -> int: ...

    def collect(self) -> None:
        """Record the child's death if it happened (the reap pass, for its future)."""

    def abandon_after_fork(self) -> None:
        """In a fork child: give up the child, which is not ours here, taking no lock."""


class Registry:
    """The watched children of one engine, by pid and by pidfd.

    Lock order: a handle's lock, then ``Registry._lock``, then the reactor's
    interest lock.  The reap pass calls ``collect()`` with no registry lock held.
    """

    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor
        self._lock = threading.Lock()
        self._by_pid: dict[int, Watched] = {}
        self._by_pidfd: dict[int, Watched] = {}
        self._signal_only: dict[int, Watched] = {}  # pid -> child told of by SIGCHLD alone
        self._paused: set[int] = set()  # pidfds a waiter polls itself: see pause()
        self._other: dict[int, Callable[[], None]] = {}  # fd -> its callback: see add_fd()

    def add(self, child: Watched, pidfd: int | None) -> Watched:
        """Start watching ``child``; return the child already watched under its pid, if any.

        The reactor is told first and the tables filled after, so a failure
        (``OSError`` from epoll: ENOMEM, ENOSPC) leaves no entry behind; the
        caller may then watch the child by SIGCHLD instead.
        """
        with self._lock:
            existing = self._by_pid.get(child.pid)
            if existing is not None:
                return existing
            if pidfd is None:
                self._reactor.need_sigchld(+1)
                self._signal_only[child.pid] = child
            else:
                self._reactor.add(pidfd)
                self._by_pidfd[pidfd] = child
            self._by_pid[child.pid] = child
            return child

    def remove(self, child: Watched, pidfd: int | None) -> None:
        """Stop watching ``child`` (before its pidfd is closed).  Call with the child's lock held."""
        with self._lock:
            if self._by_pid.get(child.pid) is not child:
                return
            del self._by_pid[child.pid]
            if pidfd is None:
                del self._signal_only[child.pid]
                self._reactor.need_sigchld(-1)
            else:
                del self._by_pidfd[pidfd]
                if pidfd in self._paused:
                    self._paused.discard(pidfd)
                else:
                    self._reactor.remove(pidfd)

    def add_fd(self, fd: int, on_ready: Callable[[], None]) -> None:
        """Call ``on_ready()`` in the reap pass whenever ``fd`` has priority data
        (``EPOLLPRI``: a cgroup's ``cgroup.events`` when it changed).

        Not ``EPOLLIN``: a kernfs file always reports it, so the monitor
        thread would never sleep (a core spent on reap passes that find
        nothing).
        Level-triggered: ``on_ready`` must consume what made ``fd`` ready (read
        the file), or it is called again on every pass.  It runs on the monitor
        thread with no lock of syncmon's held, and must not block.
        """
        with self._lock:
            self._reactor.add(fd, select.EPOLLPRI)
            self._other[fd] = on_ready

    def remove_fd(self, fd: int) -> None:
        """Stop calling back for ``fd``.  Call before the descriptor is closed."""
        with self._lock:
            if self._other.pop(fd, None) is not None:
                self._reactor.remove(fd)

    def pause(self, pidfd: int) -> None:
        """Stop the monitor thread from waking for a pidfd that a waiter polls itself.

        The waiter reaps and resolves the future; were the monitor woken too,
        the two threads would only queue for the GIL and the handle's lock,
        and the waiter would learn of the death later.  Call with the child's
        lock held, before its first poller starts.
        """
        with self._lock:
            if pidfd in self._by_pidfd and pidfd not in self._paused:
                self._reactor.remove(pidfd)
                self._paused.add(pidfd)

    def resume(self, pidfd: int) -> None:
        """The last poller left with the child unreaped: the monitor watches again.

        epoll is level-triggered, so a child that exited meanwhile is
        reported at once and its future still resolves.  Call with the
        child's lock held.
        """
        with self._lock:
            if pidfd in self._paused:
                self._paused.discard(pidfd)
                self._reactor.add(pidfd)

    def reap(self, ready_fds: list[int], sigchld: bool) -> None:
        """The reap pass, on the reactor thread: let every child that may have changed look."""
        with self._lock:
            ready = [self._by_pidfd[fd].collect for fd in ready_fds if fd in self._by_pidfd]
            ready += [self._other[fd] for fd in ready_fds if fd in self._other]
            if sigchld:
                ready += [child.collect for child in self._signal_only.values()]
        for look in ready:
            try:
                look()
            except Exception:
                # One child's trouble must not end the monitoring of all the others.
                _logger.exception("syncmon: reap pass failed for %r", look)

    def children(self) -> list[Watched]:
        """A snapshot of the watched children, taken without the lock.

        For the fork child alone, where the lock may be held by a thread
        that no longer exists; under the GIL the copy is consistent.
        """
        return list(self._by_pid.values())

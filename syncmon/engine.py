"""The process's one engine, and how long it lives.

One process has at most one engine: one reactor (signalfd for SIGCHLD, epoll,
thread), one registry of watched children, one pool of callback threads.  A
process has a single pending SIGCHLD and reading a signalfd consumes it, so
two signalfds would steal each other's wake-ups (DESIGN.md rule 7).

The engine is reference-counted.  A reference is held by every open
``Monitor``, by every child not yet known to be gone (its ``Watch``), by every
thread in a wait that only SIGCHLD can end, and by a ``sigchld_unblocked``
window.  Each reference is taken with :meth:`Lifetime.acquire` or
:meth:`Engine.retain` and given back with :meth:`Engine.release`, exactly once,
by the object that took it.  The last release stops the thread, which closes
the descriptors; the next acquire makes a new engine, after the old thread
has finished, so two signalfds never exist at once.
"""

from __future__ import annotations

import os
import threading

from .futures import CallbackRunner
from .reactor import Reactor
from .registry import Registry


class Engine:
    """A reactor, the registry of its children and the callback threads, counted by users."""

    def __init__(self, lifetime: Lifetime, sigchld_blocked_by_user: bool | None) -> None:
        self._lifetime = lifetime
        self.reactor = Reactor(self._on_wake, sigchld_blocked_by_user=sigchld_blocked_by_user)
        self.registry = Registry(self.reactor)
        self.callbacks = CallbackRunner()
        #: Set in a fork child, where this engine has no thread.
        self.abandoned = False
        self._users = 1  # guarded by the lifetime's lock; the creator's reference
        self.reactor.start()

    def _on_wake(self, ready_fds: list[int], sigchld: bool) -> None:
        self.registry.reap(ready_fds, sigchld)

    def retain(self) -> None:
        """One more user.  Only a holder of a reference may call this: the
        engine cannot stop meanwhile."""
        self._lifetime.retain(self)

    def release(self) -> None:
        """Give back one reference; the last one stops the engine.

        A handle releases with its own lock held, possibly on the monitor
        thread itself, so this never waits for the thread to finish: the
        next :meth:`Lifetime.acquire` does.
        """
        self._lifetime.release(self)


class Lifetime:
    """Where the process's engine is: current, retiring, or none.

    Lock order: the lifetime's lock is taken last of all syncmon's locks
    (after a handle's); nothing is called with it held but the engine's
    construction and the reactor's ``stop``, which take no other lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Engine | None = None
        self._retiring: Engine | None = None  # stopped; its thread may still hold the signalfd
        # Whether the program blocked SIGCHLD itself before syncmon first did.
        self._sigchld_blocked_by_user: bool | None = None

    def acquire(self) -> Engine:
        """The process's engine, started if there is none, with one more user."""
        with self._lock:
            engine = self._current
            if engine is not None:
                engine._users += 1
                return engine
            if self._retiring is not None:
                # Never two signalfds for SIGCHLD at once, even briefly: the
                # old one could consume the new engine's first wake-up.  The
                # retiring thread needs no lock to finish, so joining here is safe.
                self._retiring.reactor.join()
                self._retiring = None
            engine = Engine(self, self._sigchld_blocked_by_user)
            self._sigchld_blocked_by_user = engine.reactor.sigchld_blocked_by_user
            self._current = engine
            return engine

    def retain(self, engine: Engine) -> None:
        with self._lock:
            assert engine._users > 0, "retain() needs a reference already held"
            engine._users += 1

    def release(self, engine: Engine) -> bool:
        """Drop one reference; return whether that stopped the engine."""
        with self._lock:
            if engine.abandoned:
                return False  # inherited across fork(): nothing of it is ours to stop
            engine._users -= 1
            if engine._users:
                return False
            if self._current is engine:
                self._current = None
            self._retiring = engine
            engine.callbacks.shutdown()
            engine.reactor.stop(join=False)
            return True

    def stop_and_wait(self, engine: Engine) -> None:
        """Release ``engine`` and, if that stopped it, wait for its thread (``Monitor.close``)."""
        if self.release(engine):
            engine.reactor.join()

    def after_fork_in_child(self) -> list[Engine]:
        """Rule 3: the fork child starts with no engine.

        Return the engines inherited from the parent (current and retiring)
        so their owners can be told; the caller closes their descriptors.
        Locks another thread held at the fork stay held forever here, so the
        lock is replaced rather than taken.
        """
        self._lock = threading.Lock()
        inherited = [e for e in (self._current, self._retiring) if e is not None]
        self._current = self._retiring = None
        for engine in inherited:
            engine.abandoned = True
        return inherited


LIFETIME = Lifetime()


def _after_fork_in_child() -> None:
    for engine in LIFETIME.after_fork_in_child():
        for child in engine.registry.children():
            child.abandon_after_fork()  # each child's end closes what it holds
        engine.reactor.close_in_fork_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

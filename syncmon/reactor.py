"""The monitor thread: one epoll over the SIGCHLD signalfd, a wake-up eventfd and pidfds.

The reactor knows nothing about children.  It tells its one client (the
registry's reap pass) two things on each wake-up: which of the client's
descriptors are readable, and whether SIGCHLD (or a stand-in for a SIGCHLD
that may have been lost) arrived.  After the client has looked, it moves the
*generation* and wakes every thread sleeping in :meth:`Reactor.wait_for_change`.

Descriptors are level-triggered and never ``EPOLLONESHOT``: a pidfd that is
already readable when it is added reports at once, so a child that died
before it was watched is never missed (trio's ``_io_epoll.py`` explains why
edge triggering is the wrong choice for this kind of readiness).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from typing import Callable, Iterator

from .signalfd import SignalFD, threads_not_blocking

#: How often the reactor looks without being told, and only while a SIGCHLD
#: may have been swallowed by a thread that does not block it *and* somebody
#: depends on SIGCHLD (a child without a pidfd, or a wait for stop/continue).
RESCUE_INTERVAL = 0.05

#: ``on_wake(ready_fds, sigchld)``: called on the reactor thread.
WakeHandler = Callable[[list[int], bool], None]


class Reactor:
    """The thread, its epoll, the SIGCHLD signalfd, the wake-up eventfd and the generation.

    Lock order: ``Reactor._interest_lock`` is taken after any handle's lock
    and after the registry's lock, never before (see DESIGN.md, "Locks").
    """

    def __init__(self, on_wake: WakeHandler, *, sigchld_blocked_by_user: bool | None) -> None:
        """Create every descriptor, or none: a failure closes what was made and
        restores the SIGCHLD mask of the calling thread."""
        self._on_wake = on_wake
        # Reads /proc (one descriptor, closed again): done before anything
        # exists that a failure here would have to undo.
        self._lossy = threads_not_blocking() > 0
        self._next_rescue = 0.0  # monotonic time of the next look for a lost SIGCHLD
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        signals: SignalFD | None = None
        epoll: select.epoll | None = None
        wakeup = -1
        try:
            signals = SignalFD()
            epoll = select.epoll()
            wakeup = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            epoll.register(wakeup, select.EPOLLIN)
        except BaseException:
            if wakeup >= 0:
                os.close(wakeup)
            if epoll is not None:
                epoll.close()
            if signals is not None:
                signals.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            raise
        self._signals, self._epoll, self._wakeup = signals, epoll, wakeup
        self._mask_before = previous_mask
        #: Whether the program blocked SIGCHLD itself, before syncmon first did:
        #: learned from the first reactor of the process and handed on, since a
        #: later one finds the block an earlier one left (it is never lifted).
        self.sigchld_blocked_by_user = (
            signals.blocked_before if sigchld_blocked_by_user is None else sigchld_blocked_by_user
        )

        self._condition = threading.Condition(threading.Lock())
        self.generation = 0
        self._sleepers = 0  # threads in wait_for_change; guarded by _condition

        self._interest_lock = threading.Lock()
        self._sigchld_interest = 0  # guarded by _interest_lock
        self._signalfd_watched = False  # guarded by _interest_lock
        self._rescue_requested = False
        self._stopping = False
        self._stop_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="syncmon-monitor", daemon=True)

    def start(self) -> None:
        """Start the thread; on failure (thread limit) the descriptors are closed."""
        try:
            self._thread.start()
        except BaseException:
            self._close_fds()
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask_before)
            raise

    # -- the generation ------------------------------------------------------------

    def wait_for_change(self, generation: int, timeout: float | None) -> None:
        """Sleep until the generation moves past ``generation`` or ``timeout`` passes."""
        with self._condition:
            if self.generation == generation:
                self._sleepers += 1
                try:
                    self._condition.wait(timeout)
                finally:
                    self._sleepers -= 1

    def bump(self) -> None:
        """Move the generation and wake every sleeper in :meth:`wait_for_change`."""
        with self._condition:
            self.generation += 1
            if self._sleepers:  # most bumps find nobody: notify_all() costs as much as the rest
                self._condition.notify_all()

    def on_reactor_thread(self) -> bool:
        # The thread's ident, not current_thread(): this runs once per death,
        # and current_thread() is a dict lookup in Python.
        return threading.get_ident() == self._thread.ident

    # -- descriptors ---------------------------------------------------------------

    def add(self, fd: int, events: int = select.EPOLLIN) -> None:
        """Report ``fd`` to the client whenever it is ready for ``events``.  May
        raise (ENOMEM, ENOSPC at ``max_user_watches``): the caller then does without."""
        self._epoll.register(fd, events)

    def remove(self, fd: int) -> None:
        """Stop reporting ``fd``.  Call before the descriptor is closed."""
        self._epoll.unregister(fd)

    # -- SIGCHLD -------------------------------------------------------------------

    @contextlib.contextmanager
    def sigchld_needed(self) -> Iterator[None]:
        """Listen to the signalfd while the block runs.

        Exits of children with a pidfd are told by the pidfd; SIGCHLD only
        matters to children without one and to stop/continue waits.  Waking
        the monitor thread for every SIGCHLD regardless would make it compete
        for the GIL with the very waiter the death concerns.  A SIGCHLD that
        arrives while nobody listens stays pending, and is drained (a harmless
        extra wake-up) once somebody does.
        """
        self.need_sigchld(+1)
        try:
            yield
        finally:
            self.need_sigchld(-1)

    def need_sigchld(self, delta: int) -> None:
        """Count one more (``+1``) or one fewer (``-1``) user of SIGCHLD."""
        with self._interest_lock:
            self._sigchld_interest += delta
            wanted = self._sigchld_interest > 0
            if wanted != self._signalfd_watched and not self._stopping:
                if wanted:
                    self._epoll.register(self._signals.fd, select.EPOLLIN)
                else:
                    self._epoll.unregister(self._signals.fd)
                self._signalfd_watched = wanted
        if self._lossy:
            self._poke()  # let the thread recompute its rescue timeout

    @contextlib.contextmanager
    def sigchld_unblocked(self) -> Iterator[None]:
        """Let SIGCHLD through in this thread for a moment, then make up for it.

        For code that starts children itself (``subprocess``'s vfork path)
        and cannot be told to give the child another mask: the child inherits
        this thread's mask, and must not inherit syncmon's block (rule 2).
        While the block is off, a pending SIGCHLD can be delivered to this
        thread and vanish (its default action is to ignore it), so on the way
        out the reactor is told to act as if a SIGCHLD had arrived.
        """
        if self.sigchld_blocked_by_user:
            yield  # the child would have inherited the block without syncmon too
            return
        previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        try:
            yield
        finally:
            if signal.SIGCHLD in previous:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
                # Only a child without a pidfd, or a stop/continue waiter,
                # can miss a lost SIGCHLD; one that starts listening after
                # this read looks at its child itself once it listens.  So
                # the usual Popen spawn wakes the monitor thread for nothing.
                if self._sigchld_interest > 0:
                    self._rescue_requested = True
                    self._poke()

    # -- the thread ----------------------------------------------------------------

    def _poke(self) -> None:
        # The stop lock makes "is the eventfd still ours" and the write one
        # step: the thread closes it on its way out.
        with self._stop_lock:
            if not self._stopping and self._wakeup >= 0:
                os.eventfd_write(self._wakeup, 1)

    def _poll_timeout(self) -> float:
        if self._lossy and self._sigchld_interest > 0:
            return max(0.0, self._next_rescue - time.monotonic())
        return -1

    def _rescue_due(self) -> bool:
        """Whether the look for a lost SIGCHLD is due (rule 1), and if so, schedule the next.

        On a clock of its own, not only when epoll times out: a stream of
        other events (pidfds, a cgroup's changes) arriving more often than
        every 50 ms would otherwise put it off forever, and a child without a
        pidfd whose SIGCHLD was lost would stay a zombie.
        """
        if not (self._lossy and self._sigchld_interest > 0):
            return False
        now = time.monotonic()
        if now < self._next_rescue:
            return False
        self._next_rescue = now + RESCUE_INTERVAL
        try:
            self._lossy = threads_not_blocking() > 0
        except OSError:
            pass  # EMFILE, ENOMEM: /proc cannot be read now; stay lossy and look again later
        return True

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        finally:
            with self._stop_lock:
                self._close_fds()

    def _step(self) -> None:
        events = self._epoll.poll(self._poll_timeout())
        sigchld = self._rescue_due()  # a rescue look stands in for a SIGCHLD that may be lost
        ready: list[int] = []
        for fd, _ in events:
            if fd == self._signals.fd:
                self._signals.drain()
                sigchld = True
            elif fd == self._wakeup:
                os.eventfd_read(self._wakeup)
                if self._rescue_requested:
                    self._rescue_requested = False
                    sigchld = True
            else:
                ready.append(fd)
        if self._stopping:
            return
        if sigchld or ready:
            self._on_wake(ready, sigchld)
            # Reap first, then wake: under the GIL the woken waiters could not
            # run alongside the reap pass anyway, and this way they find the
            # deaths recorded instead of queueing for the handles' locks.
            self.bump()

    # -- stopping ------------------------------------------------------------------

    def stop(self, join: bool) -> None:
        """Make the thread exit; it closes the descriptors on its way out."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
            os.eventfd_write(self._wakeup, 1)
        if join:
            self.join()

    def join(self) -> None:
        if not self.on_reactor_thread():
            self._thread.join()

    def _close_fds(self) -> None:
        """Close each descriptor once: a number closed twice may be somebody else's by then."""
        self._epoll.close()  # idempotent
        self._signals.close()  # idempotent
        wakeup, self._wakeup = self._wakeup, -1
        if wakeup >= 0:
            os.close(wakeup)

    def close_in_fork_child(self) -> None:
        """In a fork child: there is no thread here; close the inherited descriptors.

        Only the forking thread survives a fork and a lock another thread held
        stays held forever, so nothing here takes a lock.  The numbers are
        still ours at this point: the child has run no other code yet.
        """
        self._stopping = True
        self._stop_lock = threading.Lock()
        self._close_fds()

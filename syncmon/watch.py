"""One child's end: the one object that owns everything about how a watched child ends.

A :class:`Watch` owns, for one child: its pidfd (if any), its entry in the
registry, one reference to the engine, the death future, and the *end*: the
child's death, or the fact that it was lost (reaped elsewhere with its status
gone, or inherited across ``fork()``).  Everything else (``ChildHandle``,
``syncmon.Popen``, the registry's reap pass) uses the methods below.

The watch's lock makes "ask the kernel about this child" and "record that it
is gone" one step, so no thread can use the pid (``waitid``, ``kill``) after
another thread reaped it: a reaped pid may already belong to somebody else.
Everything a watch learns comes from ``waitid`` on this one child
(``P_PIDFD`` where there is a pidfd, else ``P_PID``), never from reaping
"any child".  Once the end is recorded it never changes, so a look at it
needs no lock; every method starts with that look, which is also what keeps
a fork child (where a parent thread may have held the lock) from blocking.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import signal
import threading
import time
from typing import Callable, Iterator, Union, cast

from . import pidfd as pidfds
from ._waitid import waitid as raw_waitid
from .engine import Engine
from .futures import DeathFuture
from .state import ChildState, ReapedElsewhere


class InheritedAcrossFork(RuntimeError):
    """The handle was made in the parent process; in a fork child it watches nothing.

    The child of ``fork()`` is not the parent of the parent's children: it
    can neither wait for them nor signal them safely.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(f"pid {pid} is a child of the parent process: after fork() this handle watches nothing")
        self.pid = pid


End = Union[ChildState, ReapedElsewhere, InheritedAcrossFork]

# Internally the options are plain ints: IntFlag arithmetic costs several
# microseconds a call, on the path of every wait.
EXITED, STOPPED, CONTINUED, NOHANG, NOWAIT = (os.WEXITED, os.WSTOPPED, os.WCONTINUED, os.WNOHANG, os.WNOWAIT)
STOP_KINDS = STOPPED | CONTINUED
_ANY_STATE_PEEK = EXITED | STOP_KINDS | NOHANG | NOWAIT

TRANSIENT_ERRNOS = pidfds.TRANSIENT_ERRNOS

#: Longest single sleep: ``Condition.wait`` refuses more than TIMEOUT_MAX, and
#: ``poll()`` takes a C int of milliseconds.  Longer waits loop.
_LONGEST_SLEEP = min(threading.TIMEOUT_MAX, (2**31 - 1) / 1000)


def _settle(future: DeathFuture, end: End) -> None:
    if isinstance(end, ChildState):
        future.resolve(end)
    else:
        future.fail(end)


class Watch:
    """The monitor's hold on one child.  Made by :func:`watch_child`."""

    #: The death future once asked for, or the end, if that was recorded
    #: first.  Set once per watch, in the instance's dict, by
    #: ``dict.setdefault`` (one step under the GIL), so that asking for the
    #: future takes no lock: a lock could be held forever by a thread that is
    #: gone (in a fork child) or by the very thread a signal handler interrupted.
    #: Until it is set, this class attribute reads ``None``.
    _future: DeathFuture | End | None = None
    #: The future made after the end was recorded (set once, the same way).
    _late_future: DeathFuture | None = None

    def __init__(self, engine: Engine, pid: int, pidfd: int | None, lock: threading.Lock, reaps: bool) -> None:
        self.pid = pid
        self.lock = lock
        self._callbacks = engine.callbacks  # for the death future, made on first use
        self._engine = engine  # one reference, given back when the end is recorded
        self._pidfd = pidfd
        self._reaps = reaps  # False: an owner (syncmon.Popen) reaps; we only look
        self._end: End | None = None
        self._zombie = False  # death recorded, owner's reap still to come (reaps=False only)
        self._pollers = 0  # waiters in poll() on the pidfd: while any is, it stays open
        self._polled_pidfd: int | None = None  # closed by the last poller: see _close_pidfd
        #: The one public handle made for this child (set once, under the lock,
        #: by the monitor); typed loosely so that this module needs no other.
        self.handle: object | None = None

    # -- the end -------------------------------------------------------------------

    @property
    def future(self) -> DeathFuture:
        """The death future, made on first use.

        Most children are waited for (``wait()``, ``syncmon.Popen``) and never
        asked for a future; a ``Future`` with its ``Condition`` is half the
        memory of a watch and a tenth of the work of a spawn and a wait.

        The first of the future and the end to be set in ``_future`` wins: a
        future set first is resolved by :meth:`_record`, before the end is
        visible; an end set first means that the future is made resolved
        (``_late_future``).  Among askers, the first future set is the one.
        """
        found = self._future
        if isinstance(found, DeathFuture):
            return found
        if found is None:
            found = self.__dict__.setdefault("_future", DeathFuture(self._callbacks))
            if isinstance(found, DeathFuture):
                return found
        return self._future_after(found)

    def _future_after(self, end: End) -> DeathFuture:
        """The future of a watch whose end was recorded before anyone asked: made resolved."""
        late = self._late_future
        if late is None:
            made = DeathFuture(self._callbacks)
            _settle(made, end)  # before anyone can see it
            late = self.__dict__.setdefault("_late_future", made)
        return cast(DeathFuture, late)

    @property
    def gone(self) -> bool:
        """Whether the end is recorded: from then on the pid may be somebody else's."""
        return self._end is not None

    @property
    def death(self) -> ChildState | None:
        end = self._end
        return end if isinstance(end, ChildState) else None

    @property
    def inherited(self) -> bool:
        """Whether this process is a fork child of the one that made the watch.

        There, a lock of the watch may be held forever by a parent thread that
        does not exist here, so nothing may wait for it."""
        return self._engine.abandoned

    @property
    def by_pidfd(self) -> bool:
        return self._pidfd is not None

    def _outcome(self, end: End) -> ChildState:
        if isinstance(end, ChildState):
            return end
        raise end

    def _record(self, end: End, *, unreaped: bool = False) -> None:
        """With the lock held: the child is gone.  Stop watching it, close the
        pidfd, resolve the future (if one was made), wake the other waiters, give back the engine.

        The pidfd is closed under the lock, so a signal can never go through a
        closed (and perhaps reused) descriptor number.  The future is resolved
        under the lock too, so whoever sees the death also finds it done; its
        callbacks never run here (they are deferred to callback threads).
        """
        engine = self._engine
        engine.registry.remove(self, self._pidfd)
        if unreaped:
            # Seen dead with WNOWAIT by a watch that does not reap: the owner
            # reaps it later, through the pidfd, which stays open (and out of
            # the epoll) until then.
            self._zombie = True
        else:
            self._close_pidfd()
        found = self.__dict__.setdefault("_future", end)
        if found is not end:
            _settle(found, end)  # a future was asked for first
        # Only now: readers look at the end without the lock, and whoever
        # sees it must find the future resolved too.
        self._end = end
        if not engine.reactor.on_reactor_thread():
            # The other waiters cannot count on this death's SIGCHLD to wake
            # them: with no child left that needs it, nobody listens to the
            # signalfd.  The reactor bumps once after its whole reap pass instead.
            engine.reactor.bump()
        engine.release()

    def _close_pidfd(self) -> None:
        """With the lock held: done with the pidfd.  A waiter still in ``poll()``
        on it keeps the number open (closed, it could be reused under the
        waiter's poll); the last one to leave closes it."""
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is None:
            return
        if self._pollers:
            self._polled_pidfd = pidfd
        else:
            os.close(pidfd)

    def _record_reaped_elsewhere(self) -> None:
        """With the lock held: somebody else reaped the child.  Record its true
        death if the kernel kept it, else that it is lost."""
        try:
            self._record(self._recover())
        except ReapedElsewhere as lost:
            self._record(lost)

    # -- what the kernel says ----------------------------------------------------------

    def _waitid(self, flags: int) -> ChildState | None:
        """One non-blocking ``waitid`` on this child alone.  Call with the lock held."""
        try:
            return self._kernel_waitid(flags | NOHANG)
        except ChildProcessError:
            # Our child, unreaped by us, and yet not waitable: somebody else
            # reaped it.  Without a pidfd this must be the last look at the
            # pid, which may already be reused: record the end now.
            self._record_reaped_elsewhere()
            return self._outcome(self._end)  # type: ignore[arg-type]

    def _kernel_waitid(self, flags: int) -> ChildState | None:
        """``waitid`` on this child alone, through the pidfd when there is one.

        The raw call, so that a death carries the usage read with it.
        Call with the lock held.
        """
        if self._pidfd is not None:
            return raw_waitid(os.P_PIDFD, self._pidfd, flags)
        return raw_waitid(os.P_PID, self.pid, flags)

    def _recover(self) -> ChildState:
        status = pidfds.exit_status(self._pidfd) if self._pidfd is not None else None
        if status is None:
            raise ReapedElsewhere(self.pid)
        return ChildState.from_wait_status(self.pid, status)

    def _ask_kernel(self, options: int) -> ChildState | None:
        """The next state change that ``options`` wants, consuming it unless peeking.

        ``WEXITED`` is always asked for: a child that dies can never stop or
        continue again, so its death must end every wait.  Stop and continue
        reports are asked for only when wanted, so one nobody asked for stays
        queued in the kernel for the next waiter that wants it (rule 5).
        """
        peek = NOWAIT if options & NOWAIT or not self._reaps else 0
        kinds = options & STOP_KINDS
        if peek and kinds:
            # A peek leaves a stop in place, and every later waiter would get
            # the same one: look at the death without consuming it, but take
            # stops and continues for real unless the caller peeks.
            return self._waitid(EXITED | peek) or self._waitid(kinds | (options & NOWAIT))
        return self._waitid(EXITED | kinds | peek)

    def state_now(self, options: int) -> ChildState | None:
        """The wanted state change if there is one now; a death is recorded exactly once."""
        end = self._end
        if end is not None:
            return self._outcome(end)
        with self.lock:
            end = self._end
            if end is not None:
                return self._outcome(end)
            state = self._ask_kernel(options)  # records a foreign reap itself
            if state is not None and state.died() and self._end is None and not options & NOWAIT:
                self._record(state, unreaped=not self._reaps)
            return state

    def collect(self) -> None:
        """The reap pass for this child: record a death, if any, for the future."""
        try:
            self.state_now(EXITED)
        except ReapedElsewhere:
            pass  # recorded: the future and every wait now fail with it

    # -- waiting -----------------------------------------------------------------------

    def wait(self, options: int, deadline: float | None, describe_timeout: Callable[[], str]) -> ChildState:
        """Block until the child changes state as ``options`` asks; ``deadline`` on the
        monotonic clock (``None``: no limit).  Nothing here sleeps-and-looks: the
        thread sleeps until the kernel or the monitor says that something changed."""
        if not options & STOP_KINDS:
            # A child that is already dead needs no poll set-up (the monitor's
            # epoll touched twice): look first.
            state = self.state_now(options)
            if state is not None:
                return state
            pidfd = self._start_polling()
            if pidfd is not None:
                try:
                    return self._wait_on_pidfd(pidfd, options, deadline, describe_timeout)
                finally:
                    self._stop_polling()
        with self._engine_for_waiting(options) as engine:
            if engine is None:  # the end was recorded meanwhile
                return self._outcome(self._end)  # type: ignore[arg-type]
            reactor = engine.reactor
            # Read the generation *before* asking the kernel: a SIGCHLD that
            # arrives while waitid runs then moves it, and the sleep returns
            # at once instead of sleeping through that change.
            def sleep(generation: object, seconds: float) -> object:
                reactor.wait_for_change(cast(int, generation), seconds)
                return None

            return self._wait_loop(options, deadline, describe_timeout, lambda: reactor.generation, sleep)

    @contextlib.contextmanager
    def _engine_for_waiting(self, options: int) -> Iterator[Engine | None]:
        """The engine whose generation this waiter sleeps on; ``None`` once the end is recorded.

        An exit wait needs nothing of the engine but its reactor's condition,
        a plain object that outlives the engine's thread.  A wait for
        stop/continue makes the reactor listen to SIGCHLD, the only thing that
        tells of those, and that needs a live epoll: such a waiter holds its own
        reference, since the child's may be given back (its death recorded)
        while the waiter is still inside.
        """
        with self.lock:
            if self._end is not None:
                engine = None
            else:
                engine = self._engine
                if options & STOP_KINDS:
                    engine.retain()
        if engine is None or not options & STOP_KINDS:
            yield engine
            return
        try:
            with engine.reactor.sigchld_needed():
                yield engine
        finally:
            engine.release()

    def _start_polling(self) -> int | None:
        """The pidfd, for this waiter to ``poll()`` while the child is unreaped.

        The watch closes the pidfd at the death, possibly while this waiter is
        about to poll it; a counted poller keeps the number open until it
        leaves (:meth:`_close_pidfd`).  No duplicate: a thread waiting costs
        no descriptor of its own, so 10,000 waiters fit in 10,000 descriptors.
        While any waiter polls, the monitor thread is told not to wake for this
        child (:meth:`Registry.pause`).  ``None`` when there is no pidfd: the
        waiter then sleeps on the monitor's generation like a waiter without pidfds.
        """
        with self.lock:
            if self._pidfd is None or self._end is not None:
                return None
            if not self._pollers:
                self._engine.registry.pause(self._pidfd)
            self._pollers += 1
            return self._pidfd

    def _stop_polling(self) -> None:
        with self.lock:
            self._pollers -= 1
            if self._pollers:
                return
            if self._polled_pidfd is not None:
                os.close(self._polled_pidfd)
                self._polled_pidfd = None
            elif self._pidfd is not None:
                # Left by timeout or an exception, child not reaped: nobody
                # else may be looking, so hand the child back to the monitor.
                self._engine.registry.resume(self._pidfd)

    def _wait_on_pidfd(
        self, pidfd: int, options: int, deadline: float | None, describe_timeout: Callable[[], str]
    ) -> ChildState:
        """An exit wait that sleeps in ``poll()`` on the child's own pidfd.

        The kernel wakes this thread directly when the child exits: one
        thread hop instead of two (kernel, monitor thread, waiter), and no
        wake-up at all for other children's deaths.
        """
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)

        def sleep(_: object, seconds: float) -> object:
            return poller.poll(math.ceil(seconds * 1000))

        # The caller has just looked: a death since then leaves the pidfd
        # readable, so sleeping first loses nothing and saves a waitid.
        return self._wait_loop(options, deadline, describe_timeout, lambda: None, sleep, looked=True)

    def _wait_loop(
        self,
        options: int,
        deadline: float | None,
        describe_timeout: Callable[[], str],
        mark: Callable[[], object],
        sleep: Callable[[object, float], object],
        *,
        looked: bool = False,
    ) -> ChildState:
        """Ask the kernel; if nothing yet, sleep until ``mark()``'s moment is past.
        ``looked``: the caller asked already, so the first round only sleeps."""
        while True:
            moment = mark()
            if not looked:
                state = self.state_now(options)
                if state is not None:
                    return state
            looked = False
            if deadline is None:
                remaining = _LONGEST_SLEEP
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(describe_timeout())
            sleep(moment, min(remaining, _LONGEST_SLEEP))

    # -- signals -----------------------------------------------------------------------

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the child (or the group it leads); once its end is known, nothing.

        With a pidfd the signal goes through it and cannot reach a process
        that reuses the pid, even if somebody else reaped ours.  Without one,
        holding the lock keeps this thread from reaping between the check and
        the ``kill``.  A group has no pidfd: ``killpg`` is only as safe as the
        leader's pid, so it too stops at the leader's recorded death.
        """
        if self._end is not None:
            self._refuse_if_inherited()
            return
        with self.lock:
            self.send_signal_locked(sig, group=group)

    def send_signal_locked(self, sig: int, *, group: bool = False) -> None:
        """:meth:`send_signal` for an owner that holds the shared lock (``syncmon.Popen``)."""
        if self._end is not None:
            self._refuse_if_inherited()
        elif group:
            os.killpg(self.pid, sig)
        elif self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, sig)
        else:
            os.kill(self.pid, sig)

    def _refuse_if_inherited(self) -> None:
        if isinstance(self._end, InheritedAcrossFork):
            raise self._end

    # -- for an owner that reaps (syncmon.Popen); call with the shared lock held ------

    def reap(self, flags: int) -> int | None:
        """Reap the child as ``waitpid(pid, flags)`` would, through the pidfd when there is one.

        Returns the raw wait status, or ``None`` (``WNOHANG`` and still
        running).  A child already reaped gives its death again; one reaped
        elsewhere gives its recovered death, or raises ``ReapedElsewhere``.
        Call with the shared lock held.
        """
        end = self._end
        if end is not None and not isinstance(end, ChildState):
            raise end
        if end is not None and not self._zombie:
            return end.to_wait_status()
        try:
            reaped = self._reap_now(flags)
        except ChildProcessError:
            if end is None:
                self._record_reaped_elsewhere()
                return self._outcome(self._end).to_wait_status()  # type: ignore[arg-type]
            reaped = end, end.to_wait_status()  # seen dead by us, reaped by somebody else: still true
        if reaped is None:
            return None
        state, status = reaped
        if end is None:
            self._record(state)
        else:
            self._zombie = False
            self._close_pidfd()
        return status

    def _reap_now(self, flags: int) -> tuple[ChildState, int] | None:
        """Reap the child as ``waitpid(pid, flags)``: its state, and the raw status for Popen.

        Through the pidfd, the raw ``waitid`` also reads the usage of the
        death.  By pid it is ``os.waitpid`` itself, as in subprocess, so that
        code which mocks it (CPython's own tests of subprocess do) sees
        Popen's reap and has its answer believed; the usage is not known then.
        """
        if self._pidfd is not None:
            state = raw_waitid(os.P_PIDFD, self._pidfd, EXITED | (flags & NOHANG))
            return None if state is None else (state, state.to_wait_status())
        pid, status = os.waitpid(self.pid, flags)
        return (ChildState.from_wait_status(self.pid, status), status) if pid else None

    # -- registration, stale entries and fork ---------------------------------------------

    def register(self, *, stale_is_certain: bool) -> Watch:
        """Start being watched by the monitor thread; return the watch that watches the pid.

        That is this one, or the one already registered under the pid when it
        still watches a live child (adopting twice); this one is then given
        up.  A registered watch whose child was reaped elsewhere is replaced
        (``stale_is_certain``: the caller knows the pid now names a new child
        of ours).  When epoll cannot take the pidfd (ENOMEM, ENOSPC), the
        child is watched through SIGCHLD instead.
        """
        try:
            registered = self._add_to_registry(stale_is_certain)
        except BaseException:
            self._give_up()
            raise
        if registered is not self:
            self._give_up()
            return registered
        if self._pidfd is None:
            # The child may have changed state, and its SIGCHLD been drained,
            # before it was registered: the reap pass would then never look at
            # it.  (A pidfd needs no such look: epoll is level-triggered, so
            # one that is already readable reports at once.)
            self.collect()
        return self

    def _add_to_registry(self, stale_is_certain: bool) -> Watch:
        while True:
            try:
                registered = self._engine.registry.add(self, self._pidfd)
            except OSError as error:
                if self._pidfd is None or error.errno not in TRANSIENT_ERRNOS:
                    raise
                self._close_pidfd()  # watched through SIGCHLD instead
                continue
            assert isinstance(registered, Watch)
            if registered is self or not registered.forget_if_stale(certain=stale_is_certain):
                return registered

    def _give_up(self) -> None:
        """Never registered: close the pidfd and give back the engine reference."""
        self._close_pidfd()
        self._engine.release()


    def forget_if_stale(self, *, certain: bool) -> bool:
        """Whether this watch's child was reaped elsewhere (recording it if so).

        ``certain``: the caller knows the pid now names another child, so the
        pid must not be asked about again; only the pidfd may be.
        """
        with self.lock:
            if self._end is None:
                if not certain and not self._pidfd_says_reaped():
                    return False
                self._record_reaped_elsewhere()
            return True

    def _pidfd_says_reaped(self) -> bool:
        if self._pidfd is None:
            return False
        try:
            os.waitid(os.P_PIDFD, self._pidfd, _ANY_STATE_PEEK)
        except ChildProcessError:
            return True
        return False

    def abandon_after_fork(self) -> None:
        """In a fork child: the child is not ours here.  Close what we hold, fail the future.

        No lock is taken (a thread that held it does not exist here) and no
        callback runs (they belong to the parent, and would act on its
        descriptors).  The descriptors are still ours to close: the fork
        child has run no other code yet.
        """
        for fd in (self._pidfd, self._polled_pidfd):
            if fd is not None:
                os.close(fd)
        self._pollers = 0
        self._pidfd = self._polled_pidfd = None
        if self._end is None:
            self._end = end = InheritedAcrossFork(self.pid)
            found = self.__dict__.setdefault("_future", end)
            if isinstance(found, DeathFuture):
                found.abandon(end)

    def __repr__(self) -> str:
        return f"<Watch pid={self.pid} {'gone' if self._end is not None else 'watched'}>"


def open_pidfd(pid: int) -> int | None:
    """A pidfd for our child ``pid``, or ``None`` when no descriptor can be had now.

    ESRCH means the pid names no process: not our child (or reaped already).
    A thread that leads no process gives EINVAL (ENOENT since pidfs, 6.9).
    """
    try:
        return pidfds.open_pidfd(pid)
    except ProcessLookupError:
        raise ChildProcessError(errno.ECHILD, f"pid {pid} is not a child of this process") from None
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.ENOENT):
            raise ChildProcessError(errno.ECHILD, f"pid {pid} is not a process (a thread id?)") from None
        if error.errno in TRANSIENT_ERRNOS:
            return None
        raise


def is_unreaped_child(pid: int, pidfd: int | None) -> bool:
    """Whether ``pid`` (through ``pidfd`` when there is one) is our unreaped child.

    ``WNOWAIT`` looks without consuming anything.  Asking through the pidfd
    also proves that the pidfd names our child and not a process that took
    over the pid after somebody reaped ours.
    """
    try:
        if pidfd is not None:
            os.waitid(os.P_PIDFD, pidfd, _ANY_STATE_PEEK)
        else:
            os.waitid(os.P_PID, pid, _ANY_STATE_PEEK)
    except ChildProcessError:
        return False
    return True


def watch_child(
    engine: Engine, pid: int, pidfd: int | None, *, lock: threading.Lock, reaps: bool, stale_is_certain: bool
) -> Watch:
    """Register a watch for ``pid``; the engine reference and ``pidfd`` pass to it.

    See :meth:`Watch.register` for what is returned.  On any exception the
    pidfd is closed and the reference given back.
    """
    try:
        watch = Watch(engine, pid, pidfd, lock, reaps)
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        engine.release()
        raise
    return watch.register(stale_is_certain=stale_is_certain)


def lost_at_birth(engine: Engine, pid: int, lock: threading.Lock) -> Watch:
    """A watch for a child that was reaped before it could be watched.

    It is never registered: its pid may already be somebody else's.  Its
    waits and future fail with ``ReapedElsewhere``.
    """
    watch = Watch(engine, pid, None, lock, reaps=True)
    with lock:
        watch._record(ReapedElsewhere(pid))
    return watch

"""The monitor thread and the ``Monitor`` scopes that share it.

One process has at most one *engine*: one signalfd for SIGCHLD, one epoll,
one monitor thread.  A process has a single pending SIGCHLD and reading a
signalfd consumes it, so two signalfds would steal each other's wake-ups
(DESIGN.md rule 7).  A :class:`Monitor` is a scope of handles on that engine;
the engine lives while any monitor is open or any child it watches is
unreaped, and is made anew on demand after that.

The monitor thread does three things on each wake-up:

1. drains the signalfd (and notes which pidfds are readable);
2. bumps ``generation`` under the condition and notifies, which wakes every
   ``ChildHandle.wait()`` to ask the kernel about its own child;
3. runs the reap pass for children nobody may be waiting on, so their
   futures resolve: the children whose pidfd became readable, and on SIGCHLD
   the children that have no pidfd.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import threading
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from . import pidfd as pidfds
from .child import ChildHandle
from .futures import CallbackRunner
from .signalfd import SignalFD, children_autoreaped, threads_not_blocking
from .launch import Redirect, StrOrBytesPath, as_command, child_signal_mask, spawn_process

if TYPE_CHECKING:
    from .popen import Popen

_logger = logging.getLogger("syncmon")

#: How often the monitor looks without being told, and only while a SIGCHLD
#: may have been swallowed by a thread that does not block it *and* some wait
#: depends on SIGCHLD (no pidfd, or a wait for stop/continue).
RESCUE_INTERVAL = 0.05


class Engine:
    """The signalfd, the epoll, the thread, the generation and the registry of handles."""

    def __init__(self) -> None:
        # Block SIGCHLD in this thread first: the monitor thread and every
        # thread started from here on inherit the block.
        self._signals = SignalFD()
        global _sigchld_blocked_by_user
        if _sigchld_blocked_by_user is None:
            _sigchld_blocked_by_user = self._signals.blocked_before
        self.sigchld_blocked_by_user: bool = _sigchld_blocked_by_user
        self._epoll = select.epoll()
        self._wakeup = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wakeup, select.EPOLLIN)
        self._signalfd_watched = False  # see _update_signal_interest

        self._condition = threading.Condition(threading.Lock())
        self.generation = 0

        self._registry_lock = threading.Lock()
        self._by_pid: dict[int, ChildHandle] = {}
        self._by_pidfd: dict[int, ChildHandle] = {}
        self._paused: set[int] = set()  # pidfds a waiter polls itself: see pause_pidfd
        self._signal_only = 0  # handles without a pidfd: only SIGCHLD tells of them
        self._signal_waiters = 0  # waits for stop/continue: only SIGCHLD tells of those

        self.users = 0  # open monitors + unreaped handles; guarded by _engines_lock
        self.abandoned = False  # set in a fork child, where this engine has no thread
        self._stopping = False
        self._stop_lock = threading.Lock()
        self._rescue_requested = False
        self.callbacks = CallbackRunner()
        self._lossy = threads_not_blocking() > 0
        self._thread = threading.Thread(target=self._run, name="syncmon-monitor", daemon=True)
        self._thread.start()

    # -- the condition ---------------------------------------------------------

    def wait_for_change(self, generation: int, timeout: float | None) -> None:
        """Sleep until the generation moves past ``generation`` or ``timeout`` passes."""
        with self._condition:
            if self.generation == generation:
                self._condition.wait(timeout)

    def death_recorded(self) -> None:
        """A thread other than the monitor reaped a child: wake that child's other waiters.

        They cannot count on the SIGCHLD of that death to wake them: with no
        child left that needs it, nobody listens to the signalfd any more.
        The monitor thread bumps once after its whole reap pass instead.
        """
        if threading.current_thread() is not self._thread:
            self._bump()

    def _bump(self) -> None:
        with self._condition:
            self.generation += 1
            self._condition.notify_all()

    @contextlib.contextmanager
    def waiting(self, options: int) -> Iterator[None]:
        """Count waits that only SIGCHLD can end, so a lossy process gets rescue ticks."""
        if not options & (os.WSTOPPED | os.WCONTINUED):
            yield
            return
        with self._registry_lock:
            self._signal_waiters += 1
            self._update_signal_interest()
        self._rescue_changed()
        try:
            yield
        finally:
            with self._registry_lock:
                self._signal_waiters -= 1
                self._update_signal_interest()

    def _update_signal_interest(self) -> None:
        """Listen to the signalfd only while something depends on SIGCHLD.

        Exits of children with a pidfd are told by the pidfd; SIGCHLD only
        matters to children without one and to stop/continue waits.  Waking
        the monitor thread for every SIGCHLD regardless would make it compete
        for the GIL with the very waiter the death concerns.  A SIGCHLD that
        arrives while nobody listens stays pending, and is drained (a harmless
        extra wake-up) once somebody does.  Call with the registry lock held.
        """
        wanted = bool(self._signal_only or self._signal_waiters)
        if wanted != self._signalfd_watched:
            if wanted:
                self._epoll.register(self._signals.fd, select.EPOLLIN)
            else:
                self._epoll.unregister(self._signals.fd)
            self._signalfd_watched = wanted

    # -- the registry --------------------------------------------------------------

    def register(self, handle: ChildHandle, pidfd: int | None) -> ChildHandle:
        """Start watching ``handle``; return the handle already watching its pid, if any."""
        with self._registry_lock:
            existing = self._by_pid.get(handle.pid)
            if existing is not None:
                return existing
            self._by_pid[handle.pid] = handle
            if pidfd is None:
                self._signal_only += 1
                self._update_signal_interest()
            else:
                self._by_pidfd[pidfd] = handle
                self._epoll.register(pidfd, select.EPOLLIN)
        if pidfd is None:
            self._rescue_changed()
        return handle

    def forget(self, handle: ChildHandle) -> None:
        """Stop watching a handle whose child is gone (called with the handle's lock)."""
        with self._registry_lock:
            if self._by_pid.get(handle.pid) is not handle:
                return
            del self._by_pid[handle.pid]
            pidfd = handle._pidfd
            if pidfd is None:
                self._signal_only -= 1
                self._update_signal_interest()
            else:
                del self._by_pidfd[pidfd]
                if pidfd in self._paused:
                    self._paused.discard(pidfd)
                else:
                    self._epoll.unregister(pidfd)

    def pause_pidfd(self, pidfd: int) -> None:
        """Stop the monitor thread from waking for a pidfd that a waiter polls itself.

        The waiter reaps and resolves the future; were the monitor woken too,
        the two threads would only queue for the GIL and the handle's lock,
        and the waiter would learn of the death later.  Called with the
        handle's lock held, before its first poller starts.
        """
        with self._registry_lock:
            if pidfd in self._by_pidfd and pidfd not in self._paused:
                self._epoll.unregister(pidfd)
                self._paused.add(pidfd)

    def resume_pidfd(self, pidfd: int) -> None:
        """The last poller left with the child unreaped: the monitor watches again.

        epoll is level-triggered, so a child that exited meanwhile is
        reported at once and its future still resolves.
        """
        with self._registry_lock:
            if pidfd in self._paused:
                self._paused.discard(pidfd)
                self._epoll.register(pidfd, select.EPOLLIN)

    # -- the thread ------------------------------------------------------------------

    def _rescue_changed(self) -> None:
        """Let the thread recompute its epoll timeout (only a lossy process has one)."""
        if self._lossy:
            os.eventfd_write(self._wakeup, 1)

    @contextlib.contextmanager
    def sigchld_unblocked(self) -> Iterator[None]:
        """Let SIGCHLD through in this thread for a moment, then make up for it.

        For code that starts children itself (``subprocess``'s vfork path)
        and cannot be told to give the child another mask: the child inherits
        this thread's mask, and must not inherit syncmon's block (rule 2).
        While the block is off, a pending SIGCHLD can be delivered to this
        thread and vanish (its default action is to ignore it), so on the way
        out the monitor is told to act as if a SIGCHLD had arrived.
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
                self._rescue_requested = True
                os.eventfd_write(self._wakeup, 1)

    def _poll_timeout(self) -> float:
        if self._lossy and (self._signal_only or self._signal_waiters):
            return RESCUE_INTERVAL
        return -1

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        finally:
            with self._stop_lock:
                self._close_fds()

    def _step(self) -> None:
        events = self._epoll.poll(self._poll_timeout())
        sigchld = not events  # a rescue tick stands in for a SIGCHLD that may be lost
        ready: list[ChildHandle] = []
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
                with self._registry_lock:
                    handle = self._by_pidfd.get(fd)
                if handle is not None:
                    ready.append(handle)
        if not events:
            self._lossy = threads_not_blocking() > 0
        if sigchld:
            ready += self._signal_only_handles()
        for handle in ready:
            try:
                handle._collect()
            except Exception:
                # One child's trouble must not end the monitoring of all the others.
                _logger.exception("syncmon: reap pass failed for %r", handle)
        if sigchld or ready:
            # Reap first, then wake: under the GIL the woken waiters could not
            # run alongside the reap pass anyway, and this way they find the
            # deaths recorded instead of queueing for the handles' locks.
            self._bump()

    def _signal_only_handles(self) -> list[ChildHandle]:
        with self._registry_lock:
            if not self._signal_only:
                return []
            return [h for h in self._by_pid.values() if h._pidfd is None]

    # -- stopping ------------------------------------------------------------------------

    def stop(self, join: bool) -> None:
        """Make the thread exit; it closes the engine's descriptors on its way out."""
        # Woken by anything else, the thread may see _stopping and close the
        # eventfd while this thread is about to write to it (or to a new
        # descriptor that took its number): the lock makes the two one step.
        with self._stop_lock:
            self._stopping = True
            os.eventfd_write(self._wakeup, 1)
        self.callbacks.shutdown()
        if join and threading.current_thread() is not self._thread:
            self._thread.join()

    def _close_fds(self) -> None:
        self._epoll.close()
        self._signals.close()
        os.close(self._wakeup)

    def abandon_after_fork(self) -> None:
        """In a fork child: this engine has no thread here; release its descriptors.

        Only the forking thread survives a fork, and any lock another thread
        held stays held forever in the child, so nothing here takes a lock.
        """
        self.abandoned = True
        for handle in list(self._by_pid.values()):
            if handle._pidfd is not None:
                os.close(handle._pidfd)
        self._close_fds()

    # -- the reference count ---------------------------------------------------------

    def retain(self) -> None:
        with _engines_lock:
            self.users += 1

    def release(self, join: bool = False) -> None:
        """Drop one user; the last one stops the engine.

        A handle releases with its own lock held, possibly on the monitor
        thread itself, so only a monitor's ``close()`` waits for the thread.
        """
        global _engine
        with _engines_lock:
            self.users -= 1
            if self.users:
                return
            if _engine is self:
                _engine = None
            global _retiring
            _retiring = self
            self.stop(join)

    def wait_stopped(self) -> None:
        self._thread.join()


_engines_lock = threading.Lock()
_engine: Engine | None = None
# Whether the program itself blocked SIGCHLD before syncmon first did.  Learned
# once: a later engine finds the block that an earlier one left in place (a
# block is never lifted, see the README) and must not mistake it for the user's.
_sigchld_blocked_by_user: bool | None = None
_retiring: Engine | None = None  # stopped, but its thread may still hold the signalfd


def _acquire_engine() -> Engine:
    """The process's engine, started if there is none, with one more user."""
    global _engine, _retiring
    with _engines_lock:
        engine = _engine
        if engine is None:
            if _retiring is not None:
                # Never two signalfds for SIGCHLD at once, even briefly: the
                # old one could consume the new engine's first wake-up.  The
                # retiring thread needs no lock to finish, so joining here is safe.
                _retiring.wait_stopped()
                _retiring = None
            engine = _engine = Engine()
        engine.users += 1
        return engine


class Monitor:
    """A scope of child handles on the process's one monitor thread.

    ``close()`` (or leaving the ``with`` block) stops this monitor from
    starting or adopting more children; handles it already made keep
    working until their child is reaped.  When no monitor is open and no
    watched child is left, the thread stops and its descriptors are closed.
    """

    def __init__(self, *, pidfd: bool | None = None) -> None:
        """``pidfd=None`` uses pidfds where the kernel has them (unless the
        ``SYNCMON_PIDFD=0`` environment variable says not to); ``False``
        watches this monitor's children through the signalfd alone."""
        self.pidfd = pidfds.wanted(pidfd)
        self._lock = threading.Lock()
        self._engine: Engine | None = _acquire_engine()

    @property
    def closed(self) -> bool:
        return self._engine is None

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None and not engine.abandoned:
            engine.release(join=True)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Monitor {state} pidfd={self.pidfd}>"

    def _open_engine(self) -> Engine:
        """The engine, with one more user reserved for the handle about to be made.

        Reserving under the monitor's lock means a concurrent ``close()``
        cannot stop the engine between the check and the registration.
        """
        if not self.pidfd and children_autoreaped():
            # No SIGCHLD is even sent then (the kernel reaps at once), and
            # without pidfds nothing else would ever tell of these children.
            raise ChildProcessError(
                errno.ECHILD,
                "SIGCHLD is set to SIG_IGN (or SA_NOCLDWAIT): the kernel reaps children at once, "
                "and a monitor without pidfds could never learn how they end",
            )
        with self._lock:
            engine = self._engine
            if engine is None:
                raise RuntimeError("this Monitor is closed")
            if engine.abandoned:
                raise RuntimeError("this Monitor was made before fork(); use a new one in the child")
            engine.retain()
            return engine

    def spawn(
        self,
        argv: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        env: Mapping[Any, Any] | None = None,
        cwd: StrOrBytesPath | None = None,
        stdin: Redirect = None,
        stdout: Redirect = None,
        stderr: Redirect = None,
        start_new_session: bool = False,
        process_group: int | None = None,
        pass_fds: Iterable[int] = (),
    ) -> ChildHandle:
        """Start ``argv`` and watch it.  Arguments mean what they mean to ``subprocess.Popen``."""
        engine = self._open_engine()
        try:
            pid = spawn_process(
                argv,
                sigmask=child_signal_mask(engine.sigchld_blocked_by_user),
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=start_new_session,
                process_group=process_group,
                pass_fds=pass_fds,
            )
        except BaseException:
            engine.release()
            raise
        # Nothing but syncmon's own per-pid waits can reap this child, so the
        # pid still names it when the pidfd is opened.
        return self._watch(engine, pid, as_command(argv))

    def adopt(self, pid: int, *, pidfd: int | None = None) -> ChildHandle:
        """Watch a child made by other means (``os.posix_spawn``, ``fork``, ``clone3``, ...).

        Raises ``ChildProcessError`` unless ``pid`` is our own unreaped child.
        Adopting a pid this monitor already watches returns the same handle.
        ``pidfd``: a pidfd the caller opened at the child's birth
        (``clone3(CLONE_PIDFD)``); the handle takes it over, and closes it even
        when adopting fails.  Only a pidfd from birth makes adopting immune to
        a foreign reaper: ``pidfd_open(pid)`` later may name a reused pid.
        """
        try:
            if isinstance(pid, bool) or not isinstance(pid, int):
                raise TypeError(f"pid must be an int, not {type(pid).__name__}")
            if pid <= 0:
                raise ValueError(f"pid must be positive, not {pid}")
            if pid == os.getpid():
                raise ValueError("a process is not its own child")
            if pidfd is not None and not self.pidfd:
                raise ValueError("pidfd= given to a monitor made with pidfd=False")
            engine = self._open_engine()
        except BaseException:
            if pidfd is not None:
                os.close(pidfd)
            raise
        return self._watch(engine, pid, None, verify=True, pidfd=pidfd)

    def _watch(
        self,
        engine: Engine,
        pid: int,
        command: list[Any] | None,
        *,
        verify: bool = False,
        lock: threading.Lock | None = None,
        reaps: bool = True,
        pidfd: int | None = None,
    ) -> ChildHandle:
        """Make and register the handle; the engine user reserved for it passes to it."""
        try:
            try:
                if pidfd is None and self.pidfd:
                    pidfd = self._open_pidfd(pid)
            except ChildProcessError:
                if verify:
                    raise
                # We started it a moment ago and it is already reaped: the
                # kernel did it (SIGCHLD ignored) or a foreign reaper did.
                return self._lost_at_birth(engine, pid, command, lock)
            try:
                if verify:
                    _check_own_child(pid, pidfd)
                handle = ChildHandle(engine, pid, pidfd, command, lock=lock, reaps=reaps)
                registered = self._register(engine, handle, pidfd, adopting=verify)
            except BaseException:
                if pidfd is not None:
                    os.close(pidfd)
                raise
        except BaseException:
            engine.release()
            raise
        if registered is not handle:  # the pid was already watched, and still is
            if pidfd is not None:
                os.close(pidfd)
            engine.release()
        elif pidfd is None:
            # The child may have changed state, and its SIGCHLD been drained,
            # before it was registered: the reap pass would then never look
            # at it.  (A pidfd needs no such look: epoll is level-triggered,
            # so one that is already readable reports at once.)
            handle._collect()
        return registered

    @staticmethod
    def _lost_at_birth(
        engine: Engine, pid: int, command: list[Any] | None, lock: threading.Lock | None
    ) -> ChildHandle:
        """A handle for a child that was reaped before it could be watched.

        It is never registered: its pid may already be somebody else's.
        Its waits and future fail with ``ReapedElsewhere``.
        """
        handle = ChildHandle(engine, pid, None, command, lock=lock)
        with handle._lock:
            handle._record_reaped_elsewhere()
        return handle

    @staticmethod
    def _register(engine: Engine, handle: ChildHandle, pidfd: int | None, *, adopting: bool) -> ChildHandle:
        """Register ``handle``, clearing out a stale handle that still holds its pid.

        A handle is stale when somebody outside syncmon reaped its child and
        the pid was given to a new child before the monitor noticed.  For a
        child we just spawned that is certain; for an adopted pid it is
        checked through the old handle's pidfd (without one it cannot be told
        apart from adopting the same child twice, which returns the old handle).
        """
        while True:
            registered = engine.register(handle, pidfd)
            if registered is handle or not registered._forget_if_stale(certain=not adopting):
                return registered

    @staticmethod
    def _open_pidfd(pid: int) -> int:
        try:
            return pidfds.open_pidfd(pid)
        except ProcessLookupError:
            raise ChildProcessError(10, f"pid {pid} is not a child of this process") from None

    @contextlib.contextmanager
    def sigchld_unblocked(self) -> Iterator[None]:
        """A window in which this thread can start children with another tool
        (``subprocess``, asyncio) and have them inherit an unblocked SIGCHLD.

        See :meth:`Engine.sigchld_unblocked`: a wake-up lost in the window is
        made up for when it closes.
        """
        engine = self._open_engine()  # the engine must outlive the window
        try:
            with engine.sigchld_unblocked():
                yield
        finally:
            engine.release()

    def popen(self, args: Any, **kwargs: Any) -> Popen:
        """A :class:`syncmon.Popen` watched by this monitor."""
        from .popen import Popen

        return Popen(args, monitor=self, **kwargs)


def _check_own_child(pid: int, pidfd: int | None) -> None:
    """Raise ``ChildProcessError`` unless ``pid`` (or ``pidfd``) is our unreaped child.

    ``WNOWAIT`` looks without consuming anything.  Asking through the pidfd
    when there is one also proves that the pidfd names our child and not a
    process that took over the pid after somebody reaped ours.
    """
    flags = os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOHANG | os.WNOWAIT
    try:
        if pidfd is not None:
            os.waitid(os.P_PIDFD, pidfd, flags)
        else:
            os.waitid(os.P_PID, pid, flags)
    except ChildProcessError:
        raise ChildProcessError(10, f"pid {pid} is not an unreaped child of this process") from None


_default_lock = threading.Lock()
_default: Monitor | None = None


def default_monitor() -> Monitor:
    """The process-wide monitor, started on first use (never at import)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Monitor()
        return _default


def spawn(argv: StrOrBytesPath | Sequence[StrOrBytesPath], **kwargs: Any) -> ChildHandle:
    """``Monitor.spawn`` on the process-wide monitor."""
    return default_monitor().spawn(argv, **kwargs)


def adopt(pid: int) -> ChildHandle:
    """``Monitor.adopt`` on the process-wide monitor."""
    return default_monitor().adopt(pid)


def _after_fork_in_child() -> None:
    """Rule 3: the fork child starts with no engine and no default monitor.

    The parent's engine has no thread in the child, and its locks may have
    been held by threads that do not exist here: replace them, abandon the
    engine (closing its descriptors), and let the next use start afresh.
    """
    global _engines_lock, _engine, _retiring, _default_lock, _default
    _engines_lock = threading.Lock()
    _default_lock = threading.Lock()
    engine, _engine, _retiring, _default = _engine, None, None, None
    if engine is not None:
        engine.abandon_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

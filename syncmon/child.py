"""One child process: its states, and the handle that waits on it, signals it and reaps it.

The handle is where the per-child synchronisation lives.  Its lock makes
"ask the kernel about this child" and "record that it is gone" one step, so
no thread can use the pid (``waitid``, ``kill``) after another thread reaped
it: a reaped pid may already belong to somebody else.  Everything a handle
learns comes from ``waitid`` on this one child (``P_PIDFD`` where there is a
pidfd, else ``P_PID``), never from reaping "any child".
"""

from __future__ import annotations

import enum
import math
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import pidfd as pidfds
from .futures import DeathFuture
from .signalfd import children_autoreaped

if TYPE_CHECKING:
    from .monitor import Engine


class W(enum.IntFlag):
    """``waitid`` options, with the values of the ``os`` module."""

    EXITED = os.WEXITED
    STOPPED = os.WSTOPPED
    CONTINUED = os.WCONTINUED
    NOHANG = os.WNOHANG
    NOWAIT = os.WNOWAIT


class CLD(enum.IntEnum):
    """``si_code`` of a child's state change, with the values of the ``os`` module."""

    EXITED = os.CLD_EXITED
    KILLED = os.CLD_KILLED
    DUMPED = os.CLD_DUMPED
    TRAPPED = os.CLD_TRAPPED
    STOPPED = os.CLD_STOPPED
    CONTINUED = os.CLD_CONTINUED


_DEATHS = frozenset({CLD.EXITED, CLD.KILLED, CLD.DUMPED})
_STOPS = frozenset({CLD.STOPPED, CLD.TRAPPED})


@dataclass(frozen=True, slots=True)
class ChildState:
    """One state change of a child, as ``waitid`` reports it.

    ``uid`` is the child's real user id, or ``None`` when the state was
    recovered after somebody else reaped the child: the kernel keeps the
    exit status then, but not the credentials, and syncmon does not guess.
    """

    pid: int
    uid: int | None
    code: CLD
    status: int

    @classmethod
    def from_siginfo(cls, info: os.waitid_result) -> ChildState:
        return cls(info.si_pid, info.si_uid, CLD(info.si_code), info.si_status)

    @classmethod
    def from_wait_status(cls, pid: int, status: int) -> ChildState:
        """Decode a ``waitpid``-style status word (what PIDFD_INFO_EXIT keeps)."""
        if os.WIFEXITED(status):
            return cls(pid, None, CLD.EXITED, os.WEXITSTATUS(status))
        code = CLD.DUMPED if os.WCOREDUMP(status) else CLD.KILLED
        return cls(pid, None, code, os.WTERMSIG(status))

    def to_wait_status(self) -> int:
        """Encode a death as ``waitpid`` would have reported it (for subprocess)."""
        if self.code is CLD.EXITED:
            return (self.status & 0xFF) << 8
        return self.status | (0x80 if self.code is CLD.DUMPED else 0)

    @property
    def returncode(self) -> int | None:
        """subprocess's convention: the exit code, ``-signal`` for a killed child,
        ``None`` for a state that is not a death."""
        if self.code is CLD.EXITED:
            return self.status
        if self.code in _DEATHS:
            return -self.status
        return None

    def died(self) -> bool:
        return self.code in _DEATHS

    def clean(self) -> bool:
        """Exited by itself with status 0."""
        return self.code is CLD.EXITED and self.status == 0

    def state(self, options: W) -> bool:
        """Whether this change is one that a wait with ``options`` asks for."""
        if self.code in _DEATHS:
            return bool(options & W.EXITED)
        if self.code in _STOPS:
            return bool(options & W.STOPPED)
        return bool(options & W.CONTINUED)

    def __str__(self) -> str:
        if self.code is CLD.EXITED:
            return f"pid {self.pid} exited with status {self.status}"
        return f"pid {self.pid} {self.code.name.lower()} by {_signal_name(self.status)}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class UncleanExit(subprocess.CalledProcessError):
    """A child that ``check()`` waited for did not exit with status 0.

    A ``CalledProcessError``, so code written for ``subprocess.run(check=True)``
    catches it too.
    """

    def __init__(self, state: ChildState, command: Sequence[Any] | None) -> None:
        super().__init__(state.returncode, command)
        self.state = state
        self.command = command

    def __str__(self) -> str:
        return f"{self.command!r}: {self.state}"


class ReapedElsewhere(ChildProcessError):
    """Somebody else reaped the child, and the kernel could not tell its status.

    Raised instead of inventing one (``subprocess`` reports 0, asyncio 255).
    With a pidfd on Linux 6.15+ the status is recovered and this is not
    raised; it remains for kernels without ``PIDFD_INFO_EXIT``, for monitors
    without pidfds, and for a child reaped by the kernel itself because
    SIGCHLD is ignored.
    """

    def __init__(self, pid: int) -> None:
        if children_autoreaped():
            why = "SIGCHLD is set to SIG_IGN (or SA_NOCLDWAIT), so the kernel reaps children itself"
        else:
            why = "it was reaped outside syncmon (os.wait, os.waitpid or a P_ALL reaper)"
        super().__init__(f"exit status of pid {pid} is lost: {why}")
        self.pid = pid


# Internally the options are plain ints: IntFlag arithmetic costs several
# microseconds a call, on the path of every wait.
_EXITED, _STOPPED, _CONTINUED, _NOHANG, _NOWAIT = (
    os.WEXITED, os.WSTOPPED, os.WCONTINUED, os.WNOHANG, os.WNOWAIT)
_STOP_KINDS = _STOPPED | _CONTINUED
_ALL_OPTIONS = _EXITED | _STOP_KINDS | _NOHANG | _NOWAIT


def _check_options(options: W | int, *, allow_nohang: bool = False) -> int:
    if isinstance(options, bool) or not isinstance(options, int):
        raise TypeError(f"options must be W flags, not {type(options).__name__}")
    flags = int(options)
    if flags & ~_ALL_OPTIONS:
        raise ValueError(f"unknown waitid options: {options!r}")
    if not flags & (_EXITED | _STOP_KINDS):
        raise ValueError("options must include W.EXITED, W.STOPPED or W.CONTINUED")
    if flags & _NOHANG and not allow_nohang:
        raise ValueError("wait() with W.NOHANG would not wait: use poll()")
    return flags


# signal.valid_signals() builds a set of enum members on every call, which
# costs more than the kill itself: ask once.
_VALID_SIGNALS = frozenset(int(s) for s in signal.valid_signals()) | {0}


def _check_signal(sig: int) -> int:
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"a signal number is an int, not {type(sig).__name__}")
    if sig not in _VALID_SIGNALS:
        raise ValueError(f"invalid signal number {sig}")
    return sig


class ChildHandle:
    """A child process of ours, watched by a monitor.  Made by ``Monitor.spawn``/``adopt``.

    Every method may be called from any thread, by many threads at once.
    """

    def __init__(
        self,
        engine: Engine,
        pid: int,
        pidfd: int | None,
        command: Sequence[Any] | None,
        *,
        lock: threading.Lock | None = None,
        reaps: bool = True,
    ) -> None:
        """Watch ``pid``.  The handle owns ``pidfd`` and closes it at the death.

        ``lock`` and ``reaps`` let an owner that reaps the child itself
        (``syncmon.Popen``) share its lock and keep the reaping: the handle
        then only looks with ``WNOWAIT``, and the owner reports the death
        through :meth:`_settle_reaped`.
        """
        self.pid = pid
        self.command = list(command) if command is not None else None
        self.future: DeathFuture = DeathFuture(engine.callbacks)
        self._engine = engine
        self._pidfd = pidfd
        self._lock = lock if lock is not None else threading.Lock()
        self._reaps = reaps
        self._death: ChildState | None = None
        self._lost: ReapedElsewhere | None = None
        self._pollers = 0  # threads in _wait_on_pidfd; guarded by the lock

    # -- what the kernel says -------------------------------------------------

    def _waitid(self, flags: int) -> ChildState | None:
        """One non-blocking ``waitid`` on this child alone.  Call with the lock held."""
        try:
            if self._pidfd is not None:
                info = os.waitid(os.P_PIDFD, self._pidfd, flags | os.WNOHANG)
            else:
                info = os.waitid(os.P_PID, self.pid, flags | os.WNOHANG)
        except ChildProcessError:
            # Our child, unreaped by us, and yet not waitable: somebody else
            # reaped it.  Without a pidfd this must be the last look at the
            # pid, which may already be reused.
            return self._recover()
        return None if info is None else ChildState.from_siginfo(info)

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
        peek = _NOWAIT if options & _NOWAIT or not self._reaps else 0
        kinds = options & _STOP_KINDS
        if peek and kinds:
            # A peek leaves a stop in place, and every later waiter would get
            # the same one: look at the death without consuming it, but take
            # stops and continues for real unless the caller peeks.
            return self._waitid(_EXITED | peek) or self._waitid(kinds | (options & _NOWAIT))
        return self._waitid(_EXITED | kinds | peek)

    # -- recording the death ---------------------------------------------------

    @property
    def _gone(self) -> bool:
        """Whether the child's end is recorded (its death, or that it was lost).

        From then on its pid may belong to somebody else: nothing may use it.
        """
        return self._death is not None or self._lost is not None

    def _check_usable(self) -> None:
        if self._engine.abandoned:
            raise RuntimeError(
                f"pid {self.pid} was watched by the parent process: after fork() this handle is dead"
            )

    def _try(self, options: int) -> ChildState | None:
        """Return the wanted state if there is one now; record a death exactly once."""
        self._check_usable()
        with self._lock:
            if self._death is not None:
                return self._death
            if self._lost is not None:
                raise self._lost
            try:
                state = self._ask_kernel(options)
            except ReapedElsewhere as lost:
                self._record(lost)
                raise
            if state is not None and state.died() and not options & _NOWAIT:
                self._record(state)
            return state

    def _record(self, outcome: ChildState | ReapedElsewhere) -> None:
        """With the lock held: the child is gone; stop watching it and resolve the future.

        The future is resolved under the lock so that anybody who sees the
        death also finds the future done; its callbacks are deferred to the
        callback threads, so no user code runs here.  The pidfd is closed
        here too, under the lock, so ``send_signal`` can never use a closed
        (and perhaps reused) descriptor number.
        """
        self._engine.forget(self)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        # Only now resolve: whoever sees the future done may count descriptors.
        if isinstance(outcome, ChildState):
            self._death = outcome
            self.future.resolve(outcome)
        else:
            self._lost = outcome
            self.future.fail(outcome)
        self._engine.death_recorded()
        self._engine.release()

    def _record_reaped_elsewhere(self) -> None:
        """With the lock held: somebody else reaped the child.  Record its true
        death if the kernel kept it, else record it as lost."""
        try:
            self._record(self._recover())
        except ReapedElsewhere as lost:
            self._record(lost)

    def _settle_lost(self) -> ChildState:
        """For an owner whose own ``waitpid`` failed with ECHILD: the true death, or raise.

        Call with the shared lock held.  The death may already be recorded
        (seen with ``WNOWAIT`` before somebody else reaped); otherwise it is
        recovered through the pidfd, or recorded as lost.
        """
        if not self._gone:
            self._record_reaped_elsewhere()
        if self._lost is not None:
            raise self._lost
        assert self._death is not None
        return self._death

    def _forget_if_stale(self, *, certain: bool) -> bool:
        """Whether this handle's child was reaped elsewhere (recording it if so).

        ``certain``: the caller knows the pid now names another child, so
        the pid must not be asked about again; only the pidfd may be.
        """
        with self._lock:
            if not self._gone:
                if not certain and not self._pidfd_says_reaped():
                    return False
                self._record_reaped_elsewhere()
            return True

    def _pidfd_says_reaped(self) -> bool:
        if self._pidfd is None:
            return False
        try:
            os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return False

    def _settle_reaped(self, status: int) -> ChildState:
        """For an owner that reaped the child itself: record the death it saw.

        Call with the shared lock held, right after the owner's ``waitpid``.
        """
        if not self._gone:
            self._record(ChildState.from_wait_status(self.pid, status))
        return self._death or ChildState.from_wait_status(self.pid, status)

    def _collect(self) -> None:
        """The monitor's reap pass for this child: record a death, if any, for the future."""
        try:
            self._try(_EXITED)
        except ReapedElsewhere:
            pass  # recorded: the future and every wait now fail with it

    # -- public ------------------------------------------------------------------

    def wait(self, options: W | int = W.EXITED, timeout: float | None = None) -> ChildState:
        """Block until the child changes state as ``options`` asks, and return that state.

        Raises ``TimeoutError`` once ``timeout`` seconds pass.  Nothing here
        sleeps-and-looks: the thread sleeps until the kernel or the monitor
        says that something changed.
        """
        wanted = _check_options(options)
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        if not wanted & _STOP_KINDS:
            # A child that is already dead needs no poll set-up (a dup, and the
            # monitor's epoll touched twice): look first.
            state = self._try(wanted)
            if state is not None:
                return state
            pidfd = self._private_pidfd()
            if pidfd is not None:
                try:
                    return self._wait_on_pidfd(pidfd, wanted, deadline, timeout)
                finally:
                    self._release_private_pidfd(pidfd)
        engine = self._engine
        with engine.waiting(wanted):
            # Read the generation *before* asking the kernel: a SIGCHLD that
            # arrives while waitid runs then moves it, and the sleep returns
            # at once instead of sleeping through that change.
            return self._wait_loop(wanted, deadline, timeout, lambda: engine.generation, engine.wait_for_change)

    def _private_pidfd(self) -> int | None:
        """A duplicate of the pidfd, for this waiter alone, while the child is unreaped.

        The handle closes its own pidfd at the death, possibly while this
        waiter is about to poll it; a private duplicate cannot be closed (and
        its number reused) under the waiter.  Taken under the lock for that
        reason.  While any waiter polls, the monitor thread is told not to
        wake for this child (:meth:`Engine.pause_pidfd`).
        """
        with self._lock:
            if self._pidfd is None or self._gone:
                return None
            if not self._pollers:
                self._engine.pause_pidfd(self._pidfd)
            self._pollers += 1
            return os.dup(self._pidfd)

    def _release_private_pidfd(self, pidfd: int) -> None:
        os.close(pidfd)
        with self._lock:
            self._pollers -= 1
            if not self._pollers and self._pidfd is not None:
                # Left by timeout or an exception, child not reaped: nobody
                # else may be looking, so hand the child back to the monitor.
                self._engine.resume_pidfd(self._pidfd)

    def _wait_on_pidfd(self, pidfd: int, wanted: int, deadline: float | None, timeout: float | None) -> ChildState:
        """An exit wait that sleeps in ``poll()`` on the child's own pidfd.

        The kernel wakes this thread directly when the child exits: one
        thread hop instead of two (kernel, monitor thread, waiter), and no
        wake-up at all for other children's deaths.  The monitor still reaps
        for the future; whichever of the two comes second finds the death
        recorded.
        """
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)

        def sleep(_: object, remaining: float | None) -> None:
            poller.poll(None if remaining is None else math.ceil(remaining * 1000))

        return self._wait_loop(wanted, deadline, timeout, lambda: None, sleep)

    def _wait_loop(
        self,
        wanted: int,
        deadline: float | None,
        timeout: float | None,
        mark: Callable[[], Any],
        sleep: Callable[[Any, float | None], object],
    ) -> ChildState:
        """Ask the kernel; if nothing yet, sleep until ``mark()``'s moment is past."""
        while True:
            moment = mark()
            state = self._try(wanted)
            if state is not None:
                return state
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"pid {self.pid} did not change state within {timeout} s")
            sleep(moment, remaining)

    def poll(self, options: W | int = W.EXITED) -> ChildState | None:
        """The wanted state change if there is one right now; never blocks."""
        return self._try(_check_options(options, allow_nohang=True))

    @property
    def returncode(self) -> int | None:
        """``None`` until the death is known, then its subprocess-style return code."""
        return None if self._death is None else self._death.returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child; once its death is known, do nothing.

        With a pidfd the signal goes through it and cannot reach a process
        that reuses the pid, even if somebody else reaped ours.  Without
        one, holding the lock keeps this thread from reaping between the
        check and the ``kill``.
        """
        _check_signal(sig)
        self._check_usable()
        with self._lock:
            if self._gone:
                return
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def killpg(self, sig: int) -> None:
        """Signal the process group the child leads (``start_new_session`` or
        ``process_group=0``); a no-op once the leader's death is known, since
        its pid, and with it the group id, may then be reused."""
        _check_signal(sig)
        self._check_usable()
        with self._lock:
            if not self._gone:
                os.killpg(self.pid, sig)

    def check(self, timeout: float | None = None) -> ChildState:
        """Wait for the death; raise ``UncleanExit`` unless the child exited with 0.

        When the wait is cut short (the timeout expires, KeyboardInterrupt
        arrives), the child gets SIGTERM before the exception propagates: a
        caller that gives up on a child should not leave it running unseen.
        """
        try:
            state = self.wait(W.EXITED, timeout)
        except BaseException:
            try:
                self.terminate()
            except ProcessLookupError:
                pass
            raise
        if not state.clean():
            raise UncleanExit(state, self.command)
        return state

    def __enter__(self) -> ChildHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leave no child behind: kill one that is still alive, and reap it."""
        try:
            if self.poll() is None:
                self.kill()
                self.wait()
        except (ProcessLookupError, ReapedElsewhere):
            pass  # somebody else reaped it: nothing is left to kill or reap

    def __repr__(self) -> str:
        if self._death is not None:
            what = str(self._death).removeprefix(f"pid {self.pid} ")
        elif self._lost is not None:
            what = "reaped elsewhere, status lost"
        else:
            what = "running"
        command = f" {self.command!r}" if self.command is not None else ""
        return f"<ChildHandle pid={self.pid}{command} {what}>"

"""``syncmon.Popen``: ``subprocess.Popen``, but ``wait()`` sleeps on the monitor.

CPython's ``Popen.wait(timeout)`` looks with ``waitpid(WNOHANG)`` and sleeps
in between, up to 50 ms at a time, so a death is noticed late.  This
subclass keeps everything else of ``subprocess.Popen`` (it *is* one) and
changes how a death is learned:

* the child's watch only *looks* at it, with ``waitid(WNOWAIT)``: the
  reaping stays with Popen's own machinery (``poll``, ``wait``, ``__del__``,
  ``subprocess._cleanup``), which reaps through the watch's pidfd, so it
  never reaps a newer child that took the pid of one reaped elsewhere;
* the handle shares Popen's ``_waitpid_lock``, under which Popen does all of
  its reaping, so the handle never looks at a pid after Popen reaped it;
* whoever reaps, the other side learns the true status: Popen's reap is
  reported to the handle (and its future), and when Popen's ``waitpid``
  fails with ECHILD because somebody else reaped, the status comes from the
  handle (or the pidfd) instead of subprocess's invented ``returncode = 0``.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .engine import Engine

from .child import ChildHandle, check_signal
from .launch import as_command
from .monitor import Monitor, default_monitor, handle_of
from .state import ChildState, ReapedElsewhere, W
from .watch import InheritedAcrossFork, Watch


class Popen(subprocess.Popen):  # type: ignore[type-arg]
    """A drop-in ``subprocess.Popen``; ``monitor=`` picks the monitor (default: process-wide)."""

    _watch: Watch | None = None
    _handle: ChildHandle | None = None

    def __init__(self, *args: Any, monitor: Monitor | None = None, **kwargs: Any) -> None:
        if monitor is not None and not isinstance(monitor, Monitor):
            raise TypeError(f"monitor must be a syncmon.Monitor, not {type(monitor).__name__}")
        self._monitor = monitor if monitor is not None else default_monitor()
        super().__init__(*args, **kwargs)

    @property
    def _reap_lock(self) -> threading.Lock:
        """subprocess's ``_waitpid_lock``, under which all of Popen's reaping happens."""
        return cast(threading.Lock, self._waitpid_lock)  # type: ignore[attr-defined]

    @property
    def handle(self) -> ChildHandle:
        """The :class:`ChildHandle` watching this child."""
        if self._handle is None:
            raise RuntimeError("no child is watched: it was not started through syncmon.Popen._execute_child")
        return self._handle

    @property
    def future(self) -> Future[ChildState]:
        """Resolved with the death's :class:`ChildState` as soon as the monitor sees it."""
        return self.handle.future

    def _execute_child(self, *args: Any, **kwargs: Any) -> None:
        def create(engine: Engine) -> int:
            # subprocess gives the child this thread's signal mask, and cannot
            # be told otherwise without giving up its vfork path.
            with engine.reactor.sigchld_unblocked():
                super(Popen, self)._execute_child(*args, **kwargs)  # type: ignore[misc]
            return int(self.pid)

        self._watch = self._monitor.start_watched(create, self._reap_lock)
        self._handle = handle_of(self._watch, as_command(self.args))

    def _wait(self, timeout: float | None) -> int | None:
        """Sleep on the monitor until the child is dead, then let Popen reap it."""
        if self.returncode is not None or self._handle is None:
            return super()._wait(timeout)  # type: ignore[misc,no-any-return]
        try:
            self._handle.wait(W.EXITED, timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(self.args, cast(float, timeout)) from None
        # The child is now a zombie (or was reaped elsewhere); this returns at once.
        return super()._wait(None)  # type: ignore[misc,no-any-return]

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        """Popen's reaping call: through the pidfd where there is one, never by a
        pid whose child was reaped elsewhere, and with the true status then."""
        if self._watch is None:
            return super()._try_wait(wait_flags)  # type: ignore[misc,no-any-return]
        status = self._watch.reap(wait_flags)
        return (0, 0) if status is None else (self.pid, status)

    def _internal_poll(self, _deadstate: int | None = None) -> int | None:
        """CPython's non-blocking poll, reaping through :meth:`_try_wait`.

        It runs from ``__del__`` and ``subprocess._cleanup`` too, so it refers
        to nothing outside its arguments and ``self``, and never raises there
        (``_deadstate`` is given).
        """
        if self.returncode is not None:
            return self.returncode
        watch = self._watch
        # CPython gives up when another thread holds the lock (it may be in a
        # blocking waitpid).  Once the watch knows the child is dead, the
        # holder can only be the monitor finishing that record, briefly: wait
        # for it, or poll() would report "running" after the future resolved.
        # Not in a fork child, where the holder may be a thread that is gone.
        known_dead = watch is not None and watch.gone and watch.death is not None and not watch.inherited
        if not self._reap_lock.acquire(known_dead):
            return None
        try:
            self._reap_if_dead(_deadstate)
        finally:
            self._reap_lock.release()
        return self.returncode

    def _reap_if_dead(self, _deadstate: int | None = None) -> None:
        """With ``_waitpid_lock`` held: reap the child if it is dead, setting ``returncode``."""
        try:
            if self.returncode is None:
                pid, status = self._try_wait(os.WNOHANG)
                if pid == self.pid:
                    self._handle_exitstatus(status)  # type: ignore[attr-defined]
        except (OSError, InheritedAcrossFork) as error:
            if _deadstate is not None:
                self.returncode = _deadstate
            elif isinstance(error, (ReapedElsewhere, InheritedAcrossFork)):
                raise  # never subprocess's invented 0

    def send_signal(self, sig: int) -> None:
        """Signal the child unless its death is known.

        CPython checks with ``poll()`` and then calls ``os.kill`` with no lock
        in between, so a reap in another thread can slip in and the signal hit
        a reused pid (bpo-38630).  Here the reap-if-dead and the signal happen
        under the lock all of Popen's reaping takes, and the signal goes
        through the pidfd where there is one.
        """
        if self._watch is None:
            return super().send_signal(sig)
        with self._reap_lock:
            try:
                self._reap_if_dead()
            except ReapedElsewhere:
                return  # dead, and its pid possibly reused: never signal it
            if self.returncode is None:
                self._watch.send_signal_locked(check_signal(sig))


def _signature_with_monitor() -> inspect.Signature:
    """``subprocess.Popen``'s exact signature plus ``monitor=``, for help() and IDEs."""
    base = inspect.signature(subprocess.Popen.__init__)
    monitor = inspect.Parameter("monitor", inspect.Parameter.KEYWORD_ONLY, default=None)
    return base.replace(parameters=[*base.parameters.values(), monitor])


Popen.__init__.__signature__ = _signature_with_monitor()  # type: ignore[attr-defined]

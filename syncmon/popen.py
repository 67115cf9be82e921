"""``syncmon.Popen``: ``subprocess.Popen``, but ``wait()`` sleeps on the monitor.

CPython's ``Popen.wait(timeout)`` looks with ``waitpid(WNOHANG)`` and sleeps
in between, up to 50 ms at a time, so a death is noticed late.  This
subclass keeps everything else of ``subprocess.Popen`` (it *is* one) and
changes how a death is learned:

* the child's handle only *looks* at it, with ``waitid(WNOWAIT)``: the
  reaping stays with Popen's own machinery (``poll``, ``wait``, ``__del__``,
  ``subprocess._cleanup``), so code that reaps a Popen's child itself with
  ``os.waitpid``, or mocks ``os.waitpid`` around it, keeps working;
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
from concurrent.futures import Future
from typing import Any

from .child import ChildHandle, ChildState, ReapedElsewhere, W
from .monitor import Monitor, default_monitor
from .launch import as_command


class Popen(subprocess.Popen):  # type: ignore[type-arg]
    """A drop-in ``subprocess.Popen``; ``monitor=`` picks the monitor (default: process-wide)."""

    _handle: ChildHandle | None = None

    def __init__(self, *args: Any, monitor: Monitor | None = None, **kwargs: Any) -> None:
        self._monitor = monitor if monitor is not None else default_monitor()
        super().__init__(*args, **kwargs)

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
        engine = self._monitor._open_engine()
        try:
            # subprocess gives the child this thread's signal mask, and cannot
            # be told otherwise without giving up its vfork path.
            with engine.sigchld_unblocked():
                super()._execute_child(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            engine.release()
            raise
        self._handle = self._monitor._watch(
            engine, self.pid, as_command(self.args), lock=self._waitpid_lock, reaps=False
        )

    def _wait(self, timeout: float | None) -> int | None:
        """Sleep on the monitor until the child is dead, then let Popen reap it."""
        if self.returncode is not None or self._handle is None:
            return super()._wait(timeout)  # type: ignore[misc]
        try:
            self._handle.wait(W.EXITED, timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        # The child is now a zombie (or was reaped elsewhere); this returns at once.
        return super()._wait(None)  # type: ignore[misc]

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        """Popen's reaping call, with the true status when somebody else reaped."""
        if self._handle is None:
            return super()._try_wait(wait_flags)  # type: ignore[misc,no-any-return]
        try:
            return os.waitpid(self.pid, wait_flags)
        except ChildProcessError:
            return self.pid, self._handle._settle_lost().to_wait_status()

    def _internal_poll(self, _deadstate: int | None = None) -> int | None:
        """CPython's non-blocking poll, reaping through :meth:`_try_wait`.

        It runs from ``__del__`` and ``subprocess._cleanup`` too, so it refers
        to nothing outside its arguments and ``self``.
        """
        if self.returncode is not None:
            return self.returncode
        # CPython gives up when another thread holds the lock (it may be in a
        # blocking waitpid).  Once the handle knows the child is dead, the
        # holder can only be the monitor finishing that record, briefly: wait
        # for it, or poll() would report "running" after the future resolved.
        known_dead = self._handle is not None and self._handle._gone
        if not self._waitpid_lock.acquire(known_dead):
            return None
        try:
            self._reap_if_dead(_deadstate)
        finally:
            self._waitpid_lock.release()
        return self.returncode

    def _reap_if_dead(self, _deadstate: int | None = None) -> None:
        """With ``_waitpid_lock`` held: reap the child if it is dead, setting ``returncode``."""
        try:
            if self.returncode is None:
                pid, status = self._try_wait(os.WNOHANG)
                if pid == self.pid:
                    self._handle_exitstatus(status)
        except OSError as error:
            if _deadstate is not None:
                self.returncode = _deadstate
            elif isinstance(error, ReapedElsewhere):
                raise  # never subprocess's invented 0

    def _handle_exitstatus(self, sts: int, *args: Any) -> None:
        """Popen reaped the child (its lock held): tell the handle and its future."""
        super()._handle_exitstatus(sts, *args)  # type: ignore[misc]
        if self._handle is not None and (os.WIFEXITED(sts) or os.WIFSIGNALED(sts)):
            self._handle._settle_reaped(sts)

    def send_signal(self, sig: int) -> None:
        """Signal the child unless its death is known.

        CPython checks with ``poll()`` and then calls ``os.kill`` with no lock
        in between, so a reap in another thread can slip in and the signal hit
        a reused pid (bpo-38630).  Here the reap-if-dead and the ``kill``
        happen under the lock all of Popen's reaping takes (``poll()`` could
        not wait for it: it gives up when another thread holds it).  ``os.kill`` rather than
        the pidfd, so code that mocks ``os.kill`` sees the call it expects.
        """
        if self._handle is None:
            return super().send_signal(sig)
        with self._waitpid_lock:
            try:
                self._reap_if_dead()
            except ReapedElsewhere:
                return  # dead, and its pid possibly reused: never signal it
            if self.returncode is not None or self._handle._gone:
                return
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # as CPython: the child died in between (bpo-40550)


def _signature_with_monitor() -> inspect.Signature:
    """``subprocess.Popen``'s exact signature plus ``monitor=``, for help() and IDEs."""
    base = inspect.signature(subprocess.Popen.__init__)
    monitor = inspect.Parameter("monitor", inspect.Parameter.KEYWORD_ONLY, default=None)
    return base.replace(parameters=[*base.parameters.values(), monitor])


Popen.__init__.__signature__ = _signature_with_monitor()  # type: ignore[attr-defined]

"""``ChildHandle``: the public face of one watched child.

The handle checks arguments and speaks in the terms users know (``wait``,
``poll``, ``kill``, ``check``, ``with``); everything about the child's end
(the pidfd, the death, the reaping, the engine reference) belongs to its
:class:`~syncmon.watch.Watch`, which the handle only calls.
"""

from __future__ import annotations

import math
import signal
import time
from typing import TYPE_CHECKING, Any, Sequence

from .futures import DeathFuture

if TYPE_CHECKING:
    from .tree import ProcessTree
from .state import ChildState, ReapedElsewhere, UncleanExit, W
from .watch import EXITED, NOHANG, NOWAIT, STOP_KINDS, InheritedAcrossFork, Watch

_ALL_OPTIONS = EXITED | STOP_KINDS | NOHANG | NOWAIT


def check_options(options: W, *, allow_nohang: bool = False) -> int:
    """``W`` flags as a plain int.  A bare number is refused: ``h.wait(10)`` is
    the ``Popen.wait(timeout)`` habit, and must not silently mean flags."""
    if options is W.EXITED:
        return EXITED  # the default of every wait, valid as it is
    if not isinstance(options, W):
        hint = " (for a timeout, write timeout=...)" if isinstance(options, (int, float)) else ""
        raise TypeError(f"options must be syncmon.W flags, not {type(options).__name__}{hint}")
    flags = int(options)
    if flags & ~_ALL_OPTIONS:
        raise ValueError(f"unknown waitid options: {options!r}")
    if not flags & (EXITED | STOP_KINDS):
        raise ValueError("options must include W.EXITED, W.STOPPED or W.CONTINUED")
    if flags & NOHANG and not allow_nohang:
        raise ValueError("wait() with W.NOHANG would not wait: use poll()")
    return flags


def deadline_of(timeout: float | None) -> float | None:
    """The monotonic deadline of ``timeout`` seconds: ``None`` waits without limit.

    As ``subprocess``: a negative timeout is an immediate look, and a huge one
    (``math.inf``, a month) simply waits.  NaN orders with nothing and would
    make every comparison false: refused, as ``time.sleep`` refuses it.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    seconds = float(timeout)
    if math.isnan(seconds):
        raise ValueError("timeout must not be NaN")
    if math.isinf(seconds) and seconds > 0:
        return None
    return time.monotonic() + max(0.0, seconds)


# signal.valid_signals() builds a set of enum members on every call, which
# costs more than the kill itself: ask once.
_VALID_SIGNALS = frozenset(int(s) for s in signal.valid_signals()) | {0}


def check_signal(sig: int) -> int:
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"a signal number is an int, not {type(sig).__name__}")
    if sig not in _VALID_SIGNALS:
        raise ValueError(f"invalid signal number {sig}")
    return sig


class ChildHandle:
    """A child process of ours, watched by a monitor.  Made by ``Monitor.spawn``/``adopt``.

    Every method may be called from any thread, by many threads at once.
    """

    __slots__ = ("pid", "command", "tree", "_watch")

    def __init__(self, watch: Watch, command: Sequence[Any] | None) -> None:
        self.pid = watch.pid
        self.command = list(command) if command is not None else None
        #: The child and everything it started (``spawn(..., tree=True)``), else
        #: ``None``.  Set once, by the tree's spawner, before the handle is returned.
        self.tree: ProcessTree | None = None
        self._watch = watch

    @property
    def future(self) -> DeathFuture:
        """Resolved with the death's :class:`ChildState` (or failed with
        ``ReapedElsewhere``) as soon as the monitor learns of it."""
        return self._watch.future

    def wait(self, options: W = W.EXITED, timeout: float | None = None) -> ChildState:
        """Block until the child changes state as ``options`` asks, and return that state.

        Raises ``TimeoutError`` once ``timeout`` seconds pass.  Nothing here
        sleeps-and-looks: the thread sleeps until the kernel or the monitor
        says that something changed.
        """
        flags = check_options(options)
        deadline = deadline_of(timeout)
        return self._watch.wait(flags, deadline, lambda: f"pid {self.pid} did not change state within {timeout} s")

    def poll(self, options: W = W.EXITED) -> ChildState | None:
        """The wanted state change if there is one right now; never blocks."""
        return self._watch.state_now(check_options(options, allow_nohang=True))

    @property
    def returncode(self) -> int | None:
        """``None`` until the death is known, then its subprocess-style return code."""
        death = self._watch.death
        return None if death is None else death.returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child; once its death is known, do nothing.

        Raises ``InheritedAcrossFork`` in a fork child, where the child is not ours.
        """
        self._watch.send_signal(check_signal(sig))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def killpg(self, sig: int) -> None:
        """Signal the process group the child leads (``start_new_session`` or
        ``process_group=0``); a no-op once the leader's death is known, since
        its pid, and with it the group id, may then be reused."""
        self._watch.send_signal(check_signal(sig), group=True)

    def check(self, timeout: float | None = None) -> ChildState:
        """Wait for the death; raise ``UncleanExit`` unless the child exited with 0.

        When the wait is cut short (the timeout expires, KeyboardInterrupt
        arrives), the child gets SIGTERM before the exception propagates: a
        caller that gives up on a child should not leave it running unseen.
        """
        deadline = deadline_of(timeout)  # bad arguments raise before anything is signalled
        try:
            state = self._watch.wait(EXITED, deadline, lambda: f"pid {self.pid} did not exit within {timeout} s")
        except (InheritedAcrossFork, ReapedElsewhere):
            raise
        except BaseException:
            try:
                self.terminate()
            except ProcessLookupError:
                pass
            raise
        if not state.clean():
            raise UncleanExit(state, self.command)
        return state

    def stop(self, grace: float = 5.0) -> ChildState:
        """SIGTERM (the tree, if any), wait up to ``grace`` seconds, SIGKILL, wait.

        Returns the child's state; with a tree, once every member is gone.
        """
        deadline_of(grace)  # a bad grace raises before anything is signalled
        target: ProcessTree | ChildHandle = self.tree if self.tree is not None else self
        target.kill(signal.SIGTERM)
        try:
            return target.wait(timeout=grace)
        except TimeoutError:
            target.kill(signal.SIGKILL)
            return target.wait()

    def __enter__(self) -> ChildHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leave nothing behind: kill the child (its whole tree, if any) and reap it."""
        try:
            if self.tree is not None:
                self.tree.kill()
                self.tree.wait()
            elif self.poll() is None:
                self.kill()
                self.wait()
        except (ProcessLookupError, ReapedElsewhere, InheritedAcrossFork):
            pass  # nothing is left for us to kill or reap

    def __repr__(self) -> str:
        watch = self._watch
        death = watch.death
        if death is not None:
            what = str(death).removeprefix(f"pid {self.pid} ")
        elif watch.gone:
            what = "lost"
        else:
            what = "running"
        command = f" {self.command!r}" if self.command is not None else ""
        return f"<ChildHandle pid={self.pid}{command} {what}>"

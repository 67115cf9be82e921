"""What a scenario may do with a child, and the syncmon implementation of it.

A *subject* is the thing under test: it spawns children and reports their state
changes.  Scenarios are written once against the :class:`Subject` protocol so that
syncmon and the contrast reaper (:mod:`stress.contrast`) face exactly the same load.

syncmon is imported inside :func:`open_subject`, never at module level: the worker
must be able to start threads *before* syncmon exists in the process (scenario
``early_threads``), and the contrast worker must not load it at all.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

DEATHS = frozenset({os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED})


class Fate(NamedTuple):
    """What happened to a child, without saying which child: ``(CLD_* code, status)``."""

    code: int
    status: int

    def describe(self) -> str:
        if self.code == os.CLD_EXITED:
            return f"exited {self.status}"
        verb = {
            os.CLD_KILLED: "killed by",
            os.CLD_DUMPED: "dumped by",
            os.CLD_STOPPED: "stopped by",
            os.CLD_TRAPPED: "trapped by",
            os.CLD_CONTINUED: "continued by",
        }.get(self.code, f"code {self.code}")
        return f"{verb} {_signal_name(self.status)}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a misattributed status can carry anything
        return f"signal {number}"


def exited(code: int) -> Fate:
    return Fate(os.CLD_EXITED, code)


def killed(sig: int) -> Fate:
    return Fate(os.CLD_KILLED, sig)


STOPPED = Fate(os.CLD_STOPPED, signal.SIGSTOP)
CONTINUED = Fate(os.CLD_CONTINUED, signal.SIGCONT)


@dataclass(frozen=True)
class Outcome:
    """One state change as a subject reported it: the pid it claims, and the fate."""

    pid: int
    fate: Fate

    @classmethod
    def of_returncode(cls, pid: int, returncode: int) -> Outcome:
        """Undo subprocess's convention (exit code, or ``-signal``)."""
        if returncode < 0:
            return cls(pid, killed(-returncode))
        return cls(pid, exited(returncode))


class Handle(Protocol):
    """One child, as a scenario sees it.  ``options`` are ``os.W*`` bits."""

    @property
    def pid(self) -> int: ...

    def wait(self, options: int = os.WEXITED, timeout: float | None = None) -> Outcome:
        """Block until a state change in ``options`` (or death); TimeoutError after ``timeout``."""

    def poll(self, options: int = os.WEXITED) -> Outcome | None: ...

    def result(self, timeout: float) -> Outcome:
        """The death, through the handle's future."""

    def done(self) -> bool:
        """Whether the future holds the death already."""

    def kill(self, sig: int) -> None: ...


class Waitable(Protocol):
    """The part of ``subprocess.Popen`` that scenario ``popen_side_by_side`` uses."""

    @property
    def pid(self) -> int: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Subject(Protocol):
    name: str
    popen_missing: str | None
    """Why :meth:`popen` cannot be used, or None when it can."""

    def spawn(self, argv: Sequence[str]) -> Handle: ...

    def popen(self, argv: Sequence[str]) -> Waitable: ...


class SyncmonHandle:
    """Adapts ``syncmon.ChildHandle`` to :class:`Handle` (syncmon's own types stay out of the checks)."""

    def __init__(self, handle: Any, flags: Any) -> None:
        self._handle = handle
        self._flags = flags  # syncmon.W

    @property
    def pid(self) -> int:
        return int(self._handle.pid)

    def wait(self, options: int = os.WEXITED, timeout: float | None = None) -> Outcome:
        return _outcome(self._handle.wait(self._flags(options), timeout=timeout))

    def poll(self, options: int = os.WEXITED) -> Outcome | None:
        state = self._handle.poll(self._flags(options))
        return None if state is None else _outcome(state)

    def result(self, timeout: float) -> Outcome:
        future: Future[Any] = self._handle.future
        return _outcome(future.result(timeout))

    def done(self) -> bool:
        return bool(self._handle.future.done())

    def kill(self, sig: int) -> None:
        self._handle.kill(sig)


def _outcome(state: Any) -> Outcome:
    return Outcome(int(state.pid), Fate(int(state.code), int(state.status)))


class SyncmonSubject:
    """syncmon, through one ``Monitor`` that lives as long as the worker."""

    def __init__(self, name: str, pidfd: bool | None) -> None:
        import syncmon

        self.name = name
        self._syncmon = syncmon
        self._monitor = syncmon.Monitor(pidfd=pidfd)
        popen = getattr(syncmon, "Popen", None)
        self.popen_missing = None if popen is not None else "syncmon.Popen is not there yet"
        self._warm_up()

    def _warm_up(self) -> None:
        """Create the engine's process-lifetime fds (signalfd, epoll...) before anyone counts fds.

        They are meant to stay open; opened inside the first scenario they would
        read as a leak of that scenario.
        """
        self.spawn(["true"]).wait(timeout=30)
        # The first tree starts the monitor's fork server (a child and a socket for
        # the monitor's lifetime), which would otherwise read as a scenario's leftovers.
        tree = self._monitor.spawn(["true"], tree=True).tree
        assert tree is not None
        tree.wait(timeout=30)
        if self.popen_missing is None:
            self.popen(["true"]).wait(timeout=30)

    def spawn(self, argv: Sequence[str]) -> Handle:
        return SyncmonHandle(self._monitor.spawn(list(argv)), self._syncmon.W)

    def popen(self, argv: Sequence[str]) -> Waitable:
        """A ``syncmon.Popen`` on this subject's monitor (so ``pidfd=False`` applies to it too)."""
        popen: Waitable = self._monitor.popen(list(argv))
        return popen


def open_subject(name: str) -> Subject:
    """The subject called ``name`` (one of :data:`stress.config.SUBJECTS`)."""
    if name == "syncmon":
        return SyncmonSubject(name, pidfd=None)
    if name == "syncmon-nopidfd":
        # The signalfd-only path: every wake-up must come through SIGCHLD.
        return SyncmonSubject(name, pidfd=False)
    if name == "contrast":
        from stress.contrast import PAllReaper

        return PAllReaper()
    raise ValueError(f"unknown subject {name!r}")

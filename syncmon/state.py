"""What ``waitid`` reports about a child, and the errors syncmon raises about one.

Plain values with no behaviour beyond decoding and describing: every module
may import this one, and it imports none of syncmon's.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, cast

from .signalfd import children_autoreaped


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


_CODES = {code.value: code for code in CLD}  # a dict lookup costs a tenth of CLD(value)
_DEATHS = frozenset({CLD.EXITED, CLD.KILLED, CLD.DUMPED})
_STOPS = frozenset({CLD.STOPPED, CLD.TRAPPED})


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What a dead child used, as the kernel reported it with the death itself.

    ``user_seconds`` and ``system_seconds`` are CPU time in user mode and in
    the kernel; ``max_rss_bytes`` is the peak resident set size.  As with
    ``wait4``, the kernel counts the child together with the descendants that
    it reaped itself (a maximum for the RSS, not a sum); descendants still
    running, or reaped by somebody else, are not in it.
    """

    user_seconds: float
    system_seconds: float
    max_rss_bytes: int


class Siginfo(Protocol):
    """The fields of a SIGCHLD ``siginfo_t`` that a state is made of
    (``os.waitid_result`` has them, and so does syncmon's raw ``waitid``)."""

    @property
    def si_pid(self) -> int: ...
    @property
    def si_uid(self) -> int: ...
    @property
    def si_code(self) -> int: ...
    @property
    def si_status(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ChildState:
    """One state change of a child, as ``waitid`` reports it.

    ``uid`` is the child's real user id, or ``None`` when the state was
    recovered after somebody else reaped the child: the kernel keeps the
    exit status then, but not the credentials, and syncmon does not guess.
    ``rusage`` is the child's resource use, for a death read by the same
    ``waitid`` that reported it; ``None`` for a stop or a continue, and for a
    death recovered after a foreign reap (the kernel keeps no usage then).
    """

    pid: int
    uid: int | None
    code: CLD
    status: int
    rusage: ResourceUsage | None = None

    @classmethod
    def from_siginfo(cls, info: Siginfo, rusage: ResourceUsage | None = None) -> ChildState:
        """The state ``info`` describes; ``rusage`` is kept only if it is a death
        (the kernel fills it for stops too, with the usage so far)."""
        code = _CODES[info.si_code]
        return cls(info.si_pid, info.si_uid, code, info.si_status, rusage if code in _DEATHS else None)

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
        # A death always has a return code; CalledProcessError's stubs want a command.
        super().__init__(state.returncode or 0, cast(Any, command))
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

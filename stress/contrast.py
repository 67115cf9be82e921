"""The contrast: a child reaper written the obvious way, to show what syncmon avoids.

One thread blocks in ``waitid(P_ALL)`` and hands each status out by pid through a
dict, the way asyncio's FastChildWatcher did: a status whose pid nobody has
registered yet is parked in ``unclaimed`` and given to whoever registers that pid
next.  Spawning threads register ``pid -> handle`` after the spawn returns.

Every line below looks reasonable; the flaw is in the design.  ``P_ALL`` frees a
pid at the moment of the reap, but the pid keeps meaning "that child" in the
dicts, and in other threads' hands, until the reaper thread gets the GIL back and
publishes.  Once pids are reused quickly:

* a status parked in ``unclaimed`` is picked up by a *later* child that got the
  same pid and registered first, and the earlier child gets the later one's
  status, or none (a hung wait);
* ``kill()`` checks "not dead yet" and then signals a pid that the reaper has
  already freed and the kernel has already given to somebody else;
* ``subprocess.Popen`` children are reaped from under Popen, which then reports
  ``returncode 0`` (its answer to ECHILD) whatever the child did.

Children are started with ``subprocess.Popen``, as asyncio did, and the
returncode is written back into the Popen object on delivery, as asyncio's
subprocess transport does: so Popen never goes looking for the pid itself (its
``_cleanup()`` would ``waitpid`` stale pids), and every failure counted here
comes from the reaper design.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from stress.subjects import DEATHS, Fate, Outcome, Waitable

ALL_STATES = os.WEXITED | os.WSTOPPED | os.WCONTINUED


class ContrastHandle:
    """A child as the P_ALL reaper knows it: by pid, and by what was delivered to that pid."""

    def __init__(self, reaper: PAllReaper, popen: subprocess.Popen[bytes]) -> None:
        self.pid = popen.pid
        self._popen = popen
        self._cond = reaper.cond
        self._changes: list[Outcome] = []  # stops and continues not yet taken by a wait
        self._death: Outcome | None = None
        self.future: Future[Outcome] = Future()
        self.future.set_running_or_notify_cancel()

    def deliver(self, outcome: Outcome) -> None:
        """Record a state change; the reaper calls this with ``cond`` held."""
        if outcome.fate.code in DEATHS:
            self._death = outcome
            self._popen.returncode = _returncode(outcome)
            self.future.set_result(outcome)
        else:
            self._changes.append(outcome)
        self._cond.notify_all()

    def _take(self, options: int) -> Outcome | None:
        """The oldest pending change that ``options`` asks for; a death ends any wait."""
        for i, change in enumerate(self._changes):
            wanted = os.WSTOPPED if change.fate.code == os.CLD_STOPPED else os.WCONTINUED
            if options & wanted:
                return self._changes.pop(i)
        return self._death

    def wait(self, options: int = os.WEXITED, timeout: float | None = None) -> Outcome:
        with self._cond:
            outcome = self._cond.wait_for(lambda: self._take(options), timeout)
        if outcome is None:
            raise TimeoutError(f"pid {self.pid}: nothing delivered")
        return outcome

    def poll(self, options: int = os.WEXITED) -> Outcome | None:
        with self._cond:
            return self._take(options)

    def result(self, timeout: float) -> Outcome:
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()

    def kill(self, sig: int) -> None:
        # The obvious check.  Between the reaper's waitid() and its delivery the
        # pid is free while done() still says False: this is the window in which
        # a signal lands on whoever the kernel gave the pid to next.
        if not self.future.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class ContrastPopen:
    """``popen`` for the contrast: its own children, returncode in subprocess's convention."""

    def __init__(self, handle: ContrastHandle) -> None:
        self._handle = handle
        self.pid = handle.pid

    def wait(self, timeout: float | None = None) -> int:
        return _returncode(self._handle.wait(timeout=timeout))


def _returncode(outcome: Outcome) -> int:
    fate = outcome.fate
    return fate.status if fate.code == os.CLD_EXITED else -fate.status


class PAllReaper:
    """The subject ``contrast``: one thread in ``waitid(P_ALL)``, statuses handed out by pid."""

    name = "contrast"
    popen_missing: str | None = None

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._waiters: dict[int, ContrastHandle] = {}
        self._unclaimed: dict[int, Outcome] = {}
        self._spawned = threading.Event()
        threading.Thread(target=self._reap_forever, name="p-all-reaper", daemon=True).start()

    def spawn(self, argv: Sequence[str], **popen_options: Any) -> ContrastHandle:
        popen = subprocess.Popen(argv, **popen_options)
        self._spawned.set()
        handle = ContrastHandle(self, popen)
        with self.cond:
            self._waiters[handle.pid] = handle
            early = self._unclaimed.pop(handle.pid, None)
            if early is not None:  # the child died before we registered it (or so we think)
                self._hand_out(handle, early)
        return handle

    def popen(self, argv: Sequence[str]) -> Waitable:
        return ContrastPopen(self.spawn(argv))

    def _hand_out(self, handle: ContrastHandle, outcome: Outcome) -> None:
        handle.deliver(outcome)
        if outcome.fate.code in DEATHS:
            del self._waiters[outcome.pid]

    def _reap_forever(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, ALL_STATES)
            except ChildProcessError:
                # No children at all.  A spawn sets the event after its child
                # exists, and we clear it before asking again, so none is missed.
                self._spawned.wait()
                self._spawned.clear()
                continue
            assert info is not None  # only WNOHANG may return None
            outcome = Outcome(info.si_pid, Fate(info.si_code, info.si_status))
            with self.cond:
                handle = self._waiters.get(outcome.pid)
                if handle is None:
                    self._unclaimed[outcome.pid] = outcome
                else:
                    self._hand_out(handle, outcome)

"""Thread pools started once, at worker start-up, and reused by every scenario.

Why not start threads per scenario:

* A thread's signal mask is inherited from the thread that creates it, at
  creation.  The ``early`` crew is started before syncmon is imported, so its
  threads do not block SIGCHLD however syncmon sets itself up; the ``late`` crew
  is started after the monitor, like the threads of an ordinary program.
* A thread id is a pid.  Threads started before the namespace's pid cursor first
  wraps keep pids below 300, outside the small range that gets recycled, so the
  harness's own threads never compete with children for pids, and a stray
  signal cannot be addressed to one of them (``kill(tid)`` signals the whole
  process).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from stress import procfs

T = TypeVar("T")


class Crew:
    """``size`` threads that all exist from the start and are never replaced."""

    def __init__(self, size: int, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(size, thread_name_prefix=name)
        # An executor starts threads lazily.  Tasks that wait for each other at a
        # barrier force it to start all of them now; later work reuses them.
        gate = threading.Barrier(size)
        self.tids = list(self._pool.map(lambda _: _tid_after(gate), range(size)))

    def start(self, work: Callable[[int], None]) -> list[Future[None]]:
        """Run ``work(i)`` on every thread of the crew, ``i`` being the thread's index."""
        return [self._pool.submit(work, i) for i in range(len(self.tids))]

    def blocking_sigchld(self) -> int:
        """How many of the crew's threads have SIGCHLD in their signal mask."""
        return sum(procfs.blocks(tid, signal.SIGCHLD) for tid in self.tids)


def _tid_after(gate: threading.Barrier) -> int:
    gate.wait()
    return threading.get_native_id()


class PerRun(Generic[T]):
    """One object per scenario run, shared by the crew threads that run it: made by
    the first thread in, ended by the last one out (a fork server, a pool, the
    bystanders: our children, which left running would count as left behind)."""

    def __init__(self, make: Callable[[Any], T], end: Callable[[T], None]) -> None:
        self._make = make
        self._end = end
        self._lock = threading.Lock()
        self._shared: dict[int, tuple[T, int]] = {}  # id(run) -> (object, threads using it)

    @contextlib.contextmanager
    def use(self, run: Any) -> Iterator[T]:
        with self._lock:
            entry = self._shared.get(id(run))
            shared, users = (self._make(run), 0) if entry is None else entry
            self._shared[id(run)] = (shared, users + 1)
        try:
            yield shared
        finally:
            with self._lock:
                shared, users = self._shared.pop(id(run))
                if users > 1:
                    self._shared[id(run)] = (shared, users - 1)
            if users == 1:
                self._end(shared)

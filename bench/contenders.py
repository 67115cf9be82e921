"""The contenders: every way of waiting for children that the benchmark compares.

A contender is measured only through two operations, so every workload is written
once (in ``bench.workloads``) and is the same for all:

``watch``   spawn ``n`` children, wait for all of them in the contender's own idiom,
            and return, per pid, the ``time.monotonic()`` instant at which the *waiter*
            (the user's code, not some helper thread) learned of the death.
``stream``  spawn-and-reap ``total`` short children with at most ``in_flight`` alive.
``sequential``  spawn one child and wait for it, ``n`` times, in the calling thread.

Contenders differ only in how they spawn and how they wait.  They come in three
shapes, each a base class here: one thread blocked per child (``ThreadedContender``),
one thread multiplexing all children (``EventContender``), and asyncio.

Every child gets the same argv (absolute path, so no contender pays for a PATH
search the others skip) and the same stdin/stdout file descriptors, opened once by
the workload; stderr is inherited so that failures stay visible.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import os
import select
import subprocess
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

__all__ = [
    "CONTENDERS",
    "DEFAULT",
    "FORKSERVER",
    "BASELINE",
    "REFERENCE",
    "POLLER",
    "SEQUENTIAL_BASE",
    "Contender",
    "OnReady",
    "Seen",
    "Stdio",
    "available",
]

# Callback a contender invokes once every waiter is in place; it must not block
# (the workloads start their driver thread in it).
OnReady = Callable[[list[int]], None]
# pid -> time.monotonic() when the waiter saw that child's death.
Seen = dict[int, float]

# A waiter with a timeout must be given one; this one never expires in a trial.
_LONG_TIMEOUT = 3600.0

# The workloads a contender runs unless its class says otherwise.  "sequential" is
# opt-in: issue 11 compares only a few ways of running one child at a time.
_USUAL = frozenset({"latency", "throughput", "burst", "idle"})


@dataclass(frozen=True)
class Stdio:
    """File descriptors every child of a trial gets as stdin and stdout."""

    stdin: int
    stdout: int


class Contender(ABC):
    """One way for a Python program to learn that its children died."""

    name: ClassVar[str]
    # One line for the report: how it spawns and how it waits.
    how: ClassVar[str]
    # The workloads this contender is measured in.
    workloads: ClassVar[frozenset[str]] = _USUAL
    # The largest burst it is run at (None: any): past it a contender would only
    # measure how badly n blocked threads sleep-poll or start, for many minutes.
    max_burst: ClassVar[int | None] = None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this contender cannot run here, or None if it can."""
        return None

    def open(self) -> None:  # noqa: B027 - most contenders need no setup
        """Set up long-lived machinery (monitor thread, child watcher) before any trial."""

    def close(self) -> None:  # noqa: B027
        """Tear down what ``open`` set up."""

    def __enter__(self) -> Contender:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def watch(self, argv: Sequence[str], n: int, stdio: Stdio, on_ready: OnReady) -> Seen:
        """Spawn ``n`` children, call ``on_ready(pids)`` once all waiters are in place,
        return when every death has been seen."""

    @abstractmethod
    def stream(self, argv: Sequence[str], total: int, in_flight: int, stdio: Stdio) -> None:
        """Spawn and reap ``total`` children, never more than ``in_flight`` alive."""

    def sequential(self, argv: Sequence[str], n: int, stdio: Stdio) -> None:
        """Spawn one child and wait for it, ``n`` times over."""
        self.stream(argv, n, 1, stdio)


# --------------------------------------------------------------------------- threads

C = TypeVar("C")


class _Latch:
    """Count-down latch: ``wait`` returns once ``count_down`` was called ``n`` times."""

    def __init__(self, n: int) -> None:
        self._left = n
        self._cond = threading.Condition()

    def count_down(self) -> None:
        with self._cond:
            self._left -= 1
            if self._left <= 0:
                self._cond.notify_all()

    def wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._left <= 0)


class _Threads:
    """Start threads, join them all, and re-raise the first exception any of them hit."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - re-raised in join()
                self._errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        if self._errors:
            raise self._errors[0]


class ThreadedContender(Contender, Generic[C]):
    """One thread blocked in a wait call per child: the classic threaded program."""

    @abstractmethod
    def spawn(self, argv: Sequence[str], stdio: Stdio) -> C: ...

    @abstractmethod
    def wait(self, child: C) -> None: ...

    @abstractmethod
    def pid(self, child: C) -> int: ...

    def watch(self, argv: Sequence[str], n: int, stdio: Stdio, on_ready: OnReady) -> Seen:
        children = [self.spawn(argv, stdio) for _ in range(n)]
        seen: Seen = {}
        # Threads start parked on ``go``: starting thread k while k-1 earlier ones
        # already poll would make thread creation itself O(n) under the GIL, and
        # would bill the poller's n^2 setup to a trial that measures waiting.
        go = threading.Event()
        # Each thread counts down just before it blocks; the driver then still sleeps
        # its settle time, so no waiter is killed before it reached its wait call.
        latch = _Latch(n)
        threads = _Threads()
        for child in children:
            threads.start(lambda child=child: self._wait_one(child, go, latch, seen))  # type: ignore[misc]
        go.set()
        latch.wait()
        on_ready([self.pid(c) for c in children])
        threads.join()
        return seen

    def _wait_one(self, child: C, go: threading.Event, latch: _Latch, seen: Seen) -> None:
        go.wait()
        latch.count_down()
        self.wait(child)
        seen[self.pid(child)] = time.monotonic()

    def stream(self, argv: Sequence[str], total: int, in_flight: int, stdio: Stdio) -> None:
        # ``in_flight`` workers each loop spawn -> wait; next() on a shared counter is
        # atomic under the GIL, so exactly ``total`` children are started.
        tickets = itertools.count()

        def worker() -> None:
            while next(tickets) < total:
                self.wait(self.spawn(argv, stdio))

        threads = _Threads()
        for _ in range(in_flight):
            threads.start(worker)
        threads.join()

    def sequential(self, argv: Sequence[str], n: int, stdio: Stdio) -> None:
        # In the calling thread, as a program that runs one command after another
        # does: stream(in_flight=1) would add a thread hand-off nobody writes.
        for _ in range(n):
            self.wait(self.spawn(argv, stdio))


class _PopenContender(ThreadedContender[subprocess.Popen[bytes]]):
    def spawn(self, argv: Sequence[str], stdio: Stdio) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, stdin=stdio.stdin, stdout=stdio.stdout)

    def pid(self, child: subprocess.Popen[bytes]) -> int:
        return child.pid


class PopenPolling(_PopenContender):
    name = "Popen.wait(t)"
    how = "subprocess.Popen; Popen.wait(timeout=...) per thread (CPython sleep-polls, <=50 ms)"
    max_burst = 2000  # n threads sleep-polling: minutes of GIL contention at 10,000

    def wait(self, child: subprocess.Popen[bytes]) -> None:
        child.wait(timeout=_LONG_TIMEOUT)


class PopenBlocking(_PopenContender):
    name = "Popen.wait()"
    how = "subprocess.Popen; Popen.wait() per thread (blocking waitpid)"
    workloads = _USUAL | {"sequential"}
    max_burst = 2000  # one thread per child, like syncmon.wait, but not in the issue-11 set

    def wait(self, child: subprocess.Popen[bytes]) -> None:
        child.wait()


def _syncmon_missing(attribute: str | None = None) -> str | None:
    try:
        import syncmon
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        return f"import syncmon failed: {exc!r}"
    if attribute is not None and not hasattr(syncmon, attribute):
        return f"syncmon.{attribute} does not exist yet"
    return None


class _SyncmonMonitor:
    """Mixin: a ``syncmon.Monitor`` opened before and closed after the trial."""

    pidfd: ClassVar[bool | None] = None  # None: the library's own choice
    _mon: Any

    def open(self) -> None:
        import syncmon

        self._mon = syncmon.Monitor(pidfd=self.pidfd)

    def close(self) -> None:
        self._mon.close()


class SyncmonWait(_SyncmonMonitor, ThreadedContender[Any]):
    name = "syncmon.wait"
    how = "Monitor.spawn; ChildHandle.wait() per thread"
    workloads = _USUAL | {"sequential"}

    @classmethod
    def unavailable(cls) -> str | None:
        return _syncmon_missing("Monitor")

    def spawn(self, argv: Sequence[str], stdio: Stdio) -> Any:
        return self._mon.spawn(list(argv), stdin=stdio.stdin, stdout=stdio.stdout)

    def wait(self, child: Any) -> None:
        child.wait()

    def pid(self, child: Any) -> int:
        return int(child.pid)


class SyncmonWaitSignalfd(SyncmonWait):
    # Not in the default set: the same waits with pidfds turned off, to show what
    # the signalfd-only path (old kernels, SYNCMON_PIDFD=0) costs.
    name = "syncmon.wait/sigfd"
    how = "Monitor(pidfd=False).spawn; ChildHandle.wait() per thread (signalfd only)"
    pidfd = False
    workloads = _USUAL


class SyncmonForkServer(SyncmonWait):
    # Spawning through the server moves clone+exec off the caller's core; the waits
    # are syncmon.wait's, so only the workloads that spawn in the timed window run.
    name = "syncmon.forkserver"
    how = "ForkServer(monitor=...).spawn, server started before the trial; ChildHandle.wait() per thread"
    workloads = frozenset({"throughput", "sequential"})

    @classmethod
    def unavailable(cls) -> str | None:
        return _syncmon_missing("ForkServer")

    def open(self) -> None:
        import syncmon

        super().open()
        try:
            self._server = syncmon.ForkServer(monitor=self._mon)
        except BaseException:
            self._mon.close()
            raise

    def close(self) -> None:
        try:
            self._server.close()
        finally:
            super().close()

    def spawn(self, argv: Sequence[str], stdio: Stdio) -> Any:
        return self._server.spawn(list(argv), stdin=stdio.stdin, stdout=stdio.stdout)


class SyncmonPopen(_SyncmonMonitor, ThreadedContender[Any]):
    # Same call as PopenPolling, so the two rows compare the drop-in replacement.
    name = "syncmon.Popen"
    how = "Monitor.popen / syncmon.Popen; .wait(timeout=...) per thread"
    workloads = _USUAL | {"sequential"}
    max_burst = 2000  # issue 11's many-children targets do not judge it

    @classmethod
    def unavailable(cls) -> str | None:
        return _syncmon_missing("Popen")

    def spawn(self, argv: Sequence[str], stdio: Stdio) -> Any:
        import syncmon

        popen = getattr(self._mon, "popen", None) or syncmon.Popen
        return popen(list(argv), stdin=stdio.stdin, stdout=stdio.stdout)

    def wait(self, child: Any) -> None:
        child.wait(timeout=_LONG_TIMEOUT)

    def pid(self, child: Any) -> int:
        return int(child.pid)


# ---------------------------------------------------------------------- one thread


class EventContender(Contender, Generic[C]):
    """One thread waits for all children at once (futures, epoll)."""

    @abstractmethod
    def spawn(self, argv: Sequence[str], stdio: Stdio) -> C: ...

    @abstractmethod
    def pid(self, child: C) -> int: ...

    @abstractmethod
    def as_completed(self, children: Sequence[C]) -> Iterator[C]:
        """Yield each child as soon as its death is known."""

    @abstractmethod
    def wait_any(self, children: Iterable[C]) -> set[C]:
        """Block until at least one child died; return those known dead."""

    def watch(self, argv: Sequence[str], n: int, stdio: Stdio, on_ready: OnReady) -> Seen:
        children = [self.spawn(argv, stdio) for _ in range(n)]
        on_ready([self.pid(c) for c in children])
        seen: Seen = {}
        for child in self.as_completed(children):
            seen[self.pid(child)] = time.monotonic()
        return seen

    def stream(self, argv: Sequence[str], total: int, in_flight: int, stdio: Stdio) -> None:
        started = 0
        alive: set[C] = set()
        while started < total or alive:
            while started < total and len(alive) < in_flight:
                alive.add(self.spawn(argv, stdio))
                started += 1
            alive -= self.wait_any(alive)


class SyncmonFutures(_SyncmonMonitor, EventContender[Any]):
    name = "syncmon.future"
    how = "Monitor.spawn; handle.future via as_completed / wait(FIRST_COMPLETED)"

    @classmethod
    def unavailable(cls) -> str | None:
        return _syncmon_missing("Monitor")

    def spawn(self, argv: Sequence[str], stdio: Stdio) -> Any:
        return self._mon.spawn(list(argv), stdin=stdio.stdin, stdout=stdio.stdout)

    def pid(self, child: Any) -> int:
        return int(child.pid)

    def as_completed(self, children: Sequence[Any]) -> Iterator[Any]:
        # as_completed, not a loop of wait(FIRST_COMPLETED): the latter re-arms a
        # waiter on every pending future per call, O(n^2) for a burst of n deaths.
        by_future = {child.future: child for child in children}
        for future in cf.as_completed(by_future):
            future.result()
            yield by_future[future]

    def wait_any(self, children: Iterable[Any]) -> set[Any]:
        by_future = {child.future: child for child in children}
        done, _ = cf.wait(by_future, return_when=cf.FIRST_COMPLETED)
        for future in done:
            future.result()
        return {by_future[f] for f in done}


@dataclass(eq=False)
class _PidfdChild:
    pid: int
    fd: int


class PidfdEpoll(EventContender[_PidfdChild]):
    """The reference: the least a pure-Python program can do on Linux >= 5.3."""

    name = "pidfd+epoll"
    how = "os.posix_spawn; os.pidfd_open + select.epoll + os.waitid(P_PIDFD), one thread"
    workloads = _USUAL | {"sequential"}

    @classmethod
    def unavailable(cls) -> str | None:
        if not (hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD")):
            return "os.pidfd_open / os.P_PIDFD missing"
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError as exc:
            return f"pidfd_open fails here: {exc}"
        return None

    def open(self) -> None:
        self._epoll = select.epoll()
        self._by_fd: dict[int, _PidfdChild] = {}

    def close(self) -> None:
        self._epoll.close()

    def spawn(self, argv: Sequence[str], stdio: Stdio) -> _PidfdChild:
        actions = [
            (os.POSIX_SPAWN_DUP2, stdio.stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdio.stdout, 1),
        ]
        pid = os.posix_spawn(argv[0], list(argv), os.environ, file_actions=actions)
        # pidfd_open right after spawn is race-free: only this process can reap the
        # child, and nothing in it waits for "any child".
        child = _PidfdChild(pid, os.pidfd_open(pid))
        self._by_fd[child.fd] = child
        self._epoll.register(child.fd, select.EPOLLIN)
        return child

    def pid(self, child: _PidfdChild) -> int:
        return child.pid

    def _reap_ready(self) -> list[_PidfdChild]:
        dead = []
        for fd, _events in self._epoll.poll():
            child = self._by_fd.pop(fd)
            self._epoll.unregister(fd)
            os.waitid(os.P_PIDFD, fd, os.WEXITED)
            os.close(fd)
            dead.append(child)
        return dead

    def as_completed(self, children: Sequence[_PidfdChild]) -> Iterator[_PidfdChild]:
        left = len(children)
        while left:
            for child in self._reap_ready():
                left -= 1
                yield child

    def wait_any(self, children: Iterable[_PidfdChild]) -> set[_PidfdChild]:
        return set(self._reap_ready())


# -------------------------------------------------------------------------- asyncio


class _Asyncio(Contender):
    """asyncio.create_subprocess_exec; every await of ``proc.wait()`` is one waiter."""

    @classmethod
    def watcher(cls) -> asyncio.AbstractChildWatcher | None:
        """The child watcher to install, or None for asyncio's default."""
        return None

    def open(self) -> None:
        watcher = self.watcher()
        if watcher is not None:
            # Child watchers are deprecated from 3.12 on; 3.11 is what this measures.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                asyncio.set_child_watcher(watcher)

    def watch(self, argv: Sequence[str], n: int, stdio: Stdio, on_ready: OnReady) -> Seen:
        return asyncio.run(self._watch(argv, n, stdio, on_ready))

    def stream(self, argv: Sequence[str], total: int, in_flight: int, stdio: Stdio) -> None:
        asyncio.run(self._stream(argv, total, in_flight, stdio))

    @staticmethod
    async def _spawn(argv: Sequence[str], stdio: Stdio) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*argv, stdin=stdio.stdin, stdout=stdio.stdout)

    async def _watch(self, argv: Sequence[str], n: int, stdio: Stdio, on_ready: OnReady) -> Seen:
        procs = [await self._spawn(argv, stdio) for _ in range(n)]
        seen: Seen = {}

        async def wait_one(proc: asyncio.subprocess.Process) -> None:
            await proc.wait()
            seen[proc.pid] = time.monotonic()

        tasks = [asyncio.create_task(wait_one(p)) for p in procs]
        await asyncio.sleep(0)  # every task runs up to its await before the driver starts
        on_ready([p.pid for p in procs])
        await asyncio.gather(*tasks)
        return seen

    async def _stream(self, argv: Sequence[str], total: int, in_flight: int, stdio: Stdio) -> None:
        slots = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with slots:
                await (await self._spawn(argv, stdio)).wait()

        await asyncio.gather(*(one() for _ in range(total)))


class AsyncioDefault(_Asyncio):
    name = "asyncio"
    how = "create_subprocess_exec; default watcher (3.11: ThreadedChildWatcher, thread per child)"
    max_burst = 2000  # a watcher thread per child, not in the issue-11 set


class AsyncioPidfd(_Asyncio):
    name = "asyncio+pidfd"
    how = "create_subprocess_exec; asyncio.PidfdChildWatcher"

    @classmethod
    def unavailable(cls) -> str | None:
        if not hasattr(asyncio, "PidfdChildWatcher"):
            return "asyncio.PidfdChildWatcher missing"
        return PidfdEpoll.unavailable()

    @classmethod
    def watcher(cls) -> asyncio.AbstractChildWatcher | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return asyncio.PidfdChildWatcher()


# ------------------------------------------------------------------------- registry

CONTENDERS: dict[str, type[Contender]] = {
    cls.name: cls
    for cls in (
        SyncmonWait,
        SyncmonFutures,
        SyncmonPopen,
        PidfdEpoll,
        AsyncioPidfd,
        AsyncioDefault,
        PopenBlocking,
        PopenPolling,
        SyncmonWaitSignalfd,
        SyncmonForkServer,
    )
}
# What ``python -m bench`` runs unless told otherwise.
DEFAULT = [name for name in CONTENDERS if name != SyncmonWaitSignalfd.name]
BASELINE = SyncmonWait.name  # ratios in the report are "x this"
REFERENCE = PidfdEpoll.name  # best one can do in pure Python
POLLER = PopenPolling.name  # what syncmon replaces
SEQUENTIAL_BASE = PopenBlocking.name  # what one child at a time is judged against
FORKSERVER = SyncmonForkServer.name


def available() -> tuple[list[str], dict[str, str]]:
    """Names of the contenders that can run here, and why the others cannot."""
    runnable: list[str] = []
    skipped: dict[str, str] = {}
    for name, cls in CONTENDERS.items():
        reason = cls.unavailable()
        if reason is None:
            runnable.append(name)
        else:
            skipped[name] = reason
    return runnable, skipped

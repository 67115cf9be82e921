"""Real faults for the fault suite, each set up and undone by a context manager.

Nothing here mocks the kernel: descriptors run out because RLIMIT_NOFILE says
so, processes and threads because a pids cgroup says so, signals are real
signals delivered to the main thread.  Every helper restores what it changed,
even when the code under test raises.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

# --- descriptors ------------------------------------------------------------------


def _free_fd_numbers(limit: int) -> Iterator[int]:
    """Descriptor numbers below ``limit`` that are not open, lowest first.

    The kernel hands out the lowest free number, and refuses (EMFILE) any
    number at or above the soft RLIMIT_NOFILE; so the free numbers below the
    limit are exactly the descriptors that can still be opened.
    """
    open_now = {int(name) for name in os.listdir("/proc/self/fd")}
    # listdir's own directory descriptor is closed again by now.
    open_now = {fd for fd in open_now if is_open(fd)}
    return (fd for fd in range(limit) if fd not in open_now)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def nofile_limit(soft: int) -> Iterator[None]:
    """RLIMIT_NOFILE's soft limit set to ``soft`` (like ``ulimit -n``), then restored."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def limit_for_free_fds(k: int) -> int:
    """The soft RLIMIT_NOFILE under which exactly ``k`` more descriptors can be opened now."""
    old_soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    free = _free_fd_numbers(old_soft)
    number = -1
    for _ in range(k + 1):
        number = next(free)
    # The (k+1)-th free number becomes the first refused one.
    return number


@contextlib.contextmanager
def free_fds(k: int) -> Iterator[None]:
    """Exactly ``k`` more descriptors can be opened inside the block (process-wide:
    other threads that open descriptors meanwhile use up the same ``k``).

    Import everything the block needs before entering it: an import opens files.
    """
    with nofile_limit(limit_for_free_fds(k)):
        yield


@dataclass(frozen=True)
class _Sentinel:
    fd: int
    dev: int
    ino: int


class GuardedFds:
    """Descriptors of "the program" that the code under test must never close or write to.

    Each is the write end of a pipe that nobody writes to (any byte written
    through it shows up at the read end) and the read end itself; both are
    identified by device and inode, so a descriptor closed and its number
    reused for something else is noticed too.
    """

    def __init__(self, pairs: int = 4) -> None:
        self._sentinels: list[_Sentinel] = []
        self._read_ends: list[int] = []
        for _ in range(pairs):
            r, w = os.pipe()
            os.set_blocking(r, False)
            self._read_ends.append(r)
            self._sentinels += [self._identify(r), self._identify(w)]

    @staticmethod
    def _identify(fd: int) -> _Sentinel:
        st = os.fstat(fd)
        return _Sentinel(fd, st.st_dev, st.st_ino)

    def damage(self) -> list[str]:
        """What happened to the guarded descriptors; empty if nothing."""
        problems = []
        for s in self._sentinels:
            try:
                st = os.fstat(s.fd)
            except OSError:
                problems.append(f"fd {s.fd} was closed")
                continue
            if (st.st_dev, st.st_ino) != (s.dev, s.ino) or not stat.S_ISFIFO(st.st_mode):
                problems.append(f"fd {s.fd} was closed and its number reused")
        for r in self._read_ends:
            try:
                data = os.read(r, 4096)
            except BlockingIOError:
                continue
            except OSError as e:
                problems.append(f"fd {r} unreadable: {e}")
                continue
            problems.append(f"bytes written into guarded pipe (read end fd {r}): {data!r}")
        return problems

    def close(self) -> None:
        for s in self._sentinels:
            with contextlib.suppress(OSError):
                os.close(s.fd)


@contextlib.contextmanager
def guarded_fds(pairs: int = 4) -> Iterator[GuardedFds]:
    """Open guarded descriptors; fail if the block closed or wrote to any of them."""
    guard = GuardedFds(pairs)
    try:
        yield guard
        damage = guard.damage()
        assert not damage, "descriptors of the program were touched: " + "; ".join(damage)
    finally:
        guard.close()


# --- processes and threads --------------------------------------------------------

PIDS_ROOT = "/sys/fs/cgroup/pids"


def pids_cgroup_unavailable() -> str | None:
    """Why a pids cgroup (v1) cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if not os.path.isfile(os.path.join(PIDS_ROOT, "cgroup.procs")):
        return f"no cgroup v1 pids hierarchy at {PIDS_ROOT}"
    return None


def _own_pids_cgroup() -> str:
    """The directory of the pids cgroup this process is in."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "pids" in controllers.split(","):
                return os.path.join(PIDS_ROOT, path.lstrip("/"))
    raise LookupError("this process is in no pids cgroup")


@contextlib.contextmanager
def pids_cgroup(max_tasks: int) -> Iterator[str]:
    """A fresh pids cgroup (a child of ours) with ``pids.max`` = ``max_tasks``; yields
    its ``cgroup.procs`` path.  Write a *fresh* process's pid there: RLIMIT_NPROC
    would be the obvious fault, but root has CAP_SYS_RESOURCE and the kernel does
    not apply RLIMIT_NPROC to it.  pids.max counts threads as well as processes.
    The cgroup is removed at exit; whatever is still in it is killed first
    (it can only be processes this test started).
    """
    path = os.path.join(_own_pids_cgroup(), f"syncmon-test-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(max_tasks))
        yield os.path.join(path, "cgroup.procs")
    finally:
        _empty_and_remove(path)


def _empty_and_remove(path: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        with open(os.path.join(path, "cgroup.procs")) as f:
            pids = [int(line) for line in f if line.strip()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    os.rmdir(path)


# --- signals ----------------------------------------------------------------------


class Terminated(Exception):
    """What our SIGTERM handler raises in the main thread."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


_HANDLERS = {
    signal.SIGINT: signal.default_int_handler,  # KeyboardInterrupt, as at start-up
    signal.SIGTERM: _raise_terminated,
}


@contextlib.contextmanager
def raising_on(sig: int) -> Iterator[None]:
    """``sig`` turned into an exception in the main thread (KeyboardInterrupt for
    SIGINT, :class:`Terminated` for SIGTERM), whatever disposition and mask we
    inherited (``nohup`` ignores SIGINT); both restored afterwards."""
    previous = signal.signal(sig, _HANDLERS[sig])
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(sig, previous)


def sigint_raises_keyboard_interrupt() -> contextlib.AbstractContextManager[None]:
    return raising_on(signal.SIGINT)


@contextlib.contextmanager
def signal_during(sig: int, delay: float = 0.3) -> Iterator[None]:
    """Deliver ``sig`` to the main thread ``delay`` seconds into the block, from a
    timer thread with ``pthread_kill``; the block should be blocked in the call
    under test by then.  The handler turns it into an exception (see
    :func:`raising_on`); the timer thread is joined before the block's exception
    leaves, so no signal arrives after it."""
    assert threading.current_thread() is threading.main_thread()
    main = threading.main_thread().ident
    assert main is not None
    entered = threading.Event()
    cancel = threading.Event()

    def fire() -> None:
        entered.wait()
        if not cancel.wait(delay):
            signal.pthread_kill(main, sig)

    timer = threading.Thread(target=fire, name=f"deliver-{signal.Signals(sig).name}")
    with raising_on(sig):
        timer.start()
        try:
            entered.set()
            yield
        finally:
            cancel.set()
            timer.join()

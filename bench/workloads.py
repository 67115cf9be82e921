"""The five workloads, written once against ``Contender``.

Each runs inside a fresh worker process (see ``bench.worker``) and returns plain data.
Every timed event is caused by a *driver* thread that the workload starts through
``on_ready`` once all of the contender's waiters are in place; the driver records
the instant it acts, the contender records the instant its waiter woke.  So the
contender's code decides only the second timestamp, and every contender faces the
same driver, the same children and the same file descriptors.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.contenders import Contender, OnReady, Seen, Stdio

Result = dict[str, Any]

# CPU windows open this long after ``on_ready``.  A single-threaded contender calls
# on_ready just *before* it enters its wait (as_completed, gather), so setting up
# that wait (a waiter on every future, a task per child) would otherwise be billed
# as CPU "while children merely run".
SETUP_GRACE = 0.1


def resolve(program: str) -> str:
    """Absolute path of ``program``: no contender pays for a PATH search."""
    path = shutil.which(program)
    if path is None:
        raise FileNotFoundError(program)
    return path


@contextmanager
def devnull_stdio(stdin: int | None = None) -> Iterator[Stdio]:
    """One /dev/null descriptor for every child, opened once (not once per spawn)."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield Stdio(stdin=null if stdin is None else stdin, stdout=null)
    finally:
        os.close(null)


class Driver:
    """Runs ``action(pids)`` on its own thread, started by the contender's ``on_ready``.

    A thread, not the caller: event-loop contenders are busy waiting in the calling
    thread, and must be waiting already when the driver acts.
    """

    def __init__(self, action: Callable[[list[int]], None]) -> None:
        self._action = action
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.pids: list[int] = []

    def on_ready(self, pids: list[int]) -> None:
        self.pids = pids
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._action(self.pids)
        except BaseException as exc:  # noqa: BLE001 - re-raised in join()
            self._error = exc
            for pid in self.pids:  # unblock the waiters so the trial can fail fast
                _kill_quietly(pid)

    def join(self) -> None:
        assert self._thread is not None, "the contender never called on_ready"
        self._thread.join()
        if self._error is not None:
            raise self._error


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_watch(
    contender: Contender, argv: list[str], n: int, stdio: Stdio, action: Callable[[list[int]], None]
) -> tuple[Seen, list[int]]:
    driver = Driver(action)
    on_ready: OnReady = driver.on_ready
    seen = contender.watch(argv, n, stdio, on_ready)
    driver.join()
    if sorted(seen) != sorted(driver.pids):
        raise RuntimeError(f"{contender.name}: saw {len(seen)} deaths of {len(driver.pids)} children")
    return seen, driver.pids


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------ (a) latency


def latency(contender: Contender, kills: int, settle: float, gap_ms: tuple[float, float], seed: int) -> Result:
    """Exit-to-wake latency: the driver SIGKILLs a ``sleep`` at a recorded instant.

    Why SIGKILL from the parent rather than a child that stamps its own exit: the
    instant is known exactly (taken just before kill(2) in this process, on the same
    clock as the waiter's stamp) and the child's death then follows the kernel path
    every exit takes (do_exit -> do_notify_parent), which is where SIGCHLD, pidfd
    readiness and blocked waitpid callers are all woken.  A child printing
    time.monotonic() before _exit would add interpreter teardown and pipe I/O noise
    that is the same for everyone but larger than the effect measured.

    ``settle`` lets every waiter reach its steady state before the first kill: a
    sleep-polling waiter backs off to its 50 ms maximum after ~64 ms, and long-lived
    children are what a real program waits on.  Kills then come at random gaps, so
    kill instants have no fixed phase relative to a poller's ticks.
    """
    rng = random.Random(seed)
    killed_at: dict[int, float] = {}

    def kill_one_by_one(pids: list[int]) -> None:
        time.sleep(settle)
        for pid in pids:
            time.sleep(rng.uniform(*gap_ms) / 1000)
            killed_at[pid] = time.monotonic()
            os.kill(pid, signal.SIGKILL)

    with devnull_stdio() as stdio:
        seen, pids = run_watch(contender, [resolve("sleep"), "60"], kills, stdio, kill_one_by_one)
    return {"latency_s": [seen[pid] - killed_at[pid] for pid in pids]}


# --------------------------------------------------------------------- (b) throughput


def throughput(contender: Contender, total: int, in_flight: int) -> Result:
    """Spawn-and-reap rate of ``true`` children, at most ``in_flight`` alive at once."""
    with devnull_stdio() as stdio:
        cpu0, t0 = time.process_time(), time.monotonic()
        contender.stream([resolve("true")], total, in_flight, stdio)
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {"per_s": total / elapsed, "elapsed_s": elapsed, "cpu_per_child_s": cpu / total}


# --------------------------------------------------------------------- sequential


def sequential(contender: Contender, n: int) -> Result:
    """Parent CPU per child when children run one at a time: spawn ``true``, wait, ``n`` times.

    process_time() sums every thread of this process, so a contender's helper
    threads (a monitor, a fork server's reader) are billed too; the fork server
    process itself is not, which is the point of it, and the report says so.
    """
    with devnull_stdio() as stdio:
        cpu0, t0 = time.process_time(), time.monotonic()
        contender.sequential([resolve("true")], n, stdio)
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {"cpu_per_child_s": cpu / n, "wall_per_child_s": elapsed / n}


# -------------------------------------------------------------------------- (c) burst


def burst(contender: Contender, n: int, settle: float) -> Result:
    """``n`` live ``cat`` children blocked on one pipe; closing it ends them all at once.

    One close(2) is a single, exactly recorded release instant for every child (a
    kill loop over n pids would itself take milliseconds and compete with the
    waiters).  Measured: time from the close until the last death is seen, CPU
    while all children sit alive, CPU from release to the last death, and memory.
    """
    read_end, write_end = os.pipe()  # non-inheritable: no child holds the write end
    marks: dict[str, float] = {}

    def release(pids: list[int]) -> None:
        time.sleep(settle / 2)  # like SETUP_GRACE, but n waiters take longer to set up
        cpu0, t0 = time.process_time(), time.monotonic()
        time.sleep(settle / 2)  # children merely alive, every waiter blocked
        marks["alive_cpu_per_s"] = (time.process_time() - cpu0) / (time.monotonic() - t0)
        marks["alive_rss"] = rss_bytes()
        marks["cpu0"] = time.process_time()
        marks["t0"] = time.monotonic()
        os.close(write_end)

    try:
        with devnull_stdio(stdin=read_end) as stdio:
            rss0 = rss_bytes()
            seen, _ = run_watch(contender, [resolve("cat")], n, stdio, release)
            cpu_reap = time.process_time() - marks["cpu0"]
    finally:
        os.close(read_end)
        if "t0" not in marks:
            os.close(write_end)
    return {
        "n": n,
        "all_seen_s": max(seen.values()) - marks["t0"],
        "reap_cpu_s": cpu_reap,
        "alive_cpu_per_s": marks["alive_cpu_per_s"],
        "alive_rss_delta_bytes": marks["alive_rss"] - rss0,
        "peak_rss_delta_bytes": peak_rss_bytes() - rss0,
    }


# --------------------------------------------------------------------------- (d) idle


def idle(contender: Contender, n: int, lifetime: float) -> Result:
    """CPU this process burns while ``n`` children run ``sleep lifetime`` untouched.

    The window opens SETUP_GRACE after every waiter is in place and closes 50 ms
    before the first child can possibly exit (it was spawned after ``start``), so only waiting
    is measured, no reaping.  process_time() covers every thread of the process.
    """
    marks: dict[str, float] = {}
    start = time.monotonic()

    def measure(pids: list[int]) -> None:
        time.sleep(SETUP_GRACE)
        cpu0, t0 = time.process_time(), time.monotonic()
        window = start + lifetime - 0.05 - t0
        if window < 0.2:
            raise RuntimeError(f"spawning {n} children left only {window:.3f} s of idle window")
        time.sleep(window)
        marks["cpu_per_s"] = (time.process_time() - cpu0) / (time.monotonic() - t0)
        marks["window_s"] = time.monotonic() - t0

    with devnull_stdio() as stdio:
        run_watch(contender, [resolve("sleep"), str(lifetime)], n, stdio, measure)
    return {"cpu_per_s": marks["cpu_per_s"], "window_s": marks["window_s"]}


WORKLOADS: dict[str, Callable[..., Result]] = {
    "latency": latency,
    "throughput": throughput,
    "sequential": sequential,
    "burst": burst,
    "idle": idle,
}

"""syncmon.ProcessPoolExecutor with real worker processes: deaths fail exactly one task."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import os
import pickle
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import syncmon
from syncmon import CLD, ProcessPoolExecutor, WorkerDied

from helpers import eventually


# --- functions the workers run (module level: they travel by reference) -----------

def double(x: int) -> int:
    return 2 * x


def pid_of_worker() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def wait_for_file(path: str) -> int:
    """Tell the test we are running (our pid in ``path``), then sleep until killed."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(120)
    return -1


def exit_3() -> None:
    os._exit(3)


def segfault() -> None:
    ctypes.string_at(0)


def raise_value_error(text: str) -> None:
    raise ValueError(text)


def unpicklable_result() -> object:
    return threading.Lock()


def big_result(size: int) -> bytes:
    return b"x" * size


def fork_grandchildren_then_die(path: str, n: int) -> None:
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        pids.append(pid)
    with open(path, "w") as f:
        f.write(" ".join(map(str, pids)))
    os._exit(5)


def touch_memory(size: int, chunk: int) -> int:
    """Allocate and write ``size`` bytes (``bytes * n`` fills every page), ``chunk`` at a time."""
    kept = [b"\x01" * chunk for _ in range(size // chunk)]
    return len(kept)


def fail_initializer() -> None:
    raise RuntimeError("initializer says no")


# --- helpers --------------------------------------------------------------------------

@pytest.fixture
def mon(no_leaks):
    with syncmon.Monitor() as m:
        yield m


def running_pid(path: str, timeout: float = 30) -> int:
    assert eventually(lambda: os.path.exists(path), timeout=timeout)
    with open(path) as f:
        return int(f.read())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- deaths -----------------------------------------------------------------------

DEATHS = {
    "sigkill": (lambda pid: os.kill(pid, signal.SIGKILL), CLD.KILLED, signal.SIGKILL),
    "exit3": (None, CLD.EXITED, 3),
    "segfault": (None, None, signal.SIGSEGV),
}


@pytest.mark.parametrize("how", sorted(DEATHS))
def test_a_death_in_a_task_fails_only_that_task(mon, tmp_path, how):
    killer, code, status = DEATHS[how]
    with ProcessPoolExecutor(2, monitor=mon) as pool:
        if killer is not None:
            path = str(tmp_path / "pid")
            doomed = pool.submit(wait_for_file, path)
            pid = running_pid(path)
        else:
            doomed = pool.submit(exit_3 if how == "exit3" else segfault)
            pid = None
        others = [pool.submit(double, n) for n in range(200)]
        if killer is not None:
            killer(pid)
        with pytest.raises(WorkerDied) as caught:
            doomed.result(timeout=30)
        assert [f.result(timeout=60) for f in others] == [2 * n for n in range(200)]
        error = caught.value
        assert isinstance(error, BrokenProcessPool)
        if pid is not None:
            assert error.pid == pid
        assert error.state.pid == error.pid and error.state.status == status
        if code is not None:
            assert error.state.code is code
        else:  # a segfault dumps core or not, as the machine's core limit says
            assert error.state.code in (CLD.KILLED, CLD.DUMPED)
        assert pool.submit(double, 4).result(timeout=30) == 8


def test_an_idle_worker_killed_is_replaced_and_nothing_fails(mon, caplog):
    with ProcessPoolExecutor(1, monitor=mon) as pool:
        pid = pool.submit(pid_of_worker).result(timeout=30)
        os.kill(pid, signal.SIGKILL)
        assert eventually(lambda: "idle worker" in caplog.text, timeout=30)
        futures = [pool.submit(pid_of_worker) for _ in range(50)]
        pids = {f.result(timeout=30) for f in futures}
        assert pid not in pids and len(pids) == 1


@pytest.mark.timeout(120)
def test_a_thousand_tasks_complete_around_deaths(mon):
    with ProcessPoolExecutor(2, monitor=mon) as pool:
        futures = []
        doomed = []
        for n in range(1000):
            if n % 250 == 125:
                doomed.append(pool.submit(exit_3))
            futures.append(pool.submit(double, n))
        assert [f.result(timeout=100) for f in futures] == [2 * n for n in range(1000)]
        for f in doomed:
            assert f.exception(timeout=30).state.status == 3


def test_readme_example_kill_a_worker_mid_task(mon, tmp_path):
    path = str(tmp_path / "pid")
    with ProcessPoolExecutor(max_workers=2, monitor=mon) as pool:
        victim = pool.submit(wait_for_file, path)
        rest = [pool.submit(double, n) for n in range(20)]
        pid = running_pid(path)
        os.kill(pid, signal.SIGKILL)            # as the OOM killer would
        try:
            victim.result(timeout=30)
        except syncmon.WorkerDied as e:
            assert (e.pid, e.state.code, e.state.status) == (pid, CLD.KILLED, signal.SIGKILL)
            assert str(e) == f"the worker (pid {pid}) running this task died: killed by SIGKILL"
        else:
            pytest.fail("the killed task did not fail")
        assert [f.result(timeout=30) for f in rest] == [2 * n for n in range(20)]


# --- the OOM killer ------------------------------------------------------------------

MEMORY_LIMIT = 64 << 20
"""Far above a worker's own use after the move (only pages charged from then on
count), far below what ``touch_memory`` asks for."""
REMOVE_BOUND = 10.0


class MemoryLimit:
    """A memory limit on one worker, where this machine offers one; ``oom_kills()`` then
    reads the kernel's count of OOM kills under it (proof that the OOM killer, not
    somebody else, sent the SIGKILL).

    cgroup v2 first: the worker was born in a cgroup of its own (the pool's tree
    mechanism), which has ``memory.max`` only if its parent already lists
    ``memory`` in ``cgroup.subtree_control``; it is never turned on here, since that
    would change every sibling cgroup of the parent (our own cgroup, or the root).
    On the machine this was written on the v2 root offers only ``hugetlb``: the
    memory controller is bound to the v1 hierarchy.  Else a v1 memory cgroup
    (``V1Cgroup``) that the worker is moved into by pid.
    """

    def __init__(self, pid: int, limit: int) -> None:
        self.events: str | None = None
        self.v1: V1Cgroup | None = None
        reasons = [self._try_v2(pid, limit), self._try_v1(pid, limit)]
        if self.events is None:
            pytest.skip("no memory limit can be set: " + "; ".join(r for r in reasons if r))

    def _try_v2(self, pid: int, limit: int) -> str | None:
        from syncmon import _cgroup

        mount = _cgroup.cgroup2_mount()
        path = _cgroup.own_cgroup(f"/proc/{pid}/cgroup")
        if mount is None or path is None:
            return "cgroup v2: no cgroup2 mount or the worker is in none"
        if path == _cgroup.own_cgroup():
            return f"cgroup v2: the worker shares our cgroup {path} (no tree cgroups: {_cgroup.available()})"
        directory = _under(mount, path)
        if not os.path.exists(os.path.join(directory, "memory.max")):
            parent = os.path.dirname(directory)
            offered = _read(os.path.join(parent, "cgroup.controllers")) or "none"
            enabled = _read(os.path.join(parent, "cgroup.subtree_control")) or "none"
            return (f"cgroup v2: the worker's cgroup {directory} has no memory.max ({parent} offers "
                    f"controllers: {offered}; enabled for its children: {enabled})")
        _write(os.path.join(directory, "memory.max"), limit)
        if os.path.exists(os.path.join(directory, "memory.swap.max")):
            _write(os.path.join(directory, "memory.swap.max"), 0)
        self.events = os.path.join(directory, "memory.events")
        return None

    def _try_v1(self, pid: int, limit: int) -> str | None:
        if self.events is not None:
            return None
        try:
            self.v1 = V1Cgroup("memory")
        except CgroupV1Unavailable as why:
            return str(why)
        try:
            self.v1.write("memory.limit_in_bytes", limit)
            if self.v1.has("memory.memsw.limit_in_bytes"):
                self.v1.write("memory.memsw.limit_in_bytes", limit)  # no swapping out of it
            self.v1.write("memory.oom_control", 0)  # OOM kills on (a child inherits the parent's)
            self.v1.write("cgroup.procs", pid)
        except BaseException:
            self.close()
            raise
        self.events = os.path.join(self.v1.path, "memory.oom_control")
        return None

    def oom_kills(self) -> int:
        assert self.events is not None
        for line in _read(self.events).splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill line in {self.events}")

    def close(self) -> None:
        if self.v1 is not None:  # v2: the worker's cgroup is the pool's, removed with the worker
            self.v1.close()


class CgroupV1Unavailable(Exception):
    """No v1 hierarchy of the controller, or no cgroup can be made in it (the reason)."""


class V1Cgroup:
    """A cgroup v1 of ``controller`` made below our own; ``close()`` moves back what is
    still in it (to our cgroup) and removes it."""

    def __init__(self, controller: str) -> None:
        mount = _v1_mount(controller)
        own = _v1_cgroup(controller, "/proc/self/cgroup")
        if mount is None or own is None:
            raise CgroupV1Unavailable(f"cgroup v1: no {controller} hierarchy mounted")
        self.home = _under(mount, own)
        self.path = os.path.join(self.home, f"syncmon-test-{os.getpid()}")
        try:
            os.mkdir(self.path)
        except OSError as error:
            raise CgroupV1Unavailable(f"cgroup v1: cannot create {self.path}: {error}") from None

    def __enter__(self) -> V1Cgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path, name))

    def read(self, name: str) -> str:
        return _read(os.path.join(self.path, name))

    def write(self, name: str, value: object) -> None:
        _write(os.path.join(self.path, name), value)

    def close(self) -> None:
        for pid in self.read("cgroup.procs").split():
            with contextlib.suppress(ProcessLookupError):
                _write(os.path.join(self.home, "cgroup.procs"), pid)
        give_up = time.monotonic() + REMOVE_BOUND
        while True:
            try:
                os.rmdir(self.path)
                return
            except OSError as error:  # EBUSY while the last exit is finishing
                if error.errno != errno.EBUSY or time.monotonic() > give_up:
                    raise
                time.sleep(0.05)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: object) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _under(mount: tuple[str, str], cgroup_path: str) -> str:
    """The directory of ``cgroup_path`` under ``mount`` (its point, and its root in the hierarchy)."""
    point, root = mount
    relative = cgroup_path[len(root):] if root != "/" else cgroup_path
    return os.path.join(point, relative.lstrip("/"))


def _v1_mount(controller: str) -> tuple[str, str] | None:
    """(mount point, root inside the hierarchy) of the cgroup v1 hierarchy of ``controller``."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup" and controller in fields[sep + 3].split(","):
                return fields[4], fields[3]
    return None


def _v1_cgroup(controller: str, cgroup_file: str) -> str | None:
    with open(cgroup_file) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return None


@pytest.mark.timeout(120)
def test_an_oom_killed_worker_fails_only_its_task(mon):
    """The kernel's OOM killer, through a memory limit on the worker, not a SIGKILL of ours."""
    with ProcessPoolExecutor(1, monitor=mon) as pool:
        pid = pool.submit(pid_of_worker).result(timeout=30)
        limit = MemoryLimit(pid, MEMORY_LIMIT)
        try:
            doomed = pool.submit(touch_memory, 4 * MEMORY_LIMIT, 4 << 20)
            error = doomed.exception(timeout=60)
            assert isinstance(error, WorkerDied), error
            assert (error.pid, error.state.code, error.state.status) == (pid, CLD.KILLED, signal.SIGKILL)
            assert limit.oom_kills() == 1
        finally:
            limit.close()
        assert pool.submit(double, 21).result(timeout=30) == 42


FAMINE_SECONDS = 1.0
"""Forks refused this long: ten retries, where three failed forks used to break the pool."""


def test_forks_refused_for_want_of_pids_do_not_break_the_pool(mon, caplog):
    """EAGAIN from the fork server's clone (a v1 pids cgroup at its limit) passes: the
    task waits for a worker, and runs once pids are there again."""
    try:
        pids = V1Cgroup("pids")
    except CgroupV1Unavailable as why:
        pytest.skip(f"no pids limit can be set: {why}")
    with pids, ProcessPoolExecutor(1, monitor=mon, max_tasks_per_child=1) as pool:
        assert pool.submit(double, 1).result(timeout=30) == 2  # the server is up; its worker retires
        pids.write("cgroup.procs", pool._pool.server.pid)
        pids.write("pids.max", pids.read("pids.current"))  # the server's own tasks, no more
        waiting = pool.submit(double, 2)
        time.sleep(FAMINE_SECONDS)
        assert not waiting.done()
        assert "cannot start a worker now" in caplog.text
        pids.write("pids.max", "max")
        assert waiting.result(timeout=30) == 4
        assert pool.submit(double, 3).result(timeout=30) == 6
    assert caplog.text.count("cannot start a worker now") == 1


# --- kill, timeouts, trees -----------------------------------------------------------

def test_kill_fails_that_task_with_worker_died(mon, tmp_path):
    path = str(tmp_path / "pid")
    with ProcessPoolExecutor(1, monitor=mon) as pool:
        victim = pool.submit(wait_for_file, path)
        queued = pool.submit(double, 5)
        assert pool.kill(queued) is False  # not running yet
        pid = running_pid(path)
        assert pool.kill(victim) is True
        error = victim.exception(timeout=30)
        assert isinstance(error, WorkerDied) and error.pid == pid
        assert error.state.code is CLD.KILLED and error.state.status == signal.SIGKILL
        assert queued.result(timeout=30) == 10
        assert pool.kill(victim) is False


# --- tasks queued ahead in a busy worker (prefetch) ----------------------------------

def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def prefetched(running: concurrent.futures.Future, ahead: concurrent.futures.Future) -> bool:
    """``ahead`` went to the worker running ``running`` (one worker: the only
    place a RUNNING future can be while the other has not finished)."""
    return eventually(ahead.running, timeout=30) and not running.done()


def test_a_worker_dying_with_a_task_queued_ahead_fails_only_the_running_one(mon, tmp_path):
    path = str(tmp_path / "pid")
    with ProcessPoolExecutor(1, monitor=mon) as pool:
        victim = pool.submit(wait_for_file, path)
        ahead = pool.submit(pid_of_worker)
        behind = pool.submit(pid_of_worker)
        pid = running_pid(path)
        assert prefetched(victim, ahead)
        os.kill(pid, signal.SIGKILL)
        error = victim.exception(timeout=30)
        assert isinstance(error, WorkerDied) and error.pid == pid
        # Sent but never started: it ran in the next worker, before the task behind it.
        assert ahead.result(timeout=30) != pid
        assert behind.result(timeout=30) == ahead.result()


def test_task_timeout_counts_from_the_start_not_from_the_prefetch(mon):
    with ProcessPoolExecutor(1, monitor=mon, task_timeout=3) as pool:
        first = pool.submit(sleep_then_pid, 2)
        second = pool.submit(sleep_then_pid, 2)
        third = pool.submit(sleep_then, 60, "late")
        assert eventually(first.running, timeout=30)
        assert prefetched(first, second)
        # second waited 2 s in the worker, then ran 2 s: 4 s from its sending,
        # within its 3 s from its start.
        pid = first.result(timeout=30)
        assert second.result(timeout=30) == pid
        # A task queued ahead is still timed once it runs.
        with pytest.raises(TimeoutError, match="task_timeout"):
            third.result(timeout=30)
        assert pool.submit(double, 4).result(timeout=30) == 8


def test_kill_of_a_task_queued_ahead_spares_the_running_one(mon):
    with ProcessPoolExecutor(1, monitor=mon) as pool:
        running = pool.submit(sleep_then_pid, 1.5)
        doomed = pool.submit(sleep_then, 60, "never")
        assert eventually(running.running, timeout=30)
        assert prefetched(running, doomed)
        assert pool.kill(doomed) is True
        # The worker is killed only when the doomed task starts.
        pid = running.result(timeout=30)
        error = doomed.exception(timeout=30)
        assert isinstance(error, WorkerDied) and error.pid == pid and "kill" in str(error)
        assert error.state.code is CLD.KILLED and error.state.status == signal.SIGKILL
        assert pool.submit(pid_of_worker).result(timeout=30) != pid


def test_max_tasks_per_child_is_never_exceeded_by_prefetch(mon):
    with ProcessPoolExecutor(1, monitor=mon, max_tasks_per_child=2) as pool:
        futures = [pool.submit(sleep_then_pid, 0.05) for _ in range(12)]
        pids = [f.result(timeout=60) for f in futures]
    # In order, two per worker: nothing was sent to a worker beyond its last task.
    assert all(pids[i] == pids[i + 1] for i in range(0, 12, 2))
    assert len(set(pids)) == 6


def test_task_timeout_kills_the_worker_and_the_pool_carries_on(mon):
    with ProcessPoolExecutor(1, monitor=mon, task_timeout=0.5) as pool:
        slow = pool.submit(sleep_then, 60, "late")
        fast = pool.submit(double, 21)
        with pytest.raises(TimeoutError, match="task_timeout"):
            slow.result(timeout=30)
        assert fast.result(timeout=30) == 42


def test_task_timeout_kills_the_grandchildren_too(mon, tmp_path):
    path = str(tmp_path / "pids")
    with ProcessPoolExecutor(1, monitor=mon, task_timeout=2) as pool:
        f = pool.submit(forking_sleeper, path)
        with pytest.raises(TimeoutError):
            f.result(timeout=30)
        pids = [int(p) for p in open(path).read().split()]
        assert eventually(lambda: not any(alive(p) for p in pids), timeout=30)


def forking_sleeper(path: str) -> None:
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        pids.append(pid)
    with open(path, "w") as f:
        f.write(" ".join(map(str, pids)))
    time.sleep(120)


def test_a_worker_that_forks_grandchildren_and_dies(mon, tmp_path):
    path = str(tmp_path / "pids")
    with ProcessPoolExecutor(1, monitor=mon) as pool:
        f = pool.submit(fork_grandchildren_then_die, path, 3)
        error = f.exception(timeout=30)
        assert isinstance(error, WorkerDied) and error.state.status == 5
        pids = [int(p) for p in open(path).read().split()]
        assert pool.submit(double, 1).result(timeout=30) == 2
    if syncmon.process_pool._cgroup.available() is True:
        # Born in the worker's cgroup: killed with the worker's tree.
        assert eventually(lambda: not any(alive(p) for p in pids), timeout=30)
    else:  # without cgroups, orphans of a dead worker are out of reach (documented)
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_max_tasks_per_child_replaces_workers_and_loses_nothing(mon):
    with ProcessPoolExecutor(2, monitor=mon, max_tasks_per_child=3) as pool:
        pids = [f.result(timeout=30) for f in [pool.submit(pid_of_worker) for _ in range(30)]]
    assert len(pids) == 30
    assert all(pids.count(p) <= 3 for p in set(pids))
    assert len(set(pids)) >= 10


# --- results, errors, pickling ---------------------------------------------------------

def test_an_exception_comes_back_with_the_remote_traceback(mon):
    with ProcessPoolExecutor(1, monitor=mon) as pool:
        error = pool.submit(raise_value_error, "boom").exception(timeout=30)
    assert type(error) is ValueError and str(error) == "boom"
    assert "raise_value_error" in str(error.__cause__) and "Traceback" in str(error.__cause__)


def test_a_ten_megabyte_result(mon):
    with ProcessPoolExecutor(2, monitor=mon) as pool:
        results = [pool.submit(big_result, 10 << 20) for _ in range(3)]
        assert all(f.result(timeout=60) == b"x" * (10 << 20) for f in results)


def test_unpicklable_argument_and_result_fail_only_their_task(mon):
    with ProcessPoolExecutor(1, monitor=mon) as pool:
        bad_arg = pool.submit(double, threading.Lock())
        bad_result = pool.submit(unpicklable_result)
        fine = pool.submit(double, 3)
        with pytest.raises(TypeError):
            bad_arg.result(timeout=30)
        with pytest.raises(TypeError, match="pickle"):
            bad_result.result(timeout=30)
        assert fine.result(timeout=30) == 6


def test_an_initializer_that_always_fails_breaks_the_pool_without_a_fork_loop(mon, caplog):
    pool = ProcessPoolExecutor(1, monitor=mon, initializer=fail_initializer)
    try:
        futures = [pool.submit(double, n) for n in range(5)]
        for f in futures:
            with pytest.raises(BrokenProcessPool, match="initializer says no"):
                f.result(timeout=30)
        with pytest.raises(BrokenProcessPool):
            pool.submit(double, 1)
    finally:
        pool.shutdown()
    assert caplog.text.count("failed to start") == syncmon.process_pool.MAX_STARTUP_FAILURES


def set_global(value: int) -> None:
    global GLOBAL
    GLOBAL = value


GLOBAL = 0


def read_global() -> int:
    return GLOBAL


def test_initializer_runs_in_every_worker(mon):
    with ProcessPoolExecutor(2, monitor=mon, initializer=set_global, initargs=(7,),
                             max_tasks_per_child=1) as pool:
        assert [f.result(timeout=30) for f in [pool.submit(read_global) for _ in range(4)]] == [7] * 4


# --- map, shutdown -------------------------------------------------------------------

def test_map_with_chunksize_and_timeout(mon):
    with ProcessPoolExecutor(2, monitor=mon) as pool:
        assert list(pool.map(double, range(100), chunksize=7)) == [2 * n for n in range(100)]
        assert list(pool.map(pow, [2, 3], [5, 2])) == [32, 9]
        results = pool.map(sleep_then, [0, 30], ["a", "b"], timeout=1)
        assert next(results) == "a"
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        with pytest.raises(ValueError):
            pool.map(double, [1], chunksize=0)
        pool.shutdown(cancel_futures=True)


def test_shutdown_runs_queued_tasks(mon):
    pool = ProcessPoolExecutor(1, monitor=mon)
    futures = [pool.submit(sleep_then, 0.01, n) for n in range(10)]
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == list(range(10))
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(double, 1)


def test_shutdown_cancel_futures(mon):
    pool = ProcessPoolExecutor(1, monitor=mon)
    first = pool.submit(sleep_then, 2, "first")
    assert eventually(first.running, timeout=30)
    rest = [pool.submit(double, n) for n in range(10)]
    # The task queued ahead in the busy worker is RUNNING, as a task in the
    # stdlib's call queue is: it runs; the others are cancelled.
    assert eventually(rest[0].running, timeout=30) and not first.done()
    pool.shutdown(wait=True, cancel_futures=True)
    assert first.result(timeout=0) == "first"
    assert rest[0].result(timeout=0) == 0
    assert all(f.cancelled() for f in rest[1:])


def test_shutdown_without_wait_leaves_nothing_behind(mon):
    pool = ProcessPoolExecutor(2, monitor=mon)
    futures = [pool.submit(sleep_then, 0.1, n) for n in range(4)]
    pids = [pool._pool.server.pid]
    pool.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == list(range(4))
    pool._pool.thread.join(timeout=30)
    assert not pool._pool.thread.is_alive()
    assert not any(alive(p) for p in pids if p is not None)


def test_interpreter_exit_leaves_no_worker_and_no_server():
    """With a task still queued.  On 3.12 no thread can start at exit: the
    workers' death callbacks then run on the main thread (it used to hang)."""
    from helpers import run_code

    out = run_code(
        "import os, syncmon, time\n"
        "pool = syncmon.ProcessPoolExecutor(2)\n"
        "worker = pool.submit(os.getpid).result(timeout=30)\n"
        "pool.submit(time.sleep, 0.2)\n"
        "print(pool._pool.server.pid, worker, os.getpid())\n"
    )
    pids = list(map(int, out.split()))
    assert eventually(lambda: not any(alive(p) for p in pids), timeout=30)
    if syncmon.process_pool._cgroup.available() is True:
        # The workers' cgroups are removed by the trees' end, i.e. by the callbacks.
        directory = syncmon.process_pool._cgroup.base()[0]
        assert not [n for n in os.listdir(directory) if n.startswith(f"syncmon-{pids[2]}-")]


def test_constructor_checks(mon):
    with pytest.raises(ValueError):
        ProcessPoolExecutor(0, monitor=mon)
    with pytest.raises(ValueError):
        ProcessPoolExecutor(1, monitor=mon, max_tasks_per_child=0)
    with pytest.raises(TypeError):
        ProcessPoolExecutor(1, monitor=mon, initializer=3)  # type: ignore[arg-type]
    with pytest.raises((TypeError, pickle.PicklingError, AttributeError)):
        ProcessPoolExecutor(1, monitor=mon, initializer=print, initargs=(threading.Lock(),))

"""syncmon.aio: deaths awaited from asyncio, and asyncio's subprocesses watched by syncmon
(issue 3, part 3)."""

import asyncio
import os
import signal
import subprocess
import threading
import warnings

import pytest

import syncmon
import syncmon.aio
from syncmon import CLD, UncleanExit
from helpers import HANG, run_in_threads, sh, status_sigset

SLEEPER = ["sleep", "100"]


def run(coro):
    """asyncio.run, bounded: a hang becomes a TimeoutError."""
    async def bounded():
        return await asyncio.wait_for(coro, HANG)
    return asyncio.run(bounded())


class Gated:
    """A child running ``sh -c 'read x; <script>'``: the script runs at release().

    As a context manager it releases the child and reaps it on the way out,
    so a failing test leaves nothing behind.
    """

    def __init__(self, monitor, script, *, popen=False):
        r, self._w = os.pipe()
        try:
            make = monitor.popen if popen else monitor.spawn
            self.child = make(sh(f"read x; {script}"), stdin=r)
        except BaseException:
            os.close(self._w)
            raise
        finally:
            os.close(r)

    @property
    def handle(self):
        return self.child if isinstance(self.child, syncmon.ChildHandle) else self.child.handle

    def release(self):
        if self._w is not None:
            os.close(self._w)
            self._w = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()
        self.child.wait(timeout=HANG)


def wait_together(gated, threads, wait_in_thread):
    """One loop awaits aio.wait(child) while `threads` plain threads block in
    wait_in_thread(child); the child dies once all of them are waiting.
    Returns (what the loop got, what each thread got)."""
    barrier = threading.Barrier(threads + 1, action=gated.release)

    def in_thread():
        barrier.wait()
        return wait_in_thread(gated.child)

    async def in_loop():
        waiting = asyncio.ensure_future(syncmon.aio.wait(gated.child))
        await asyncio.sleep(0)  # the task now awaits the death future
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        return await waiting

    results = run_in_threads(lambda job: job(), [(lambda: run(in_loop()),)] + [(in_thread,)] * threads)
    return results[0], results[1:]


# --- await syncmon.aio.wait(...) -------------------------------------------------------------

def test_loop_and_threads_waiting_on_one_handle_all_get_its_death(monitor):
    with Gated(monitor, "exit 6") as gated:
        awaited, waited = wait_together(gated, 3, lambda h: h.wait(timeout=HANG))
    assert (awaited.code, awaited.returncode) == (CLD.EXITED, 6)
    assert [state.returncode for state in waited] == [6, 6, 6]


def test_loop_and_threads_waiting_on_one_popen_all_get_its_death(monitor):
    with Gated(monitor, "exit 7", popen=True) as gated:
        awaited, waited = wait_together(gated, 3, lambda p: p.wait(timeout=HANG))
    assert awaited.returncode == 7
    assert waited == [7, 7, 7]
    assert gated.child.returncode == 7


def test_awaiting_a_popen_sets_its_returncode(monitor):
    """aio.wait() promises that Popen has reaped the child when the await returns."""
    for _ in range(20):
        p = monitor.popen(["false"])
        try:
            assert run(syncmon.aio.wait(p)).returncode == 1
            assert p.returncode == 1
        finally:
            p.wait(timeout=HANG)


@pytest.mark.parametrize("popen", [False, True], ids=["handle", "popen"])
def test_cancelled_await_leaves_the_child_watched(monitor, popen):
    with Gated(monitor, "exit 4", popen=popen) as gated:
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(asyncio.wait_for(syncmon.aio.wait(gated.child), 0.1))
        future = gated.handle.future
        assert future.running() and not future.cancelled()
        gated.release()
        assert run(syncmon.aio.wait(gated.child)).returncode == 4  # a new await still works
        assert gated.handle.wait(timeout=HANG).returncode == 4
        assert future.result(timeout=HANG).returncode == 4


def test_wait_refuses_what_is_not_a_child():
    with pytest.raises(TypeError):
        run(syncmon.aio.wait(os.getpid()))


# --- await syncmon.aio.check(...) ------------------------------------------------------------

def test_check_returns_the_state_of_a_clean_exit(monitor):
    assert run(syncmon.aio.check(monitor.spawn(["true"]))).clean()


@pytest.mark.parametrize("script, returncode", [
    ("exit 1", 1), ("kill -KILL $$", -signal.SIGKILL),
], ids=["exit1", "sigkill"])
def test_check_raises_UncleanExit(monitor, script, returncode):
    h = monitor.spawn(sh(script))
    with pytest.raises(UncleanExit) as excinfo:
        run(syncmon.aio.check(h))
    assert isinstance(excinfo.value, subprocess.CalledProcessError)
    assert excinfo.value.state.returncode == excinfo.value.returncode == returncode


def test_cancelled_check_terminates_the_child(monitor):
    h = monitor.spawn(SLEEPER)
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(syncmon.aio.check(h), 0.1))
    assert h.wait(timeout=HANG).returncode == -signal.SIGTERM


# --- asyncio.create_subprocess_exec through syncmon.aio.ChildWatcher --------------------------

needs_child_watcher = pytest.mark.skipif(
    not hasattr(syncmon.aio, "ChildWatcher"), reason="asyncio without the child watcher API (3.14+)")


@pytest.fixture
def child_watcher(monitor):
    """syncmon's watcher on `monitor` as asyncio's, and the previous one back afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: the watcher API is deprecated
        previous = asyncio.get_child_watcher()
        watcher = syncmon.aio.ChildWatcher(monitor)
        asyncio.set_child_watcher(watcher)
    try:
        yield watcher
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(previous)


async def exec_returncode(*argv, kill=False):
    proc = await asyncio.create_subprocess_exec(*argv)
    if kill:
        proc.kill()
    return await proc.wait()


@needs_child_watcher
def test_create_subprocess_exec_reports_the_exit_status(child_watcher):
    assert run(exec_returncode("sh", "-c", "exit 3")) == 3


@needs_child_watcher
def test_create_subprocess_exec_reports_a_kill(child_watcher):
    assert run(exec_returncode(*SLEEPER, kill=True)) == -signal.SIGKILL


@needs_child_watcher
def test_create_subprocess_exec_communicate(child_watcher):
    data = os.urandom(1024 * 1024)

    async def echo():
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(data)
        return out, proc.returncode

    assert run(echo()) == (data, 0)


@needs_child_watcher
def test_create_subprocess_exec_child_has_SIGCHLD_unblocked(child_watcher):
    async def sigblk():
        proc = await asyncio.create_subprocess_exec(
            "grep", "SigBlk", "/proc/self/status", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return out.decode()

    assert signal.SIGCHLD not in status_sigset(run(sigblk()))


@needs_child_watcher
def test_loops_in_two_threads_share_the_watcher(child_watcher):
    async def several(base):
        return await asyncio.gather(*(exec_returncode("sh", "-c", f"exit {base + i}") for i in range(5)))

    results = run_in_threads(lambda base: run(several(base)), [(0,), (10,)])
    assert results == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]
